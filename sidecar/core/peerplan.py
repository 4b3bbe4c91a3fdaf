"""Peer planning: the difference between the WireGuard peers the chain wants and the peers the device has.

Owns the peer value types (``DesiredPeer``, ``ActualPeer``), ``PeerPlan`` (add / remove / update, and
"no change" as an explicit result) and ``plan_peers``. Level-triggered: every pass plans from the whole
desired and actual state; applying the plan to the actual state yields the desired state, and planning
again yields an empty plan. Must not do I/O: adapters read the device and apply plans.

Endpoint rule (learnt the hard way elsewhere): WireGuard roams, so a peer's endpoint on the device may be
one that a recent handshake taught it. Such an endpoint is kept unless the chain's endpoint itself changed
since the previous pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from sidecar.core.ids import MemberId

WG_KEY_BYTES = 32
PERSISTENT_KEEPALIVE = 25
#: A handshake younger than this means the device's endpoint for the peer is known to work.
RECENT_HANDSHAKE_SECONDS = 180.0


@dataclass(frozen=True, slots=True, order=True)
class WgKey:
    """A WireGuard (X25519) public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != WG_KEY_BYTES:
            raise ValueError(f"WireGuard key must be {WG_KEY_BYTES} bytes, got {len(self.raw)}")

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return f"WgKey({self.raw.hex()[:16]}…)"


@dataclass(frozen=True, slots=True)
class DesiredPeer:
    """A peer as the chain snapshot wants it."""

    member_id: MemberId
    public_key: WgKey
    endpoint: str | None  # "host:port"; None when the member has not published one
    allowed_ips: tuple[IPv4Network, ...]
    keepalive: int = PERSISTENT_KEEPALIVE


@dataclass(frozen=True, slots=True)
class ActualPeer:
    """A peer as the device reports it."""

    public_key: WgKey
    endpoint: str | None
    allowed_ips: tuple[IPv4Network, ...]
    keepalive: int
    last_handshake: float | None = None  # unix seconds; None when never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True, slots=True)
class PeerPlan:
    """What to change on the device. ``update`` carries the full desired peer (endpoint may be kept)."""

    add: tuple[DesiredPeer, ...] = ()
    remove: tuple[WgKey, ...] = ()
    update: tuple[DesiredPeer, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.update)

    def describe(self) -> dict[str, int]:
        return {"added": len(self.add), "removed": len(self.remove), "updated": len(self.update)}


def _recent(peer: ActualPeer, now: float) -> bool:
    return peer.last_handshake is not None and now - peer.last_handshake < RECENT_HANDSHAKE_SECONDS


def effective_endpoint(
    want: DesiredPeer, have: ActualPeer, previous: DesiredPeer | None, now: float
) -> str | None:
    """The endpoint the device should hold for this peer after the pass."""
    chain_changed = previous is None or previous.endpoint != want.endpoint
    if want.endpoint is None or (not chain_changed and _recent(have, now)):
        return have.endpoint
    return want.endpoint


def plan_peers(
    desired: Iterable[DesiredPeer],
    actual: Iterable[ActualPeer],
    previous: Mapping[WgKey, DesiredPeer] | None = None,
    now: float = 0.0,
) -> PeerPlan:
    """Plan the device changes that turn ``actual`` into ``desired``.

    ``previous`` is the desired state of the last applied pass (by key), which tells whether the chain's
    endpoint changed; ``now`` (unix seconds) judges whether a handshake is recent.
    """
    want = {p.public_key: p for p in desired}
    have = {p.public_key: p for p in actual}
    prev = previous or {}
    add = tuple(p for k, p in sorted(want.items()) if k not in have)
    remove = tuple(k for k in sorted(have) if k not in want)
    update = []
    for key, w in sorted(want.items()):
        h = have.get(key)
        if h is None:
            continue
        endpoint = effective_endpoint(w, h, prev.get(key), now)
        if (
            endpoint != h.endpoint
            or frozenset(w.allowed_ips) != frozenset(h.allowed_ips)
            or w.keepalive != h.keepalive
        ):
            update.append(w if endpoint == w.endpoint else _with_endpoint(w, endpoint))
    return PeerPlan(add=add, remove=remove, update=tuple(update))


def _with_endpoint(peer: DesiredPeer, endpoint: str | None) -> DesiredPeer:
    return DesiredPeer(peer.member_id, peer.public_key, endpoint, peer.allowed_ips, peer.keepalive)
