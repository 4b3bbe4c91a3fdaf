"""The HTTP surfaces over real sockets: the health server on 127.0.0.1, the App API on a unix socket, the
peer API and its client ``fetch_csk``. Real aiohttp servers and clients; the fakes are small honest classes
implementing ``AppView`` and ``CskResponder``. Only loopback and unix sockets are used.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sidecar.core.csk import CskRequest, sign_request
from sidecar.core.cskepochs import PreviousCsk
from sidecar.core.ids import Bytes32, SecretBytes
from sidecar.core.status import NodeStatus, PeerView, SelfView, healthz_body
from sidecar.http import Runner, start_tcp, start_unix
from sidecar.http.appapi import app_api
from sidecar.http.health import health_app
from sidecar.http.peerapi import MAX_REQUEST_BYTES, CskAnswer, CskFetchError, fetch_csk, peer_api
from sidecar.observability import Metrics
from tests.component.toolkit import HOST, Serve
from tests.unit.proofkit import CLUSTER, member_app, member_id, prove

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

CSK = bytes(range(32))
COMMITMENT = "0x" + "c0" * 32
SEALED = bytes(range(80))
HEALTHY = NodeStatus(
    phase="healthy",
    healthy=True,
    reason=None,
    version="test",
    member_id="0x" + "ab" * 32,
    mesh_ip="10.88.0.2",
    peers_desired=1,
    peers_configured=1,
    peers_live=1,
    csk_held=True,
    csk_epoch=2,
    csk_commitment=COMMITMENT,
    csk_source="peer",
    chain_reachable=True,
)


# --- fakes ------------------------------------------------------------------------------------------


class FakeNode:
    """An ``AppView`` over mutable fields, as the controller keeps them."""

    def __init__(self) -> None:
        self.current = NodeStatus.initial("test")
        self.me: SelfView | None = None
        self.peer_list: list[PeerView] = []
        self.key: SecretBytes | None = None
        self.previous: PreviousCsk | None = None

    def status(self) -> NodeStatus:
        return self.current

    def self_view(self) -> SelfView | None:
        return self.me

    def peers(self) -> list[PeerView]:
        return list(self.peer_list)

    def csk(self) -> SecretBytes | None:
        return self.key

    def csk_previous(self) -> PreviousCsk | None:
        return self.previous


class FakeResponder:
    """A ``CskResponder`` that records what reached it and answers a fixed decision."""

    def __init__(self, answer: CskAnswer | None = None) -> None:
        self.calls: list[tuple[object, IPv4Address]] = []
        self.answer = answer or CskAnswer(200, {"sealed": SEALED.hex()})

    def respond(self, body: object, remote_ip: IPv4Address) -> CskAnswer:
        self.calls.append((body, remote_ip))
        return self.answer


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory under /tmp: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="am-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def rejected(metrics: Metrics, surface: str) -> float:
    return metrics.registry.get_sample_value("attestmesh_http_rejected_total", {"surface": surface}) or 0.0


def refused_malformed(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "attestmesh_csk_requests_refused_total", {"reason": "malformed"}
    )
    return value or 0.0


def closed_port() -> int:
    """A loopback port that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


# --- health -----------------------------------------------------------------------------------------


async def test_healthz_503_then_200_with_the_body(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    node = FakeNode()
    runner = await serve(health_app(node.status, metrics))
    url = f"http://{HOST}:{runner.port}/healthz"

    async with session.get(url) as response:
        assert response.status == 503
        assert response.content_type == "application/json"
        assert await response.json() == healthz_body(NodeStatus.initial("test"))
        assert (await response.json())["node"]["member_id"] is None

    node.current = HEALTHY
    async with session.get(url) as response:
        assert response.status == 200
        body = await response.json()
    assert body == healthz_body(HEALTHY)
    assert body["healthy"] is True
    assert "cache-control" in {k.lower() for k in response.headers}


async def test_livez_and_metrics(serve: Serve, session: aiohttp.ClientSession, metrics: Metrics) -> None:
    runner = await serve(health_app(FakeNode().status, metrics))
    base = f"http://{HOST}:{runner.port}"
    async with session.get(base + "/livez") as response:
        assert response.status == 200
        assert await response.json() == {"alive": True}
    metrics.record_phase(None, "mesh")
    async with session.get(base + "/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert 'attestmesh_phase{phase="mesh"} 1.0' in text
    for name in (
        "attestmesh_peers",
        "attestmesh_heartbeats_rejected_total",
        "attestmesh_csk_requests_refused_total",
        "attestmesh_http_rejected_total",
        "attestmesh_chain_errors_total",
    ):
        assert name in text


async def test_health_unknown_paths_and_methods_are_json_and_counted(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    runner = await serve(health_app(FakeNode().status, metrics))
    base = f"http://{HOST}:{runner.port}"
    async with session.get(base + "/nope") as response:
        assert response.status == 404
        assert "error" in await response.json()
    async with session.post(base + "/healthz", data=b"x") as response:
        assert response.status == 405
        assert "error" in await response.json()
        assert "GET" in response.headers["Allow"]
    assert rejected(metrics, "health") == 2


async def test_status_callable_failure_is_a_503_not_a_crash(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    def broken() -> NodeStatus:
        raise RuntimeError("state torn")

    runner = await serve(health_app(broken, metrics))
    async with session.get(f"http://{HOST}:{runner.port}/healthz") as response:
        assert response.status == 503
        assert await response.json() == {"error": "status unavailable"}


async def test_close_is_bounded_with_a_request_in_flight(
    session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = await start_tcp(app, HOST, 0, close_timeout=0.3)
    request = asyncio.create_task(session.get(f"http://{HOST}:{runner.port}/slow"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await runner.close()
    assert time.monotonic() - started < 2.0
    with pytest.raises(aiohttp.ClientError):
        response = await request
        response.release()
    await runner.close()  # idempotent


# --- App API ----------------------------------------------------------------------------------------


@pytest.fixture
async def app_socket(short_dir: Path, metrics: Metrics) -> AsyncIterator[tuple[FakeNode, Path, Runner]]:
    node = FakeNode()
    path = short_dir / "run" / "agent.sock"
    runner = await start_unix(app_api(node, metrics), path, close_timeout=2.0)
    try:
        yield node, path, runner
    finally:
        await runner.close()


async def get_unix(path: Path, route: str, method: str = "GET") -> tuple[int, object]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as client,
        client.request(method, f"http://agent{route}") as response,
    ):
        return response.status, await response.json()


async def test_app_socket_modes(app_socket: tuple[FakeNode, Path, Runner]) -> None:
    _, path, _ = app_socket
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(path.parent).st_mode) == 0o700


async def test_app_api_endpoints(app_socket: tuple[FakeNode, Path, Runner], metrics: Metrics) -> None:
    node, path, _ = app_socket
    assert await get_unix(path, "/v1/status") == (200, healthz_body(NodeStatus.initial("test")))
    assert await get_unix(path, "/v1/self") == (503, {"error": "node is not registered yet"})
    assert await get_unix(path, "/v1/peers") == (200, {"peers": []})
    assert await get_unix(path, "/v1/csk") == (503, {"error": "cluster shared key not held yet"})

    node.current = HEALTHY
    node.me = SelfView(
        cluster="0x" + "aa" * 20,
        member_id="0x" + "ab" * 32,
        app_id="0x" + "bb" * 20,
        instance_id="cc" * 20,
        mesh_ip="10.88.0.2",
        signer="0x" + "dd" * 20,
        wg_pub="0x" + "01" * 32,
        seal_pub="0x" + "02" * 32,
        identity_pub="0x" + "03" * 32,
    )
    peer = PeerView(
        member_id="0x" + "cd" * 32,
        mesh_ip="10.88.0.3",
        endpoint="127.0.0.1:51820",
        configured=True,
        live=True,
        last_heard_ms_ago=120,
    )
    node.peer_list = [peer]
    node.key = SecretBytes(CSK)
    assert await get_unix(path, "/v1/status") == (200, healthz_body(HEALTHY))
    assert await get_unix(path, "/v1/self") == (200, node.me.to_json())
    assert await get_unix(path, "/v1/peers") == (200, {"peers": [peer.to_json()]})
    current = {"csk": CSK.hex(), "epoch": 2, "commitment": COMMITMENT}
    assert await get_unix(path, "/v1/csk") == (200, {**current, "previous": None})
    # after a rotation, during the grace period: the previous epoch's key next to the current one
    old = bytes(range(32, 64))
    node.previous = PreviousCsk(1, SecretBytes(old), Bytes32(b"\x01" * 32), 1_800_003_600)
    assert await get_unix(path, "/v1/csk") == (200, {**current, "previous": {
        "epoch": 1, "csk": old.hex(), "commitment": "0x" + "01" * 32, "until": 1_800_003_600,
    }})  # fmt: skip

    status, body = await get_unix(path, "/v1/nothing")
    assert status == 404 and isinstance(body, dict) and "error" in body
    status, body = await get_unix(path, "/v1/csk", method="POST")
    assert status == 405 and isinstance(body, dict) and "error" in body
    assert rejected(metrics, "app") == 2


async def test_a_live_socket_is_not_stolen_and_a_stale_one_is_replaced(
    app_socket: tuple[FakeNode, Path, Runner], metrics: Metrics
) -> None:
    _, path, runner = app_socket
    with pytest.raises(OSError, match="another process is serving"):
        await start_unix(app_api(FakeNode(), metrics), path)
    assert (await get_unix(path, "/v1/peers"))[0] == 200  # the first server still answers

    # A socket file nobody listens on, as a crashed sidecar leaves behind.
    await runner.close()
    assert not path.exists()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert path.exists()
    second = await start_unix(app_api(FakeNode(), metrics), path)
    try:
        assert (await get_unix(path, "/v1/peers"))[0] == 200
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    finally:
        await second.close()


async def test_a_regular_file_is_never_replaced(short_dir: Path, metrics: Metrics) -> None:
    path = short_dir / "agent.sock"
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        await start_unix(app_api(FakeNode(), metrics), path)
    assert path.read_text() == "not a socket"


# --- peer API ---------------------------------------------------------------------------------------


async def post(
    session: aiohttp.ClientSession, port: int, data: bytes, content_type: str = "application/json"
) -> tuple[int, dict[str, object]]:
    async with session.post(
        f"http://{HOST}:{port}/v1/csk", data=data, headers={"Content-Type": content_type}
    ) as response:
        return response.status, await response.json()


async def test_peer_api_passes_json_and_the_remote_ip_to_the_responder(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    responder = FakeResponder()
    runner = await serve(peer_api(responder, metrics))
    status, body = await post(session, runner.port, json.dumps({"requester": "0x01"}).encode())
    assert (status, body) == (200, {"sealed": SEALED.hex()})
    assert responder.calls == [({"requester": "0x01"}, IPv4Address(HOST))]


async def test_peer_api_returns_the_responders_refusal(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    responder = FakeResponder(CskAnswer(403, {"error": "not live", "reason": "not_live"}))
    runner = await serve(peer_api(responder, metrics))
    assert await post(session, runner.port, b"{}") == (403, {"error": "not live", "reason": "not_live"})
    assert refused_malformed(metrics) == 0


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"NaN", "application/json", 400),
        (b"[" * 3000, "application/json", 400),
        (b'{"a": 1}', "text/plain", 415),
        (b'{"a": 1}', "application/x-www-form-urlencoded", 415),
        (b'{"pad": "' + b"x" * 5000 + b'"}', "application/json", 413),
    ],
)
async def test_peer_api_rejects_malformed_bodies_before_the_responder(
    serve: Serve,
    session: aiohttp.ClientSession,
    metrics: Metrics,
    data: bytes,
    content_type: str,
    status: int,
) -> None:
    responder = FakeResponder()
    runner = await serve(peer_api(responder, metrics))
    got, body = await post(session, runner.port, data, content_type)
    assert got == status
    assert isinstance(body.get("error"), str)
    assert responder.calls == []
    assert refused_malformed(metrics) == 1
    assert rejected(metrics, "peer") == 1


async def test_peer_api_takes_a_real_request_and_refuses_one_byte_over_the_limit(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    # A version-2 request carries the requester's member proof (about 1.6 KB): well inside the limit.
    proof = prove(member_app("requester"), Bytes32(b"\x11" * 32), Bytes32(b"\x22" * 32))
    request = sign_request(
        CskRequest(CLUSTER, member_id("requester"), member_id("responder"), 1),
        SecretBytes(b"\x01" * 32),
        proof,
    )
    real = json.dumps(request).encode()
    assert 1200 < len(real) < MAX_REQUEST_BYTES // 2
    responder = FakeResponder()
    runner = await serve(peer_api(responder, metrics))
    assert (await post(session, runner.port, real, "application/json"))[0] == 200
    assert responder.calls == [(request, IPv4Address(HOST))]
    padded = real[:-1] + b" " * (MAX_REQUEST_BYTES - len(real)) + b"}"
    assert len(padded) == MAX_REQUEST_BYTES
    assert (await post(session, runner.port, padded, "application/json"))[0] == 200
    over = padded[:-1] + b" }"
    assert (await post(session, runner.port, over, "application/json"))[0] == 413
    assert len(responder.calls) == 2 and refused_malformed(metrics) == 1


async def test_peer_api_oversized_body_without_content_length(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    responder = FakeResponder()
    runner = await serve(peer_api(responder, metrics))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1024

    async with session.post(
        f"http://{HOST}:{runner.port}/v1/csk", data=chunks(), headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
        assert "error" in await response.json()
    assert responder.calls == []
    assert refused_malformed(metrics) == 1


async def test_peer_api_other_routes_and_methods(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    responder = FakeResponder()
    runner = await serve(peer_api(responder, metrics))
    base = f"http://{HOST}:{runner.port}"
    async with session.get(base + "/v1/csk") as response:
        assert response.status == 405
        assert "error" in await response.json()
    async with session.post(base + "/v1/other", json={}) as response:
        assert response.status == 404
        assert "error" in await response.json()
    assert responder.calls == []
    assert rejected(metrics, "peer") == 2


async def test_a_crashing_responder_is_a_bare_500(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    class Broken:
        def respond(self, body: object, remote_ip: IPv4Address) -> CskAnswer:
            raise RuntimeError("secret-looking detail 0xdeadbeef")

    runner = await serve(peer_api(Broken(), metrics))
    status, body = await post(session, runner.port, b"{}")
    assert (status, body) == (500, {"error": "internal error"})


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(max_size=6000),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
)
async def test_peer_api_fuzz_never_500(
    serve: Serve, session: aiohttp.ClientSession, metrics: Metrics, data: bytes, content_type: str
) -> None:
    responder = FakeResponder(CskAnswer(403, {"error": "refused"}))
    runner = await serve(peer_api(responder, metrics))
    headers = {"Content-Type": content_type} if content_type else {}
    before = len(responder.calls)
    async with session.post(f"http://{HOST}:{runner.port}/v1/csk", data=data, headers=headers) as response:
        assert response.status != 500
        body = await response.json()
    if len(responder.calls) > before:
        assert response.status == 403
        assert body == {"error": "refused"}
    else:
        assert 400 <= response.status < 500
        assert isinstance(body["error"], str)


# --- fetch_csk --------------------------------------------------------------------------------------


async def test_fetch_csk_ok(serve: Serve, session: aiohttp.ClientSession, metrics: Metrics) -> None:
    responder = FakeResponder()
    runner = await serve(peer_api(responder, metrics))
    answer = await fetch_csk(session, HOST, runner.port, {"requester": "0x01", "ts": 5}, timeout=2.0)
    assert answer == {"sealed": SEALED.hex()}  # the object as sent: its checks are the core's
    assert responder.calls == [({"requester": "0x01", "ts": 5}, IPv4Address(HOST))]


async def test_fetch_csk_refused(serve: Serve, session: aiohttp.ClientSession, metrics: Metrics) -> None:
    runner = await serve(peer_api(FakeResponder(CskAnswer(403, {"error": "not live"})), metrics))
    with pytest.raises(CskFetchError) as info:
        await fetch_csk(session, HOST, runner.port, {}, timeout=2.0)
    assert info.value.kind == "refused"
    assert "403" in info.value.detail and "not live" in info.value.detail


async def test_fetch_csk_unreachable(session: aiohttp.ClientSession) -> None:
    with pytest.raises(CskFetchError) as info:
        await fetch_csk(session, HOST, closed_port(), {}, timeout=2.0)
    assert info.value.kind == "unreachable"


async def test_fetch_csk_is_bounded_by_its_timeout(serve: Serve, session: aiohttp.ClientSession) -> None:
    async def sleepy(_request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.json_response({"sealed": "00"})

    app = web.Application()
    app.router.add_post("/v1/csk", sleepy)
    runner = await serve(app)
    started = time.monotonic()
    with pytest.raises(CskFetchError) as info:
        await fetch_csk(session, HOST, runner.port, {}, timeout=0.3)
    elapsed = time.monotonic() - started
    assert info.value.kind == "unreachable"
    assert 0.25 <= elapsed < 1.5


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (200, b"not json", "application/json"),
        (200, b"[1, 2]", "application/json"),
        (200, b'"sealed"', "application/json"),
        (200, b"NaN", "application/json"),
        (200, b'{"sealed": "' + b"ab" * 10000 + b'"}', "application/json"),
        (302, b"", "text/plain"),
    ],
)
async def test_fetch_csk_invalid_answers(
    serve: Serve, session: aiohttp.ClientSession, status: int, body: bytes, content_type: str
) -> None:
    async def bad(_request: web.Request) -> web.Response:
        headers = {"Location": "http://127.0.0.1:1/"} if status == 302 else None
        return web.Response(status=status, body=body, content_type=content_type, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/csk", bad)
    runner = await serve(app)
    with pytest.raises(CskFetchError) as info:
        await fetch_csk(session, HOST, runner.port, {}, timeout=2.0)
    assert info.value.kind == "invalid"
