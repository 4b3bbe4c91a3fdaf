"""Where the control loop's wake-ups come from: the shared cursor, chain-log polling (the floor), a router.

Owns ``EventSource`` (the seam the daemon runs), ``SharedCursor`` (the persisted chain-log cursor the push
subscriber resumes from and dedups against: one file, one lock, advanced monotonically by whoever handles a
log first, so a log at or before it never wakes the loop twice), ``PollCursor`` (the poller's OWN cursor,
``poll-cursor.json``: advanced only by the poller, only through blocks whose logs and hash it read from the
chain itself) and ``ChainLogPoller`` (``eth_getLogs`` for the cluster's events after its own cursor, in
bounded ranges, only up to ``head - confirmations``, with a block-hash reorg check). Pushed checkpoints can
wake the loop and move the shared cursor, never the poller's: a registered indexer that checkpoints through
a range it did not send cannot make the poller skip that range (a log polled there that push never
delivered wakes the loop and is logged, ``events.push_missed``). ``sidecar.drivers.router`` runs them: the
event source of a node with an indexer registry.

Events are wake-ups only: ``wake(reason)`` carries a reason string and nothing else, so no log data — pushed
or polled — can reach membership, which always comes from chain reads. A missed or repeated event can only
delay or repeat a pass, never corrupt state. Must not: change membership or the device itself.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.core.cursor import Cursor, CursorError, is_after, next_range, rewind_on_reorg
from sidecar.core.ids import Address, Bytes32
from sidecar.drivers.store import StateStore, StoreError
from sidecar.observability import Metrics

log = structlog.get_logger("sidecar.events")

CURSOR_FILE = "cursor.json"
POLL_CURSOR_FILE = "poll-cursor.json"
REORG_DEPTH = 16
#: How many positions of logs delivered as push events the shared cursor remembers (to tell a log that push
#: delivered from one it skipped with a checkpoint); older ones, if polled again, only repeat a wake-up.
PUSHED_REMEMBERED = 4096
#: A shared cursor more than this many blocks beyond the chain head cannot be true (an RPC node behind
#: another by a few blocks can be): it came from a push signed with a stolen key, and is taken back to the
#: last position the poller read from the chain itself, so events are never skipped past a forged cursor.
AHEAD_TOLERANCE = 64

EventMode = Literal["push", "poll"]
LogSource = Literal["push", "poll"]


@dataclass(frozen=True, slots=True)
class HandledLog:
    """A log position handled for the first time (what a trace sees: a position, never the log's data)."""

    source: LogSource
    block: int
    log_index: int


class EventSource(Protocol):
    """Anything that wakes the control loop when the cluster's on-chain state may have changed."""

    @property
    def mode(self) -> EventMode: ...

    @property
    def indexer_connected(self) -> bool: ...

    @property
    def cursor_block(self) -> int | None: ...

    @property
    def head_block(self) -> int | None: ...

    @property
    def rejected_pushes(self) -> int: ...

    @property
    def rejected_by_reason(self) -> dict[str, int]: ...

    async def run(self) -> None: ...


class SharedCursor:
    """The one persisted cursor (``cursor.json``), advanced by whoever handles a log first.

    Every read-check-advance happens under ``lock``; ``note`` and ``advance`` never move it backwards
    (only ``rewind``, for a reorg, does), so a log at or before the cursor is never handled twice.
    """

    def __init__(self, store: StateStore, *, on_handled: Callable[[HandledLog], None] | None = None) -> None:
        self.store = store
        self.lock = asyncio.Lock()
        self.value: Cursor | None = None
        self.rewinds = 0  # bumped on every reorg rewind: a push session started before it must restart
        self.on_handled = on_handled
        self._loaded = False
        self._saved: Cursor | None = None
        self._pushed: collections.OrderedDict[tuple[int, int, Bytes32], None] = collections.OrderedDict()

    def pushed(self, block: int, log_index: int, block_hash: Bytes32) -> bool:
        """Tell whether this log was delivered as a push event (recently: ``PUSHED_REMEMBERED`` positions)."""
        return (block, log_index, block_hash) in self._pushed

    @property
    def block(self) -> int | None:
        return None if self.value is None else self.value.block

    def load(self) -> Cursor | None:
        """Read the persisted cursor once (None, and a warning, when there is none or it cannot be used)."""
        if not self._loaded:
            self._loaded = True
            if self.value is None:
                self.value = self._saved = self.read()
        return self.value

    def read(self) -> Cursor | None:
        """The cursor as persisted now."""
        try:
            raw = self.store.read(CURSOR_FILE)
            return None if raw is None else Cursor.from_json(raw)
        except (StoreError, CursorError) as exc:
            log.warning("events.cursor_discarded", error=str(exc))
            return None

    def note(self, block: int, log_index: int, block_hash: Bytes32, source: LogSource) -> bool:
        """Handle a log if it lies after the cursor: advance in memory (persist with ``advance``/``save``).

        Call with ``lock`` held. Returns whether the log is new (the caller then wakes the control loop).
        """
        current = self.value
        if current is not None and not is_after(block, log_index, current):
            return False
        self.value = Cursor(block, log_index, block_hash)
        if source == "push":
            self._pushed[(block, log_index, block_hash)] = None
            while len(self._pushed) > PUSHED_REMEMBERED:
                self._pushed.popitem(last=False)
        log.info("events.handled", source=source, block=block, log_index=log_index)
        if self.on_handled is not None:
            self.on_handled(HandledLog(source, block, log_index))
        return True

    def advance(self, cursor: Cursor) -> bool:
        """Move to ``cursor`` if it lies after the current position, and persist; never backwards."""
        current = self.value
        if current is not None and not is_after(cursor.block, cursor.log_index, current):
            self.save()
            return False
        self.value = cursor
        self.save()
        return True

    def rewind(self, cursor: Cursor) -> None:
        """Move back to ``cursor`` after a reorg under the stored block hash, and persist."""
        self.value = cursor
        self.rewinds += 1
        self.save()

    def save(self) -> None:
        """Persist the current position (atomic write); a failed write is logged, the next one retries."""
        if self.value is None or self.value == self._saved:
            return
        try:
            self.store.write(CURSOR_FILE, self.value.to_json().encode())
            self._saved = self.value
        except OSError as exc:
            log.warning("events.cursor_write_failed", error=str(exc))


class PollCursor:
    """The poller's own cursor (``poll-cursor.json``): only the poller moves it, only to positions whose
    block hash it read from the chain, so nothing pushed can make it skip a range."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.value: Cursor | None = None
        self._loaded = False

    def load(self) -> Cursor | None:
        """Read the persisted poll cursor once (None, and a warning, when there is none or it is unusable)."""
        if not self._loaded:
            self._loaded = True
            if self.value is None:
                self.value = self.read()
        return self.value

    def read(self) -> Cursor | None:
        try:
            raw = self.store.read(POLL_CURSOR_FILE)
            return None if raw is None else Cursor.from_json(raw)
        except (StoreError, CursorError) as exc:
            log.warning("events.poll_cursor_discarded", error=str(exc))
            return None

    def set(self, cursor: Cursor) -> None:
        """Move to ``cursor`` (a position the poller verified) and persist; a failed write is logged."""
        if cursor == self.value:
            return
        self.value = cursor
        try:
            self.store.write(POLL_CURSOR_FILE, cursor.to_json().encode())
        except OSError as exc:
            log.warning("events.cursor_write_failed", error=str(exc))


class ChainLogPoller:
    """Scans the cluster contract's logs after the shared cursor and wakes the control loop once per batch."""

    mode: EventMode = "poll"

    def __init__(
        self,
        *,
        connection: Callable[[], ChainConnection | None],
        cluster: Address,
        store: StateStore,
        wake: Callable[[str], None],
        metrics: Metrics,
        interval: float,
        confirmations: int,
        max_range: int,
        cursor: SharedCursor | None = None,
    ) -> None:
        self.connection = connection
        self.cluster = cluster
        self.store = store
        self.wake = wake
        self.metrics = metrics
        self.interval = interval
        self.confirmations = confirmations
        self.max_range = max_range
        self.shared = cursor if cursor is not None else SharedCursor(store)
        self.own = PollCursor(store)
        self.head: int | None = None
        self._failing = False
        self._seen_head: tuple[int, Bytes32] | None = None

    @property
    def cursor(self) -> Cursor | None:
        """The poller's own, chain-verified position."""
        return self.own.value

    @cursor.setter
    def cursor(self, value: Cursor | None) -> None:
        self.own.value = value

    @property
    def cursor_block(self) -> int | None:
        return self.shared.block

    def load_cursor(self) -> Cursor | None:
        """The persisted poll cursor; None (and a warning) when there is none or it cannot be used."""
        return self.own.read()

    async def run(self) -> None:
        """Poll every ``interval`` seconds forever (a node without an indexer registry runs only this)."""
        self.shared.load()
        while True:
            await self.poll_guarded()
            await asyncio.sleep(self.interval)

    async def poll_guarded(self, through: int | None = None) -> bool:
        """One poll (scanning at most through block ``through``, when given); a chain failure is logged
        once when it starts and once when it ends. Return whether the poll read the chain (``head`` is
        then the head it read)."""
        conn = self.connection()
        if conn is None:
            return False
        try:
            await self.poll_once(conn, through)
            if self._failing:
                log.info("events.poll_recovered")
            self._failing = False
            return True
        except ChainError as exc:
            if not self._failing:
                log.warning("events.poll_failed", error=str(exc))
            self._failing = True
            self.wake("poll failed")  # the control loop notices the chain is gone and says so
            return False

    async def initial_cursor(self, conn: ChainConnection, head: int | None = None) -> Cursor:
        """The poll cursor, created at the confirmed head when there is none yet (and persisted); the shared
        cursor, when there is none yet, starts there too.

        A node without a cursor reads the whole state in its first pass anyway: start after the confirmed
        head instead of replaying history.
        """
        own = self.own.load()
        if own is None:
            if head is None:
                head = await conn.block_number()
            start = max(0, head - self.confirmations)
            own = Cursor.through(start, (await conn.block_header(start)).hash)
            self.own.set(own)
        self.shared.load()
        async with self.shared.lock:
            if self.shared.value is None:
                self.shared.advance(own)
        return own

    async def _take_back(self, head: int) -> None:
        """Move a shared cursor that lies far beyond the chain head back to the poller's position (a push
        resumes from it, and the indexer refuses a cursor beyond its head)."""
        back, cursor = self.own.value, self.shared.value
        assert back is not None and cursor is not None
        async with self.shared.lock:
            if self.shared.value == cursor:
                log.warning(
                    "events.cursor_ahead_of_chain", block=cursor.block, head=head, rewound_to=back.block
                )
                self.shared.rewind(back)
                self.wake("reorg")

    async def _check_reorgs(self, conn: ChainConnection, head: int) -> None:
        """Rewind the poll cursor, and the shared one, when the chain no longer has the block hash stored."""
        canonical: dict[int, Bytes32] = {}

        async def rewound(cursor: Cursor) -> Cursor:
            if cursor.block_hash.is_zero or cursor.block > head:
                return cursor
            if cursor.block not in canonical:
                canonical[cursor.block] = (await conn.block_header(cursor.block)).hash
            return rewind_on_reorg(cursor, canonical[cursor.block], REORG_DEPTH)

        own = self.own.value
        assert own is not None
        back = await rewound(own)
        if back != own:
            log.warning("events.reorg_detected", block=own.block, rewound_to=back.block)
            self.own.set(back)
            self.wake("reorg")
        shared = self.shared.value
        if shared is None:
            return
        back = await rewound(shared)
        if back != shared:
            async with self.shared.lock:
                if self.shared.value == shared:
                    if shared.block != own.block:
                        log.warning("events.reorg_detected", block=shared.block, rewound_to=back.block)
                    self.shared.rewind(back)
                    self.wake("reorg")

    async def poll_once(self, conn: ChainConnection, through: int | None = None) -> int:
        """Scan every confirmed block after the poll cursor (at most through block ``through``, when given);
        return the number of logs that woke the loop (new to the shared cursor, or never pushed)."""
        latest = await conn.block_header("latest")
        self.head = latest.number
        if self._seen_head == (latest.number, latest.hash):
            return 0  # the chain has not moved (same height and hash): one call per idle poll
        head = latest.number
        scan_to = head if through is None else min(head, through)
        await self.initial_cursor(conn, head)
        shared = self.shared.value
        if shared is not None and shared.block > head + AHEAD_TOLERANCE:
            await self._take_back(head)
        await self._check_reorgs(conn, head)
        seen = missed = 0
        while True:
            position = self.own.value
            assert position is not None
            span = next_range(position.next_block, scan_to, self.confirmations, self.max_range)
            if span is None:
                break
            first, last = span
            logs = await conn.get_logs([self.cluster], first, last)
            end = Cursor.through(last, (await conn.block_header(last)).hash)
            async with self.shared.lock:
                for entry in logs:
                    at = (entry.block_number, entry.log_index, entry.block_hash)
                    if self.shared.note(*at, "poll"):
                        seen += 1
                    elif not self.shared.pushed(*at):  # behind the shared cursor, yet never pushed
                        missed += 1
                        if self.shared.on_handled is not None:
                            self.shared.on_handled(HandledLog("poll", entry.block_number, entry.log_index))
                self.shared.advance(end)
            self.own.set(end)
        if scan_to == head:  # a capped scan left blocks behind: the next poll must look again
            self._seen_head = (latest.number, latest.hash)
        if missed:
            log.warning(
                "events.push_missed", logs=missed, through=self.own.value.block if self.own.value else None
            )
        if seen or missed:
            self.metrics.chain_logs_polled.inc(seen + missed)
            log.info("events.polled", logs=seen + missed, through=self.shared.block)
            self.wake("chain events")
        return seen + missed
