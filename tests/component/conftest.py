"""Component fixtures: a real anvil on 127.0.0.1 (one per test module, free port) and a freshly deployed
contract stack per test (cheap with automine: a few transactions), all through our own chain adapter.

Every process started here is stopped here, on success and on failure; nothing but loopback is used.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from devnet.anvil import DEVNET_DEPLOYER_KEY, DEVNET_DEV_KEYS, AnvilProcess
from devnet.deployment import Deployment, deploy_stack
from devnet.kms import DevnetKms
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Bytes32

CHAIN_ID = 31337
COMPOSE_HASH = Bytes32(b"\xc0" * 32)


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
