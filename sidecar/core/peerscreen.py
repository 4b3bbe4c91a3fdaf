"""Which member records can become WireGuard peers, and why the others cannot (the peer screen).

Owns ``screen_peers``: the other members of a snapshot split into the usable ones (they become desired
peers) and the excluded ones, each with a reason from ``EXCLUSION_REASONS`` and a short detail. One
member's unusable record must never hold back the rest of the mesh (issue 12, item 6): the device is
planned from the usable records only, is "in sync" with that plan, and the node's health counts only
usable peers. Must not do I/O.

Rules, judged per record in registration order (``registered_at``, then chain order), first match wins:

==================  ==================================================================================
reason              the record
==================  ==================================================================================
own_key             has this node's WireGuard public key (a device ignores a peer with its own key)
duplicate_key       has the WireGuard key of an earlier-registered member (the later one is excluded)
own_mesh_ip         has this node's mesh IP
duplicate_mesh_ip   has the mesh IP of an earlier-registered member
bad_mesh_ip         has a mesh IP outside the cluster's mesh CIDR, or its network/broadcast address
bad_endpoint        has an endpoint that does not parse (``sidecar.core.endpoint``) or that the device
                    would refuse (an IPv6 zone id, ``[fe80::1%eth0]``)
device_refused      (added by the mesh driver, not here) a routed peer the WireGuard port still refuses
==================  ==================================================================================

Every record claims its key and mesh IP in that order whether or not it is excluded for another reason,
so the earlier registrant keeps a contested key or address and the verdict does not depend on which
other faults a record has. A member with no endpoint (``""``) is usable: it is reached when it dials us.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final, Literal, get_args

from sidecar.core.endpoint import EndpointError, UdpEndpoint, parse_endpoint
from sidecar.core.ids import Bytes32, MemberId
from sidecar.core.model import MemberRecord, MeshCidr

ExclusionReason = Literal[
    "own_key", "duplicate_key", "own_mesh_ip", "duplicate_mesh_ip", "bad_mesh_ip", "bad_endpoint",
    "device_refused",
]  # fmt: skip
EXCLUSION_REASONS: Final[tuple[str, ...]] = get_args(ExclusionReason)


@dataclass(frozen=True, slots=True)
class Excluded:
    """One member record kept off the device: ``reason`` is from ``EXCLUSION_REASONS``; ``detail`` is a
    short human sentence that never echoes the record's text (an endpoint may be anything)."""

    member_id: MemberId
    reason: ExclusionReason
    detail: str


@dataclass(frozen=True, slots=True)
class PeerScreen:
    """The other members split into usable records (chain order) and excluded ones (chain order)."""

    usable: tuple[MemberRecord, ...] = ()
    excluded: tuple[Excluded, ...] = ()

    def with_excluded(self, more: Sequence[Excluded]) -> PeerScreen:
        """This screen with ``more`` records moved from usable to excluded (the driver's last check)."""
        if not more:
            return self
        gone = {e.member_id for e in more}
        return PeerScreen(
            usable=tuple(m for m in self.usable if m.member_id not in gone),
            excluded=(*self.excluded, *more),
        )

    def counts(self) -> dict[str, int]:
        """Excluded records per reason, every reason present (zero included)."""
        counts = dict.fromkeys(EXCLUSION_REASONS, 0)
        for entry in self.excluded:
            counts[entry.reason] += 1
        return counts


def endpoint_problem(endpoint: str) -> str | None:
    """Why a registered endpoint cannot be used (None when usable; ``""`` is usable: no endpoint)."""
    if not endpoint:
        return None
    try:
        parsed = parse_endpoint(endpoint)
    except EndpointError as exc:
        return f"endpoint unusable: {exc}"
    if isinstance(parsed, UdpEndpoint) and isinstance(parsed.ip, IPv6Address) and parsed.ip.scope_id:
        return "endpoint unusable: an IPv6 address with a zone id (%…) is not a WireGuard endpoint"
    return None


def _mesh_ip_problem(ip: IPv4Address, mesh: MeshCidr) -> str | None:
    network = mesh.network
    if ip not in network:
        return f"mesh IP {ip} is outside the cluster's mesh {network}"
    if ip in (network.network_address, network.broadcast_address):
        return f"mesh IP {ip} is the network or broadcast address of {network}"
    return None


def screen_peers(members: Sequence[MemberRecord], me: MemberRecord, mesh: MeshCidr) -> PeerScreen:
    """Split every member but ``me`` into usable records and excluded ones (see the module's rules)."""
    order = sorted(range(len(members)), key=lambda i: (members[i].registered_at, i))
    keys: set[Bytes32] = {me.wg_pub}
    ips: set[IPv4Address] = {me.mesh_ip}
    verdicts: dict[int, Excluded] = {}
    for index in order:
        record = members[index]
        if record.member_id == me.member_id:
            continue
        problem = _problem(record, me, mesh, key_taken=record.wg_pub in keys, ip_taken=record.mesh_ip in ips)
        keys.add(record.wg_pub)
        ips.add(record.mesh_ip)
        if problem is not None:
            verdicts[index] = Excluded(record.member_id, *problem)
    others = [(i, m) for i, m in enumerate(members) if m.member_id != me.member_id]
    return PeerScreen(
        usable=tuple(m for i, m in others if i not in verdicts),
        excluded=tuple(verdicts[i] for i, _ in others if i in verdicts),
    )


def _problem(
    record: MemberRecord, me: MemberRecord, mesh: MeshCidr, *, key_taken: bool, ip_taken: bool
) -> tuple[ExclusionReason, str] | None:
    """The first rule of the module's table the record breaks, with its detail (None: usable)."""
    ip = record.mesh_ip
    rules: tuple[tuple[ExclusionReason, str | None], ...] = (
        ("own_key", "WireGuard key equals this node's" if record.wg_pub == me.wg_pub else None),
        ("duplicate_key", "WireGuard key already registered by an earlier member" if key_taken else None),
        ("own_mesh_ip", f"mesh IP {ip} is this node's" if ip == me.mesh_ip else None),
        ("duplicate_mesh_ip", f"mesh IP {ip} already held by an earlier member" if ip_taken else None),
        ("bad_mesh_ip", _mesh_ip_problem(ip, mesh)),
        ("bad_endpoint", endpoint_problem(record.endpoint)),
    )
    return next(((reason, detail) for reason, detail in rules if detail is not None), None)
