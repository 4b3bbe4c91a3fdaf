"""The gateway transport with real TLS streams and real UDP sockets on loopback.

Two carriers (two nodes) and, per node, a UDP socket standing where the WireGuard device listens
(tests/component/transportkit.py): datagrams cross over one stream per pair. Hostile clients get the
acceptor's refusals, counted, and never reach a device. A plain relay in between stands for the gateway
here (cutting its connections is the lifetime cap); test_transport_through_gateway.py uses the stand-in.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.core.ids import Address, MemberId, SecretBytes
from sidecar.core.streamwire import FRAME_DATA, Hello, data_frame, encode_hello, keepalive_frame
from tests.component.transportkit import CLUSTER, Node, Pair, Relay, close_relayed, make_node, until


class RelayedPair(Pair):
    def __init__(self, low: Node, high: Node, relay: Relay) -> None:
        super().__init__(low, high)
        self.relay = relay


@pytest.fixture
async def pair() -> AsyncIterator[RelayedPair]:
    relay = Relay()
    relay_port = await relay.start()
    low = await make_node("low", b"\x01" * 32, lambda endpoint: ("127.0.0.1", relay_port))
    high = await make_node(
        "high", b"\x02" * 32, lambda endpoint: ("127.0.0.1", 1)
    )  # the acceptor never dials
    relay.target = high.carrier.listening_port or 0
    p = RelayedPair(low, high, relay)
    try:
        yield p
    finally:
        await close_relayed(low, high, relay)


async def test_one_stream_carries_both_directions_from_stable_bridges(pair: RelayedPair) -> None:
    await pair.connect()
    await pair.crosses(b"first")
    low_link, high_link = pair.low.carrier.links[pair.high.member], pair.high.carrier.links[pair.low.member]
    assert (low_link.role, high_link.role) == ("dialer", "acceptor")
    assert pair.relay.accepted == 1  # one stream for the pair, dialled by the lower member id
    assert low_link.tally.datagrams_sent == 1 and high_link.tally.datagrams_received == 1
    assert pair.low.count("attestmesh_transport_bytes_total", peer="10.9.0.3", direction="sent") == len(
        b"first->"
    )
    assert pair.high.count("attestmesh_transport_up", peer="10.9.0.2") == 1
    view = pair.high.carrier.views()[pair.low.member]
    assert view.up and view.reconnects == 0 and view.datagrams_received == 1


async def test_a_cut_stream_reconnects_at_once_and_the_bridges_stay(pair: RelayedPair) -> None:
    await pair.connect()
    before = dict(pair.low.endpoints), dict(pair.high.endpoints)
    for cut in range(1, 4):
        pair.relay.cut()  # the gateway's lifetime cap
        await until(lambda n=cut: pair.relay.accepted == n + 1 and pair.links_up(), what=f"reconnect {cut}")
        await pair.crosses(f"after cut {cut}".encode())
    assert (dict(pair.low.endpoints), dict(pair.high.endpoints)) == before
    again = await pair.low.carrier.update(pair.low.local(), {pair.high.member: pair.high.as_peer("10.9.0.3")})
    assert again == before[0]  # the device's endpoint for the peer never changes
    assert pair.low.carrier.links[pair.high.member].reconnects == 3
    assert pair.low.count("attestmesh_transport_reconnects_total", peer="10.9.0.3") == 3


async def test_each_stream_that_opens_is_announced_with_its_peer(pair: RelayedPair) -> None:
    """The daemon greets a peer when its stream opens (a heartbeat at once, not at the next tick)."""
    opened_low: list[MemberId] = []
    opened_high: list[MemberId] = []
    pair.low.carrier.on_stream_opened = opened_low.append
    pair.high.carrier.on_stream_opened = opened_high.append
    await pair.connect()
    await until(lambda: opened_low and opened_high, what="both ends announced the stream")
    pair.relay.cut()
    await until(lambda: pair.relay.accepted == 2 and pair.links_up(), what="reconnect")
    await until(lambda: len(opened_low) == 2 and len(opened_high) == 2, what="the new stream announced")
    assert set(opened_low) == {pair.high.member} and set(opened_high) == {pair.low.member}


async def test_datagrams_with_no_stream_are_dropped_and_counted(pair: RelayedPair) -> None:
    pair.low.endpoints = await pair.low.carrier.update(
        pair.low.local(), {pair.high.member: pair.high.as_peer("10.9.0.3")}
    )
    await until(
        lambda: pair.low.count("attestmesh_transport_dial_failures_total") >= 1, what="a refused dial"
    )
    pair.low.device.send_to(pair.low.endpoints[pair.high.member], b"nowhere to go")
    await until(
        lambda: pair.low.count("attestmesh_transport_drops_total", peer="10.9.0.3", reason="no_stream") == 1
    )


async def test_removing_a_peer_closes_its_stream_and_its_series(pair: RelayedPair) -> None:
    await pair.connect()
    assert await pair.high.carrier.update(pair.high.local(), {}) == {}
    await until(lambda: not pair.low.carrier.links[pair.high.member].up, what="the dialer to see the close")
    assert (
        pair.high.metrics.registry.get_sample_value("attestmesh_transport_up", {"peer": "10.9.0.2"}) is None
    )


# --- hostile clients at the acceptor ------------------------------------------------------------------


async def _tls(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    port = node.carrier.listening_port
    assert port is not None
    return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=str(node.route.host))


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        while await asyncio.wait_for(reader.read(4096), 5.0):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    return True


def _hello(node: Node, *, dialer: MemberId, key: SecretBytes, cluster: Address = CLUSTER, age_ms: int = 0,
           nonce: bytes | None = None) -> bytes:  # fmt: skip
    now = int(asyncio.get_running_loop().time() * 1000) + 1_700_000_000_000
    hello = Hello(cluster, dialer, node.member, now - age_ms, nonce or os.urandom(16))
    return encode_hello(hello, key)


Attack = Callable[[Pair], Awaitable[bytes | None]]


async def test_hostile_clients_are_closed_counted_and_never_reach_the_device(pair: RelayedPair) -> None:
    await pair.connect()
    high, low = pair.high, pair.low
    stranger = SecretBytes(Ed25519PrivateKey.generate().private_bytes_raw())
    replayed = _hello(high, dialer=low.member, key=low.seed)
    cases: list[tuple[str, bytes | None]] = [
        ("no_hello", None),
        ("protocol", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("protocol", data_frame(b"\x04" + b"\x00" * 31)),
        ("protocol", bytes([FRAME_DATA]) + (65535).to_bytes(2, "big") + b"\x00" * 65535),  # ~1 MB and more
        ("not_member", _hello(high, dialer=MemberId(b"\x00" * 31 + b"\x07"), key=stranger)),
        ("bad_signature", _hello(high, dialer=low.member, key=stranger)),
        ("wrong_cluster", _hello(high, dialer=low.member, key=low.seed, cluster=Address(b"\xee" * 20))),
        ("stale", _hello(high, dialer=low.member, key=low.seed, age_ms=120_000)),
        ("replayed", replayed),
    ]
    # the replayed hello was first accepted once (as the real dialer would have sent it)
    _, first = await _tls(high)
    first.write(replayed + keepalive_frame())
    await until(lambda: high.carrier.links[low.member].established == 2, what="the first use of the hello")
    for reason, payload in cases:
        before = high.count("attestmesh_transport_streams_refused_total", reason=reason)
        reader, writer = await _tls(high)
        if payload is not None:
            writer.write(payload)
        assert await _closed_by_peer(reader)
        await until(
            lambda r=reason, b=before: (
                high.count("attestmesh_transport_streams_refused_total", reason=r) == b + 1
            ),
            what=f"a refusal counted as {reason}",
        )
        writer.close()
    first.close()
    await until(pair.links_up, what="the real pair to be up again")
    high.device.received.clear()
    await pair.crosses(b"still working")
    assert all(data.startswith(b"still working") for data, _ in high.device.received)


async def test_idle_connections_are_closed_within_the_hello_timeout(pair: RelayedPair) -> None:
    await pair.connect()
    high = pair.high
    port = high.carrier.listening_port
    assert port is not None
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    await until(
        lambda: (
            high.count("attestmesh_transport_streams_refused_total", reason="tls_failed")
            + high.count("attestmesh_transport_streams_refused_total", reason="no_hello")
            == 200
        ),
        within=10.0,
        what="200 idle connections refused",
    )
    for reader, writer in conns:
        assert await _closed_by_peer(reader)
        writer.close()
    await pair.crosses(b"after the idle crowd")


async def test_a_higher_member_dialling_is_refused_as_the_wrong_direction(pair: RelayedPair) -> None:
    await pair.connect()
    low, high = pair.low, pair.high
    reader, writer = await _tls(
        low
    )  # the higher member dials the lower: one stream per pair, the lower dials
    writer.write(_hello(low, dialer=high.member, key=high.seed))
    assert await _closed_by_peer(reader)
    await until(
        lambda: low.count("attestmesh_transport_streams_refused_total", reason="wrong_direction") == 1
    )


async def test_a_client_closing_its_tls_stream_logs_no_asyncio_warning(
    pair: RelayedPair, caplog: pytest.LogCaptureFixture
) -> None:
    """A TLS client that closes (close_notify) before or after its hello is an ordinary event at the
    acceptor: refused and counted, or an ended stream, and quiet. The acceptor's stream protocol must know
    it runs over TLS, else asyncio warns "returning true from eof_received() has no effect when using
    ssl" on every such close: a log line per connection that any stranger can cause."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    await pair.connect()
    high, low = pair.high, pair.low
    _, silent = await _tls(high)  # closes before any hello
    silent.close()
    await silent.wait_closed()
    await until(
        lambda: high.count("attestmesh_transport_streams_refused_total", reason="protocol") == 1,
        what="the silent client refused as it closed",
    )
    reader, member = await _tls(high)  # a member's admitted stream, then closed by the member
    member.write(_hello(high, dialer=low.member, key=low.seed))
    assert await reader.readexactly(3) == keepalive_frame()
    member.close()
    await member.wait_closed()
    await until(pair.links_up, what="the real pair to be up again")
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
