"""The chain follower: scans the factory's and every followed cluster's logs into the ``ChainIndex``.

Owns the scan loop: read the head; check the stored hash of the last indexed block against the chain (a
mismatch walks back through the stored hashes to the newest one still canonical, cuts the index there and
tells the listener, which closes the sessions past it with ``reorg``); take the next bounded, confirmed
range (``sidecar.core.cursor.next_range``); read ``ClusterDeployed`` logs of the factory and the logs of
every followed cluster in one ``eth_getLogs``; re-read the range for clusters deployed inside it; commit only
when the range's end hash is the same before and after the read (a reorg racing the read retries the range).
While catching up it scans back to back; once caught up it waits ``poll_interval`` between scans, cut short
by ``head_seen`` (a newHeads notice from ``indexer.heads``), so a new block is scanned as soon as it is
announced and the poll remains the floor.

Must not: start at genesis unless configured to, retry inside a scan (the loop owns backoff: one failed
scan is logged once, counted, and retried after the interval), or touch sessions other than through the
``FollowerListener`` callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

import structlog

from indexer.chainindex import ChainIndex
from indexer.metrics import IndexerMetrics
from sidecar.chain.artifacts import load_artifact
from sidecar.chain.codec import EventCodec
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.core.cursor import next_range
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import ChainLog

log = structlog.get_logger("indexer.follower")

FACTORY_CODEC = EventCodec(load_artifact("ClusterFactory").abi)
CLUSTER_CODEC = EventCodec(load_artifact("Cluster").abi)
CLUSTER_DEPLOYED = FACTORY_CODEC.topic_of("ClusterDeployed")
MEMBER_REGISTERED = CLUSTER_CODEC.topic_of("MemberRegistered")
MEMBER_REMOVED = CLUSTER_CODEC.topic_of("MemberRemoved")


class FollowerListener(Protocol):
    def advanced(self) -> None:
        """New logs or a higher ``through`` are in the index."""

    def reorged(self, good_block: int) -> None:
        """Everything above ``good_block`` was dropped from the index."""


class RangeRaced(Exception):
    """The chain changed under a range read; the range is retried."""


class Follower:
    """Follows the factory's clusters and the explicit list; owns ``index`` updates."""

    def __init__(
        self,
        conn: Callable[[], ChainConnection | None],
        index: ChainIndex,
        *,
        factory: Address | None,
        confirmations: int,
        max_range: int,
        poll_interval: float,
        listener: FollowerListener,
        metrics: IndexerMetrics,
    ) -> None:
        self._conn = conn
        self.index = index
        self.factory = factory
        self.confirmations = confirmations
        self.max_range = max_range
        self.poll_interval = poll_interval
        self.listener = listener
        self.metrics = metrics
        self.head: int | None = None
        self.ready = False
        self._failing = False
        self._nudged = asyncio.Event()

    def head_seen(self, number: int) -> None:
        """A new block was announced: scan now instead of at the end of the poll interval."""
        if self.head is None or number > self.head:
            self._nudged.set()

    @property
    def lag(self) -> int | None:
        return self.index.head_lag(self.head, self.confirmations)

    async def run(self) -> None:
        """Scan forever: back to back while catching up, every ``poll_interval`` once caught up."""
        while True:
            caught_up = False
            try:
                caught_up = await self.scan_once()
                if self._failing:
                    log.info("follower.recovered")
                    self._failing = False
            except (ChainError, RangeRaced) as exc:
                self.metrics.scan_failures.inc()
                if not self._failing:
                    log.warning("follower.scan_failed", error=str(exc)[:200], kind=type(exc).__name__)
                    self._failing = True
            if self._failing:
                await asyncio.sleep(self.poll_interval)
            elif caught_up:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._nudged.wait()
            self._nudged.clear()

    async def scan_once(self) -> bool:
        """Check for a reorg, scan one range; return True when the index is caught up with the head."""
        conn = self._conn()
        if conn is None:
            raise ChainError("no chain connection yet")
        head = await conn.block_number()
        self.head = head
        self.metrics.head_block.set(head)
        await self._check_reorg(conn, head)
        span = next_range(self.index.next_block, head, self.confirmations, self.max_range)
        if span is not None:
            await self._scan(conn, *span)
        caught_up = self.index.through >= head - self.confirmations
        if caught_up and not self.ready:
            log.info("follower.caught_up", through=self.index.through, head=head)
        self.ready = self.ready or caught_up
        self.metrics.indexed_through.set(self.index.through)
        self.metrics.head_lag.set(self.lag or 0)
        return caught_up

    async def _check_reorg(self, conn: ChainConnection, head: int) -> None:
        stored = self.index.through_hash
        if stored is None or self.index.through < self.index.start_block:
            return
        if head >= self.index.through and (await conn.block_header(self.index.through)).hash == stored:
            return
        good = self.index.start_block - 1  # the chain is shorter, or the hash differs: walk back
        for block, block_hash in self.index.stored_hashes_descending():
            if block >= self.index.through or block > head:
                continue
            if (await conn.block_header(block)).hash == block_hash:
                good = block
                break
        previous = self.index.through
        forgotten = self.index.cut_after(good)
        self.metrics.reorgs.inc()
        log.warning(
            "follower.reorg_detected",
            through=previous,
            rewound_to=self.index.through,
            clusters_forgotten=len(forgotten),
        )
        self.metrics.clusters.set(len(self.index.clusters))
        self.listener.reorged(self.index.through)

    async def _scan(self, conn: ChainConnection, first: int, last: int) -> None:
        before = (await conn.block_header(last)).hash
        addresses = list(self.index.clusters)
        if self.factory is not None:
            addresses.append(self.factory)
        logs = await conn.get_logs(addresses, first, last) if addresses else []
        discovered = self._discovered(logs)
        if discovered:
            lowest = min(discovered.values())
            logs += await conn.get_logs(list(discovered), lowest, last)
        after = (await conn.block_header(last)).hash
        if before != after or any(e.block_number == last and e.block_hash != after for e in logs):
            raise RangeRaced(f"block {last} changed during the scan")
        commit = self.index.commit(last, after, _unique(logs), discovered)
        for cluster in commit.discovered:
            log.info("follower.cluster_followed", cluster=str(cluster), since=discovered[cluster])
        added = sum(commit.added.values())
        if added:
            log.info("follower.logs_indexed", first=first, through=last, logs=added)
        self.metrics.ranges_scanned.inc()
        self.metrics.logs_indexed.inc(added)
        self.metrics.clusters.set(len(self.index.clusters))
        self.listener.advanced()

    def _discovered(self, logs: list[ChainLog]) -> dict[Address, int]:
        if self.factory is None:
            return {}
        found: dict[Address, int] = {}
        for event in FACTORY_CODEC.decode_all(logs, address=self.factory, name="ClusterDeployed"):
            cluster = event["cluster"]
            if isinstance(cluster, Address) and not self.index.follows(cluster) and cluster not in found:
                found[cluster] = event.log.block_number
        return found


def _unique(logs: list[ChainLog]) -> list[ChainLog]:
    seen: set[tuple[Address, int, int]] = set()
    out = []
    for entry in logs:
        key = (entry.address, entry.block_number, entry.log_index)
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def hash_hex(value: Bytes32 | None) -> str | None:
    return None if value is None else "0x" + value.hex
