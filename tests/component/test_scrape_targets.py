"""``attestmesh chain scrape-targets`` as an operator runs it: the CLI as a subprocess against anvil with our
contracts, members registered through the devnet KMS and an indexer registered behind a gateway; the target
files it writes are loaded by promtool with the shipped scrape configuration.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Bytes32
from tests.component.toolkit import Chain, chain_args, run_cli
from tests.monitoringkit import MONITORING, promtool

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

DOMAIN = "dstack-test.example"
INDEXER_APP = "1e" * 20


async def test_scrape_targets_name_every_member_and_the_indexer_through_the_gateway(
    anvil: AnvilProcess,
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    chain: Chain,
    tmp_path: Path,
) -> None:
    for _ in range(2):
        await chain.member()
    members = await ClusterClient(conn, stack.cluster).members()
    out = tmp_path / "targets"
    args = (*chain_args(anvil, stack), "--gateway-domain", DOMAIN, "--out-dir", str(out))

    # Without a registry: the members only, and an empty indexer file (Prometheus accepts it).
    first = await run_cli("chain", "scrape-targets", *args)
    assert first.returncode == 0, first.stderr
    assert f"wrote 2 member targets to {out / 'nodes.json'}" in first.stdout
    assert json.loads((out / "indexer.json").read_text()) == []

    endpoint = f"wss://{INDEXER_APP}-8080.{DOMAIN}/v1/subscribe"
    await IndexerRegistryClient(conn, stack.indexer_registry, deployer).set_indexer(
        endpoint, Bytes32(b"\xc1" * 32), Bytes32(b"\x1e" * 32)
    )
    done = await run_cli("chain", "scrape-targets", *args, "--registry", str(stack.indexer_registry))
    assert done.returncode == 0, done.stderr
    assert "wrote 1 indexer targets" in done.stdout
    cluster = str(stack.cluster)
    nodes = json.loads((out / "nodes.json").read_text())
    expected = sorted(str(m.app_id).lower().removeprefix("0x") for m in members)
    assert nodes == [
        {"targets": [f"{app}-9090.{DOMAIN}:443"], "labels": {"cluster": cluster, "instance": app}}
        for app in expected
    ]
    assert json.loads((out / "indexer.json").read_text()) == [
        {
            "targets": [f"{INDEXER_APP}-8080.{DOMAIN}:443"],
            "labels": {"cluster": cluster, "instance": INDEXER_APP},
        }
    ]

    # The shipped configuration loads with these files (its file_sd paths are targets/*.json beside it).
    for name in ("prometheus.yml", "attestmesh-rules.yml"):
        shutil.copy(MONITORING / name, tmp_path / name)
    checked = promtool("check", "config", tmp_path / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
