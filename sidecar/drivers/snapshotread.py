"""One provider's snapshot read at a pinned block, re-reading only what changed since its last read.

Owns ``SnapshotReader``: per provider, the members it last read with the ``membershipVersion`` they were
read at, the boot verdict with the versions (and boot facts) it was asked at, and the mesh CIDR (immutable
in the contract). A read starts with one ``syncState`` call at the pinned block hash; the members are read
page by page (``ClusterClient.members_paged``, ``MEMBERS_PAGE_SIZE`` per call, so each call stays under a
gas budget) only when the membership version differs from the one held, and ``isAppAllowed`` only when
either version moved (the verdict depends on the policy and on whether this app id is registered). A pass
over an unchanged cluster therefore costs one ``eth_call``; the CSK epoch and commitment come from
``syncState`` itself.

Versions are counters: after a reorg deeper than the read's confirmations the same version could name
other records. Such a reorg already breaks what the confirmations promise to every read; as a guard, a
read at a lower block than the last one, or a dropped connection (``forget``), reads everything again.

Must not: choose the block or compare providers (``ChainLink`` does), or let one provider's cache answer
for another: each provider's answer stands on what that provider said, so a lying provider stays visible to
the quorum.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.chain.contracts import MEMBERS_PAGE_SIZE, ClusterClient
from sidecar.chain.errors import UnexpectedChainError
from sidecar.core.ids import Bytes32
from sidecar.core.model import BootInfo, BootVerdict, MemberRecord, MeshCidr, SyncState
from sidecar.core.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class HeldMembers:
    """Members as read at one membership version."""

    version: int
    members: tuple[MemberRecord, ...]


class SnapshotReader:
    """One provider's reads of the cluster, skipping what has not changed since the last read."""

    def __init__(self, page_size: int = MEMBERS_PAGE_SIZE) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.page_size = page_size
        self.held: HeldMembers | None = None
        self._verdict: tuple[tuple[int, int, BootInfo], BootVerdict] | None = None
        self._mesh: MeshCidr | None = None
        self._block: int | None = None

    async def read(self, cluster: ClusterClient, number: int, pin: Bytes32, boot: BootInfo) -> Snapshot:
        """The snapshot at block ``number`` (hash ``pin``): every call pinned to ``pin``."""
        if self._block is not None and number < self._block:
            self.held = None  # an older block than the last read: nothing held is known to apply there
            self._verdict = None
        self._block = number
        state = await cluster.sync_state(block=pin)
        members = await self._members(cluster, state, pin)
        verdict = await self._boot_verdict(cluster, state, pin, boot)
        if self._mesh is None:
            self._mesh = await cluster.mesh_cidr(block=pin)
        return Snapshot(number, verdict, members, state.csk_commitment, self._mesh, state.csk_epoch)

    async def _members(
        self, cluster: ClusterClient, state: SyncState, pin: Bytes32
    ) -> tuple[MemberRecord, ...]:
        held = self.held
        unchanged = held is not None and held.version == state.membership_version
        if held is not None and unchanged and len(held.members) == state.member_count:
            return held.members
        members = tuple(await cluster.members_paged(block=pin, page_size=self.page_size))
        if len(members) != state.member_count:
            raise UnexpectedChainError(
                f"membersPage returned {len(members)} members, syncState counts {state.member_count}"
            )
        self.held = HeldMembers(state.membership_version, members)
        return members

    async def _boot_verdict(
        self, cluster: ClusterClient, state: SyncState, pin: Bytes32, boot: BootInfo
    ) -> BootVerdict:
        key = (state.membership_version, state.policy_version, boot)
        if self._verdict is not None and self._verdict[0] == key:
            return self._verdict[1]
        verdict = await cluster.is_app_allowed(boot, block=pin)
        self._verdict = (key, verdict)
        return verdict

    def forget(self) -> None:
        """Drop everything held (the next read reads it all again)."""
        self.held = None
        self._verdict = None
        self._mesh = None
        self._block = None
