"""The guest-agent simulator on a real Unix socket, driven by the official ``dstack-sdk`` and ``GuestAgent``.

One simulator runs as a real ``python -m devnet.simulator`` subprocess (endpoint given through
``DSTACK_SIMULATOR_ENDPOINT``); the others are served in-process with ``serve_unix``. Malformed requests go
over a raw aiohttp connection on the socket. No mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from dstack_sdk import AsyncDstackClient

from devnet.kms import DevnetKms
from devnet.simulator import SimulatorConfig, parse_dev_quote, serve_unix
from devnet.simulator.quote import EventLogEntry, replay_event_log, runtime_event_digest
from devnet.simulator.server import RunningSimulator
from sidecar.core.ids import Address
from sidecar.core.keys import KeyPath, key_path, secp256k1_address
from sidecar.core.sigchain import build_proof, verify_proof
from sidecar.dstack import (
    GuestAgent,
    GuestAgentError,
    GuestAgentRejected,
    GuestAgentUnavailable,
)

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
SIGNER_PATH = key_path(KeyPath.SIGNER, 31337, Address(b"\xc1" * 20))  # any cluster's
APP_ID = Address.from_hex("0x7e57a99000000000000000000000000000000001")
INSTANCE_ID = bytes.fromhex("00000000000000000000000000000000000000b2")
# Exact bytes matter: non-ASCII text, odd spacing and a trailing newline must survive untouched.
COMPOSE = '{"name": "attestmesh-node",  "runner": "docker-compose", "note": "näive ✓"}\n'.encode()
READY_DEADLINE_SECONDS = 10.0


@dataclass(frozen=True)
class Node:
    dir: Path
    config_path: Path
    compose_path: Path
    socket: Path

    @property
    def config(self) -> SimulatorConfig:
        return SimulatorConfig.load(self.config_path)


@pytest.fixture
def node() -> Iterator[Node]:
    # A short directory: sun_path holds at most 107 bytes, pytest's tmp_path can be longer.
    root = Path(tempfile.mkdtemp(prefix="am-sim-", dir="/tmp"))
    try:
        compose = root / "app-compose.json"
        compose.write_bytes(COMPOSE)
        config = root / "node.json"
        config.write_text(
            json.dumps(
                {
                    "app_id": "0x" + APP_ID.hex,
                    "instance_id": INSTANCE_ID.hex(),
                    "app_compose_path": "app-compose.json",
                    "app_name": "node-1",
                }
            )
        )
        yield Node(root, config, compose, root / "dstack.sock")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def sim(node: Node) -> AsyncIterator[RunningSimulator]:
    running = await serve_unix(node.socket, node.config)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def sdk(sim: RunningSimulator) -> AsyncIterator[AsyncDstackClient]:
    async with AsyncDstackClient(str(sim.socket_path)) as client:
        yield client


@pytest.fixture
async def agent(sim: RunningSimulator) -> AsyncIterator[GuestAgent]:
    agent = GuestAgent(str(sim.socket_path))
    try:
        yield agent
    finally:
        await agent.close()


@contextlib.asynccontextmanager
async def raw_session(path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(path)), base_url="http://localhost"
    ) as session:
        yield session


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_until_ready(agent: GuestAgent, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    while True:
        if proc.returncode is not None:
            pytest.fail(f"simulator exited with {proc.returncode}: {read_log(log)}")
        try:
            if await agent.version() is not None:
                return
        except GuestAgentUnavailable:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"simulator not ready after {READY_DEADLINE_SECONDS}s: {read_log(log)}")
        await asyncio.sleep(0.05)


# --- a real subprocess, endpoint from the environment ---------------------------------------------


async def test_subprocess_simulator_through_env_endpoint(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    log = node.dir / "simulator.log"
    env = {k: v for k, v in os.environ.items() if k != "ATTESTMESH_DEVNET_KMS_SEED"}
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "devnet.simulator",
            "--config",
            str(node.config_path),
            "--socket",
            str(node.socket),
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        monkeypatch.setenv("DSTACK_SIMULATOR_ENDPOINT", str(node.socket))
        agent = GuestAgent()  # resolves the endpoint from the environment, like the sidecar
        assert agent.endpoint == str(node.socket)
        try:
            await wait_until_ready(agent, proc, log)
            info = await agent.info()
            assert info.compose_hash.raw == hashlib.sha256(COMPOSE).digest()
            derived = await agent.get_key(SIGNER_PATH, KeyPath.SIGNER.purpose)
        finally:
            await agent.close()

        async with AsyncDstackClient() as client:  # also the SDK with no endpoint argument
            resp = await client.get_key(SIGNER_PATH, KeyPath.SIGNER.purpose)
        assert resp.decode_key() == derived.key.reveal()
        proof = build_proof(APP_ID, derived.key, derived.signature_chain)
        verify_proof(proof, {DevnetKms().root_address})

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
        assert not node.socket.exists()
        text = log.read_text()
        assert "simulator.ready" in text and "simulator.stopped" in text
        assert derived.key.reveal().hex() not in text
        assert DevnetKms().app_key(APP_ID).reveal().hex() not in text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_subprocess_refuses_a_bad_seed_without_echoing_it(node: Node) -> None:
    secret = "not-a-hex-seed-value"
    env = {**os.environ, "ATTESTMESH_DEVNET_KMS_SEED": secret}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devnet.simulator",
        "--config",
        str(node.config_path),
        "--socket",
        str(node.socket),
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2
    assert b"ATTESTMESH_DEVNET_KMS_SEED" in err
    assert secret.encode() not in out + err
    assert not node.socket.exists()


# --- GetKey ------------------------------------------------------------------------------------


async def test_get_key_chain_verifies_against_the_devnet_kms(
    sdk: AsyncDstackClient, agent: GuestAgent
) -> None:
    resp = await sdk.get_key(SIGNER_PATH, KeyPath.SIGNER.purpose)
    key = resp.decode_key()
    chain = resp.decode_signature_chain()
    assert len(key) == 32 and [len(s) for s in chain] == [65, 65]

    derived = await agent.get_key(SIGNER_PATH, KeyPath.SIGNER.purpose)
    assert derived.key.reveal() == key and derived.signature_chain == tuple(chain)
    assert key.hex() not in repr(derived)

    proof = build_proof(APP_ID, derived.key, derived.signature_chain)
    verify_proof(proof, {DevnetKms().root_address})
    assert proof.signer == secp256k1_address(derived.key)


async def test_get_key_is_deterministic_and_purpose_free(sdk: AsyncDstackClient) -> None:
    first = await sdk.get_key("attestmesh/identity/v1", "")
    again = await sdk.get_key("attestmesh/identity/v1", "")
    other_purpose = await sdk.get_key("attestmesh/identity/v1", "something")
    ed25519 = await sdk.get_key("attestmesh/identity/v1", "", "ed25519")  # the SDK probes Version first
    other_path = await sdk.get_key("attestmesh/seal/v1", "")
    assert first.key == again.key == other_purpose.key == ed25519.key
    assert first.signature_chain == again.signature_chain
    assert other_purpose.signature_chain[0] != first.signature_chain[0]
    assert ed25519.signature_chain[1] == first.signature_chain[1]
    assert other_path.key != first.key


async def test_unknown_algorithm_is_a_terminal_400(sdk: AsyncDstackClient, agent: GuestAgent) -> None:
    with pytest.raises(httpx.HTTPStatusError) as info:
        await sdk.get_key("p", "", "rsa")
    assert info.value.response.status_code == 400
    assert "unsupported algorithm" in info.value.response.json()["error"]
    with pytest.raises(GuestAgentRejected, match="HTTP 400") as rejected:
        await agent.get_key("p", "", "rsa")
    assert not rejected.value.transient


# --- Info ----------------------------------------------------------------------------------------


async def test_info_reports_the_compose_file_exactly(
    sdk: AsyncDstackClient, agent: GuestAgent, node: Node
) -> None:
    info = await sdk.info()
    assert info.compose_hash == hashlib.sha256(node.compose_path.read_bytes()).hexdigest()
    assert info.tcb_info.app_compose == node.compose_path.read_text(encoding="utf-8")
    assert info.app_id == APP_ID.hex and info.instance_id == INSTANCE_ID.hex()
    assert info.app_name == "node-1"
    assert json.loads(info.key_provider_info)["name"] == "kms"
    assert info.cloud_vendor == "attestmesh-devnet"

    node_info = await agent.info()
    assert node_info.app_id == APP_ID
    assert node_info.instance_id == INSTANCE_ID
    assert node_info.compose_hash.hex == info.compose_hash
    assert node_info.app_compose.encode() == COMPOSE
    assert node_info.key_provider == "kms"
    assert node_info.mr_aggregated.hex == info.mr_aggregated
    assert node_info.tcb_info["rtmr3"] == info.tcb_info.rtmr3


# --- GetQuote / Attest ---------------------------------------------------------------------------


async def test_get_quote_right_pads(sdk: AsyncDstackClient, agent: GuestAgent) -> None:
    resp = await sdk.get_quote(b"attestmesh")
    assert bytes.fromhex(resp.report_data) == b"attestmesh".ljust(64, b"\x00")
    quote = parse_dev_quote(resp.decode_quote())
    assert quote.report_data == bytes.fromhex(resp.report_data)
    assert quote.compose_hash == hashlib.sha256(COMPOSE).digest()
    # The SDK's replay (which trusts the digest field) agrees with the quoted registers.
    assert resp.replay_rtmrs() == {i: r.hex() for i, r in enumerate(quote.rtmrs)}

    full = await agent.get_quote(b"\x01" * 64)
    assert full.report_data == b"\x01" * 64
    assert parse_dev_quote(full.quote).report_data == b"\x01" * 64
    assert full.event_log[0]["imr"] == 0

    attested = await sdk.attest(b"attestmesh")
    assert parse_dev_quote(attested.decode_attestation()).report_data == quote.report_data


async def test_65_bytes_of_report_data_are_refused(
    sdk: AsyncDstackClient, agent: GuestAgent, sim: RunningSimulator
) -> None:
    # dstack-sdk 0.5.4 refuses > 64 bytes itself, before sending anything ...
    with pytest.raises(ValueError, match="64 bytes"):
        await sdk.get_quote(b"\x00" * 65)
    with pytest.raises(ValueError, match="1 to 64 bytes"):
        await agent.get_quote(b"\x00" * 65)
    # ... so the server's own check is exercised on the wire.
    async with raw_session(sim.socket_path) as session:
        for method in ("GetQuote", "Attest"):
            async with session.post(f"/{method}", json={"report_data": "00" * 65}) as response:
                assert response.status == 400
                assert (await response.json())["error"].startswith("report data is too long")
    assert (await sdk.get_quote(b"still serving")).report_data.startswith(b"still serving".hex())


# --- EmitEvent -----------------------------------------------------------------------------------


async def test_emit_event_extends_rtmr3(sdk: AsyncDstackClient, agent: GuestAgent) -> None:
    before = await sdk.info()
    await sdk.emit_event("attestmesh.joined", b"cluster-1")
    await agent.emit_event("attestmesh.csk", b"\x00\x01")
    after = await sdk.info()

    rtmr3 = bytes.fromhex(before.tcb_info.rtmr3)
    for name, payload in (("attestmesh.joined", b"cluster-1"), ("attestmesh.csk", b"\x00\x01")):
        rtmr3 = hashlib.sha384(rtmr3 + runtime_event_digest(name, payload)).digest()
    assert after.tcb_info.rtmr3 == rtmr3.hex()
    assert after.tcb_info.rtmr0 == before.tcb_info.rtmr0
    assert after.mr_aggregated == before.mr_aggregated  # boot-time value: stable across runtime events
    assert [e.event for e in after.tcb_info.event_log[-2:]] == ["attestmesh.joined", "attestmesh.csk"]

    events = [EventLogEntry.from_json(e.model_dump()) for e in after.tcb_info.event_log]
    assert replay_event_log(events)[3] == rtmr3
    quote = await sdk.get_quote(b"x")
    assert parse_dev_quote(quote.decode_quote()).rtmr3 == rtmr3


# --- Version, Sign/Verify, GetTlsKey -------------------------------------------------------------


async def test_version(sdk: AsyncDstackClient, agent: GuestAgent) -> None:
    version = await sdk.version()
    assert (version.version, version.rev) == ("0.5.8", "attestmesh-devnet")
    assert await agent.version() == "0.5.8"


@pytest.mark.parametrize("algorithm", ["ed25519", "secp256k1"])
async def test_sign_and_verify(sdk: AsyncDstackClient, algorithm: str) -> None:
    signed = await sdk.sign(algorithm, b"hello devnet")
    ok = await sdk.verify(algorithm, b"hello devnet", signed.decode_signature(), signed.decode_public_key())
    bad = await sdk.verify(algorithm, b"hello devnot", signed.decode_signature(), signed.decode_public_key())
    assert ok.valid and not bad.valid
    assert len(signed.signature_chain) == 3


async def test_sign_prehashed(sdk: AsyncDstackClient) -> None:
    digest = hashlib.sha256(b"x").digest()
    signed = await sdk.sign("secp256k1_prehashed", digest)
    ok = await sdk.verify(
        "secp256k1_prehashed", digest, signed.decode_signature(), signed.decode_public_key()
    )
    assert ok.valid


async def test_get_tls_key_is_refused_with_a_json_error(sdk: AsyncDstackClient) -> None:
    with pytest.raises(httpx.HTTPStatusError) as info:
        await sdk.get_tls_key()
    assert info.value.response.status_code == 400
    assert info.value.response.json() == {"error": "GetTlsKey is not supported by the devnet simulator"}


# --- malformed requests on the wire --------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
MALFORMED: list[tuple[str, str, dict[str, str], bytes, int, str]] = [
    ("POST", "/GetKey", JSON, b"{not json", 400, "not valid JSON"),
    ("POST", "/GetKey", JSON, b"\xff\xfe", 400, "not valid JSON"),
    ("POST", "/GetKey", JSON, b"[1, 2]", 400, "JSON object"),
    ("POST", "/GetKey", JSON, b'{"path": 7}', 400, "'path' must be a string"),
    ("POST", "/GetKey", JSON, b'{"purpose": "x"}', 400, "missing field 'path'"),
    ("POST", "/GetKey", {"Content-Type": "application/octet-stream"}, b"\x0a\x01p", 400, "must be JSON"),
    ("POST", "/GetQuote", JSON, b'{"report_data": "0xzz"}', 400, "hex"),
    ("POST", "/GetQuote", JSON, b'{"report_data": "abc"}', 400, "hex"),
    ("POST", "/GetQuote", JSON, b'{"report_data": null}', 400, "must be a string"),
    ("POST", "/EmitEvent", JSON, b'{"event": "e", "payload": "0g"}', 400, "hex"),
    ("POST", "/EmitEvent", JSON, b'{"payload": "00"}', 400, "missing field 'event'"),
    ("POST", "/Sign", JSON, b'{"algorithm": "secp256k1_prehashed", "data": "00"}', 400, "32 bytes"),
    ("POST", "/Verify", JSON, b'{"algorithm": "ed25519"}', 400, "missing field"),
    ("POST", "/GetKey", JSON, b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    ("POST", "/GetKey", JSON, b'{"path": "' + b"a" * (2 * 1024 * 1024) + b'"}', 413, ""),
    ("POST", "/NoSuchMethod", JSON, b"{}", 404, "unknown method"),
    ("POST", "/", JSON, b"{}", 404, ""),
    ("POST", "/a/b", JSON, b"{}", 404, ""),
    ("PUT", "/Info", JSON, b"{}", 405, "GET or POST"),
    ("GET", "/GetQuote?report_data=00&report_data=01", {}, b"", 400, "repeated"),
    ("GET", "/GetQuote", {}, b"", 400, "missing field 'report_data'"),
]


@pytest.mark.parametrize(
    ("verb", "path", "headers", "body", "status", "message"),
    MALFORMED,
    ids=[f"{m[0]}{m[1][:24]}-{m[4]}-{i}" for i, m in enumerate(MALFORMED)],
)
async def test_malformed_requests_get_json_errors_and_the_server_keeps_serving(
    sim: RunningSimulator,
    sdk: AsyncDstackClient,
    verb: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    message: str,
) -> None:
    data: bytes | io.BytesIO = io.BytesIO(body) if len(body) > 1024 * 1024 else body
    async with (
        raw_session(sim.socket_path) as session,
        session.request(verb, path, headers=headers, data=data) as response,
    ):
        assert response.status == status
        assert response.content_type == "application/json"
        payload: Any = await response.json()
        assert isinstance(payload["error"], str) and payload["error"]
        assert message in payload["error"]
    assert (await sdk.version()).version == "0.5.8"


async def test_get_requests_with_query_parameters(sim: RunningSimulator) -> None:
    async with raw_session(sim.socket_path) as session:
        async with session.get("/GetQuote", params={"report_data": "0x1234deadbeef"}) as response:
            assert response.status == 200
            body = await response.json()
            assert body["report_data"] == "1234deadbeef" + "00" * 58
        async with session.get("/Info") as response:
            assert response.status == 200
            assert (await response.json())["compose_hash"] == hashlib.sha256(COMPOSE).hexdigest()
        async with session.post("/Info") as response:  # empty body, no content type: an empty request
            assert response.status == 200
        async with session.post("/Version?json", data=b"{}") as response:
            assert response.status == 200
            assert (await response.json())["version"] == "0.5.8"


async def test_many_concurrent_clients(sim: RunningSimulator) -> None:
    async with AsyncDstackClient(str(sim.socket_path)) as client:
        results = await asyncio.gather(*(client.get_key(f"p/{i}", "") for i in range(50)))
    assert len({r.key for r in results}) == 50


# --- GuestAgent failure classification -----------------------------------------------------------


async def test_missing_socket_is_transient(node: Node) -> None:
    agent = GuestAgent(str(node.socket))  # constructing never fails
    with pytest.raises(GuestAgentUnavailable, match="does not exist") as info:
        await agent.info()
    assert info.value.transient
    await agent.close()


async def test_directory_instead_of_socket_is_terminal(node: Node) -> None:
    node.socket.mkdir()
    agent = GuestAgent(str(node.socket))
    with pytest.raises(GuestAgentRejected, match="is a directory, not a Unix socket") as info:
        await agent.info()
    assert not info.value.transient
    assert isinstance(info.value, GuestAgentError)
    with pytest.raises(GuestAgentRejected, match="not a Unix socket"):
        await agent.version()  # not mistaken for an old agent


async def test_socket_nobody_listens_on_is_transient(node: Node) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stale.bind(str(node.socket))  # bound, never listening: connect() is refused
        agent = GuestAgent(str(node.socket))
        with pytest.raises(GuestAgentUnavailable):
            await agent.version()
        await agent.close()
    finally:
        stale.close()


async def test_agent_survives_a_simulator_restart(node: Node) -> None:
    agent = GuestAgent(str(node.socket))
    try:
        first = await serve_unix(node.socket, node.config)
        try:
            before = await agent.get_key("p")
        finally:
            await first.close()
        assert not node.socket.exists()
        with pytest.raises(GuestAgentUnavailable):
            await agent.get_key("p")
        second = await serve_unix(node.socket, node.config)
        try:
            after = await agent.get_key("p")
        finally:
            await second.close()
        assert after.key.reveal() == before.key.reveal()
    finally:
        await agent.close()


async def test_serve_unix_refuses_live_or_foreign_paths(sim: RunningSimulator, node: Node) -> None:
    with pytest.raises(FileExistsError, match="in use"):
        await serve_unix(sim.socket_path, node.config)
    regular = node.dir / "regular-file"
    regular.write_text("keep me")
    with pytest.raises(FileExistsError, match="not a socket"):
        await serve_unix(regular, node.config)
    assert regular.read_text() == "keep me"


async def test_serve_unix_replaces_a_stale_socket(node: Node) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(node.socket))
    stale.close()  # the file stays behind, as after a SIGKILL
    running = await serve_unix(node.socket, node.config)
    try:
        async with AsyncDstackClient(str(node.socket)) as client:
            assert (await client.version()).version == "0.5.8"
    finally:
        await running.close()


@contextlib.asynccontextmanager
async def misbehaving_agent(path: Path) -> AsyncIterator[None]:
    """A real aiohttp server on a Unix socket that answers the way a broken agent might."""
    never = asyncio.Event()

    async def info(_: web.Request) -> web.Response:
        return web.json_response({"error": "backend unavailable"}, status=503)

    async def get_key(_: web.Request) -> web.Response:
        return web.json_response({"key": "zz", "signature_chain": []})

    async def version(_: web.Request) -> web.Response:
        return web.Response(text="not json", content_type="text/plain")

    async def get_quote(_: web.Request) -> web.Response:
        await never.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/Info", info)
    app.router.add_post("/GetKey", get_key)
    app.router.add_post("/Version", version)
    app.router.add_post("/GetQuote", get_quote)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(path)).start()
        yield
    finally:
        never.set()
        await runner.cleanup()


async def test_failure_classification_against_a_misbehaving_agent(node: Node) -> None:
    async with misbehaving_agent(node.socket):
        agent = GuestAgent(str(node.socket), timeout=0.3)
        try:
            with pytest.raises(GuestAgentUnavailable, match="HTTP 503: backend unavailable"):
                await agent.info()
            with pytest.raises(GuestAgentRejected, match="GetKey"):
                await agent.get_key("p")
            assert await agent.version() is None  # an answer that is no Version answer: an old agent
            with pytest.raises(GuestAgentUnavailable, match="timed out"):
                await agent.get_quote(b"x")
        finally:
            await agent.close()
