"""sidecar.transport.seam: the carrier per peer and the endpoint the device gets for it (no gateway carrier).

A node on the direct transport gives the device the peer's ``ip:port`` whatever form the record takes, no
endpoint for a gateway peer (that peer reaches this node over UDP and WireGuard learns the endpoint), and
no endpoint for a record that does not parse (warned once). Direct peers are up while their handshake is
recent. The gateway carrier itself is exercised with real sockets in tests/component.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import structlog

from sidecar.core.endpoint import gateway_endpoint
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.model import MemberRecord
from sidecar.core.peerplan import ActualPeer, DesiredPeer, WgKey
from sidecar.observability import Metrics
from sidecar.transport.link import LocalMember
from sidecar.transport.seam import Transport

NOW = 1_800_000_000.0
ME = LocalMember(MemberId(b"\x01" * 32), Address(b"\xc1" * 20), SecretBytes(b"\x00" * 32))


def _peer(index: int, endpoint: str) -> tuple[DesiredPeer, MemberRecord]:
    member, key = MemberId(bytes([index]) * 32), WgKey(bytes([index + 100]) * 32)
    mesh_ip = IPv4Address(f"10.9.0.{index}")
    record = MemberRecord(
        member, Address(bytes([index]) * 20), Address(b"\x05" * 20), Bytes32(b"\x06" * 32), Bytes32(key.raw),
        Bytes32(b"\x07" * 32), endpoint, mesh_ip, 1,
    )  # fmt: skip
    desired = DesiredPeer(member, key, endpoint or None, (IPv4Network(f"{mesh_ip}/32"),))
    return desired, record


async def test_direct_node_routes_each_peer_by_its_registered_endpoint() -> None:
    transport = Transport(Metrics(), wall=lambda: NOW)
    gateway_route = str(gateway_endpoint(Address(b"\x04" * 20), "gw.test", 51900))
    peers = [
        _peer(2, "udp://10.213.0.12:51820"),
        _peer(3, "10.213.0.13:51820"),
        _peer(4, gateway_route),
        _peer(5, "udp://[2001:db8::5]:51820"),
        _peer(6, ""),
    ]
    routed = {p.member_id.raw[0]: p.endpoint for p in await transport.route(ME, peers)}
    assert routed == {
        2: "10.213.0.12:51820",
        3: "10.213.0.13:51820",
        4: None,
        5: "[2001:db8::5]:51820",
        6: None,
    }


async def test_an_unparsable_endpoint_gets_no_endpoint_and_one_warning() -> None:
    transport = Transport(Metrics(), wall=lambda: NOW)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            (peer,) = await transport.route(ME, [_peer(2, "wg.example.com:51820")])
            assert peer.endpoint is None
    warnings = [entry for entry in logs if entry["event"] == "transport.endpoint_rejected"]
    assert len(warnings) == 1 and "does not resolve names" in warnings[0]["reason"]


async def test_direct_peers_are_up_while_their_handshake_is_recent() -> None:
    transport = Transport(Metrics(), wall=lambda: NOW)
    peers = [_peer(2, "10.213.0.12:51820"), _peer(3, "10.213.0.13:51820"), _peer(4, "10.213.0.14:51820")]
    desired = await transport.route(ME, peers)
    keys = {p.public_key.raw: p.member_id for p in desired}
    handshakes = {2: NOW - 10, 3: NOW - 600, 4: None}
    transport.observe(
        [
            ActualPeer(p.public_key, p.endpoint, p.allowed_ips, 25, handshakes[p.member_id.raw[0]])
            for p in desired
        ],
        keys,
    )
    views = transport.views()
    assert {m.raw[0]: v.up for m, v in views.items()} == {2: True, 3: False, 4: False}
    assert transport.summary() == {"direct": {"up": 1, "down": 2}}
    assert views[MemberId(b"\x02" * 32)].to_json() == {"kind": "direct", "up": True}
