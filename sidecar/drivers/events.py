"""Where the control loop's wake-ups come from: the event source seam, and chain-log polling (the floor).

Owns ``EventSource`` (the seam: a push subscription will plug in here later) and ``ChainLogPoller``:
``eth_getLogs`` for the cluster's events from a persisted cursor, in bounded ranges, only up to
``head - confirmations``, with a block-hash reorg check; every new log wakes the control loop. Events are
wake-ups only: membership always comes from chain reads, so a missed or repeated event can only delay or
repeat a pass, never corrupt state. Must not: change membership or the device itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

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


class EventSource(Protocol):
    """Anything that wakes the control loop when the cluster's on-chain state may have changed."""

    mode: str

    async def run(self) -> None: ...

    @property
    def cursor_block(self) -> int | None: ...


class ChainLogPoller:
    """Polls the cluster contract's logs every ``interval`` seconds and wakes the control loop."""

    mode = "poll"

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
    ) -> None:
        self.connection = connection
        self.cluster = cluster
        self.store = store
        self.wake = wake
        self.metrics = metrics
        self.interval = interval
        self.confirmations = confirmations
        self.max_range = max_range
        self.cursor: Cursor | None = None
        self._failing = False
        self._seen_head: tuple[int, Bytes32] | None = None

    @property
    def cursor_block(self) -> int | None:
        return None if self.cursor is None else self.cursor.block

    def load_cursor(self) -> Cursor | None:
        """The persisted cursor; None (and a warning) when there is none or it cannot be used."""
        try:
            raw = self.store.read(CURSOR_FILE)
            return None if raw is None else Cursor.from_json(raw)
        except (StoreError, CursorError) as exc:
            log.warning("events.cursor_discarded", error=str(exc))
            return None

    def _save(self, cursor: Cursor) -> None:
        if cursor != self.cursor:
            self.cursor = cursor
            try:
                self.store.write(CURSOR_FILE, cursor.to_json().encode())
            except OSError as exc:
                log.warning("events.cursor_write_failed", error=str(exc))

    async def run(self) -> None:
        self.cursor = self.load_cursor()
        while True:
            conn = self.connection()
            if conn is not None:
                try:
                    await self.poll_once(conn)
                    if self._failing:
                        log.info("events.poll_recovered")
                    self._failing = False
                except ChainError as exc:
                    if not self._failing:
                        log.warning("events.poll_failed", error=str(exc))
                    self._failing = True
                    self.wake("poll failed")  # the control loop notices the chain is gone and says so
            await asyncio.sleep(self.interval)

    async def poll_once(self, conn: ChainConnection) -> int:
        """Scan every confirmed block after the cursor; return the number of new logs seen."""
        latest = await conn.block_header("latest")
        if self._seen_head == (latest.number, latest.hash):
            return 0  # the chain has not moved (same height and hash): one call per idle poll
        head = latest.number
        cursor = self.cursor
        if cursor is None:
            # A node without a cursor reads the whole state in its first pass anyway: start after the
            # confirmed head instead of replaying history.
            start = max(0, head - self.confirmations)
            cursor = Cursor.through(start, (await conn.block_header(start)).hash)
            self._save(cursor)
        if not cursor.block_hash.is_zero and cursor.block <= head:
            canonical = (await conn.block_header(cursor.block)).hash
            rewound = rewind_on_reorg(cursor, canonical, REORG_DEPTH)
            if rewound != cursor:
                log.warning("events.reorg_detected", block=cursor.block, rewound_to=rewound.block)
                self._save(rewound)
                cursor = rewound
                self.wake("reorg")
        seen = 0
        while (span := next_range(cursor.next_block, head, self.confirmations, self.max_range)) is not None:
            first, last = span
            logs = await conn.get_logs([self.cluster], first, last)
            for entry in logs:
                if is_after(entry.block_number, entry.log_index, cursor):
                    cursor = cursor.advance(entry.block_number, entry.log_index, entry.block_hash)
                    seen += 1
            end = await conn.block_header(last)
            cursor = Cursor.through(last, end.hash)
            self._save(cursor)
        self._seen_head = (latest.number, latest.hash)
        if seen:
            self.metrics.chain_logs_polled.inc(seen)
            log.info("events.polled", logs=seen, through=cursor.block)
            self.wake("chain events")
        return seen
