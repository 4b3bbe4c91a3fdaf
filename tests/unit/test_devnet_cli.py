"""The devnet's verbs on the command line, without a lab: ``devnet env NODE --sidecar`` prints exactly what a
sidecar accepts (issue 10: the plain ``env`` output is the lab's facts for a shell, not a sidecar's
environment), with the trust anchors of the lab's node compose, and ``devnet node exec NAME -- CMD`` runs
CMD in the node's namespace with its WireGuard directory. The verbs against a running lab
are in tests/e2e/test_devnet_verbs.py."""

from __future__ import annotations

import shlex
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from devnet.boot import WG_PORT
from devnet.cli.lab_verbs import sidecar_env_lines
from devnet.compose import compose_hash
from devnet.lab import Devnet
from devnet.nodeexec import NodeExecError, node_exec_argv, run_in_node
from devnet.state import DevnetState, NodeState
from devnet.topology import LabPlan
from ops.cli import build_parser, devnet_verbs
from sidecar.core.measured import measured_problems
from sidecar.settings import SettingsError, load_settings

ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def parse_lines(text: str) -> dict[str, str]:
    pairs = (shlex.split(line)[0].partition("=") for line in text.splitlines() if line)
    return {key: value for key, _, value in pairs}


def lab_and_node(root: Path) -> tuple[Devnet, DevnetState, NodeState]:
    node_dir = root / "nodes" / "node-1"
    node = NodeState(
        name="node-1",
        index=1,
        netns="amtu-node-1",
        app_id="0x" + "ab" * 20,
        instance_id="cd" * 20,
        compose_hash="0x" + "ef" * 32,
        compose_path=str(node_dir / "app-compose.json"),
        underlay_ip="10.216.0.10",
        dstack_socket=str(node_dir / "dstack.sock"),
        wg_uapi_dir=str(node_dir / "wg"),
        wg_socket=str(node_dir / "wg" / "attestmesh0.sock"),
        health_url="http://10.216.0.10:9090/healthz",
        app_socket=str(node_dir / "agent.sock"),
        state_dir=str(node_dir / "state"),
    )
    state = DevnetState(
        lab="amtu",
        underlay="10.216.0.0/24",
        mesh_cidr="10.16.0.0/16",
        rpc_url="http://10.216.0.2:8545",
        chain_id=31337,
        cluster=ADDRESS,
        indexer_registry=ADDRESS,
        member_app_factory=ADDRESS,
        kms_root=ADDRESS,
        nodes=(node,),
        complete=True,
    )
    plan = LabPlan("amtu", IPv4Network(state.underlay), IPv4Network(state.mesh_cidr))
    return Devnet(root, plan), state, node


def test_env_sidecar_lines_are_exactly_what_a_sidecar_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTESTMESH_GATEWAY_CA_FILE", "/x/ca.pem")  # the caller's own environment stays out
    lab, state, node = lab_and_node(tmp_path)
    env = parse_lines(sidecar_env_lines(lab, state, node))
    assert all(key.startswith(("ATTESTMESH_", "DSTACK_")) for key in env)
    assert env["ATTESTMESH_ENDPOINT"] == f"10.216.0.10:{WG_PORT}"
    assert env["ATTESTMESH_WG_UAPI_DIR"] == node.wg_uapi_dir
    assert "ATTESTMESH_GATEWAY_CA_FILE" not in env
    load_settings(env)  # raises SettingsError listing every problem
    # The lab's node compose measures exactly the anchors the lab starts the sidecar with.
    compose = lab.compose_file(state).read_bytes()
    assert measured_problems(compose.decode(), compose_hash(compose), env) == []
    assert env["ATTESTMESH_KMS_ROOTS"] == ADDRESS and env["ATTESTMESH_MEMBER_APP_FACTORY"] == ADDRESS
    # What `devnet env NODE` prints for a shell is not a sidecar's environment (the defect):
    with pytest.raises(SettingsError):
        load_settings({**env, "ATTESTMESH_GATEWAY_CA_FILE": "/x/ca.pem"})


def test_env_takes_sidecar_and_node_exec_takes_a_command_after_double_dash() -> None:
    parser = build_parser(devnet_verbs())
    env = parser.parse_args(["devnet", "env", "node-1", "--sidecar"])
    assert (env.verb, env.name, env.sidecar) == ("env", "node-1", True)
    run = parser.parse_args(["devnet", "node", "exec", "node-1", "--", "wg", "show", "attestmesh0"])
    assert (run.node_verb, run.name, run.cmd) == ("exec", "node-1", ["wg", "show", "attestmesh0"])


def test_node_exec_runs_in_the_node_namespace_with_its_wg_dir(tmp_path: Path) -> None:
    _, _, node = lab_and_node(tmp_path)
    argv = node_exec_argv(node, ["wg", "show"])
    assert argv[:4] == ["ip", "netns", "exec", "amtu-node-1"]
    assert argv[-3:] == [node.wg_uapi_dir, "wg", "show"]
    assert "/run/wireguard" in argv[6]
    with pytest.raises(NodeExecError, match="no WireGuard directory"):
        run_in_node(node, ["wg", "show"])  # never booted: nothing to mount, nothing run
