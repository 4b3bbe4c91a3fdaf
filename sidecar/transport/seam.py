"""The transport seam: per peer, which carrier, and which endpoint the WireGuard device gets for it.

Owns ``Transport``. Each reconcile pass hands it the desired peers with their member records; it parses
each peer's registered endpoint (``sidecar.core.endpoint``) and chooses:
- ``udp://ip:port`` (or a bare ``ip:port``): the direct transport; the device gets ``ip:port``;
- ``tls://…`` on a node that runs the gateway transport: the gateway carrier; the device gets the peer's
  loopback bridge, which stays the same across reconnects;
- ``tls://…`` on a node without the gateway transport (it registered a direct endpoint): no endpoint;
  the gateway peer reaches this node over UDP (outbound UDP works from a CVM) and WireGuard learns the
  endpoint from its handshake;
- an endpoint that does not parse: no endpoint, warned once per distinct value.
It also answers for the per-peer transport state (``views``, ``summary`` for ``/healthz``): a gateway
peer is up while its stream is, a direct peer while its last handshake is recent.

Must not: touch the device or the chain, or block (the carrier's dials run in their own tasks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import structlog

from sidecar.core.endpoint import EndpointError, GatewayEndpoint, UdpEndpoint, parse_endpoint
from sidecar.core.ids import MemberId
from sidecar.core.model import MemberRecord
from sidecar.core.peerplan import RECENT_HANDSHAKE_SECONDS, ActualPeer, DesiredPeer
from sidecar.observability import Metrics
from sidecar.transport.gateway import GatewayCarrier
from sidecar.transport.link import GatewayPeer, LocalMember, PeerTransport

log = structlog.get_logger("sidecar.transport")


def _hostport(endpoint: UdpEndpoint) -> str:
    return str(endpoint).removeprefix("udp://")


class Transport:
    """The carriers of one node: always direct, and the gateway carrier when the node runs it."""

    def __init__(
        self, metrics: Metrics, *, gateway: GatewayCarrier | None = None, wall: Callable[[], float]
    ) -> None:
        self.metrics = metrics
        self.gateway = gateway
        self.wall = wall
        self._direct: dict[MemberId, str] = {}  # member → its mesh IP label, for direct peers
        self._handshakes: dict[MemberId, float | None] = {}
        self._bad: set[str] = set()

    async def route(
        self, me: LocalMember, peers: Sequence[tuple[DesiredPeer, MemberRecord]]
    ) -> list[DesiredPeer]:
        """The desired peers with the endpoint the device should hold for each."""
        routed: dict[MemberId, str | None] = {}
        via_gateway: dict[MemberId, GatewayPeer] = {}
        direct: dict[MemberId, str] = {}
        for peer, record in peers:
            endpoint = self._parse(record.endpoint)
            if isinstance(endpoint, UdpEndpoint):
                routed[peer.member_id] = _hostport(endpoint)
                direct[peer.member_id] = str(record.mesh_ip)
            elif isinstance(endpoint, GatewayEndpoint) and self.gateway is not None:
                via_gateway[peer.member_id] = GatewayPeer(
                    peer.member_id, str(record.mesh_ip), endpoint, record.identity_pub
                )
            else:
                routed[peer.member_id] = None
        if self.gateway is not None:
            routed.update(await self.gateway.update(me, via_gateway))
        self._direct = direct
        return [dataclasses.replace(p, endpoint=routed.get(p.member_id)) for p, _ in peers]

    def _parse(self, text: str) -> UdpEndpoint | GatewayEndpoint | None:
        if not text:
            return None
        try:
            return parse_endpoint(text)
        except EndpointError as exc:
            if text not in self._bad:
                self._bad.add(text)
                log.warning("transport.endpoint_rejected", endpoint=text[:300], reason=str(exc))
            return None

    def observe(self, actual: Sequence[ActualPeer], keys: dict[bytes, MemberId]) -> None:
        """Remember the device's handshake times (a direct peer is up while its handshake is recent)."""
        self._handshakes = {
            keys[p.public_key.raw]: p.last_handshake for p in actual if p.public_key.raw in keys
        }

    def views(self) -> dict[MemberId, PeerTransport]:
        now = self.wall()
        views = {
            member: PeerTransport(
                member_id=member,
                transport="direct",
                up=(hs := self._handshakes.get(member)) is not None and now - hs < RECENT_HANDSHAKE_SECONDS,
            )
            for member in self._direct
        }
        if self.gateway is not None:
            views.update(self.gateway.views())
        return views

    def summary(self) -> dict[str, dict[str, int]]:
        """``/healthz`` ``peers.transport``: peer counts by transport and state."""
        counts: dict[str, dict[str, int]] = {}
        for view in self.views().values():
            by_state = counts.setdefault(view.transport, {"up": 0, "down": 0})
            by_state["up" if view.up else "down"] += 1
        return counts

    async def close(self) -> None:
        if self.gateway is not None:
            await self.gateway.close()
