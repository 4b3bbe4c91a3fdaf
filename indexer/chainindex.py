"""The indexer's in-memory view of the chain: per-cluster ordered logs, block hashes, coverage, reorg cuts.

Owns ``ChainIndex``: which clusters are followed (and since which block), every log of each followed cluster
in chain order, the block through which everything is indexed (``through``, with its hash), the stored
block hashes a reorg check compares against, and the pure operations on them — ``commit`` a scanned range,
``cut_after`` a block (reorg: drop the affected suffix), ``next_after`` a cursor (what a session sends
next; ``next_with_prev`` and ``last_through`` add the cluster's log before it, a frame's signed ``prev``),
``registration_block`` of a member, ``servable`` (is a start position still covered).

Retention (bounded, documented): at most ``retain_logs`` logs are kept per cluster; when a cluster exceeds
it the oldest logs are dropped and ``retained_from`` moves to the last dropped log, so a subscriber whose
start lies before it is refused with ``unavailable`` (it polls the chain itself, then resubscribes from a
later cursor) — never served with a gap. Stored block hashes are kept for the newest ``HASH_WINDOW``
blocks that had logs or ended a range: a reorg deeper than that window rescans from the start block.

Must not do I/O, read a clock, or sign anything.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import ChainLog

HASH_WINDOW = 512


def _key(log: ChainLog) -> tuple[int, int]:
    return (log.block_number, log.log_index)


@dataclass(slots=True)
class ClusterLog:
    """Every retained log of one cluster, in chain order."""

    since: int  # the block the cluster was first followed from (discovery block or start block)
    retained_from: Cursor  # every log strictly after this position is retained
    explicit: bool = False
    logs: list[ChainLog] = field(default_factory=list)
    keys: list[tuple[int, int]] = field(default_factory=list)

    def append(self, log: ChainLog) -> None:
        if self.keys and _key(log) <= self.keys[-1]:
            raise ValueError("logs must be appended in chain order")
        self.logs.append(log)
        self.keys.append(_key(log))

    def trim(self, retain: int) -> int:
        """Drop the oldest logs beyond ``retain``; return how many were dropped."""
        excess = len(self.logs) - retain
        if excess <= 0:
            return 0
        last = self.logs[excess - 1]
        self.retained_from = Cursor(last.block_number, last.log_index, last.block_hash)
        del self.logs[:excess]
        del self.keys[:excess]
        return excess

    def cut_after(self, block: int) -> int:
        """Drop every log above ``block``; return how many were dropped."""
        index = bisect.bisect_right(self.keys, (block, 2**63))
        dropped = len(self.logs) - index
        del self.logs[index:]
        del self.keys[index:]
        return dropped

    def next_after(self, cursor: Cursor) -> ChainLog | None:
        """The first retained log strictly after ``cursor``."""
        index = bisect.bisect_right(self.keys, (cursor.block, cursor.log_index))
        return self.logs[index] if index < len(self.logs) else None

    def _position(self, index: int) -> Cursor:
        """The position of the log before ``logs[index]``: the previous retained log, or the floor."""
        if index <= 0:
            return self.retained_from
        log = self.logs[index - 1]
        return Cursor(log.block_number, log.log_index, log.block_hash)

    def next_with_prev(self, cursor: Cursor) -> tuple[ChainLog, Cursor] | None:
        """The first retained log strictly after ``cursor`` and the position of the cluster's log before it
        (the previous retained log, or ``retained_from``): the event's ``prev``."""
        index = bisect.bisect_right(self.keys, (cursor.block, cursor.log_index))
        return (self.logs[index], self._position(index)) if index < len(self.logs) else None

    def last_through(self, block: int) -> Cursor:
        """The position of the cluster's last retained log at or before ``block`` (or ``retained_from``):
        a checkpoint's ``prev``."""
        return self._position(bisect.bisect_right(self.keys, (block, 2**63)))


@dataclass(frozen=True, slots=True)
class Commit:
    """What one committed range changed: the new through block and the logs added per cluster."""

    through: int
    added: Mapping[Address, int]
    discovered: tuple[Address, ...]


class ChainIndex:
    """The followed clusters' logs through ``through`` (see the module docstring)."""

    def __init__(self, start_block: int, explicit: Iterable[Address] = (), *, retain_logs: int = 100_000):
        if start_block < 0:
            raise ValueError("start block must be non-negative")
        if retain_logs < 1:
            raise ValueError("retain_logs must be at least 1")
        self.start_block = start_block
        self.retain_logs = retain_logs
        self.through = start_block - 1  # nothing indexed yet
        self.through_hash: Bytes32 | None = None
        self.hashes: dict[int, Bytes32] = {}
        self.clusters: dict[Address, ClusterLog] = {}
        for cluster in explicit:
            self.clusters[cluster] = ClusterLog(start_block, Cursor.start(start_block), explicit=True)

    @property
    def next_block(self) -> int:
        return self.through + 1

    def follows(self, cluster: Address) -> bool:
        return cluster in self.clusters

    def commit(
        self,
        to_block: int,
        to_hash: Bytes32,
        logs: Iterable[ChainLog],
        discovered: Mapping[Address, int] | None = None,
    ) -> Commit:
        """Record the scanned range ``[next_block, to_block]``: its logs, new clusters and its end hash.

        ``logs`` may include logs of addresses that are not followed (ignored); ``discovered`` maps newly
        deployed clusters to their deployment block (they are followed from there).
        """
        if to_block < self.next_block:
            raise ValueError("range does not advance")
        new: list[Address] = []
        for cluster, block in (discovered or {}).items():
            if cluster not in self.clusters:
                self.clusters[cluster] = ClusterLog(block, Cursor.start(self.start_block))
                new.append(cluster)
        added: dict[Address, int] = {}
        for log in sorted(logs, key=_key):
            if not self.next_block <= log.block_number <= to_block:
                raise ValueError("log outside the committed range")
            clog = self.clusters.get(log.address)
            if clog is None:
                continue
            clog.append(log)
            self.hashes[log.block_number] = log.block_hash
            added[log.address] = added.get(log.address, 0) + 1
        for cluster in added:
            self.clusters[cluster].trim(self.retain_logs)
        self.hashes[to_block] = to_hash
        self.through, self.through_hash = to_block, to_hash
        self._prune_hashes()
        return Commit(to_block, added, tuple(new))

    def _prune_hashes(self) -> None:
        excess = len(self.hashes) - HASH_WINDOW
        if excess > 0:
            for block in sorted(self.hashes)[:excess]:
                del self.hashes[block]

    def stored_hashes_descending(self) -> list[tuple[int, Bytes32]]:
        """Stored (block, hash) pairs, newest first: the candidates a reorg walk-back checks."""
        return sorted(self.hashes.items(), reverse=True)

    def cut_after(self, block: int) -> list[Address]:
        """Forget everything above ``block`` (a reorg); return the clusters no longer followed.

        A cluster discovered above ``block`` is forgotten too (its deployment may be gone); explicit ones
        stay. ``block`` below the start block means: rescan everything.
        """
        block = max(block, self.start_block - 1)
        forgotten = [c for c, clog in self.clusters.items() if not clog.explicit and clog.since > block]
        for cluster in forgotten:
            del self.clusters[cluster]
        for clog in self.clusters.values():
            clog.cut_after(block)
        for stored in [b for b in self.hashes if b > block]:
            del self.hashes[stored]
        self.through = min(self.through, block)
        self.through_hash = self.hashes.get(self.through)
        return forgotten

    def hash_at(self, block: int) -> Bytes32 | None:
        return self.hashes.get(block)

    def next_after(self, cluster: Address, cursor: Cursor) -> ChainLog | None:
        clog = self.clusters.get(cluster)
        return None if clog is None else clog.next_after(cursor)

    def next_with_prev(self, cluster: Address, cursor: Cursor) -> tuple[ChainLog, Cursor] | None:
        clog = self.clusters.get(cluster)
        return None if clog is None else clog.next_with_prev(cursor)

    def last_through(self, cluster: Address, block: int) -> Cursor | None:
        clog = self.clusters.get(cluster)
        return None if clog is None else clog.last_through(block)

    def servable(self, cluster: Address, start: Cursor) -> bool:
        """Tell whether every log of ``cluster`` after ``start`` is still retained."""
        clog = self.clusters.get(cluster)
        if clog is None:
            return False
        floor = clog.retained_from
        return (start.block, start.log_index) >= (floor.block, floor.log_index)

    def registration_block(self, cluster: Address, member_id: MemberId, topic: Bytes32) -> int | None:
        """The block of the member's latest ``MemberRegistered`` log (``topic``: its topic0), if retained."""
        clog = self.clusters.get(cluster)
        if clog is None:
            return None
        for log in reversed(clog.logs):
            if len(log.topics) >= 2 and log.topics[0] == topic and log.topics[1].raw == member_id.raw:
                return log.block_number
        return None

    def head_lag(self, head: int | None, confirmations: int) -> int | None:
        """Confirmed blocks not yet indexed (None before the head is known)."""
        if head is None:
            return None
        return max(0, head - confirmations - self.through)
