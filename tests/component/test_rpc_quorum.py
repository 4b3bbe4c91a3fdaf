"""Several JSON-RPC providers: a node's snapshot needs a quorum, its reads are pinned by block hash, and
an ``http://`` provider needs the explicit opt-out.

Real parts only: anvil with our contracts, the guest-agent simulator, the node built by the daemon's
``build_node`` (real ``ChainLink``, real steps), ``python -m sidecar`` as a process, and ``RpcProxy``, a small
real aiohttp JSON-RPC server in front of anvil (``devnet.rpcproxy``) that records every request and, when
told to, lies: it adds a member to ``members()`` answers, or reports another hash for a block. No WireGuard
device is touched (an empty UAPI directory: the mesh step fails cleanly, so a pass ends at ``mesh``).
Loopback and unix sockets only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment, deploy_member_app, deploy_stack
from devnet.kms import DevnetKms
from devnet.rpcproxy import Lies, RpcProxy
from devnet.simulator import SimulatorConfig, serve_unix
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, checksum
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address, Bytes32
from sidecar.core.keys import KeyScope
from sidecar.core.liveness import Liveness
from sidecar.core.status import healthz_body
from sidecar.drivers.identity import derive
from sidecar.drivers.node import Node, build_node
from sidecar.dstack.agent import GuestAgent
from sidecar.observability import Metrics
from sidecar.settings import load_settings
from tests.component.toolkit import CHAIN_ID, Chain

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE = b'{"name": "attestmesh-node", "runner": "docker-compose"}\n'
FUNDING_WEI = 10**18
FAKE_MEMBER = {
    "id": "0x" + "f0" * 32, "appId": "0x" + "f1" * 20, "signer": "0x" + "f2" * 20,
    "sealPub": "0x" + "f3" * 32, "wgPub": "0x" + "f4" * 32, "identityPub": "0x" + "f5" * 32,
    "endpoint": "127.0.0.9:51820", "meshIp": "127.0.0.9", "registeredAt": 1,
}  # fmt: skip
ADD_MEMBER = Lies(members=(FAKE_MEMBER,))  # members() answers gain FAKE_MEMBER
OTHER_HASH = Lies(block_hash="0x" + "ab" * 32)  # block headers carry another hash


def calls(proxy: RpcProxy, method: str) -> list[list[Any]]:
    return [list(params) for params in proxy.calls(method)]


@pytest.fixture
async def stack(conn: ChainConnection, deployer: TxSubmitter, kms: DevnetKms) -> Deployment:
    return await deploy_stack(
        conn,
        deployer,
        kms_roots=(kms.root_address,),
        compose_hashes=(Bytes32(hashlib.sha256(COMPOSE).digest()),),
        salt=Bytes32(os.urandom(32)),
    )


@pytest.fixture
def short_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="am-rpc-", dir="/tmp"))  # unix socket paths are short
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def proxy(anvil: AnvilProcess, stack: Deployment) -> AsyncIterator[RpcProxy]:
    running = RpcProxy(anvil.rpc_url, path="/v2/proxy-api-key")  # a path such as providers put keys in
    await running.start()
    try:
        yield running
    finally:
        await running.close()


@contextlib.asynccontextmanager
async def node_under_test(
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    kms: DevnetKms,
    root: Path,
    **overrides: str,
) -> AsyncIterator[tuple[Node, Metrics, Address]]:
    """A funded, approved node with its own simulator; yields the node, its metrics and its signer."""
    app_id = await deploy_member_app(conn, deployer, stack.member_app_factory, stack.cluster, "under-test")
    await ClusterClient(conn, stack.cluster, deployer).add_allowed_app_id(app_id)
    (root / "app-compose.json").write_bytes(COMPOSE)
    config = SimulatorConfig(
        app_id=app_id, instance_id=bytes(19) + b"\x07", app_compose_path=root / "app-compose.json"
    )
    simulator = await serve_unix(root / "agent.sock", config, kms=kms)
    agent = GuestAgent(str(root / "agent.sock"))
    signer = (await derive(agent, KeyScope(CHAIN_ID, stack.cluster))).signer
    await deployer.send(signer, b"", value=FUNDING_WEI)
    env = {
        "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
        "ATTESTMESH_CLUSTER": str(stack.cluster),
        "ATTESTMESH_MEMBER_APP_FACTORY": str(stack.member_app_factory),
        "ATTESTMESH_KMS_ROOTS": str(kms.root_address),
        "ATTESTMESH_ENDPOINT": "127.0.0.1:51820",
        "ATTESTMESH_RPC_ALLOW_HTTP": "true",
        "ATTESTMESH_WG_BACKEND": "userspace",
        "ATTESTMESH_WG_UAPI_DIR": str(root / "wg"),  # empty: no device, the mesh step fails cleanly
        "ATTESTMESH_STATE_DIR": str(root / "state"),
        "ATTESTMESH_RPC_TIMEOUT": "2",
        **{f"ATTESTMESH_{k}": v for k, v in overrides.items()},
    }
    metrics = Metrics(CollectorRegistry())
    node = build_node(load_settings(env), agent=agent, metrics=metrics, liveness=Liveness(window=60.0))
    try:
        yield node, metrics, signer
    finally:
        await node.close()
        await agent.close()
        await simulator.close()


async def nonce(conn: ChainConnection, address: Address) -> int:
    return int(await conn.w3.eth.get_transaction_count(checksum(address)))


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_two_providers_that_disagree_change_nothing_and_the_honest_pair_proceeds(
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    kms: DevnetKms,
    chain: Chain,
    proxy: RpcProxy,
    anvil: AnvilProcess,
    short_root: Path,
) -> None:
    await chain.member()
    await chain.member()
    urls = f"{anvil.rpc_url},{proxy.url}"
    async with node_under_test(conn, deployer, stack, kms, short_root, RPC_URLS=urls) as (
        node,
        metrics,
        signer,
    ):
        controller = node.controller
        assert node.state.snapshot is None
        await chain.mine(2)

        # The proxy (provider 1) shows a member that does not exist: no quorum, nothing is done.
        proxy.lies = ADD_MEMBER
        await controller.pass_once()
        status = controller.status
        assert status.phase == "boot_gate" and not status.healthy
        assert status.reason is not None
        assert status.reason.startswith(
            "rpc_disagreement: provider 1 disagrees with provider 0: membership digest"
        )
        assert node.state.snapshot is None  # no snapshot accepted ...
        assert await nonce(conn, signer) == 0  # ... so no registration either
        body = healthz_body(controller.current_status())
        assert body["chain"]["rpc"] == {
            "providers": 2, "quorum": 2, "up": [0, 1], "agreeing": [0], "dissenting": [1],
            "reason": "rpc_disagreement",
        }  # fmt: skip
        assert "proxy-api-key" not in json.dumps(body) and str(proxy.port) not in json.dumps(body)
        assert sample(metrics, "attestmesh_rpc_disagreements_total") == 1
        assert sample(metrics, "attestmesh_rpc_quorum_failures_total", reason="rpc_disagreement") == 1
        assert sample(metrics, "attestmesh_rpc_provider_up", provider="0") == 1
        assert sample(metrics, "attestmesh_rpc_provider_up", provider="1") == 1

        # The honest pair agrees: the node registers, and once that is confirmed, sees itself.
        proxy.lies = Lies()
        await controller.pass_once()
        assert await nonce(conn, signer) == 1
        await chain.mine(2)
        await controller.pass_once()
        good = node.state.snapshot
        assert good is not None and len(good.members) == 3 and node.state.member_id is not None
        assert controller.status.phase == "mesh"  # no device here: the pass ends at the mesh step
        assert controller.status.rpc_agreeing == (0, 1) and controller.status.rpc_reason is None
        peers_before = {p.member_id for p in controller.peer_views()}

        # The lie again, on a running member: the last good snapshot stays, the fake member is nobody's peer.
        proxy.lies = ADD_MEMBER
        await chain.mine(1)
        await controller.pass_once()
        assert node.state.snapshot is good
        assert {p.member_id for p in controller.peer_views()} == peers_before
        assert "0x" + "f0" * 32 not in peers_before
        assert controller.status.reason is not None and controller.status.reason.startswith(
            "rpc_disagreement"
        )
        assert sample(metrics, "attestmesh_rpc_disagreements_total") == 2

        proxy.lies = Lies()
        await controller.pass_once()
        assert controller.status.chain_reachable is True and controller.status.rpc_reason is None
        assert node.state.snapshot is not good


async def test_a_provider_reporting_another_block_hash_leaves_no_quorum_and_its_url_is_never_shown(
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    kms: DevnetKms,
    proxy: RpcProxy,
    anvil: AnvilProcess,
    short_root: Path,
) -> None:
    urls = f"{anvil.rpc_url},{proxy.url}"
    async with node_under_test(conn, deployer, stack, kms, short_root, RPC_URLS=urls) as (
        node,
        metrics,
        signer,
    ):
        proxy.lies = OTHER_HASH  # its pinned calls then ask anvil for a block that does not exist
        await node.controller.pass_once()
        status = node.controller.status
        assert status.reason is not None and status.reason.startswith(
            "rpc_quorum_unavailable: 1 of 2 providers answered, quorum 2; provider 1: "
        )
        assert "proxy-api-key" not in status.reason and str(proxy.port) not in status.reason
        assert await nonce(conn, signer) == 0 and node.state.snapshot is None
        assert sample(metrics, "attestmesh_rpc_quorum_failures_total", reason="rpc_quorum_unavailable") == 1
        assert sample(metrics, "attestmesh_rpc_provider_up", provider="1") == 0


async def test_every_snapshot_read_is_pinned_to_the_confirmed_block_hash(
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    kms: DevnetKms,
    chain: Chain,
    proxy: RpcProxy,
    short_root: Path,
) -> None:
    await chain.member()
    async with node_under_test(conn, deployer, stack, kms, short_root, RPC_URL=proxy.url) as (node, _, _):
        await chain.mine(3)
        head = await conn.block_number()
        confirmed = await conn.block_header(head - 2)  # the default confirmations
        proxy.requests.clear()
        await node.controller.pass_once()
        by_number = [p for p in calls(proxy, "eth_getBlockByNumber") if p[0] != "latest"]  # "latest": fees
        assert by_number == [[hex(head - 2), False]]  # the snapshot block's hash, read once
        calls_ = calls(proxy, "eth_call")
        assert (
            len(calls_) == 4
        )  # the first read of the process: syncState, membersPage, isAppAllowed, meshCidr
        for params in calls_:
            assert params[1] == {"blockHash": str(confirmed.hash), "requireCanonical": True}
        snapshot = node.state.snapshot
        assert snapshot is not None and snapshot.block == head - 2 and len(snapshot.members) == 1


async def test_an_http_provider_without_the_opt_out_exits_2_naming_it(short_root: Path) -> None:
    secret = "sk-live-quorum-test-key"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ATTESTMESH_RPC_URLS": f"https://rpc.example/v2/{secret},http://10.0.0.2:8545/{secret}",
        "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
        "ATTESTMESH_CLUSTER": "0x" + "c1" * 20,
        "ATTESTMESH_ENDPOINT": "10.88.0.2:51820",
        "ATTESTMESH_STATE_DIR": str(short_root / "state"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", cwd=REPO, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    text = err.decode()
    assert proc.returncode == 2, text
    assert out == b""
    assert "ATTESTMESH_RPC_URLS item 2 is not https://" in text
    assert "ATTESTMESH_RPC_ALLOW_HTTP=true" in text
    assert secret not in text and "10.0.0.2" not in text
