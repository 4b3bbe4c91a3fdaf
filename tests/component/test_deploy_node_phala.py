"""``deploy/node.sh`` with ``PROVIDER=phala``, run by a real bash as an operator runs it, against:

- the RECORDING STAND-IN for the ``phala`` CLI (``tests/standins/phala``, first on PATH; talks to no cloud):
  the exact command lines of ``all`` (first run: list, deploy under the member app id, get, restart because
  the CVM booted before its compose hash was allowlisted), ``all`` again (no phala call), ``all`` with its
  state lost after the deploy (list only: no second CVM), ``update`` (prepare only, get, commit with the
  allowlist done on the cluster) and ``restart``;
- a real anvil with our contracts: the member app (CREATE2) and its app-id approval, the compose hashes on
  the cluster's allowlist before anything is applied, the signer's top-up, each sent once (the owner's nonce
  says so);
- a real aiohttp server on 127.0.0.1 standing in for the node's ``/healthz`` behind the gateway
  (HEALTH_URL overrides the gateway URL: nothing else is contacted).

Every log line has a UTC timestamp; neither the owner key, the Phala API key nor the commit token appears in
a log or in the routine's output.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from devnet.deployment import Deployment
from sidecar.chain.contracts import ClusterClient, MemberAppFactoryClient
from sidecar.chain.rpc import ChainConnection, checksum
from sidecar.chain.tx import LocalSigner
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.measured import measured_literals
from sidecar.http import Runner, start_tcp
from tests.component.conftest import CHAIN_ID

pytestmark = [pytest.mark.component, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
ROUTINE = REPO / "deploy" / "node.sh"
STANDINS = REPO / "tests" / "standins"
COMPOSE = REPO / "compose" / "node.yaml"
HOST = "127.0.0.1"
NODE = "node-ph1"
OWNER_KEY = "0x" + DEVNET_DEPLOYER_KEY.reveal().hex()
OWNER = LocalSigner(DEVNET_DEPLOYER_KEY).address
API_KEY = "phala-api-key-made-up-for-the-test"
KMS_CONTRACT = "0x" + "4b" * 20
KMS_ROOT = "0x" + "4c" * 20
MEMBER_ID = "0x" + "a1" * 32
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
ETH = 10**18


@dataclass
class FakeNode:
    """The node's /healthz as the sidecar answers it through the gateway (healthy, its signer shown)."""

    signer: Address

    async def healthz(self, _: web.Request) -> web.Response:
        body = {
            "phase": "healthy",
            "healthy": True,
            "reason": "",
            "node": {"signer": str(self.signer), "member_id": MEMBER_ID, "mesh_ip": "10.13.0.7"},
            "peers": {"desired": 2, "configured": 2, "live": 2},
        }
        return web.json_response(body)


@pytest.fixture
async def node_url() -> AsyncIterator[tuple[str, FakeNode]]:
    fake = FakeNode(LocalSigner(SecretBytes(os.urandom(32))).address)
    app = web.Application()
    app.router.add_get("/healthz", fake.healthz)
    runner: Runner = await start_tcp(app, HOST, 0)
    try:
        yield f"http://{HOST}:{runner.port}/healthz", fake
    finally:
        await runner.close()


@dataclass
class Phala:
    """The routine's environment and what the stand-in recorded."""

    tmp: Path
    anvil: AnvilProcess
    stack: Deployment
    health_url: str

    @property
    def standin(self) -> Path:
        return self.tmp / "phala"

    @property
    def rendered(self) -> Path:
        """Where the routine renders compose/node.yaml with the cluster's trust anchors."""
        return self.tmp / "state" / f"node-{NODE}" / "node.yaml"

    def env(self, env_file: Path) -> dict[str, str]:
        return {
            "PATH": f"{STANDINS}:{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
            "HOME": str(self.tmp),
            "PROVIDER": "phala",
            "PHALA_STANDIN_DIR": str(self.standin),
            "PHALA_CLOUD_API_KEY": API_KEY,
            "PHALA_KMS_CONTRACT": KMS_CONTRACT,
            "COMPOSE": str(COMPOSE),
            "ENV_FILE": str(env_file),
            "ATTESTMESH_RPC_URL": self.anvil.rpc_url,
            "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
            "ATTESTMESH_CLUSTER": str(self.stack.cluster),
            "ATTESTMESH_MEMBER_APP_FACTORY": str(self.stack.member_app_factory),
            "ATTESTMESH_KMS_ROOTS": KMS_ROOT,
            "ATTESTMESH_OWNER_KEY": OWNER_KEY,
            "HEALTH_URL": self.health_url,
            "FUND_MIN_BALANCE": "1",
            "FUND_AMOUNT": "2",
            "MESH_VERIFY_TIMEOUT": "30",
            "MESH_VERIFY_INTERVAL": "0.2",
            "DEPLOY_LOG_DIR": str(self.tmp / "logs"),
            "DEPLOY_STATE_DIR": str(self.tmp / "state"),
        }

    async def run(self, verb: str, env_file: Path, **extra: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(ROUTINE), NODE, verb, env={**self.env(env_file), **extra}, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(proc.communicate(), 180)
        return await proc.wait(), output.decode()

    def calls(self) -> list[list[str]]:
        path = self.standin / "calls.jsonl"
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(r["api_key"] for r in records), "a phala call without PHALA_CLOUD_API_KEY"
        return [r["argv"] for r in records]

    def cvm(self) -> dict[str, Any]:
        cvms: dict[str, dict[str, Any]] = json.loads((self.standin / "cvms.json").read_text())
        (only,) = cvms.values()
        return only

    def log(self) -> str:
        return (self.tmp / "logs" / f"node-{NODE}.log").read_text()


async def nonce(conn: ChainConnection) -> int:
    return int(await conn.w3.eth.get_transaction_count(checksum(OWNER)))


def sealed_env(tmp: Path, *names: str) -> Path:
    path = tmp / f"sealed-{len(names)}.env"
    path.write_text("".join(f"{name}=value-of-{name.lower()}\n" for name in names))
    return path


async def test_phala_all_update_restart_send_exactly_the_expected_commands_and_transactions(
    anvil: AnvilProcess,
    conn: ChainConnection,
    stack: Deployment,
    tmp_path: Path,
    node_url: tuple[str, FakeNode],
) -> None:
    url, fake = node_url
    phala = Phala(tmp_path, anvil, stack, url)
    env1 = sealed_env(tmp_path, "ATTESTMESH_RPC_URL", "ATTESTMESH_GATEWAY_DOMAIN")
    cluster = ClusterClient(conn, stack.cluster)
    app = await MemberAppFactoryClient(conn, stack.member_app_factory).predict(stack.cluster, NODE)
    outputs = []

    # all: the app contract and its approval, the CVM under that app id, the hash allowlisted, a restart
    # (it booted before its hash was allowed), the signer topped up, mesh-verify.
    before = await nonce(conn)
    rc, output = await phala.run("all", env1)
    outputs.append(output)
    assert rc == 0, output
    cvm = phala.cvm()
    cvm_id, compose_hash = cvm["vm_uuid"], Bytes32.from_hex(cvm["compose_hash"])
    assert phala.calls() == [
        ["cvms", "list", "--json"],
        ["deploy", "--name", NODE, "--compose", str(phala.rendered), "-e", str(env1), "--kms", "base",
         "--kms-contract", KMS_CONTRACT, "--custom-app-id", str(app), "--json"],
        ["cvms", "get", cvm_id, "--json"],
        ["cvms", "restart", cvm_id],
    ]  # fmt: skip
    assert cvm["app_id"] == app.hex.removeprefix("0x").lower()
    # The CVM got the template rendered with the cluster's trust anchors as literals (measured).
    assert measured_literals(phala.rendered.read_text()) == {
        "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
        "ATTESTMESH_CLUSTER": str(stack.cluster),
        "ATTESTMESH_MEMBER_APP_FACTORY": str(stack.member_app_factory),
        "ATTESTMESH_KMS_ROOTS": str(Address.from_hex(KMS_ROOT)),  # rendered in checksum form
        "ATTESTMESH_INDEXER_REGISTRY": "",
    }
    assert await cluster.allowed_app_id(app) and await cluster.allowed_compose_hash(compose_hash)
    assert await conn.get_balance(fake.signer) == 2 * ETH
    # member app deploy, its approval, the compose hash, the top-up
    assert await nonce(conn) == before + 4
    assert "done: changed allowlist,app,create,fund,restart" in phala.log()

    # all again: nothing to ask Phala, nothing to send.
    before, count = await nonce(conn), len(phala.calls())
    rc, output = await phala.run("all", env1)
    outputs.append(output)
    assert rc == 0, output
    assert phala.calls()[count:] == []
    assert await nonce(conn) == before
    assert "done: nothing changed (no transaction, no boot, no restart)" in phala.log()

    # all with its state lost after the deploy (killed before it recorded the CVM): found by name.
    (tmp_path / "state" / f"node-{NODE}" / "CVM_ID").unlink()
    count = len(phala.calls())
    rc, output = await phala.run("all", env1)
    outputs.append(output)
    assert rc == 0, output
    assert phala.calls()[count:] == [["cvms", "list", "--json"], ["cvms", "get", cvm_id, "--json"]]
    assert await nonce(conn) == before
    assert len(json.loads((phala.standin / "cvms.json").read_text())) == 1

    # update with a new sealed-env name: prepare only -> allowlist on the cluster -> commit -> verify.
    env2 = sealed_env(tmp_path, "ATTESTMESH_RPC_URL", "ATTESTMESH_GATEWAY_DOMAIN", "ATTESTMESH_LOG_LEVEL")
    count, before = len(phala.calls()), await nonce(conn)
    rc, output = await phala.run("update", env2)
    outputs.append(output)
    assert rc == 0, output
    new_hash = Bytes32.from_hex(phala.cvm()["compose_hash"])
    assert new_hash != compose_hash and await cluster.allowed_compose_hash(new_hash)
    commit = next(c for c in phala.calls()[count:] if "--token" in c)
    token = commit[commit.index("--token") + 1]
    assert phala.calls()[count:] == [
        ["deploy", "--cvm-id", cvm_id, "--compose", str(phala.rendered), "-e", str(env2), "--prepare-only",
         "--json"],
        ["cvms", "get", cvm_id, "--json"],
        ["deploy", "--cvm-id", cvm_id, "--commit", "--token", token, "--compose-hash", str(new_hash),
         "--transaction-hash", "already-registered", "--json"],
        ["cvms", "list", "--json"],  # the retire step: does another CVM still run the old compose?
    ]  # fmt: skip
    # addComposeHash of the new compose, and removeComposeHash of the one the node left (no CVM runs it).
    assert await nonce(conn) == before + 2
    assert not await cluster.allowed_compose_hash(compose_hash)
    run = phala.log()[phala.log().rindex("run started") :]
    order = ["step prepare started", f"new compose hash {new_hash}", "step allowlist started",
             "allowlisted (tx 0x", "step apply started", "step mesh-verify done",
             f"identity carried over: member {MEMBER_ID}", "step retire started",
             f"compose hash {compose_hash} on cluster", "removed from the allowlist (tx 0x",
             "done: changed allowlist,apply,retire"]  # fmt: skip
    positions = [run.index(marker) for marker in order]
    assert positions == sorted(positions), run

    # update again: prepare only (to learn the hash), and nothing applied or sent.
    count, before = len(phala.calls()), await nonce(conn)
    rc, output = await phala.run("update", env2)
    outputs.append(output)
    assert rc == 0, output
    assert [c[:4] for c in phala.calls()[count:]] == [
        ["deploy", "--cvm-id", cvm_id, "--compose"],
        ["cvms", "get", cvm_id, "--json"],
    ]
    assert await nonce(conn) == before

    # An image roll: the same template and sealed env, the sidecar pinned to a digest (SIDECAR_IMAGE): a new
    # compose hash, allowlisted before the commit; the compose the node left is retired after it.
    pinned_ref = "ghcr.io/someone/attestmesh-sidecar@sha256:" + "d" * 64
    count, before = len(phala.calls()), await nonce(conn)
    rc, output = await phala.run("update", env2, SIDECAR_IMAGE=pinned_ref)
    outputs.append(output)
    assert rc == 0, output
    sidecar = yaml.safe_load(phala.rendered.read_text())["services"]["sidecar"]
    assert sidecar["image"] == pinned_ref and sidecar["pull_policy"] == "missing"
    pinned_hash = Bytes32.from_hex(phala.cvm()["compose_hash"])
    assert pinned_hash not in (compose_hash, new_hash) and await cluster.allowed_compose_hash(pinned_hash)
    assert not await cluster.allowed_compose_hash(new_hash)
    assert [c[:2] for c in phala.calls()[count:]] == [["deploy", "--cvm-id"], ["cvms", "get"],
                                                       ["deploy", "--cvm-id"], ["cvms", "list"]]  # fmt: skip
    assert await nonce(conn) == before + 2
    assert "done: changed allowlist,apply,retire" in phala.log()

    # restart: exactly `phala cvms restart`.
    count = len(phala.calls())
    rc, output = await phala.run("restart", env2)
    outputs.append(output)
    assert rc == 0, output
    assert phala.calls()[count:] == [["cvms", "restart", cvm_id]]

    text = phala.log()
    for line in text.splitlines():
        assert STAMP.match(line) or re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ   \| ", line), line
    for secret in (OWNER_KEY, OWNER_KEY[2:], API_KEY, token):
        for where in (text, *outputs):
            assert secret not in where


async def test_phala_settings_are_checked_before_anything_is_sent(
    anvil: AnvilProcess, stack: Deployment, tmp_path: Path, node_url: tuple[str, FakeNode]
) -> None:
    url, _ = node_url
    phala = Phala(tmp_path, anvil, stack, url)
    env = phala.env(sealed_env(tmp_path, "ATTESTMESH_RPC_URL"))
    del env["ATTESTMESH_CLUSTER"], env["ATTESTMESH_CHAIN_ID"], env["ATTESTMESH_KMS_ROOTS"]
    proc = await asyncio.create_subprocess_exec(
        str(ROUTINE), NODE, "all", env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await proc.communicate()
    assert await proc.wait() == 1
    assert "not set: ATTESTMESH_CHAIN_ID ATTESTMESH_CLUSTER ATTESTMESH_KMS_ROOTS" in output.decode()
    assert phala.calls() == []
    usage = await asyncio.create_subprocess_exec(
        str(ROUTINE), NODE, "bogus", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    text, _ = await usage.communicate()
    assert await usage.wait() == 2 and "Verbs:" in text.decode()


async def test_phala_refuses_a_sealed_env_that_names_a_trust_anchor(
    anvil: AnvilProcess, stack: Deployment, tmp_path: Path, node_url: tuple[str, FakeNode]
) -> None:
    url, _ = node_url
    phala = Phala(tmp_path, anvil, stack, url)
    env_file = sealed_env(tmp_path, "ATTESTMESH_RPC_URL", "ATTESTMESH_CLUSTER", "ATTESTMESH_KMS_ROOTS")
    rc, output = await phala.run("all", env_file)
    assert rc == 1, output
    assert "ENV_FILE names trust anchors (ATTESTMESH_CLUSTER ATTESTMESH_KMS_ROOTS)" in output
    assert phala.calls() == []  # nothing was asked of Phala, nothing sent
