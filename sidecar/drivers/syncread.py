"""One provider's snapshot at a pinned block, re-reading only what ``Cluster.syncState()`` says changed.

Owns ``SyncedReads``: per provider, the boot verdict and member records it last read and the ``SyncState``
they were read under. Each read starts with ``syncState()`` at the pinned hash (one call: the versions, the
current CSK epoch and its commitment, the member count); the members are re-read (``membersPage``, paged
under a gas budget) only when the membership version or count moved, the boot verdict (``isAppAllowed``)
only when the policy version moved; ``meshCidr`` (immutable) is the caller's once it has it. So an idle
pass costs one ``eth_call``, and a change costs one read of what changed.

Versions are counters: after a reorg deeper than the read's confirmations the same version could name
other records. Such a reorg already breaks what the confirmations promise to every read; as a guard, a
read at a lower block than the last one, or a dropped connection (``forget``), reads everything again.
Must not: decide where to read (the caller pins the block) or hold anything across providers (each
provider's answer must stand on its own for the quorum to mean anything).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.chain.contracts import ClusterClient
from sidecar.core.ids import Bytes32
from sidecar.core.model import BootInfo, BootVerdict, MemberRecord, MeshCidr, SyncState
from sidecar.core.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class _Held:
    block: int
    sync: SyncState
    verdict: BootVerdict
    members: tuple[MemberRecord, ...]


class SyncedReads:
    """What each provider last read, so the next read at a pinned block skips what did not change."""

    def __init__(self, providers: int) -> None:
        self._held: list[_Held | None] = [None] * providers

    def forget(self, index: int) -> None:
        """Read everything again from provider ``index`` next time (its connection was dropped)."""
        self._held[index] = None

    async def read(
        self,
        index: int,
        cluster: ClusterClient,
        *,
        block: int,
        pin: Bytes32,
        boot: BootInfo,
        mesh: MeshCidr | None,
    ) -> Snapshot:
        """The snapshot at ``block`` (hash ``pin``) from provider ``index``'s ``cluster`` client."""
        sync = await cluster.sync_state(block=pin)
        held = self._held[index]
        if held is not None and block < held.block:
            held = None  # read at an older block than the last one: nothing held is known to apply
        same_members = held is not None and (held.sync.membership_version, held.sync.member_count) == (
            sync.membership_version,
            sync.member_count,
        )
        if held is not None and same_members:
            members = held.members
        else:
            members = tuple(await cluster.members_paged(block=pin))
        if held is not None and held.sync.policy_version == sync.policy_version:
            verdict = held.verdict
        else:
            verdict = await cluster.is_app_allowed(boot, block=pin)
        if mesh is None:
            mesh = await cluster.mesh_cidr(block=pin)
        self._held[index] = _Held(block, sync, verdict, members)
        return Snapshot(block, verdict, members, sync.csk_commitment, mesh, sync.csk_epoch)
