"""The kernel backend's translations, without a kernel module: plans into pyroute2 peer requests, and
WireGuard generic-netlink dumps into ``DeviceState``.

The messages are encoded and decoded by pyroute2's own ``wgmsg`` (the request side through the same
``_wg_set_peer`` that ``AsyncWireGuard.set`` uses), so the bytes are the ones the kernel would see.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any

import pytest
from pyroute2.netlink.generic.wireguard import AsyncWireGuard, wgmsg

from sidecar.core.ids import MemberId
from sidecar.core.peerplan import ActualPeer, DesiredPeer, PeerPlan, WgKey
from sidecar.wg.device import WgError
from sidecar.wg.kernel import device_state, peer_requests

K1, K2, K3 = (WgKey(bytes([i]) * 32) for i in (0x11, 0x22, 0x33))
DEVICE_PUB = WgKey(b"\x55" * 32)


def b64(key: WgKey) -> str:
    return base64.b64encode(key.raw).decode()


def peer(key: WgKey, endpoint: str | None, *ips: str, keepalive: int = 25) -> DesiredPeer:
    return DesiredPeer(MemberId(key.raw), key, endpoint, tuple(IPv4Network(i) for i in ips), keepalive)


@pytest.fixture
def encoder() -> Iterator[AsyncWireGuard]:
    sock = AsyncWireGuard()  # no socket is opened until a request is sent
    try:
        yield sock
    finally:
        sock.close()


def device_message(
    encoder: AsyncWireGuard, peer_request: dict[str, Any] | None, extra: list[list[Any]] | None = None
) -> wgmsg:
    """Encode a GET_DEVICE-shaped message with one peer, then decode it as a fresh reply."""
    msg = wgmsg()
    msg["cmd"] = 0
    msg["version"] = 1
    msg["header"]["type"] = 0x20
    msg["attrs"].append(["WGDEVICE_A_IFNAME", "attestmesh0"])
    msg["attrs"].append(["WGDEVICE_A_PUBLIC_KEY", b64(DEVICE_PUB)])
    msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", 51820])
    if peer_request is not None:
        encoder._wg_set_peer(msg, peer_request)
        msg["attrs"][-1][1][0]["attrs"].extend(extra or [])
    msg.encode()
    reply = wgmsg(msg.data)
    reply.decode()
    return reply


def test_peer_requests_remove_first_then_add_and_update() -> None:
    plan = PeerPlan(
        add=(peer(K2, "10.216.0.12:51820", "10.16.0.2/32"),),
        remove=(K3,),
        update=(peer(K1, None, "10.16.1.0/24", "10.16.0.1/32", keepalive=0),),
    )
    assert peer_requests(plan) == [
        {"public_key": b64(K3), "remove": True},
        {
            "public_key": b64(K2),
            "persistent_keepalive": 25,
            "replace_allowed_ips": True,
            "allowed_ips": ["10.16.0.2/32"],
            "endpoint_addr": "10.216.0.12",
            "endpoint_port": 51820,
        },
        {
            "public_key": b64(K1),
            "persistent_keepalive": 0,
            "replace_allowed_ips": True,
            "allowed_ips": ["10.16.0.1/32", "10.16.1.0/24"],
        },
    ]
    assert peer_requests(PeerPlan()) == []


def test_peer_requests_refuse_unusable_endpoints() -> None:
    with pytest.raises(WgError, match="endpoint"):
        peer_requests(PeerPlan(add=(peer(K1, "host.example:51820", "10.16.0.1/32"),)))


def test_requests_round_trip_through_pyroute2_messages(encoder: AsyncWireGuard) -> None:
    desired = [
        peer(K1, "10.216.0.11:51820", "10.16.0.1/32"),
        peer(K2, "[2001:db8::2]:4000", "10.16.0.2/32", keepalive=0),
        peer(K3, None, "10.16.0.3/32", "10.16.3.0/24"),
    ]
    handshake = ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1_700_000_000, "tv_nsec": 500_000_000}]
    counters = [["WGPEER_A_RX_BYTES", 180], ["WGPEER_A_TX_BYTES", 92]]
    messages = [
        device_message(encoder, request, [handshake, *counters] if i == 0 else None)
        for i, request in enumerate(peer_requests(PeerPlan(add=tuple(desired))))
    ]
    state = device_state(messages)
    assert state.public_key == DEVICE_PUB
    assert state.listen_port == 51820
    assert state.peers == (
        ActualPeer(K1, "10.216.0.11:51820", (IPv4Network("10.16.0.1/32"),), 25, 1_700_000_000.5, 180, 92),
        ActualPeer(K2, "[2001:db8::2]:4000", (IPv4Network("10.16.0.2/32"),), 0),
        ActualPeer(K3, None, (IPv4Network("10.16.0.3/32"), IPv4Network("10.16.3.0/24")), 25),
    )


def test_a_peer_continued_in_the_next_message_is_merged(encoder: AsyncWireGuard) -> None:
    first = {"public_key": b64(K1), "persistent_keepalive": 25, "allowed_ips": ["10.16.0.1/32"]}
    rest = {"public_key": b64(K1), "allowed_ips": ["10.16.1.0/24", "fd00::/64"]}
    state = device_state([device_message(encoder, first), device_message(encoder, rest)])
    assert state.peers == (
        ActualPeer(K1, None, (IPv4Network("10.16.0.1/32"), IPv4Network("10.16.1.0/24")), 25),
    )


def test_device_without_identity_or_peers() -> None:
    msg = wgmsg()
    msg["cmd"] = 0
    msg["version"] = 1
    msg["attrs"].append(["WGDEVICE_A_IFNAME", "attestmesh0"])
    msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", 0])
    msg.encode()
    reply = wgmsg(msg.data)
    reply.decode()
    assert device_state([reply]).public_key is None
    assert device_state([reply]).peers == ()
