"""The gateway transport through the devnet's dstack-gateway stand-in (real TLS passthrough, SNI routing).

The dialer dials the stand-in with the acceptor's route name as SNI; the stand-in routes
``<app id>-<port>s`` to the acceptor's listener. What production does to a mesh is played here: a route
not yet known (a booting CVM: refused, retried, then up without a restart) and the connection lifetime cap
(every stream closed on schedule; the dialer reconnects at once, the device's endpoints never change).
Only 127.0.0.1 is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devnet.gateway.labca import LabCa
from tests.component.gatewaykit import GatewayLab, route, running_gateway, write_routes
from tests.component.transportkit import Node, Pair, make_node, until


async def _pair(gateway: GatewayLab) -> Pair:
    low = await make_node("low", b"\x01" * 32, lambda endpoint: ("127.0.0.1", gateway.port))
    high = await make_node("high", b"\x02" * 32, lambda endpoint: ("127.0.0.1", 1))  # it never dials
    return Pair(low, high)


def _instance(node: Node) -> dict[str, dict[str, object]]:
    port = node.carrier.listening_port
    assert port is not None
    return {"1" * 40: route(node.app.hex, [port])}


@pytest.fixture
async def through(tmp_path: Path, ca: LabCa) -> AsyncIterator[tuple[GatewayLab, Pair]]:
    async with running_gateway(tmp_path, ca, {}, lifetime=1.5) as gateway:
        pair = await _pair(gateway)
        try:
            yield gateway, pair
        finally:
            for node in (pair.low, pair.high):
                await node.carrier.close()
                assert node.device.transport is not None
                node.device.transport.close()


async def test_a_booting_peer_is_refused_then_reached_without_a_restart(
    through: tuple[GatewayLab, Pair],
) -> None:
    gateway, pair = through
    low, high = pair.low, pair.high
    low.endpoints = await low.carrier.update(low.local(), {high.member: high.as_peer("10.9.0.3")})
    high.endpoints = await high.carrier.update(high.local(), {low.member: low.as_peer("10.9.0.2")})
    # The gateway counts a refusal before the dialler has seen its connection end: wait for both.
    await until(
        lambda: (
            gateway.outcome("passthrough", "unknown_route") >= 2
            and low.count("attestmesh_transport_dial_failures_total") >= 2
        ),
        what="dials refused by the gateway, and counted by the dialler",
    )
    assert not pair.links_up()
    write_routes(gateway.routes_file, _instance(high))  # the gateway learns the CVM's route
    await until(pair.links_up, within=3.0, what="the pair up once the route is known")
    await pair.crosses(b"through the gateway")
    assert gateway.active("passthrough", high.app.hex) == 1  # one stream for the pair


async def test_the_lifetime_cap_closes_streams_and_the_pair_reconnects_at_once(
    through: tuple[GatewayLab, Pair],
) -> None:
    gateway, pair = through
    write_routes(gateway.routes_file, _instance(pair.high))
    await pair.connect()
    endpoints = dict(pair.low.endpoints), dict(pair.high.endpoints)
    link = pair.low.carrier.links[pair.high.member]
    await until(
        lambda: gateway.closed("passthrough", "lifetime") >= 2, within=6.0, what="two lifetime closes"
    )
    await until(lambda: link.reconnects >= 2 and pair.links_up(), what="the reconnects")
    await pair.crosses(b"after the caps")
    current = link.stream
    assert current is not None and current.age < 1.5  # a fresh stream: the capped ones were replaced
    assert (dict(pair.low.endpoints), dict(pair.high.endpoints)) == endpoints
    again = await pair.low.carrier.update(pair.low.local(), {pair.high.member: pair.high.as_peer("10.9.0.3")})
    assert again == endpoints[0]  # the device's endpoint for the peer did not change
    assert gateway.active("passthrough", pair.high.app.hex) <= 1
