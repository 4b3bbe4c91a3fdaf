"""``attestmesh indexer register`` against real parts: anvil with our contracts, the real indexer service
(in-process, its key from a real guest-agent simulator) serving ``/status``, and the CLI as a subprocess with
the owner key in its environment — as an operator runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from devnet.deployment import Deployment
from sidecar.chain.contracts import IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Bytes32
from tests.component.toolkit import Factory, wait_healthy
from tests.component.toolkit import run_cli as ops_cli

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
CODE_ID = Bytes32(b"\x1d" * 20 + bytes(12))
ENDPOINT = "ws://10.99.0.5:8080/v1/subscribe"  # a value written on chain; nothing connects to it here


async def run_cli(*args: str, owner_key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTMESH_")}
    if owner_key is not None:
        env["ATTESTMESH_OWNER_KEY"] = owner_key
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ops", "indexer", "register", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_register_reads_the_key_from_status_writes_once_and_never_echoes_the_owner_key(
    anvil: AnvilProcess,
    conn: ChainConnection,
    stack: Deployment,
    make_indexer: Factory,
    http: aiohttp.ClientSession,
    indexer_pub: Bytes32,
) -> None:
    service = await make_indexer(
        PUBLIC_URL=ENDPOINT, CODE_ID=str(CODE_ID), REGISTRY=str(stack.indexer_registry)
    )
    await wait_healthy(http, service)
    owner_key = "0x" + DEVNET_DEPLOYER_KEY.reveal().hex()
    args = (
        "--rpc-url", anvil.rpc_url, "--chain-id", "31337", "--registry", str(stack.indexer_registry),
        "--status-url", f"http://127.0.0.1:{service.port}/status",
    )  # fmt: skip
    registry = IndexerRegistryClient(conn, stack.indexer_registry)
    assert not (await registry.current()).registered

    first = await run_cli(*args, owner_key=owner_key)
    assert first.returncode == 0, first.stderr
    assert "indexer registered" in first.stdout
    record = await registry.current()
    assert (record.endpoint, record.code_id, record.pub_key) == (ENDPOINT, CODE_ID, indexer_pub)

    owner = (await conn.w3.eth.accounts)[0]
    nonce = await conn.w3.eth.get_transaction_count(owner)
    again = await run_cli(*args, owner_key=owner_key)
    assert again.returncode == 0, again.stderr
    assert "already registered" in again.stdout and "nothing changed" in again.stdout
    assert await conn.w3.eth.get_transaction_count(owner) == nonce  # no transaction the second time
    assert (await registry.current()).updated_at == record.updated_at

    # --json: the same facts as a document; verify --json too, passing and failing (exit 1, problems named).
    as_json = await run_cli(*args, "--json", owner_key=owner_key)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "registry": str(stack.indexer_registry), "endpoint": ENDPOINT, "public_key": str(indexer_pub),
        "code_id": str(CODE_ID), "changed": False, "tx": None,
    }  # fmt: skip
    verify = ("indexer", "verify", *args[:6], "--status-url", f"http://127.0.0.1:{service.port}/status",
              "--health-url", f"http://127.0.0.1:{service.port}/healthz", "--json")  # fmt: skip
    verified, mismatch = await asyncio.gather(
        ops_cli(*verify), ops_cli(*verify, "--endpoint", "ws://10.99.0.6:8080/v1/subscribe")
    )
    assert verified.returncode == 0, verified.stderr
    doc = json.loads(verified.stdout)
    assert doc["verified"] is True and doc["problems"] == []
    assert doc["registry"] == {"registered": True, "endpoint": ENDPOINT, "code_id": str(CODE_ID),
                               "public_key": str(indexer_pub)}  # fmt: skip
    assert doc["status"]["public_key"] == str(indexer_pub) and doc["status"]["public_url"] == ENDPOINT
    assert mismatch.returncode == 1 and mismatch.stderr == ""
    failed = json.loads(mismatch.stdout)
    assert failed["verified"] is False and any("endpoint" in p for p in failed["problems"]), failed

    for output in (first, again, as_json):
        assert DEVNET_DEPLOYER_KEY.reveal().hex() not in (output.stdout + output.stderr).lower()


async def test_register_refuses_without_an_owner_key_or_with_bad_input(
    anvil: AnvilProcess,
    conn: ChainConnection,
    stack: Deployment,
    make_indexer: Factory,
    http: aiohttp.ClientSession,
) -> None:
    service = await make_indexer(PUBLIC_URL=ENDPOINT, CODE_ID=str(CODE_ID))
    await wait_healthy(http, service)
    status_url = f"http://127.0.0.1:{service.port}/status"
    base = ("--rpc-url", anvil.rpc_url, "--chain-id", "31337", "--status-url", status_url)
    registry = str(stack.indexer_registry)

    missing = await run_cli(*base, "--registry", registry, owner_key=None)
    assert missing.returncode == 1 and "ATTESTMESH_OWNER_KEY is not set" in missing.stderr

    garbage = "0x" + "zz" * 32
    bad_key = await run_cli(*base, "--registry", registry, owner_key=garbage)
    assert bad_key.returncode == 1 and "not hex" in bad_key.stderr and "zz" not in bad_key.stderr

    owner_key = "0x" + DEVNET_DEPLOYER_KEY.reveal().hex()
    bad_address = await run_cli(*base, "--registry", "0x1234", owner_key=owner_key)
    assert bad_address.returncode == 2, bad_address.stderr

    wrong_endpoint = await run_cli(
        *base, "--registry", registry, "--endpoint", "http://x", owner_key=owner_key
    )
    assert wrong_endpoint.returncode == 1 and "ws:// or wss://" in wrong_endpoint.stderr

    unreachable = (
        "--rpc-url",
        anvil.rpc_url,
        "--chain-id",
        "31337",
        "--status-url",
        "http://127.0.0.1:9/status",
    )
    down = await run_cli(*unreachable, "--registry", registry, owner_key=owner_key)
    assert down.returncode == 1 and "did not answer" in down.stderr

    assert not (await IndexerRegistryClient(conn, stack.indexer_registry).current()).registered
