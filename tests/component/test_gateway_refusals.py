"""The gateway stand-in's refusals and control surface: names it does not route (no SNI, another domain,
``gs``, a second ``-``, a reserved id), bytes that are not TLS, a slow client, routes that appear and
disappear with the routes file (no restart), the fail-closed port policy, racing up to three instances of
an app, the per-app limit over all of them, connect failures, the metrics and status endpoint, and the
command line (SIGTERM, an invalid configuration).

Real servers on 127.0.0.1 only; the command-line tests start the gateway as a subprocess and always end it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from devnet.gateway.labca import LabCa
from tests.component.gatewaykit import (
    DOMAIN,
    HOST,
    GatewayLab,
    Origin,
    TlsStream,
    client_context,
    eventually,
    first_flight,
    payload,
    recv_exactly,
    recv_to_end,
    route,
    running_gateway,
    write_routes,
)

pytestmark = [pytest.mark.component, pytest.mark.timeout(30)]

APP, OTHER_APP = "5a" * 20, "6b" * 20
I1, I2, I3, I4 = ("1c" * 20, "2d" * 20, "3e" * 20, "4f" * 20)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def closed_by_gateway(port: int, data: bytes, *, finish: bool = False) -> bytes:
    """Send raw ``data`` (and a FIN when ``finish``), read until the gateway closes; return what it sent."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        if finish:
            writer.write_eof()
        await writer.drain()
        return await reader.read()
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_names_the_gateway_does_not_route_are_refused(tmp_path: Path, ca: LabCa) -> None:
    async with running_gateway(tmp_path, ca, {I1: route(APP, [443])}) as lab:
        await lab.refused(None, outcome="no_sni")
        await lab.refused(f"{APP}-443s.other", outcome="foreign_domain")  # <label>.amlab.gw.test → other
        await lab.refused(f"{APP}-443gs", outcome="bad_name")
        await lab.refused(f"{APP}-443sg", outcome="bad_name")
        await lab.refused(f"{APP}-443-1s", outcome="bad_name")
        await lab.refused("gateway", outcome="reserved_id", kind="terminate")
        await lab.refused("health-443s", outcome="reserved_id", kind="passthrough")
        assert lab.outcome("none", "bad_name") == 3


async def test_bytes_that_are_not_a_client_hello_are_refused(tmp_path: Path, ca: LabCa) -> None:
    async with running_gateway(tmp_path, ca, {}) as lab:
        assert await closed_by_gateway(lab.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
        assert (
            await closed_by_gateway(lab.port, b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") == b""
        )  # ServerHello
        assert await closed_by_gateway(lab.port, b"", finish=True) == b""  # connects and closes at once
        await eventually(lambda: lab.outcome("none", "not_tls") == 3, what="three not_tls refusals")


async def test_a_slow_client_is_dropped_after_the_handshake_timeout(tmp_path: Path, ca: LabCa) -> None:
    async with running_gateway(tmp_path, ca, {}, handshake_timeout=0.3) as lab:
        loop = asyncio.get_running_loop()
        hello = first_flight(f"{APP}-443s.{DOMAIN}")
        reader, writer = await asyncio.open_connection(HOST, lab.port)
        started = loop.time()
        writer.write(hello[:40])  # a third of the ClientHello, then nothing
        await writer.drain()
        assert await reader.read() == b""
        assert 0.3 <= loop.time() - started < 1.5
        writer.close()
        await eventually(lambda: lab.outcome("none", "handshake_timeout") == 1, what="the timeout counted")


async def test_routes_follow_the_routes_file_without_a_restart(
    tmp_path: Path, ca: LabCa, backends: tuple[Origin, Origin]
) -> None:
    _, tls = backends
    node = f"{APP}-{tls.port}s"
    async with running_gateway(tmp_path, ca, None) as lab:  # no routes file yet: an empty table
        await lab.refused(node, outcome="unknown_route", kind="passthrough")
        write_routes(lab.routes_file, {I1: route(APP, [tls.port])})
        stream = await dial_until_accepted(lab, node)
        await stream.send(b"bytes 9\n")
        assert await recv_exactly(stream, 9) == payload(9)

        lab.routes_file.write_text("{not json")  # an invalid file keeps the table
        await eventually(lambda: lab.sample("attestmesh_gateway_route_reloads_total", result="rejected") == 1)
        again = await lab.dial(node)
        again.close()

        write_routes(lab.routes_file, {})  # the node stops: new connections are refused...
        await eventually(
            lambda: lab.sample("attestmesh_gateway_route_instances") == 0, what="the route removed"
        )
        await lab.refused(node, outcome="unknown_route", kind="passthrough")
        await stream.send(b"bytes 5\n")  # ...while the established one keeps relaying
        assert await recv_exactly(stream, 5) == payload(5)


async def dial_until_accepted(lab: GatewayLab, label: str) -> TlsStream:
    """Dial until the gateway routes ``label`` (it polls the routes file); fail after a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while True:
        try:
            return await lab.dial(label)
        except (ConnectionError, OSError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def test_the_port_policy_fails_closed_until_it_is_known(
    tmp_path: Path, ca: LabCa, backends: tuple[Origin, Origin]
) -> None:
    plain, tls = backends
    async with running_gateway(tmp_path, ca, {I1: route(APP, None)}) as lab:
        await lab.refused(f"{APP}-{tls.port}s", outcome="port_policy_unknown", kind="passthrough")
        await lab.refused(f"{I1}-{plain.port}", outcome="port_policy_unknown", kind="terminate")
        write_routes(lab.routes_file, {I1: route(APP, [tls.port])})
        stream = await dial_until_accepted(lab, f"{APP}-{tls.port}s")
        stream.close()
        await lab.refused(f"{APP}-{plain.port}", outcome="port_not_allowed", kind="terminate")


async def test_an_app_id_races_three_instances_and_the_limit_counts_them_all(
    tmp_path: Path, ca: LabCa, backends: tuple[Origin, Origin]
) -> None:
    plain, tls = backends
    ports = [plain.port, tls.port]
    instances = {i: route(APP, ports) for i in (I1, I2, I3, I4)} | {"7a" * 20: route(OTHER_APP, ports)}
    async with running_gateway(tmp_path, ca, instances, max_connections_per_app=2) as lab:
        before = plain.connections
        raced = await lab.dial(f"{APP}-{plain.port}")
        await raced.send(b"bytes 3\n")
        assert await recv_exactly(raced, 3) == payload(3)
        assert plain.connections - before == 3  # the first three instances, all on 127.0.0.1, raced
        by_instance = await lab.dial(f"{I4}-{tls.port}s")  # another instance of the same app
        await by_instance.send(b"hold\n")
        await eventually(lambda: lab.active("passthrough", APP) == 1 and lab.active("terminate", APP) == 1)
        await lab.refused(f"{I2}-{tls.port}s", outcome="app_limit", kind="passthrough")
        other = await lab.dial(f"{OTHER_APP}-{tls.port}s")  # another app has its own slots
        other.close()
        raced.close()
        await eventually(lambda: lab.active("terminate", APP) == 0, what="the slot given back")
        freed = await lab.dial(f"{I2}-{tls.port}s")
        freed.close()


async def test_a_connect_failure_is_counted(tmp_path: Path, ca: LabCa) -> None:
    port = closed_port()
    async with running_gateway(tmp_path, ca, {I1: route(APP, [port])}) as lab:
        await lab.refused(f"{APP}-{port}s", outcome="connect_failed", kind="passthrough")
        terminated = await lab.dial(f"{APP}-{port}")  # terminated: the handshake comes first, as in dstack
        assert await recv_to_end(terminated) == b""
        assert terminated.ragged  # dropped, no close_notify
        await eventually(lambda: lab.outcome("terminate", "connect_failed") == 1, what="the failure counted")
        assert lab.active("passthrough", APP) == 0


async def test_metrics_and_status_are_served(
    tmp_path: Path, ca: LabCa, backends: tuple[Origin, Origin]
) -> None:
    _, tls = backends
    async with running_gateway(tmp_path, ca, {I1: route(APP, [tls.port])}) as lab:
        stream = await lab.dial(f"{APP}-{tls.port}s")
        await stream.send(b"hold\n")
        await eventually(lambda: lab.active("passthrough", APP) == 1)
        base = f"http://{HOST}:{lab.service.metrics_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/status") as response:
                assert response.status == 200
                assert await response.json() == {
                    "connections": [{"app_id": APP, "kind": "passthrough", "count": 1}],
                    "total": 1,
                }
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
        assert f'attestmesh_gateway_active_connections{{app_id="{APP}",kind="passthrough"}} 1.0' in text
        assert 'attestmesh_gateway_connections_total{kind="passthrough",outcome="relayed"} 1.0' in text
        assert 'attestmesh_gateway_closed_total{kind="h2",reason="lifetime"} 0.0' in text  # created at zero
        assert "attestmesh_gateway_route_instances 1.0" in text


def write_config(tmp_path: Path, ca: LabCa, **overrides: object) -> Path:
    path = tmp_path / "gateway.json"
    config = {
        "listen": f"{HOST}:0",
        "domain": DOMAIN,
        "cert_file": str(ca.cert),
        "key_file": str(ca.key),
        "routes_file": "routes.json",
        "route_poll_interval": 0.05,
        **overrides,
    }
    path.write_text(json.dumps(config))
    return path


async def test_the_command_line_serves_and_stops_on_sigterm(
    tmp_path: Path, ca: LabCa, backends: tuple[Origin, Origin]
) -> None:
    plain, _ = backends
    write_routes(tmp_path / "routes.json", {I1: route(APP, [plain.port])})
    config = write_config(tmp_path, ca)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devnet.gateway", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines: list[dict[str, object]] = []
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            while not any(line["event"] == "gateway.started" for line in lines):
                lines.append(json.loads(await process.stdout.readline()))
        started = next(line for line in lines if line["event"] == "gateway.started")
        port = int(str(started["listen"]).rsplit(":", 1)[1])
        stream = await TlsStream.open(port, f"{APP}-{plain.port}.{DOMAIN}", client_context(ca))
        await stream.send(b"bytes 4096\n")
        assert await recv_exactly(stream, 4096) == payload(4096)
        stream.close()
        loop = asyncio.get_running_loop()
        stopping = loop.time()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(8):
            out, _ = await process.communicate()
        assert process.returncode == 0
        assert loop.time() - stopping < 5
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines += [json.loads(line) for line in out.decode().splitlines()]
    events = [str(line["event"]) for line in lines]
    assert events[0] == "gateway.routes_loaded"
    assert {"gateway.started", "gateway.stopping", "gateway.stopped"} <= set(events)
    assert all(e.startswith(("gateway.", "http.")) for e in events)
    assert payload(64).decode() not in out.decode()  # no payload in the log


def test_an_invalid_config_exits_2_listing_every_problem(tmp_path: Path, ca: LabCa) -> None:
    config = write_config(tmp_path, ca, listen="lab:443", idle_timeout=-1, lifetime="5h")
    done = subprocess.run(
        [sys.executable, "-m", "devnet.gateway", "--config", str(config)],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    problems = done.stderr.splitlines()
    assert len(problems) == 3, problems
    assert all(line.startswith(f"{config}: ") for line in problems)
    (logged,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert logged["event"] == "gateway.config_invalid" and len(logged["problems"]) == 3
    missing_key = write_config(tmp_path, ca, key_file=str(tmp_path / "absent.key"))
    done = subprocess.run(
        [sys.executable, "-m", "devnet.gateway", "--config", str(missing_key)],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot load cert_file/key_file" in done.stderr
