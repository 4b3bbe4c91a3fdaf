"""Hostile clients at a node's gateway port, through the gateway (issue 11, acceptance 4).

From the root namespace (over the lab's root veth; the only address connected to is the gateway's lab
address, port 443) the test opens TLS connections with the SNI of a node's transport route
``<app id hex>-51900s.<lab gateway domain>``: the gateway relays them untouched (passthrough) to the node's
transport listener, whose self-signed certificate is accepted as any dialer accepts it. Each hostile
client is closed by the node and counted under its reason in
``attestmesh_transport_streams_refused_total`` (read from the node's ``/metrics``); the pairs keep
working and no device changes.

An idle client has to send a TLS ClientHello at least: the gateway needs its SNI to route it, and closes
a connection that sends nothing itself (``handshake_timeout``) without ever reaching the node. So the 200
idle connections here complete the TLS handshake and then stay silent; the node closes them as
``no_hello``. A member's hello cannot be captured (it travels inside TLS); the replayed hello is built
with a real member's identity key, which the devnet's public KMS seed derives (as an attacker could on a
devnet, never on dstack), and sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from devnet.boot import GATEWAY_INGRESS_PORT
from devnet.labroutes import bare_hex
from sidecar.core.ids import Address, MemberId, SecretBytes
from sidecar.core.streamwire import (
    FRAME_DATA,
    NONCE_BYTES,
    Hello,
    close_frame,
    encode_hello,
    keepalive_frame,
)
from tests.e2e.gatewaykit import (
    ALL_UP,
    device_configs,
    gateway_samples,
    refusals,
    sample,
    samples,
    wait_transport,
)
from tests.e2e.lab import LabCli, lab_state, log_entries, wait_until
from tests.e2e.mesh import Node, identity_key, member_id, nodes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CLOSED_WITHIN_S = 5.0 + 2.0  # the node's hello timeout (TLS handshake and hello together), and slack
IDLE_CONNECTIONS = 200
REFUSED = close_frame("refused")
LOUD = ("warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class Route:
    """A node's transport route at the gateway: the gateway's lab address and the SNI name."""

    address: str
    sni: str


def _any_certificate() -> ssl.SSLContext:
    """As the transport's dialers: any certificate (the node's is self-signed and proves nothing)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


async def _tls(route: Route) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection through the gateway to the node's transport listener."""
    return await asyncio.wait_for(
        asyncio.open_connection(route.address, 443, ssl=_any_certificate(), server_hostname=route.sni), 10
    )


async def _closed(reader: asyncio.StreamReader, started: float) -> tuple[bytes, float]:
    """Read until the far end closes (fail if it does not within ``CLOSED_WITHIN_S``); what it sent, and
    the seconds from ``started`` (loop time) to the close."""
    loop, received = asyncio.get_running_loop(), b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        async with asyncio.timeout(CLOSED_WITHIN_S):
            while chunk := await reader.read(65536):
                received += chunk
    return received, loop.time() - started


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close our end and wait for it (bounded), aborting a TLS shutdown the far end never answers: a
    transport left closing when the test's event loop ends is an unclosed-socket warning."""
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except (ConnectionError, OSError, RuntimeError, ssl.SSLError, TimeoutError):
        writer.transport.abort()


async def _sends(route: Route, payload: bytes | None) -> tuple[bytes, float]:
    """Connect, send ``payload`` (None: nothing), and wait for the node to close the connection."""
    reader, writer = await _tls(route)
    try:
        if payload is not None:
            writer.write(payload)
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.drain(), CLOSED_WITHIN_S)
        return await _closed(reader, asyncio.get_running_loop().time())
    finally:
        await _close(writer)


async def _tls_garbage(route: Route) -> tuple[bytes, float]:
    """A real ClientHello with the route's SNI (so the gateway routes it), then garbage in place of the
    rest of the TLS handshake once the node has answered."""
    outgoing = ssl.MemoryBIO()
    handshake = _any_certificate().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=route.sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        handshake.do_handshake()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(route.address, 443), 10)
    try:
        writer.write(outgoing.read())
        answer = await asyncio.wait_for(reader.read(1), CLOSED_WITHIN_S)
        assert answer == b"\x16", f"the node's TLS did not answer the ClientHello: {answer!r}"
        writer.write(b"garbage!" * 64)
        received, seconds = await _closed(reader, asyncio.get_running_loop().time())
        return answer + received, seconds
    finally:
        await _close(writer)


async def _replay(route: Route, hello: bytes) -> tuple[bytes, float]:
    """Send a member's valid hello twice. The first use is admitted (the node confirms it with a keepalive
    and it replaces the member's real stream, once; the member reconnects at once and takes the pair back,
    closing ours); the second is the replay."""
    reader, writer = await _tls(route)
    try:
        writer.write(hello)
        confirmation = await asyncio.wait_for(reader.readexactly(3), CLOSED_WITHIN_S)
        assert confirmation == keepalive_frame(), f"the first use was not admitted: {confirmation!r}"
        await _closed(reader, asyncio.get_running_loop().time())  # replaced by the member's own stream
    finally:
        await _close(writer)
    return await _sends(route, hello)


async def _idle_crowd(route: Route, count: int) -> float:
    """``count`` connections that complete TLS and say nothing, at most 50 handshakes at once; every one
    closed by the node; all closed by us at the end. Seconds from the last one opened to the last close."""
    crowd: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    handshakes = asyncio.Semaphore(50)

    async def join() -> None:
        async with handshakes:
            crowd.append(await _tls(route))

    try:
        await asyncio.gather(*(join() for _ in range(count)))
        opened = asyncio.get_running_loop().time()
        closes = await asyncio.gather(*(_closed(reader, opened) for reader, _ in crowd))
        assert all(received == REFUSED for received, _ in closes), {r for r, _ in closes}
        return max(seconds for _, seconds in closes)
    finally:
        await asyncio.gather(*(_close(writer) for _, writer in crowd))


def _hello(cluster: Address, dialer: MemberId, acceptor: MemberId, key: SecretBytes) -> bytes:
    hello = Hello(cluster, dialer, acceptor, int(time.time() * 1000), os.urandom(NONCE_BYTES))
    return encode_hello(hello, key)


def _refused(node: Node) -> dict[str, float]:
    return refusals(samples(node.metrics()))


def test_hostile_clients_through_the_gateway_are_closed_and_counted_and_the_mesh_is_untouched(
    lab: LabCli,
) -> None:
    """At the highest member's transport route (every other member dials it): no hello, a non-member's
    hello, a member's id signed by a stranger's key, a member's hello for another cluster, garbage as the
    first frame, a 1 MB frame (type 2, length 65535, then 1 MiB), garbage in place of the TLS handshake, a
    replayed hello, and 200 idle connections. Each is closed within the hello timeout and counted under
    its reason, exactly once; the TLS-up refusals are told ``close(refused)``; the gateway relayed them all
    as passthrough. Afterwards every node has both peers up, all 6 ordered pairs ping over the mesh, no
    device's configuration changed, and neither a sidecar nor the gateway logged a warning or an error
    meanwhile."""
    lab.run("up", "--nodes", "3", "--no-indexer", "--transport", "gateway")
    lab.run("status", "--wait-healthy", "120")
    found = list(nodes(lab).values())
    ids = {node.name: member_id(node) for node in found}
    target, member = (max(found, key=lambda n: ids[n.name].raw), min(found, key=lambda n: ids[n.name].raw))
    state = lab_state(lab)
    cluster, domain = Address.from_hex(state["cluster"]), state["gateway"]["domain"]
    sni = f"{bare_hex(target.data['app_id'])}-{GATEWAY_INGRESS_PORT}s.{domain}"
    route = Route(state["gateway"]["address"], sni)
    devices = device_configs(found)
    me, key, stranger = ids[member.name], identity_key(member), SecretBytes(os.urandom(32))
    acceptor = ids[target.name]

    attacks: list[tuple[str, str, Callable[[], Coroutine[Any, Any, tuple[bytes, float]]]]] = [
        ("no hello", "no_hello", lambda: _sends(route, None)),
        ("a non-member's hello", "not_member",
         lambda: _sends(route, _hello(cluster, MemberId(os.urandom(32)), acceptor, stranger))),
        ("a member's id, a stranger's key", "bad_signature",
         lambda: _sends(route, _hello(cluster, me, acceptor, stranger))),
        ("another cluster", "wrong_cluster",
         lambda: _sends(route, _hello(Address(os.urandom(20)), me, acceptor, key))),
        ("garbage as the first frame", "protocol",
         lambda: _sends(route, b"GET / HTTP/1.1\r\nHost: " + route.sni.encode() + b"\r\n\r\n")),
        ("a 1 MB frame", "protocol",
         lambda: _sends(route, bytes([FRAME_DATA]) + (65535).to_bytes(2, "big") + b"\x00" * (1 << 20))),
        ("garbage in the TLS handshake", "tls_failed", lambda: _tls_garbage(route)),
        ("a replayed hello", "replayed", lambda: _replay(route, _hello(cluster, me, acceptor, key))),
    ]  # fmt: skip
    logs = [f"{node.name}-sidecar" for node in found] + ["gateway"]
    logged = {name: len(log_entries(lab, name)) for name in logs}
    relayed = ("attestmesh_gateway_connections_total", {"kind": "passthrough", "outcome": "relayed"})
    relayed_before = sample(gateway_samples(lab), relayed[0], **relayed[1])
    start = _refused(target)
    expected = dict.fromkeys(start, 0.0)

    def counted() -> bool:
        return {reason: n - start[reason] for reason, n in _refused(target).items()} == expected

    closed_after: dict[str, float] = {}
    for what, reason, attack in attacks:
        received, seconds = asyncio.run(attack())
        closed_after[what] = seconds
        if reason not in ("protocol", "tls_failed"):  # with TLS up and the client not still sending
            assert received.endswith(REFUSED), (what, received[-16:])
        expected[reason] += 1
        wait_until(counted, 10, f"{what}: refused as {reason}, and nothing else counted")
        assert device_configs(found) == devices, f"{what}: a device changed"

    crowd_closed = asyncio.run(_idle_crowd(route, IDLE_CONNECTIONS))
    expected["no_hello"] += IDLE_CONNECTIONS
    wait_until(counted, 10, f"{IDLE_CONNECTIONS} idle connections refused as no_hello")
    through = sample(gateway_samples(lab), relayed[0], **relayed[1]) - relayed_before
    refused = {reason: int(n) for reason, n in expected.items() if n}
    print(
        f"\nhostile clients at {target.name}'s gateway route ({through:.0f} passthrough connections "
        f"relayed): refusals counted {refused}; closed after "
        f"{ {k: round(v, 2) for k, v in closed_after.items()} } s; {IDLE_CONNECTIONS} idle connections all "
        f"closed {crowd_closed:.2f} s after the last one opened"
    )
    assert max(closed_after.values()) <= CLOSED_WITHIN_S
    assert through >= len(attacks) + 1 + IDLE_CONNECTIONS  # the replayed hello was sent twice

    wait_transport(found, ALL_UP, 15, "both peers up (the replay took one pair's stream once)")
    for src in found:
        for dst in found:
            if dst is not src:
                ip = str(dst.data["healthz"]["node"]["mesh_ip"])
                assert src.pings(ip), f"{src.name} -> {dst.name} ({ip}) after the attacks"
    assert device_configs(found) == devices
    for name in logs:  # quiet: a stranger's connection is counted, never worth a warning
        loud = [e for e in log_entries(lab, name)[logged[name] :] if e.get("level") in LOUD]
        assert loud == [], f"{name} logged {loud[:3]}"
