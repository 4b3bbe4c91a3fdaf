"""What the gateway transport's component tests share: nodes made of a real ``GatewayCarrier`` and a UDP
socket standing where the WireGuard device listens, a pair of them, and a plain TCP relay.

A "device" sends to its bridge for the peer; the datagram must arrive at the peer's "device", from the
peer's bridge for it. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sidecar.core.endpoint import GatewayEndpoint, gateway_endpoint
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.observability import Metrics
from sidecar.transport.gateway import GatewayCarrier
from sidecar.transport.link import GatewayOptions, GatewayPeer, LocalMember

CLUSTER = Address(b"\xc1" * 20)
DOMAIN = "amlab.gw.test"  # the gateway stand-in's domain in tests/component/gatewaykit.py
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
        """The node's registered route; its port is the listener's, so the real gateway routes to it."""
        return gateway_endpoint(self.app, DOMAIN, self.carrier.listening_port or 51900)

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

    def __init__(self, low: Node, high: Node) -> None:
        self.low, self.high = low, high

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


async def make_node(
    name: str,
    member: bytes,
    dial: Callable[[GatewayEndpoint], tuple[str, int]],
    monotonic: Callable[[], float] | None = None,
) -> Node:
    device, metrics = Device(), Metrics()
    wg_port = await device.open()
    loop = asyncio.get_running_loop()
    carrier = GatewayCarrier(
        GatewayOptions(port=0, wg_port=wg_port, **FAST),
        metrics,
        wall_ms=lambda: int(loop.time() * 1000) + 1_700_000_000_000,
        monotonic=monotonic or loop.time,
        dial_target=dial,
    )
    await carrier.start()
    app = Address(os.urandom(20))
    return Node(name, MemberId(member), app, Ed25519PrivateKey.generate(), device, carrier, metrics)


async def close_relayed(low: Node, high: Node, relay: Relay) -> None:
    """Tear down two nodes joined through a relay: their carriers, the relay, then their devices' sockets."""
    await low.carrier.close()
    await high.carrier.close()
    await relay.close()
    for node in (low, high):
        assert node.device.transport is not None
        node.device.transport.close()
