"""A reachable RPC that is not the configured chain or cluster: the node says so, and says it is reachable.

Against anvil and the guest-agent simulator (through the official ``dstack-sdk``), no network namespace and
no WireGuard: a wrong ``ATTESTMESH_CHAIN_ID`` and a cluster address with no code each leave the node at
``boot_gate`` with a reason naming the mismatch, and ``/healthz`` ``chain.reachable`` true.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment
from devnet.simulator import SimulatorConfig, serve_unix
from sidecar.core.ids import Address
from sidecar.core.liveness import Liveness
from sidecar.core.status import healthz_body
from sidecar.drivers.node import Node, build_node
from sidecar.dstack.agent import GuestAgent
from sidecar.observability import Metrics
from sidecar.settings import load_settings
from tests.component.conftest import CHAIN_ID

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]


@pytest.fixture
def root() -> Iterator[Path]:
    """A short directory under /tmp: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="am-mis-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def agent(root: Path) -> AsyncIterator[GuestAgent]:
    (root / "app-compose.json").write_text('{"name": "attestmesh-node"}\n')
    (root / "node.json").write_text(
        json.dumps(
            {"app_id": "0x" + "a7" * 20, "instance_id": "07" * 20, "app_compose_path": "app-compose.json"}
        )
    )
    running = await serve_unix(root / "agent.sock", SimulatorConfig.load(root / "node.json"))
    client = GuestAgent(str(running.socket_path))
    try:
        yield client
    finally:
        await client.close()
        await running.close()


async def node_for(
    anvil: AnvilProcess, agent: GuestAgent, root: Path, cluster: Address, chain_id: int
) -> Node:
    env = {
        "ATTESTMESH_RPC_URL": anvil.rpc_url,
        "ATTESTMESH_RPC_ALLOW_HTTP": "true",
        "ATTESTMESH_CONFIRMATIONS": "0",  # these tests are not about confirmations (see test_quorum.py)
        "ATTESTMESH_CHAIN_ID": str(chain_id),
        "ATTESTMESH_CLUSTER": str(cluster),
        "ATTESTMESH_MEMBER_APP_FACTORY": "0x" + "fa" * 20,
        "ATTESTMESH_KMS_ROOTS": "0x" + "12" * 20,
        "ATTESTMESH_ENDPOINT": "127.0.0.1:51820",
        "ATTESTMESH_STATE_DIR": str(root / "state"),
        "ATTESTMESH_RPC_TIMEOUT": "2",
    }
    metrics = Metrics(CollectorRegistry())
    return build_node(load_settings(env), agent=agent, metrics=metrics, liveness=Liveness(window=60.0))


async def two_passes(node: Node) -> dict[str, object]:
    try:
        await node.controller.pass_once()
        await node.controller.pass_once()
    finally:
        await node.close()
    return healthz_body(node.controller.status)


async def test_a_wrong_chain_id_is_a_reachable_chain_that_is_not_the_configured_one(
    anvil: AnvilProcess, stack: Deployment, agent: GuestAgent, root: Path
) -> None:
    node = await node_for(anvil, agent, root, stack.cluster, chain_id=1)
    with capture_logs() as logs:
        body = await two_passes(node)
    assert body["phase"] == "boot_gate"
    assert body["reason"] == f"chain id mismatch: expected 1, the RPC serves {CHAIN_ID}"
    assert {k: body["chain"][k] for k in ("reachable", "error")} == {
        "reachable": True,
        "error": body["reason"],
    }
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["chain.mismatched"]  # once


async def test_a_cluster_address_without_code_names_the_missing_contract(
    anvil: AnvilProcess, stack: Deployment, agent: GuestAgent, root: Path
) -> None:
    empty = Address(b"\xee" * 20)
    node = await node_for(anvil, agent, root, empty, chain_id=CHAIN_ID)
    body = await two_passes(node)
    assert body["phase"] == "boot_gate"
    assert body["reason"] == f"no cluster contract at {empty}: the address holds no code on this chain"
    assert {k: body["chain"][k] for k in ("reachable", "error")} == {
        "reachable": True,
        "error": body["reason"],
    }
