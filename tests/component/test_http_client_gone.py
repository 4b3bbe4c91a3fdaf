"""Clients that hang up mid-request, among a few hundred malformed requests, on a real peer API server.

A client going away is not a server error: each hang-up is counted (``attestmesh_http_client_gone_total``)
and logged at most at debug; nothing is logged at error, no traceback, and the server still answers. Raw
sockets on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sidecar.http import Runner, start_tcp
from sidecar.http.peerapi import CSK_PATH, CskAnswer, peer_api
from sidecar.http.server import error_middleware
from sidecar.observability import Metrics

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

HOST = "127.0.0.1"
SEALED = bytes(range(80))
ROUNDS = 50
DEADLINE = 10.0

HEAD = f"POST {CSK_PATH} HTTP/1.1\r\nHost: peer\r\n".encode()
JSON = b"Content-Type: application/json\r\n"
#: name -> (bytes sent, whether the client then hangs up without waiting for an answer)
REQUESTS: dict[str, tuple[bytes, bool]] = {
    "short body": (HEAD + JSON + b"Content-Length: 200\r\n\r\n" + b'{"requester": "0x', True),
    "headers only": (HEAD + JSON + b"Content-Length: 64\r\n\r\n", True),
    "short chunk": (HEAD + JSON + b"Transfer-Encoding: chunked\r\n\r\n40\r\n" + b'{"a": 1', True),
    "not json": (HEAD + JSON + b"Content-Length: 5\r\n\r\n{{{{{", False),
    "wrong type": (HEAD + b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}", False),
    "bad header": (HEAD + b"No Colon Here\r\n\r\n", False),
    "bad length": (HEAD + JSON + b"Content-Length: many\r\n\r\n", False),
}
HANG_UPS_PER_ROUND = sum(1 for _, hangs_up in REQUESTS.values() if hangs_up)


class FakeResponder:
    """A ``CskResponder`` that serves every request it gets."""

    def __init__(self) -> None:
        self.calls = 0

    def respond(self, body: object, remote_ip: IPv4Address) -> CskAnswer:
        self.calls += 1
        return CskAnswer(200, {"sealed": SEALED.hex()})


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def peer(metrics: Metrics) -> AsyncIterator[Runner]:
    runner = await start_tcp(peer_api(FakeResponder(), metrics), HOST, 0, close_timeout=2.0)
    try:
        yield runner
    finally:
        await runner.close()


def client_gone(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("attestmesh_http_client_gone_total", {"surface": "peer"})
    return value or 0.0


async def send(port: int, data: bytes, hang_up: bool) -> bytes:
    """Send ``data`` on a new connection; hang up at once, or read the answer's status line first."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        return b"" if hang_up else await asyncio.wait_for(reader.readline(), DEADLINE)
    finally:
        writer.close()  # a FIN: everything sent before it reaches the server first
        await writer.wait_closed()


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_hang_ups_are_counted_not_logged_as_errors(
    peer: Runner, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with capture_logs() as logs:
        for _ in range(ROUNDS):
            for name, (data, hang_up) in REQUESTS.items():
                status = await send(peer.port, data, hang_up)
                assert hang_up or status.split(b" ")[1] in (b"400", b"415"), (name, status)
        hang_ups = ROUNDS * HANG_UPS_PER_ROUND
        await until(lambda: client_gone(metrics) >= hang_ups, f"{hang_ups} hang-ups counted")

        url = f"http://{HOST}:{peer.port}{CSK_PATH}"
        async with aiohttp.ClientSession() as session, session.post(url, json={"any": "thing"}) as answer:
            assert answer.status == 200  # the server still answers
            assert await answer.json() == {"sealed": SEALED.hex()}

    assert client_gone(metrics) == hang_ups
    loud = [e for e in logs if e["log_level"] not in ("debug", "info") or "exc_info" in e or "exception" in e]
    assert loud == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_the_shared_error_middleware_counts_hang_ups_for_any_surface() -> None:
    """The indexer's HTTP surface uses the same middleware with its own counters."""
    counted = {"rejected": 0, "client_gone": 0}

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    def count(what: str) -> Callable[[], None]:
        return lambda: counted.__setitem__(what, counted[what] + 1)

    errors = error_middleware("indexer", rejected=count("rejected"), client_gone=count("client_gone"))
    app = web.Application(middlewares=[errors])
    app.router.add_post("/echo", echo)
    runner = await start_tcp(app, HOST, 0, close_timeout=2.0)
    try:
        with capture_logs() as logs:
            for _ in range(ROUNDS):
                await send(
                    runner.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc", True
                )
                status = await send(runner.port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", False)
                assert status.split(b" ")[1] == b"404"
            await until(lambda: counted["client_gone"] >= ROUNDS, f"{ROUNDS} hang-ups counted")
    finally:
        await runner.close()
    assert counted == {"rejected": ROUNDS, "client_gone": ROUNDS}
    assert [e for e in logs if e["log_level"] not in ("debug", "info")] == []
