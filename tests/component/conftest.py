"""Component fixtures: a real anvil on 127.0.0.1 (one per test module, free port) and a freshly deployed
contract stack per test (cheap with automine: a few transactions), all through our own chain adapter; the
chain helper (``tests.component.toolkit.Chain``); a guest-agent simulator for the indexer and in-process
indexers (``make_indexer``), with an HTTP client for them.

Every process started here is stopped here, on success and on failure; nothing but loopback is used.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from devnet.anvil import DEVNET_DEPLOYER_KEY, DEVNET_DEV_KEYS, AnvilProcess
from devnet.deployment import Deployment, deploy_stack
from devnet.gateway.labca import LabCa, ensure_lab_ca
from devnet.kms import DevnetKms, get_key
from devnet.simulator import SimulatorConfig, serve_unix
from indexer.service import KEY_PATH, IndexerService
from indexer.settings import load_settings
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Bytes32
from sidecar.core.keys import ed25519_public_key
from sidecar.dstack import GuestAgent
from sidecar.http import Runner, start_tcp
from sidecar.settings import HostPort
from tests.component.gatewaykit import DOMAIN as GATEWAY_DOMAIN
from tests.component.gatewaykit import Origin, origins
from tests.component.toolkit import (
    CHAIN_ID,
    COMPOSE_HASH,
    HOST,
    INDEXER_APP,
    Chain,
    Factory,
    NodeFactory,
    Serve,
)


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilProcess]:
    """A fresh automining anvil for the module, on a free loopback port."""
    process = AnvilProcess(host="127.0.0.1", port=0, chain_id=CHAIN_ID)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def conn(anvil: AnvilProcess) -> AsyncIterator[ChainConnection]:
    async with await connect(anvil.rpc_url, timeout=10.0, expected_chain_id=CHAIN_ID) as connection:
        yield connection


@pytest.fixture
def deployer(conn: ChainConnection) -> TxSubmitter:
    """The cluster owner: anvil's published dev account 0."""
    return TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY), receipt_timeout=20.0, poll_interval=0.05)


@pytest.fixture
def outsider(conn: ChainConnection) -> TxSubmitter:
    """A funded account that owns nothing and is no member (anvil dev account 1)."""
    return TxSubmitter(conn, LocalSigner(DEVNET_DEV_KEYS[0]), receipt_timeout=20.0, poll_interval=0.05)


@pytest.fixture
def kms() -> DevnetKms:
    return DevnetKms()


@pytest.fixture
def compose_hash() -> Bytes32:
    """The compose hash every test stack allowlists."""
    return COMPOSE_HASH


@pytest.fixture
async def stack(
    conn: ChainConnection, deployer: TxSubmitter, kms: DevnetKms, compose_hash: Bytes32
) -> Deployment:
    """A new stack per test: factories, indexer registry and one cluster trusting the devnet KMS."""
    return await deploy_stack(
        conn,
        deployer,
        kms_roots=(kms.root_address,),
        compose_hashes=(compose_hash,),
        salt=Bytes32(os.urandom(32)),
    )


@pytest.fixture
def cluster(conn: ChainConnection, stack: Deployment, deployer: TxSubmitter) -> ClusterClient:
    """The stack's cluster, writing as its owner."""
    return ClusterClient(conn, stack.cluster, deployer)


# --- members and the in-process indexer ----------------------------------------------------------------


@pytest.fixture
def chain(conn: ChainConnection, deployer: TxSubmitter, stack: Deployment, kms: DevnetKms) -> Chain:
    return Chain(conn, deployer, stack, kms)


@pytest.fixture
def nodes(
    conn: ChainConnection, deployer: TxSubmitter, stack: Deployment, kms: DevnetKms, compose_hash: Bytes32
) -> NodeFactory:
    """Would-be members of the stack's cluster (member app, signer, proof, keys), not yet registered."""
    assert compose_hash == COMPOSE_HASH
    return NodeFactory(conn, deployer, stack, kms)


@pytest.fixture
async def agent_socket(kms: DevnetKms) -> AsyncIterator[str]:
    root = Path(tempfile.mkdtemp(prefix="am-ix-", dir="/tmp"))  # sun_path is short
    compose = root / "app-compose.json"
    compose.write_bytes(b'{"name": "attestmesh-indexer"}\n')
    config = SimulatorConfig(app_id=INDEXER_APP, instance_id=bytes(19) + b"\x01", app_compose_path=compose)
    running = await serve_unix(root / "agent.sock", config, kms=kms)
    try:
        yield str(root / "agent.sock")
    finally:
        await running.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def indexer_pub(kms: DevnetKms) -> Bytes32:
    seed, _ = get_key(kms, INDEXER_APP, KEY_PATH, "")
    return Bytes32(ed25519_public_key(seed))


@pytest.fixture
async def make_indexer(anvil: AnvilProcess, stack: Deployment, agent_socket: str) -> AsyncIterator[Factory]:
    services: list[IndexerService] = []

    async def make(**overrides: str) -> IndexerService:
        env = {
            "RPC_URL": anvil.rpc_url,
            "CHAIN_ID": "31337",
            "CLUSTER_FACTORY": str(stack.cluster_factory),
            "START_BLOCK": str(stack.factory_block),
            "REGISTRY": str(stack.indexer_registry),
            "LISTEN_ADDR": "127.0.0.1:8080",  # replaced by port 0 below
            "POLL_INTERVAL": "0.1",
            "CONFIRMATIONS": "0",
            "MAX_LOG_RANGE": "500",
            "ACK_TIMEOUT": "5",
            "SHUTDOWN_TIMEOUT": "4",
            **overrides,
        }
        settings = load_settings({f"ATTESTMESH_INDEXER_{k}": v for k, v in env.items()})
        settings = dataclasses.replace(settings, listen_addr=HostPort("127.0.0.1", 0))
        service = IndexerService(settings, agent=GuestAgent(agent_socket))
        await service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        await service.shutdown()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start applications on 127.0.0.1 (free port); all are closed at the end of the test."""
    runners: list[Runner] = []

    async def start(app: web.Application) -> Runner:
        runner = await start_tcp(app, HOST, 0, close_timeout=2.0)
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        await runner.close()


# --- the gateway stand-in (tests/component/gatewaykit.py) ----------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCa:
    """A lab CA and its wildcard certificate for the stand-in's domain, one per test module."""
    return ensure_lab_ca(tmp_path_factory.mktemp("labca"), GATEWAY_DOMAIN)


@pytest.fixture
async def backends(ca: LabCa) -> AsyncIterator[tuple[Origin, Origin]]:
    """A plain origin (behind terminated routes) and a TLS origin (behind passthrough routes)."""
    async with origins(ca) as pair:
        yield pair
