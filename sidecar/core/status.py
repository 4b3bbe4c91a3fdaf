"""What the node reports about itself: the status snapshot and the JSON bodies of the HTTP surfaces.

Owns: ``NodeStatus`` (one immutable snapshot, replaced as a whole by the drivers), the public views
``PeerView`` and ``SelfView``, and their JSON forms — ``healthz_body`` is exactly the ``/healthz`` shape
of DESIGN §4 plus ``chain`` (so an unreachable chain, or JSON-RPC providers that disagree, are named,
and ``write_held``: why the last transaction was not sent) and ``peers.excluded`` (the member records
kept off the device, with reasons; at most ``MAX_EXCLUDED_LISTED``, ``peers.excluded_count`` all). A
value not known yet is JSON ``null``, never a placeholder such as a zero address.

Values arrive already rendered as strings by the drivers (``str(Address)`` is EIP-55, ``str(Bytes32)`` is
``0x`` hex, ``str(IPv4Address)`` is dotted), so this module stays a plain mapping to JSON.

Must not: do I/O, or hold private material — every field here is public.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from sidecar.core.phases import ORDER, Phase

PHASES: Final[tuple[str, ...]] = tuple(p.value for p in ORDER)
"""The phase names in forward order (``sidecar.core.phases`` owns them)."""

HEALTHY_PHASE: Final = Phase.HEALTHY.value

MAX_EXCLUDED_LISTED: Final = 32
"""``/healthz`` lists at most this many excluded records (``peers.excluded``); ``peers.excluded_count``
says how many there are."""

EventMode = Literal["push", "poll"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """One status snapshot. Public values are passed already rendered (``str(address)``, ``str(member_id)``,
    ``str(ip)``); None means not known yet and is served as JSON null."""

    phase: str
    healthy: bool
    reason: str | None
    version: str
    # build: which code runs (``sidecar.buildinfo``): a full git sha or "unknown", whether its tree had
    # uncommitted changes (None: unknown), and where that was learnt ("image", "git" or "unknown")
    commit: str = "unknown"
    dirty: bool | None = None
    build_source: str = "unknown"
    # node
    app_id: str | None = None
    instance_id: str | None = None
    compose_hash: str | None = None
    member_id: str | None = None
    mesh_ip: str | None = None
    signer: str | None = None
    # peers
    peers_desired: int = 0
    peers_configured: int = 0
    peers_live: int = 0
    peers_transport: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # transport → state → n
    peers_excluded: tuple[tuple[str, str], ...] = ()  # (member id, reason) of the records kept off the device
    # csk (``csk_source``: for example ``derived``, ``cache`` or ``peer``; ``csk_epoch``: the snapshot's
    # current epoch; ``csk_previous_epoch``: the epoch whose key is still kept for its grace period)
    csk_held: bool = False
    csk_epoch: int | None = None
    csk_previous_epoch: int | None = None
    csk_commitment: str | None = None
    csk_source: str | None = None
    csk_peering_error: str | None = None  # why the key can be neither served to nor taken from peers
    # events
    events_mode: EventMode = "poll"
    indexer_connected: bool = False
    cursor_block: int | None = None
    head_block: int | None = None
    rejected_pushes: int = 0
    rejected_by_reason: tuple[tuple[str, int], ...] = ()  # (reason, count), sorted by reason
    membership_digest: str | None = None
    # chain: ``chain_reachable`` is None until the first chain call
    chain_reachable: bool | None = None
    chain_error: str | None = None
    chain_write_held: str | None = None  # why the last transaction was not sent (``fee_cap: …``)
    # where the last snapshot was read: ``push`` (the verified stream's block), ``poll`` (the poller's own
    # confirmed cursor), ``head`` (the node's own head read); None before the first read
    chain_read_at: str | None = None
    # the JSON-RPC providers, by index in ATTESTMESH_RPC_URLS (never a URL): how many, the quorum, who
    # answered the last snapshot read, who agreed with the accepted (or largest) answer, who did not, and the
    # named reason when no quorum agreed (``rpc_disagreement``, ``rpc_quorum_unavailable``)
    rpc_providers: int = 1
    rpc_quorum: int = 1
    rpc_up: tuple[int, ...] = ()
    rpc_agreeing: tuple[int, ...] = ()
    rpc_dissenting: tuple[int, ...] = ()
    rpc_reason: str | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}")
        if self.healthy and self.phase != HEALTHY_PHASE:
            raise ValueError(f"a node in phase {self.phase!r} cannot be healthy")
        if self.events_mode not in ("push", "poll"):
            raise ValueError(f"unknown events mode {self.events_mode!r}")

    @classmethod
    def initial(
        cls,
        version: str,
        *,
        commit: str = "unknown",
        dirty: bool | None = None,
        build_source: str = "unknown",
    ) -> NodeStatus:
        """The status before anything has been observed."""
        return cls(
            phase=PHASES[0],
            healthy=False,
            reason="starting: nothing observed yet",
            version=version,
            commit=commit,
            dirty=dirty,
            build_source=build_source,
        )


def healthz_body(status: NodeStatus) -> dict[str, object]:
    """Build the ``/healthz`` (and ``/v1/status``) JSON body."""
    return {
        "phase": status.phase,
        "healthy": status.healthy,
        "reason": status.reason,
        "node": {
            "app_id": status.app_id,
            "instance_id": status.instance_id,
            "compose_hash": status.compose_hash,
            "member_id": status.member_id,
            "mesh_ip": status.mesh_ip,
            "signer": status.signer,
        },
        "peers": {
            "desired": status.peers_desired,
            "configured": status.peers_configured,
            "live": status.peers_live,
            "transport": {kind: dict(states) for kind, states in sorted(status.peers_transport.items())},
            "excluded": [
                {"member_id": member, "reason": reason}
                for member, reason in status.peers_excluded[:MAX_EXCLUDED_LISTED]
            ],
            "excluded_count": len(status.peers_excluded),
        },
        "csk": {
            "held": status.csk_held,
            "epoch": status.csk_epoch,
            "previous_epoch": status.csk_previous_epoch,
            "commitment": status.csk_commitment,
            "source": status.csk_source,
            "peering_error": status.csk_peering_error,
        },
        "events": {
            "mode": status.events_mode,
            "indexer_connected": status.indexer_connected,
            "cursor_block": status.cursor_block,
            "head_block": status.head_block,
            "rejected_pushes": status.rejected_pushes,
            "rejected_by_reason": dict(status.rejected_by_reason),
        },
        "chain": {
            "reachable": status.chain_reachable,
            "error": status.chain_error,
            "write_held": status.chain_write_held,
            "read_at": status.chain_read_at,
            "rpc": {
                "providers": status.rpc_providers,
                "quorum": status.rpc_quorum,
                "up": list(status.rpc_up),
                "agreeing": list(status.rpc_agreeing),
                "dissenting": list(status.rpc_dissenting),
                "reason": status.rpc_reason,
            },
        },
        "membership_digest": status.membership_digest,
        "version": status.version,
        "build": {
            "version": status.version,
            "commit": status.commit,
            "dirty": status.dirty,
            "source": status.build_source,
        },
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerView:
    """One peer as an application sees it; ``last_heard_ms_ago`` is None until a heartbeat arrived."""

    member_id: str
    mesh_ip: str
    endpoint: str | None
    configured: bool
    live: bool
    last_heard_ms_ago: int | None
    transport: Mapping[str, object] | None = None  # {"kind", "up", …}; None when no carrier is chosen

    def to_json(self) -> dict[str, object]:
        return {
            "member_id": self.member_id,
            "mesh_ip": self.mesh_ip,
            "endpoint": self.endpoint,
            "configured": self.configured,
            "live": self.live,
            "last_heard_ms_ago": self.last_heard_ms_ago,
            "transport": None if self.transport is None else dict(self.transport),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SelfView:
    """This node's public identity once registered (all values rendered public strings)."""

    cluster: str
    member_id: str
    app_id: str
    instance_id: str
    mesh_ip: str
    signer: str
    wg_pub: str
    seal_pub: str
    identity_pub: str

    def to_json(self) -> dict[str, object]:
        return {
            "cluster": self.cluster,
            "member_id": self.member_id,
            "app_id": self.app_id,
            "instance_id": self.instance_id,
            "mesh_ip": self.mesh_ip,
            "signer": self.signer,
            "wg_pub": self.wg_pub,
            "seal_pub": self.seal_pub,
            "identity_pub": self.identity_pub,
        }


def peers_body(peers: list[PeerView]) -> dict[str, object]:
    """Build the ``/v1/peers`` body, peers sorted by member id."""
    return {"peers": [p.to_json() for p in sorted(peers, key=lambda p: p.member_id)]}
