"""The operator's view of a whole cluster on a 3-node lab in gateway mode: ``devnet status --wait-healthy``
prints each node's phase changes on stderr while it waits (stdout stays the result, ``--json`` included);
``devnet env --json`` gives the lab's chain and gateway values (``--sidecar --json``: a node's sidecar
environment, the same names as its ``KEY=value`` lines); ``attestmesh cluster status`` with them
(the members from the chain, every ``/healthz`` through the lab's gateway with the lab CA) exits 0 with the
table, and with one node stopped exits 1 naming that node's app id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.lab import REPO, LabCli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def cluster_status(lab_env: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    """``attestmesh cluster status`` as an operator runs it after ``set -a; eval "$(devnet env)"``."""
    chain = {k: str(v) for k, v in lab_env.items() if k.startswith("ATTESTMESH_") and v is not None}
    gateway = (
        "--gateway-domain", lab_env["GATEWAY_DOMAIN"], "--ca-file", lab_env["GATEWAY_CA_FILE"],
        "--connect-to", lab_env["GATEWAY_ADDRESS"], "--health-timeout", "5",
    )  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "ops", "cluster", "status", *gateway, *extra],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ATTESTMESH_")}, **chain},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cluster_status_on_a_gateway_lab_and_with_one_node_stopped(lab: LabCli) -> None:
    lab.run("up", "--nodes", "3", "--transport", "gateway")
    waited = lab.run("status", "--wait-healthy", "120")
    progress = waited.stderr.splitlines()
    assert progress[0].startswith(f"lab {lab.plan.name}: waiting up to 120 s"), waited.stderr
    for name in ("node-1", "node-2", "node-3"):  # every node's way to healthy, as it was seen
        assert any(f" {name}: " in line and line.endswith("-> healthy") for line in progress), waited.stderr
    assert progress[-1] == f"lab {lab.plan.name}: every running node is healthy"
    assert waited.stdout.startswith(f"lab {lab.plan.name}  rpc ")  # the status itself, on stdout
    quick = lab.run("status", "--json", "--wait-healthy", "30")
    assert json.loads(quick.stdout)["transport"] == "gateway"  # progress never mixes into the document

    env = json.loads(lab.run("env", "--json").stdout)
    assert env["LAB_TRANSPORT"] == "gateway" and env["GATEWAY_DOMAIN"]
    lines = lab.run("env", "node-1", "--sidecar").stdout.splitlines()
    sidecar = json.loads(lab.run("env", "node-1", "--sidecar", "--json").stdout)
    assert sorted(sidecar) == [line.split("=", 1)[0] for line in lines]  # the same names, as one object
    assert sidecar["ATTESTMESH_GATEWAY_DOMAIN"] == env["GATEWAY_DOMAIN"]
    nodes = {n["name"]: n for n in lab.status()["nodes"]}

    healthy = cluster_status(env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = healthy.stdout.splitlines()
    for node in nodes.values():
        row = next(line for line in lines if node["app_id"] in line)
        assert " healthy " in row and "2/2" in row and "gateway" in row, row
    assert lines[-1].endswith(": OK: all 3 members healthy and agreeing with the chain"), healthy.stdout

    lab.run("node", "stop", "node-2")
    stopped = cluster_status(env)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr
    summary = stopped.stdout.splitlines()[-1]
    assert ": FAILING: " in summary and f"app {nodes['node-2']['app_id']} (member " in summary, summary
    as_json = json.loads(cluster_status(env, "--json").stdout)
    failing = {m["app_id"]: m for m in as_json["members"] if not m["ok"]}
    assert nodes["node-2"]["app_id"] in failing and failing[nodes["node-2"]["app_id"]]["phase"] is None
    assert as_json["ok"] is False and len(as_json["members"]) == 3
