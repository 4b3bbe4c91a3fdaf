"""What the control loop has observed about this node, shared read-only with the services built beside it.

Owns ``NodeState``: the derived identity, the last good chain snapshot (and the head it was read at), this
node's member id and the last facts. The controller is its only writer; the daemon hands the same object
to the CSK responder, the push subscriber's credentials and the heartbeats' member table, so nobody reads
another object's internals. Must not hold private keys beyond the identity (whose reprs hide them) or do
I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from sidecar.core.ids import Bytes32, MemberId
from sidecar.core.model import MemberRecord
from sidecar.core.phases import Facts
from sidecar.core.snapshot import Snapshot
from sidecar.drivers.identity import NodeIdentity


def _initial_facts() -> Facts:
    return Facts(agent_ok=False, chain_ok=False, boot_allowed=None)


@dataclass(slots=True)
class NodeState:
    """The node's observed state (written by the controller, read by everyone else)."""

    identity: NodeIdentity | None = None
    snapshot: Snapshot | None = None
    head: int | None = None
    member_id: MemberId | None = None
    facts: Facts = field(default_factory=_initial_facts)

    def me(self) -> MemberRecord | None:
        """Return this node's member record in the last snapshot."""
        return (
            None if self.snapshot is None or self.member_id is None else self.snapshot.member(self.member_id)
        )

    def members_by_id(self) -> dict[MemberId, MemberRecord]:
        return {} if self.snapshot is None else self.snapshot.by_id()

    def heartbeat_table(self) -> Mapping[MemberId, tuple[Bytes32, IPv4Address]]:
        """Members as the heartbeat gate needs them: member id → (identity key, mesh IP)."""
        return {m: (r.identity_pub, r.mesh_ip) for m, r in self.members_by_id().items()}
