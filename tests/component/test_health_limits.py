"""The health port's connection cap and request-head deadline over real sockets (127.0.0.1 only): the
connection over the cap is closed at once, idle and slowloris connections are closed after the deadline (not
before), both counted, and a fresh client is answered afterwards; a head split across reads still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.status import NodeStatus
from sidecar.http import Runner
from sidecar.http.health import HEALTH_LIMITS, health_app, start_health
from sidecar.http.limits import ConnectionLimits
from sidecar.observability import Metrics
from tests.component.toolkit import HOST

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

LIMITS = ConnectionLimits(max_connections=3, header_timeout=1.0)
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def health(metrics: Metrics) -> AsyncIterator[Runner]:
    runner = await start_health(
        health_app(lambda: NodeStatus.initial("test"), metrics), HOST, 0, metrics, limits=LIMITS
    )
    try:
        yield runner
    finally:
        await runner.close()


def dropped(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "attestmesh_http_connections_dropped_total", {"surface": "health", "reason": reason}
    )
    return value or 0.0


async def eof_within(stream: Stream, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it stays open longer)."""
    reader, _ = stream
    async with asyncio.timeout(seconds):
        return await reader.read()


async def close(streams: list[Stream]) -> None:
    for _, writer in streams:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def wait_for_count(metrics: Metrics, reason: str, value: float, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while dropped(metrics, reason) < value:
        assert time.monotonic() < deadline, f"{reason} never reached {value}"
        await asyncio.sleep(0.01)


async def healthz_status(runner: Runner) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{HOST}:{runner.port}/healthz") as response,
    ):
        return response.status


def test_the_default_limits_are_bounded() -> None:
    assert 1 <= HEALTH_LIMITS.max_connections <= 64 and 0 < HEALTH_LIMITS.header_timeout <= 30


async def test_over_the_cap_is_refused_and_idle_heads_are_closed_at_the_deadline(
    health: Runner, metrics: Metrics
) -> None:
    opened = time.monotonic()
    held = [await asyncio.open_connection(HOST, health.port) for _ in range(LIMITS.max_connections)]
    held[0][1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # slowloris: a head that never ends
    extra = await asyncio.open_connection(HOST, health.port)
    try:
        assert await eof_within(extra, 0.5) == b""  # refused at once: closed before the deadline
        assert dropped(metrics, "over_limit") == 1
        for stream in held:
            assert await eof_within(stream, LIMITS.header_timeout + 2.0) == b""
        assert time.monotonic() - opened >= LIMITS.header_timeout * 0.9  # not before the deadline
        await wait_for_count(metrics, "header_timeout", 3, 2)
    finally:
        await close([*held, extra])
    assert await healthz_status(health) == 503  # a fresh client is answered (the node is not healthy yet)
    assert dropped(metrics, "over_limit") == 1


async def test_a_head_split_across_reads_is_served_and_keeps_its_connection(
    health: Runner, metrics: Metrics
) -> None:
    stream = await asyncio.open_connection(HOST, health.port)
    reader, writer = stream
    try:
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r")
        await writer.drain()
        await asyncio.sleep(0.05)  # pacing the two halves into separate reads, not synchronisation
        writer.write(b"\n")
        status = await asyncio.wait_for(reader.readline(), 2.0)
        assert status.startswith(b"HTTP/1.1 200")
        # a second request on the same connection, well within the deadline, is served too
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = await eof_within(stream, 2.0)
        assert b"HTTP/1.1 200" in rest
    finally:
        await close([stream])
    assert dropped(metrics, "header_timeout") == 0 and dropped(metrics, "over_limit") == 0
