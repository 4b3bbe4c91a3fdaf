"""The chain's desired state at one block, and what it asks of the WireGuard device.

Owns ``Snapshot`` (boot verdict, members, the current CSK epoch and its commitment, and mesh CIDR read at
one confirmed block, with look-ups by member id and by app id) and ``desired_peers``, the chain-to-device
mapping: every usable other member (``sidecar.core.peerscreen``) becomes a peer with its on-chain WireGuard
key, endpoint and /32 mesh IP. Must not do I/O or know
any driver type: members are looked up by value (``MemberId``, ``Address``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network

from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import BootVerdict, MemberRecord, MeshCidr
from sidecar.core.peerplan import DesiredPeer, WgKey


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The chain's desired state at one block."""

    block: int
    verdict: BootVerdict
    members: tuple[MemberRecord, ...]
    commitment: Bytes32 | None  # the current epoch's
    mesh: MeshCidr
    csk_epoch: int = 1  # the current CSK epoch (``Cluster.cskEpoch``)

    def member(self, member_id: MemberId | None) -> MemberRecord | None:
        """Return the member with this id (None for None or an unknown id)."""
        return next((m for m in self.members if m.member_id == member_id), None)

    def by_app(self, app_id: Address) -> MemberRecord | None:
        """Return the member registered for this app id."""
        return next((m for m in self.members if m.app_id == app_id), None)

    @property
    def originator(self) -> MemberId | None:
        return self.members[0].member_id if self.members else None

    def others(self, me: MemberId | None) -> list[MemberRecord]:
        """Return every member but ``me``, in chain order."""
        return [m for m in self.members if m.member_id != me]

    def by_id(self) -> dict[MemberId, MemberRecord]:
        """Return the members keyed by member id."""
        return {m.member_id: m for m in self.members}


def desired_peers(records: Iterable[MemberRecord]) -> list[DesiredPeer]:
    """Map member records to the peers the device should hold, by their on-chain keys (the caller passes
    the usable records of ``sidecar.core.peerscreen.screen_peers``, never an excluded one)."""
    return [
        DesiredPeer(
            member_id=m.member_id,
            public_key=WgKey(m.wg_pub.raw),
            endpoint=m.endpoint or None,
            allowed_ips=(IPv4Network(f"{m.mesh_ip}/32"),),
        )
        for m in records
    ]
