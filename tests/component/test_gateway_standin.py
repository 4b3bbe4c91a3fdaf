"""The gateway stand-in's data path, with dstack-gateway's own proxy tests as the checklist
(``test-run/test_proxy.sh``, ``proxy/probe.py``): byte-exact relay of small and 1 MiB bodies both ways on
terminated and passthrough routes, 16 concurrent streams, half-close in each direction, close_notify at
the end of a terminated stream, idle reaping of silent connections (also a half-closed one whose app stays
silent) while a busy one lives, plus the lifetime cap, ALPN (h2 on ``g`` routes only), TLS 1.2-only
termination, and a bounded shutdown.

Real servers on 127.0.0.1 only: the gateway in process, origins in process, the routes file on disk.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devnet.gateway.labca import LabCa, ensure_lab_ca
from tests.component.gatewaykit import (
    DOMAIN,
    HOST,
    GatewayLab,
    Origin,
    TlsStream,
    digest,
    eventually,
    payload,
    recv_exactly,
    recv_to_end,
    route,
    running_gateway,
)

pytestmark = [pytest.mark.component, pytest.mark.timeout(30)]

APP = "5a" * 20
INSTANCE = "1c" * 20
MIB = 1024 * 1024
CHUNK_BYTES = 65536


@pytest.fixture
async def lab(tmp_path: Path, ca: LabCa, backends: tuple[Origin, Origin]) -> AsyncIterator[GatewayLab]:
    plain, tls = backends
    async with running_gateway(tmp_path, ca, {INSTANCE: route(APP, [plain.port, tls.port])}) as gateway:
        yield gateway


def label(kind: str, backends: tuple[Origin, Origin], route_id: str = APP) -> str:
    """The first label of a route of ``kind`` to the origin of that kind."""
    plain, tls = backends
    return {
        "terminate": f"{route_id}-{plain.port}",
        "passthrough": f"{route_id}-{tls.port}s",
        "h2": f"{route_id}-{plain.port}g",
    }[kind]


@pytest.mark.parametrize("kind", ["terminate", "passthrough"])
@pytest.mark.parametrize("size", [1024, MIB])
async def test_bodies_relay_byte_exact_both_ways(
    lab: GatewayLab, backends: tuple[Origin, Origin], kind: str, size: int
) -> None:
    stream = await lab.dial(label(kind, backends))
    await stream.send(f"bytes {size}\n".encode())
    assert await recv_exactly(stream, size) == payload(size)
    await stream.send(b"bytes 7\n")
    assert await recv_exactly(stream, 7) == payload(7)
    stream.close()

    upload = await lab.dial(label(kind, backends, INSTANCE))  # the instance id routes too
    await upload.send(b"upload\n" + payload(size))
    await upload.close_write()
    assert await recv_to_end(upload) == digest(payload(size))
    assert not upload.ragged
    upload.close()
    assert lab.sample("attestmesh_gateway_bytes_total", kind=kind, direction="to_client") >= size
    assert lab.sample("attestmesh_gateway_bytes_total", kind=kind, direction="to_app") >= size
    assert lab.outcome(kind, "relayed") == 2
    await eventually(lambda: lab.closed(kind, "eof") == 2, what="both connections closed by eof")
    assert lab.active(kind, APP) == 0


@pytest.mark.parametrize("kind", ["terminate", "passthrough"])
async def test_sixteen_concurrent_streams_arrive_intact(
    lab: GatewayLab, backends: tuple[Origin, Origin], kind: str
) -> None:
    size = 256 * 1024

    async def one() -> bytes:
        stream = await lab.dial(label(kind, backends))
        await stream.send(f"close {size}\n".encode())
        body = await recv_to_end(stream)
        stream.close()
        return body

    bodies = await asyncio.gather(*(one() for _ in range(16)))
    assert all(body == payload(size) for body in bodies)
    assert lab.outcome(kind, "relayed") == 16


@pytest.mark.parametrize("kind", ["terminate", "passthrough"])
async def test_a_client_that_half_closes_still_gets_the_reply(
    lab: GatewayLab, backends: tuple[Origin, Origin], kind: str
) -> None:
    stream = await lab.dial(label(kind, backends))
    await stream.send(b"halfclose\n")
    await stream.close_write()
    assert await recv_to_end(stream) == payload(4096)
    assert not stream.ragged
    stream.close()


@pytest.mark.parametrize("kind", ["terminate", "passthrough"])
async def test_an_app_that_half_closes_still_receives_the_client(
    lab: GatewayLab, backends: tuple[Origin, Origin], kind: str
) -> None:
    origin = backends[0] if kind == "terminate" else backends[1]
    stream = await lab.dial(label(kind, backends))
    await stream.send(b"appfirst\n")
    assert await recv_to_end(stream) == b"bye"
    assert not stream.ragged  # terminated: the app's FIN reached the client as close_notify
    await stream.send(payload(200_000))
    await stream.close_write()
    await eventually(
        lambda: origin.received == [payload(200_000)], what="the app received the client's bytes"
    )
    stream.close()
    await eventually(lambda: lab.closed(kind, "eof") == 1, what="the connection closed by eof")


def _fetch_until_close_notify(port: int, server_name: str, ca: LabCa) -> tuple[int, str]:
    """dstack's close-notify probe with the standard library: a ragged end raises instead of reading b""."""
    context = ssl.create_default_context(cafile=str(ca.ca_cert))
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name, suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(f"close {MIB}\n".encode())
        received = 0
        while chunk := tls.recv(CHUNK_BYTES):
            received += len(chunk)
        return received, str(tls.version())


async def test_a_terminated_stream_ends_with_close_notify(
    lab: GatewayLab, backends: tuple[Origin, Origin], ca: LabCa
) -> None:
    received, version = await asyncio.to_thread(
        _fetch_until_close_notify, lab.port, lab.name(label("terminate", backends)), ca
    )
    assert (received, version) == (MIB, "TLSv1.2")


async def _ended(stream: TlsStream) -> bool:
    try:
        return await recv_to_end(stream) == b""
    except ConnectionError:
        return True


async def test_silent_connections_are_reaped_while_a_busy_one_lives(
    tmp_path: Path, ca: LabCa, backends: tuple[Origin, Origin]
) -> None:
    plain, tls = backends
    idle = 0.6
    async with running_gateway(
        tmp_path,
        ca,
        {INSTANCE: route(APP, [plain.port, tls.port])},
        idle_timeout=idle,
        idle_checks_per_window=4,
    ) as lab:
        loop = asyncio.get_running_loop()
        busy = await lab.dial(label("terminate", backends))
        await busy.send(b"echo\n")
        silent = [await lab.dial(label(kind, backends)) for kind in ("terminate", "passthrough")]
        for stream in silent:
            await stream.send(b"hold\n")
        stalled = await lab.dial(label("passthrough", backends))
        await stalled.send(b"silent\n")
        await stalled.close_write()  # a half-closed request whose app never answers
        started = loop.time()
        reaped = asyncio.gather(*(_ended(s) for s in (*silent, stalled)))
        pings = 0
        while not reaped.done():
            await busy.send(b"ping")
            assert await recv_exactly(busy, 4) == b"ping"
            pings += 1
            await asyncio.sleep(0.05)  # the traffic that keeps it busy, not a synchronisation
            assert loop.time() - started < 5, "the silent connections were not reaped"
        assert await reaped == [True, True, True]
        assert idle <= loop.time() - started <= idle * 1.25 + 1.0
        await busy.send(b"still here")
        assert await recv_exactly(busy, 10) == b"still here"
        assert pings >= 10
        await eventually(
            lambda: lab.closed("terminate", "idle") == 1 and lab.closed("passthrough", "idle") == 2,
            what="three idle closes",
        )
        assert lab.active("terminate", APP) == 1
        for stream in (busy, *silent, stalled):
            stream.close()


async def test_the_lifetime_cap_closes_a_busy_connection(
    tmp_path: Path, ca: LabCa, backends: tuple[Origin, Origin]
) -> None:
    plain, _ = backends
    lifetime = 0.8
    async with running_gateway(tmp_path, ca, {INSTANCE: route(APP, [plain.port])}, lifetime=lifetime) as lab:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = await lab.dial(label("terminate", backends))
        await stream.send(b"echo\n")
        try:
            while True:
                await stream.send(b"tick")
                if await stream.recv() == b"":
                    break
                await asyncio.sleep(0.02)  # traffic pacing
                assert loop.time() - started < 5, "the lifetime cap did not close the connection"
        except ConnectionError:
            pass
        assert lifetime <= loop.time() - started < lifetime + 1.0
        await eventually(lambda: lab.closed("terminate", "lifetime") == 1, what="the lifetime close counted")
        stream.close()


async def test_only_g_routes_negotiate_h2(lab: GatewayLab, backends: tuple[Origin, Origin]) -> None:
    h2 = await lab.dial(label("h2", backends), alpn=["h2", "http/1.1"])
    assert h2.tls.selected_alpn_protocol() == "h2"
    await h2.send(b"bytes 5\n")
    assert await recv_exactly(h2, 5) == payload(5)
    h2.close()
    plain = await lab.dial(label("terminate", backends), alpn=["h2", "http/1.1"])
    assert plain.tls.selected_alpn_protocol() is None
    plain.close()
    no_alpn = await lab.dial(label("h2", backends))
    assert no_alpn.tls.selected_alpn_protocol() is None  # a client offering nothing is served, as by rustls
    no_alpn.close()
    await lab.refused(label("h2", backends), outcome="tls_failed", kind="h2", alpn=["http/1.1"])


async def test_termination_is_tls_1_2_only_and_passthrough_is_end_to_end(
    lab: GatewayLab, backends: tuple[Origin, Origin]
) -> None:
    terminated = await lab.dial(label("terminate", backends))
    assert terminated.tls.version() == "TLSv1.2"
    terminated.close()
    passthrough = await lab.dial(label("passthrough", backends))
    assert passthrough.tls.version() == "TLSv1.3"  # negotiated with the app, not the gateway
    passthrough.close()
    await lab.refused(label("terminate", backends), outcome="tls_failed", kind="terminate", tls13_only=True)
    passthrough13 = await lab.dial(label("passthrough", backends), tls13_only=True)
    passthrough13.close()


async def test_shutdown_drops_every_connection_within_the_bound(
    tmp_path: Path, ca: LabCa, backends: tuple[Origin, Origin]
) -> None:
    plain, tls = backends
    async with running_gateway(tmp_path, ca, {INSTANCE: route(APP, [plain.port, tls.port])}) as lab:
        held = [await lab.dial(label(kind, backends)) for kind in ("terminate", "passthrough")]
        for stream in held:
            await stream.send(b"hold\n")
        await eventually(lambda: lab.active("passthrough", APP) == 1, what="the passthrough stream relaying")
        loop = asyncio.get_running_loop()
        started = loop.time()
        port = lab.port
        await lab.service.close(grace=2.0)
        assert loop.time() - started < 3.0
        assert [await _ended(stream) for stream in held] == [True, True]
        assert lab.closed("terminate", "shutdown") == 1
        assert lab.closed("passthrough", "shutdown") == 1
        with pytest.raises(ConnectionError):
            await asyncio.open_connection(HOST, port)
        for stream in held:
            stream.close()


async def test_the_served_certificate_is_the_lab_wildcard(
    lab: GatewayLab, backends: tuple[Origin, Origin], tmp_path: Path
) -> None:
    stream = await lab.dial(label("terminate", backends))  # verified against the lab CA, host name checked
    certificate = stream.tls.getpeercert()
    assert certificate is not None
    assert certificate["subjectAltName"] == (("DNS", f"*.{DOMAIN}"), ("DNS", DOMAIN))
    stream.close()
    other = ensure_lab_ca(tmp_path / "other-ca", "other.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        await TlsStream.open(
            lab.port,
            lab.name(label("terminate", backends)),
            ssl.create_default_context(cafile=str(other.ca_cert)),
        )
