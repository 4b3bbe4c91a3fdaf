"""``deploy/indexer.sh`` with ``PROVIDER=phala``, run by a real bash as an operator runs it, against:

- the RECORDING STAND-IN for the ``phala`` CLI (``tests/standins/phala``, first on PATH; talks to no cloud):
  the exact command lines of ``all`` (first run: list, then deploy), ``all`` again (no phala call at all; with
  its state lost: list only, no second deploy) and ``update`` (prepare only, apply, restart; again: prepare
  only);
- a real anvil with our contracts: the IndexerRegistry the routine registers in (``setIndexer`` only when the
  key changes: the owner's nonce says so);
- a real aiohttp server on 127.0.0.1 standing in for the indexer's ``/status`` and ``/healthz`` (the CVM's
  gateway URLs are overridden with INDEXER_STATUS_URL / INDEXER_HEALTH_URL: nothing else is contacted).

Every line of the routine's log has a UTC timestamp; neither the owner key, the Phala API key nor the RPC
URL's API key from the sealed env file appears in a log or in the routine's output.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from devnet.deployment import Deployment
from sidecar.chain.contracts import IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection, checksum
from sidecar.chain.tx import LocalSigner
from sidecar.core.ids import Bytes32
from sidecar.http import Runner, start_tcp
from tests.component.conftest import CHAIN_ID

pytestmark = [pytest.mark.component, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
ROUTINE = REPO / "deploy" / "indexer.sh"
STANDINS = REPO / "tests" / "standins"
COMPOSE = REPO / "compose" / "indexer.yaml"
HOST = "127.0.0.1"
NAME = "indexer-1"
OWNER_KEY = "0x" + DEVNET_DEPLOYER_KEY.reveal().hex()
OWNER = LocalSigner(DEVNET_DEPLOYER_KEY).address
API_KEY = "phala-api-key-made-up-for-the-test"
RPC_API_KEY = "rpcapikeyinthesealedenv"
KMS_CONTRACT = "0x" + "4b" * 20
ENDPOINT = "wss://indexer.example/v1/subscribe"  # written on chain only; nothing connects to it
CODE_ID = Bytes32(b"\x1d" * 20 + bytes(12))
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def key(version: int) -> Bytes32:
    return Bytes32(bytes([0x70 + version]) * 32)


@dataclass
class FakeIndexer:
    """The indexer's /status and /healthz as a CVM behind the gateway would answer them. A key version set
    with ``after_restart`` is served only once the stand-in has recorded one more ``cvms restart`` and then
    ``late`` more requests were answered: the old indexer answers until the CVM actually goes down."""

    standin: Path
    version: int = 1
    healthy: bool = True
    pending: tuple[int, int] | None = None  # (version, restarts recorded when armed)
    late: int = 0
    served: list[int] = field(default_factory=list)

    def restarts(self) -> int:
        calls = self.standin / "calls.jsonl"
        if not calls.exists():
            return 0
        return sum(
            json.loads(line)["argv"][:2] == ["cvms", "restart"] for line in calls.read_text().splitlines()
        )

    def after_restart(self, version: int, late: int) -> None:
        self.pending, self.late = (version, self.restarts()), late

    def current(self) -> int:
        if self.pending is not None and self.restarts() > self.pending[1]:
            if self.late > 0:
                self.late -= 1
            else:
                self.version, self.pending = self.pending[0], None
        return self.version

    async def status(self, _: web.Request) -> web.Response:
        version = self.current()
        self.served.append(version)
        return web.json_response(
            {
                "public_key": str(key(version)),
                "key_version": version,
                "code_id": str(CODE_ID),
                "public_url": ENDPOINT,
                "subscribers": 0,
            }
        )

    async def healthz(self, _: web.Request) -> web.Response:
        body = {"healthy": self.healthy, "ready": True, "lag_blocks": 0, "max_head_lag": 10}
        return web.json_response(body, status=200 if self.healthy else 503)


@dataclass
class Routine:
    tmp: Path
    env: dict[str, str]

    @property
    def standin(self) -> Path:
        return self.tmp / "standin"

    @property
    def log(self) -> Path:
        return self.tmp / "logs" / f"indexer-{NAME}.log"

    def write_env_file(self, version: int) -> None:
        Path(self.env["ENV_FILE"]).write_text(
            f"ATTESTMESH_INDEXER_RPC_URL=https://rpc.example/v2/{RPC_API_KEY}\n"
            f"ATTESTMESH_INDEXER_CHAIN_ID={CHAIN_ID}\n"
            f"ATTESTMESH_INDEXER_PUBLIC_URL={ENDPOINT}\n"
            f"ATTESTMESH_INDEXER_KEY_VERSION={version}\n"
        )

    def calls(self) -> list[list[str]]:
        path = self.standin / "calls.jsonl"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(entry["api_key"] for entry in entries)  # PHALA_CLOUD_API_KEY reached every call
        return [entry["argv"] for entry in entries]

    async def run(self, verb: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done: subprocess.CompletedProcess[str] = await asyncio.to_thread(
            subprocess.run,
            ["bash", str(ROUTINE), NAME, verb],
            env={**self.env, **extra},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return done

    def outputs(self) -> list[str]:
        return [self.log.read_text()]


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeIndexer, str]]:
    indexer = FakeIndexer(tmp_path / "standin")
    app = web.Application()
    app.router.add_get("/status", indexer.status)
    app.router.add_get("/healthz", indexer.healthz)
    runner: Runner = await start_tcp(app, HOST, 0, close_timeout=2.0)
    try:
        yield indexer, f"http://{HOST}:{runner.port}"
    finally:
        await runner.close()


@pytest.fixture
def routine(tmp_path: Path, anvil: AnvilProcess, stack: Deployment, fake: tuple[FakeIndexer, str]) -> Routine:
    _, base = fake
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ATTESTMESH_", "PHALA_", "DEPLOY_"))}
    env = {
        **clean,
        "PATH": f"{STANDINS}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PROVIDER": "phala",
        "PHALA_STANDIN_DIR": str(tmp_path / "standin"),
        "PHALA_CLOUD_API_KEY": API_KEY,
        "PHALA_KMS_CONTRACT": KMS_CONTRACT,
        "ATTESTMESH_RPC_URL": anvil.rpc_url,
        "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
        "ATTESTMESH_INDEXER_REGISTRY": str(stack.indexer_registry),
        "ATTESTMESH_OWNER_KEY": OWNER_KEY,
        "ENV_FILE": str(tmp_path / "indexer.env"),
        "INDEXER_STATUS_URL": f"{base}/status",
        "INDEXER_HEALTH_URL": f"{base}/healthz",
        "DEPLOY_LOG_DIR": str(tmp_path / "logs"),
        "DEPLOY_STATE_DIR": str(tmp_path / "state"),
        "VERIFY_TIMEOUT": "20",
        "VERIFY_INTERVAL": "0.2",
        "STATUS_TIMEOUT": "20",
    }
    made = Routine(tmp_path, env)
    made.write_env_file(1)
    return made


async def owner_nonce(conn: ChainConnection) -> int:
    return int(await conn.w3.eth.get_transaction_count(checksum(OWNER)))


def deploy_argv(env_file: str) -> list[str]:
    return ["deploy", "--name", NAME, "--compose", str(COMPOSE), "-e", env_file, "--kms", "base",
            "--kms-contract", KMS_CONTRACT, "--json"]  # fmt: skip


def update_argv(cvm: str, env_file: str, *extra: str) -> list[str]:
    return ["deploy", "--cvm-id", cvm, "--compose", str(COMPOSE), "-e", env_file, *extra, "--json"]


def run_lines(log: str, start: int) -> list[str]:
    """The routine-level lines (not step output) of the log from line ``start`` on."""
    return [line for line in log.splitlines()[start:] if not re.match(rf"{STAMP}   \| ", line)]


def assert_clean(routine: Routine, *runs: subprocess.CompletedProcess[str]) -> None:
    """Every log line is timestamped (UTC); no secret in the log or in any output."""
    text = routine.log.read_text()
    for line in text.splitlines():
        assert re.match(rf"{STAMP} ", line), line
    for output in (text, *(r.stdout + r.stderr for r in runs)):
        for secret in (OWNER_KEY, OWNER_KEY[2:], API_KEY, RPC_API_KEY):
            assert secret.lower() not in output.lower()


async def test_phala_all_update_register_verify_with_exact_command_lines(
    routine: Routine, conn: ChainConnection, stack: Deployment, fake: tuple[FakeIndexer, str]
) -> None:
    indexer, _ = fake
    env_file = routine.env["ENV_FILE"]
    registry = IndexerRegistryClient(conn, stack.indexer_registry)
    nonce = await owner_nonce(conn)
    runs = []

    # 1. all, first run: find no CVM of this name, deploy one, register key v1 (one tx), verify.
    first = await routine.run("all")
    runs.append(first)
    assert first.returncode == 0, first.stderr
    calls = routine.calls()
    assert calls[0] == ["cvms", "list", "--json"]
    assert calls[1] == deploy_argv(env_file)
    assert len(calls) == 2
    cvms = json.loads((routine.standin / "cvms.json").read_text())
    (cvm,) = cvms
    record = await registry.current()
    assert (record.endpoint, record.code_id, record.pub_key) == (ENDPOINT, CODE_ID, key(1))
    assert await owner_nonce(conn) == nonce + 1
    log = routine.log.read_text()
    assert "indexer registered" in log and "indexer verified: healthy" in log
    assert log.rstrip().endswith("all: done: changed deploy,register")
    state = routine.tmp / "state" / f"indexer-{NAME}"
    assert (state / "CVM_ID").read_text().strip() == cvm
    assert (state / "APP_ID").read_text().strip() == cvms[cvm]["app_id"]

    # 2. all again: the CVM is recorded (no phala call at all), the record matches (no tx).
    again = await routine.run("all")
    runs.append(again)
    assert again.returncode == 0, again.stderr
    assert len(routine.calls()) == 2
    assert await owner_nonce(conn) == nonce + 1
    assert (
        routine.log.read_text()
        .rstrip()
        .endswith("all: done: nothing changed (no transaction, no deploy, no restart)")
    )

    # 3. all with its state lost (as if killed after `phala deploy`): found by name, no second deploy.
    for path in state.iterdir():
        path.unlink()
    found = await routine.run("all")
    runs.append(found)
    assert found.returncode == 0, found.stderr
    assert routine.calls()[2:] == [["cvms", "list", "--json"]]
    assert f"CVM {cvm} named {NAME} exists already" in routine.log.read_text()
    assert await owner_nonce(conn) == nonce + 1

    # 4. update to key v2: prepare only (the compose hash is logged), apply, restart; register waits for
    #    the restarted indexer's key v2 (the old one still answers for a while after the restart: its key
    #    is never registered) and sends one tx; verify.
    routine.write_env_file(2)
    indexer.after_restart(2, late=3)
    indexer.served.clear()
    start = len(routine.log.read_text().splitlines())
    update = await routine.run("update")
    runs.append(update)
    assert update.returncode == 0, update.stderr
    assert routine.calls()[3:] == [
        update_argv(cvm, env_file, "--prepare-only"),
        update_argv(cvm, env_file),
        ["cvms", "restart", cvm],
    ]
    log = routine.log.read_text()
    prepared = json.loads((routine.standin / "cvms.json").read_text())[cvm]["compose_hash"]
    assert f"compose hash of the update: 0x{prepared}" in log
    assert "the cluster allowlist does not gate the indexer" in log
    steps = [line.split(": ", 1)[1] for line in run_lines(log, start) if " step " in line]
    assert steps == [
        f"step {name} {what}"
        for name in ("prepare", "apply", "restart", "register", "verify")
        for what in ("started", "done")
    ]
    assert indexer.served[:4] == [1, 1, 1, 2]  # register polled past the old key
    assert (await registry.current()).pub_key == key(2)
    assert await owner_nonce(conn) == nonce + 2
    assert log.rstrip().endswith("update: done: changed apply,register,restart")

    # 5. update again with the same files: prepare only; nothing applied, restarted or sent.
    same = await routine.run("update")
    runs.append(same)
    assert same.returncode == 0, same.stderr
    assert routine.calls()[6:] == [update_argv(cvm, env_file, "--prepare-only")]
    assert await owner_nonce(conn) == nonce + 2
    assert (
        routine.log.read_text()
        .rstrip()
        .endswith("update: done: nothing changed (no transaction, no deploy, no restart)")
    )

    # 6. The indexer runs key v3, unregistered: verify fails naming the mismatch; register fixes it.
    indexer.version = 3
    failed = await routine.run("verify", VERIFY_TIMEOUT="1")
    runs.append(failed)
    assert failed.returncode == 1
    log = routine.log.read_text()
    assert f"the registry names key {key(2)} but the indexer signs with {key(3)} (key v3)" in log
    assert log.rstrip().splitlines()[-1].split(": ", 1)[1].startswith("FAILED: verify:")
    fixed = await routine.run("register")
    runs.append(fixed)
    assert fixed.returncode == 0, fixed.stderr
    assert (await registry.current()).pub_key == key(3)
    assert await owner_nonce(conn) == nonce + 3
    verified = await routine.run("verify")
    runs.append(verified)
    assert verified.returncode == 0, verified.stderr
    assert len(routine.calls()) == 7  # neither register nor verify talks to Phala

    # 7. Unhealthy: verify fails and says why.
    indexer.healthy = False
    sick = await routine.run("verify", VERIFY_TIMEOUT="0")
    runs.append(sick)
    assert sick.returncode == 1
    assert "answered 503: healthy False" in routine.log.read_text()
    assert_clean(routine, *runs)


async def test_phala_refuses_what_it_cannot_do_without_calling_phala(routine: Routine) -> None:
    """Bad usage exits 2; a missing setting or an update before all exits 1, each saying why; the gateway
    URLs are derived from the recorded app id only (not set here: nothing is contacted)."""
    bad = await routine.run("rotate")
    assert bad.returncode == 2 and "Verbs:" in bad.stderr
    no_domain = await routine.run("verify", INDEXER_STATUS_URL="", INDEXER_HEALTH_URL="")
    assert no_domain.returncode == 1
    assert "no app id recorded for indexer-1 (run the all verb first)" in routine.log.read_text()
    early = await routine.run("update")
    assert early.returncode == 1
    assert "no CVM recorded for indexer-1 (run the all verb first)" in routine.log.read_text()
    no_kms = await routine.run("all", PHALA_KMS_CONTRACT="")
    assert no_kms.returncode == 1 and "not set: PHALA_KMS_CONTRACT" in routine.log.read_text()
    assert routine.calls() == [["cvms", "list", "--json"]]  # no update, no deploy was sent
    assert_clean(routine, bad, no_domain, early, no_kms)
