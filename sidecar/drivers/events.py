"""Where the control loop's wake-ups come from: one shared cursor, chain-log polling (the floor), a router.

Owns ``EventSource`` (the seam the daemon runs), ``SharedCursor`` (THE persisted chain-log cursor, shared by
the poller and the push subscriber: one file, one lock, advanced monotonically, so a log at or before it is
never handled again and nothing either side skipped is lost) and ``ChainLogPoller`` (``eth_getLogs`` for the
cluster's events after the cursor, in bounded ranges, only up to ``head - confirmations``, with a block-hash
reorg check). ``sidecar.drivers.router`` runs them: the event source of a node with an indexer registry.

Events are wake-ups only: ``wake(reason)`` carries a reason string and nothing else, so no log data — pushed
or polled — can reach membership, which always comes from chain reads. A missed or repeated event can only
delay or repeat a pass, never corrupt state. Must not: change membership or the device itself.
"""

from __future__ import annotations

import asyncio
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
REORG_DEPTH = 16
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
        self.head: int | None = None
        self._failing = False
        self._seen_head: tuple[int, Bytes32] | None = None
        self._verified: Cursor | None = None  # the last position this poller read from the chain itself

    @property
    def cursor(self) -> Cursor | None:
        return self.shared.value

    @cursor.setter
    def cursor(self, value: Cursor | None) -> None:
        self.shared.value = value

    @property
    def cursor_block(self) -> int | None:
        return self.shared.block

    def load_cursor(self) -> Cursor | None:
        """The persisted cursor; None (and a warning) when there is none or it cannot be used."""
        return self.shared.read()

    async def run(self) -> None:
        """Poll every ``interval`` seconds forever (a node without an indexer registry runs only this)."""
        self.shared.load()
        while True:
            await self.poll_guarded()
            await asyncio.sleep(self.interval)

    async def poll_guarded(self, through: int | None = None) -> None:
        """One poll (scanning at most through block ``through``, when given); a chain failure is logged
        once when it starts and once when it ends."""
        conn = self.connection()
        if conn is None:
            return
        try:
            await self.poll_once(conn, through)
            if self._failing:
                log.info("events.poll_recovered")
            self._failing = False
        except ChainError as exc:
            if not self._failing:
                log.warning("events.poll_failed", error=str(exc))
            self._failing = True
            self.wake("poll failed")  # the control loop notices the chain is gone and says so

    async def initial_cursor(self, conn: ChainConnection, head: int | None = None) -> Cursor:
        """The shared cursor, created at the confirmed head when there is none yet (and persisted).

        A node without a cursor reads the whole state in its first pass anyway: start after the confirmed
        head instead of replaying history.
        """
        if self.shared.value is not None:
            return self.shared.value
        if head is None:
            head = await conn.block_number()
        start = max(0, head - self.confirmations)
        cursor = Cursor.through(start, (await conn.block_header(start)).hash)
        async with self.shared.lock:
            if self.shared.value is None:
                self.shared.advance(cursor)
            return self.shared.value or cursor

    async def _take_back(self, conn: ChainConnection, cursor: Cursor, head: int) -> Cursor:
        """Move a cursor that lies beyond the chain head back to the poller's last chain-read position."""
        back = self._verified
        if back is None or back.block > head:
            start = max(0, head - self.confirmations)
            back = Cursor.through(start, (await conn.block_header(start)).hash)
        async with self.shared.lock:
            if self.shared.value == cursor:
                log.warning(
                    "events.cursor_ahead_of_chain", block=cursor.block, head=head, rewound_to=back.block
                )
                self.shared.rewind(back)
                self.wake("reorg")
            return self.shared.value or back

    async def poll_once(self, conn: ChainConnection, through: int | None = None) -> int:
        """Scan every confirmed block after the cursor (at most through block ``through``, when given);
        return the number of new logs handled."""
        latest = await conn.block_header("latest")
        self.head = latest.number
        if self._seen_head == (latest.number, latest.hash):
            return 0  # the chain has not moved (same height and hash): one call per idle poll
        head = latest.number
        scan_to = head if through is None else min(head, through)
        cursor = await self.initial_cursor(conn, head)
        if cursor.block > head + AHEAD_TOLERANCE:
            cursor = await self._take_back(conn, cursor, head)
        if not cursor.block_hash.is_zero and cursor.block <= head:
            canonical = (await conn.block_header(cursor.block)).hash
            rewound = rewind_on_reorg(cursor, canonical, REORG_DEPTH)
            if rewound != cursor:
                async with self.shared.lock:
                    if self.shared.value == cursor:
                        log.warning("events.reorg_detected", block=cursor.block, rewound_to=rewound.block)
                        self.shared.rewind(rewound)
                        self.wake("reorg")
            self._verified = rewound  # its block hash was just read from the chain
        seen = 0
        while True:
            position = self.shared.value
            assert position is not None
            span = next_range(position.next_block, scan_to, self.confirmations, self.max_range)
            if span is None:
                break
            first, last = span
            logs = await conn.get_logs([self.cluster], first, last)
            end = await conn.block_header(last)
            async with self.shared.lock:
                for entry in logs:
                    if self.shared.note(entry.block_number, entry.log_index, entry.block_hash, "poll"):
                        seen += 1
                self.shared.advance(Cursor.through(last, end.hash))
            self._verified = Cursor.through(last, end.hash)
        if scan_to == head:  # a capped scan left blocks behind: the next poll must look again
            self._seen_head = (latest.number, latest.hash)
        if seen:
            self.metrics.chain_logs_polled.inc(seen)
            log.info("events.polled", logs=seen, through=self.shared.block)
            self.wake("chain events")
        return seen
