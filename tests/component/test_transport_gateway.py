"""The gateway transport with real TLS streams and real UDP sockets on loopback.

Two carriers (two nodes) and, per node, a UDP socket standing where the WireGuard device listens: what a
"device" sends to its bridge for the peer must arrive at the peer's "device", from the peer's bridge for
it, over one stream per pair. Hostile clients get the acceptor's refusals, counted, and never reach a
device. A relay in between stands for the gateway: cutting its connections is the lifetime cap.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sidecar.core.endpoint import GatewayEndpoint, gateway_endpoint
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.streamwire import FRAME_DATA, Hello, data_frame, encode_hello, keepalive_frame
from sidecar.observability import Metrics
from sidecar.transport.gateway import GatewayCarrier, GatewayOptions, GatewayPeer, LocalMember

CLUSTER = Address(b"\xc1" * 20)
DOMAIN = "gw.test"
FAST = {"hello_timeout": 0.5, "keepalive": 0.3, "idle_timeout": 2.0, "backoff_min": 0.05, "backoff_max": 0.2}


async def until(condition: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Device(asyncio.DatagramProtocol):
    """A UDP socket where the WireGuard device would listen: records what arrives, and from where."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    async def open(self) -> int:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.received.append((data, int(str(addr[1]))))

    def send_to(self, endpoint: str, data: bytes) -> None:
        host, port = endpoint.rsplit(":", 1)
        assert self.transport is not None
        self.transport.sendto(data, (host, int(port)))


@dataclass
class Node:
    name: str
    member: MemberId
    app: Address
    key: Ed25519PrivateKey
    device: Device
    carrier: GatewayCarrier
    metrics: Metrics
    endpoints: dict[MemberId, str] = field(default_factory=dict)

    @property
    def pub(self) -> Bytes32:
        return Bytes32(self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def seed(self) -> SecretBytes:
        return SecretBytes(self.key.private_bytes_raw())

    @property
    def route(self) -> GatewayEndpoint:
        return gateway_endpoint(self.app, DOMAIN, 51900)

    def local(self) -> LocalMember:
        return LocalMember(self.member, CLUSTER, self.seed)

    def as_peer(self, label: str) -> GatewayPeer:
        return GatewayPeer(self.member, label, self.route, self.pub)

    def count(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class Relay:
    """A TCP relay standing for the gateway's passthrough route; ``cut`` closes every relayed connection."""

    def __init__(self) -> None:
        self.target = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.accepted = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


class Pair:
    """Two nodes; ``low`` has the lower member id, so it dials."""

    def __init__(self, low: Node, high: Node, relay: Relay) -> None:
        self.low, self.high, self.relay = low, high, relay

    async def connect(self) -> None:
        self.low.endpoints = await self.low.carrier.update(
            self.low.local(), {self.high.member: self.high.as_peer("10.9.0.3")}
        )
        self.high.endpoints = await self.high.carrier.update(
            self.high.local(), {self.low.member: self.low.as_peer("10.9.0.2")}
        )
        await until(self.links_up, what="the pair's stream")

    def links_up(self) -> bool:
        return self.low.carrier.links[self.high.member].up and self.high.carrier.links[self.low.member].up

    async def crosses(self, payload: bytes) -> None:
        """A datagram each way arrives at the other device, from the bridge that stands for the sender."""
        low_to_high, high_to_low = payload + b"->", payload + b"<-"
        self.low.device.send_to(self.low.endpoints[self.high.member], low_to_high)
        self.high.device.send_to(self.high.endpoints[self.low.member], high_to_low)
        high_bridge = self.high.carrier.links[self.low.member].bridge.port
        low_bridge = self.low.carrier.links[self.high.member].bridge.port
        await until(lambda: (low_to_high, high_bridge) in self.high.device.received, what="low → high")
        await until(lambda: (high_to_low, low_bridge) in self.low.device.received, what="high → low")


async def _node(name: str, member: bytes, dial: Callable[[GatewayEndpoint], tuple[str, int]]) -> Node:
    device, metrics = Device(), Metrics()
    wg_port = await device.open()
    loop = asyncio.get_running_loop()
    carrier = GatewayCarrier(
        GatewayOptions(port=0, wg_port=wg_port, **FAST),
        metrics,
        wall_ms=lambda: int(loop.time() * 1000) + 1_700_000_000_000,
        monotonic=loop.time,
        dial_target=dial,
    )
    await carrier.start()
    app = Address(os.urandom(20))
    return Node(name, MemberId(member), app, Ed25519PrivateKey.generate(), device, carrier, metrics)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    relay = Relay()
    relay_port = await relay.start()
    low = await _node("low", b"\x01" * 32, lambda endpoint: ("127.0.0.1", relay_port))
    high = await _node("high", b"\x02" * 32, lambda endpoint: ("127.0.0.1", 1))  # the acceptor never dials
    relay.target = high.carrier.listening_port or 0
    p = Pair(low, high, relay)
    try:
        yield p
    finally:
        await low.carrier.close()
        await high.carrier.close()
        await relay.close()
        for node in (low, high):
            assert node.device.transport is not None
            node.device.transport.close()


async def test_one_stream_carries_both_directions_from_stable_bridges(pair: Pair) -> None:
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


async def test_a_cut_stream_reconnects_at_once_and_the_bridges_stay(pair: Pair) -> None:
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


async def test_datagrams_with_no_stream_are_dropped_and_counted(pair: Pair) -> None:
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


async def test_removing_a_peer_closes_its_stream_and_its_series(pair: Pair) -> None:
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


async def test_hostile_clients_are_closed_counted_and_never_reach_the_device(pair: Pair) -> None:
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


async def test_idle_connections_are_closed_within_the_hello_timeout(pair: Pair) -> None:
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


async def test_a_higher_member_dialling_is_refused_as_the_wrong_direction(pair: Pair) -> None:
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
