"""The one held handshake initiation: real carriers, real TLS streams, real UDP sockets on loopback.

A WireGuard device sends a handshake initiation as soon as a peer is configured, before the peer's stream
is open. The link keeps the newest one (one per peer): the dialer sends it first on the peer's stream, the
acceptor when the peer's first datagram is not an initiation (two crossing initiations would both fail),
within the bound; anything else with no stream is dropped and counted as before, and a flood of datagrams
to a peer whose stream never opens holds one datagram, never more. Counts, not
times: the bound is crossed by moving the node's clock. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sidecar.transport.link import INITIATION_BYTES, INITIATION_HEADER
from tests.component.transportkit import Node, Pair, Relay, close_relayed, make_node, until

HIGH_LABEL, LOW_LABEL = "10.9.0.3", "10.9.0.2"


def initiation(n: int) -> bytes:
    """A datagram shaped like WireGuard's handshake initiation (type 1, 148 bytes), numbered ``n``."""
    body = n.to_bytes(4, "big") * ((INITIATION_BYTES - len(INITIATION_HEADER)) // 4)
    return INITIATION_HEADER + body


class Clock:
    """The nodes' monotonic clock: the loop's, plus a skew the test moves forward."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return asyncio.get_running_loop().time() + self.skew


class HoldPair(Pair):
    def __init__(self, low: Node, high: Node, relay: Relay, clock: Clock) -> None:
        super().__init__(low, high)
        self.relay, self.clock = relay, clock

    async def only_low(self) -> None:
        """The dialer knows the peer, the acceptor not yet: every dial is refused (``not_member``)."""
        self.low.endpoints = await self.low.carrier.update(
            self.low.local(), {self.high.member: self.high.as_peer(HIGH_LABEL)}
        )
        await until(lambda: self.low.count("attestmesh_transport_dial_failures_total") >= 1, what="a refusal")

    def held(self, node: Node, peer: str, outcome: str) -> float:
        return node.count("attestmesh_transport_handshakes_held_total", peer=peer, outcome=outcome)

    def no_stream(self, node: Node, peer: str) -> float:
        return node.count("attestmesh_transport_drops_total", peer=peer, reason="no_stream")


@pytest.fixture
async def pair() -> AsyncIterator[HoldPair]:
    relay, clock = Relay(), Clock()
    relay_port = await relay.start()
    low = await make_node("low", b"\x01" * 32, lambda endpoint: ("127.0.0.1", relay_port), clock)
    high = await make_node("high", b"\x02" * 32, lambda endpoint: ("127.0.0.1", 1), clock)
    relay.target = high.carrier.listening_port or 0
    p = HoldPair(low, high, relay, clock)
    try:
        yield p
    finally:
        await close_relayed(low, high, relay)


async def test_the_dialers_first_initiation_is_the_streams_first_datagram(pair: HoldPair) -> None:
    await pair.only_low()
    first = initiation(1)
    pair.low.device.send_to(pair.low.endpoints[pair.high.member], first)
    pair.low.device.send_to(pair.low.endpoints[pair.high.member], b"not a handshake")
    await until(lambda: pair.held(pair.low, HIGH_LABEL, "held") == 1, what="the initiation held")
    await until(lambda: pair.no_stream(pair.low, HIGH_LABEL) == 1, what="the other datagram dropped")
    assert pair.low.carrier.links[pair.high.member].held_bytes == INITIATION_BYTES

    await pair.connect()
    await pair.crosses(b"after")
    from_low = pair.high.carrier.links[pair.low.member].bridge.port
    assert pair.high.device.received == [(first, from_low), (b"after->", from_low)]  # once, and first
    assert pair.held(pair.low, HIGH_LABEL, "released") == 1
    assert pair.held(pair.low, HIGH_LABEL, "expired") == pair.held(pair.low, HIGH_LABEL, "superseded") == 0
    assert pair.no_stream(pair.low, HIGH_LABEL) == 1  # the datagram that was not a handshake: still a drop
    assert pair.low.carrier.links[pair.high.member].held_bytes == 0


async def test_the_acceptor_sends_its_initiation_when_the_peer_speaks_first_with_data(pair: HoldPair) -> None:
    pair.high.endpoints = await pair.high.carrier.update(
        pair.high.local(), {pair.low.member: pair.low.as_peer(LOW_LABEL)}
    )
    first = initiation(2)
    pair.high.device.send_to(pair.high.endpoints[pair.low.member], first)
    await until(lambda: pair.held(pair.high, LOW_LABEL, "held") == 1, what="the initiation held")

    await pair.connect()
    assert pair.held(pair.high, LOW_LABEL, "released") == 0  # the dialer's first datagram decides
    pair.low.device.send_to(pair.low.endpoints[pair.high.member], b"data")  # it has a session: this restarted
    from_high = pair.low.carrier.links[pair.high.member].bridge.port
    await until(lambda: pair.low.device.received == [(first, from_high)], what="the held initiation")
    assert [data for data, _ in pair.high.device.received] == [b"data"]
    assert pair.held(pair.high, LOW_LABEL, "released") == 1
    assert pair.no_stream(pair.high, LOW_LABEL) == 0


async def test_crossing_initiations_only_the_dialers_is_sent(pair: HoldPair) -> None:
    """A cold bring-up: both devices initiated before the stream opened. Two crossing initiations both
    fail in WireGuard, so the acceptor drops its own when the dialer's arrives."""
    relay_port, pair.relay.target = pair.relay.target, 1  # the route refuses until both are held
    await pair.only_low()
    pair.high.endpoints = await pair.high.carrier.update(
        pair.high.local(), {pair.low.member: pair.low.as_peer(LOW_LABEL)}
    )
    low_first, high_first = initiation(4), initiation(5)
    pair.low.device.send_to(pair.low.endpoints[pair.high.member], low_first)
    pair.high.device.send_to(pair.high.endpoints[pair.low.member], high_first)
    await until(
        lambda: pair.held(pair.low, HIGH_LABEL, "held") == pair.held(pair.high, LOW_LABEL, "held") == 1,
        what="both initiations held",
    )

    pair.relay.target = relay_port
    await until(pair.links_up, what="the pair's stream")
    await pair.crosses(b"after")
    from_low = pair.high.carrier.links[pair.low.member].bridge.port
    from_high = pair.low.carrier.links[pair.high.member].bridge.port
    assert pair.high.device.received == [(low_first, from_low), (b"after->", from_low)]
    assert pair.low.device.received == [(b"after<-", from_high)]  # the acceptor's never crossed it
    assert pair.held(pair.low, HIGH_LABEL, "released") == 1
    assert pair.held(pair.high, LOW_LABEL, "crossed") == 1
    assert pair.held(pair.high, LOW_LABEL, "released") == 0
    assert pair.no_stream(pair.high, LOW_LABEL) == 1


async def test_an_initiation_held_past_the_bound_is_dropped_and_counted(pair: HoldPair) -> None:
    await pair.only_low()
    pair.low.device.send_to(pair.low.endpoints[pair.high.member], initiation(3))
    await until(lambda: pair.held(pair.low, HIGH_LABEL, "held") == 1, what="the initiation held")
    pair.clock.skew += pair.low.carrier.options.handshake_hold + 1.0  # the stream opens after the bound

    await pair.connect()
    await pair.crosses(b"after")
    from_low = pair.high.carrier.links[pair.low.member].bridge.port
    assert pair.high.device.received == [(b"after->", from_low)]  # the stale initiation never left
    assert pair.held(pair.low, HIGH_LABEL, "expired") == 1
    assert pair.held(pair.low, HIGH_LABEL, "released") == 0
    assert pair.no_stream(pair.low, HIGH_LABEL) == 1


async def test_a_flood_to_a_peer_with_no_stream_holds_one_datagram(pair: HoldPair) -> None:
    await pair.only_low()
    link, bridge = pair.low.carrier.links[pair.high.member], pair.low.endpoints[pair.high.member]
    floods = 1000
    for n in range(floods):  # hostile or not, the device's datagrams with nowhere to go
        pair.low.device.send_to(bridge, initiation(n))
        pair.low.device.send_to(bridge, b"\x04" + bytes(63))  # a transport data message
    await until(
        lambda: (
            pair.held(pair.low, HIGH_LABEL, "held") == floods
            and pair.no_stream(pair.low, HIGH_LABEL) == 2 * floods - 1
        ),
        what="every datagram held or dropped",
    )
    assert link.held_bytes == INITIATION_BYTES  # one datagram, whatever the device sent
    assert pair.held(pair.low, HIGH_LABEL, "superseded") == floods - 1

    await pair.connect()
    from_low = pair.high.carrier.links[pair.low.member].bridge.port
    await until(lambda: pair.held(pair.low, HIGH_LABEL, "released") == 1, what="the newest released")
    await pair.crosses(b"after")
    assert pair.high.device.received == [(initiation(floods - 1), from_low), (b"after->", from_low)]
