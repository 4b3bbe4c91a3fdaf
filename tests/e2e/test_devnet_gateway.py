"""The devnet lab in gateway mode: the gateway stand-in and the lab DNS in ``<lab>-gw``, the CVMs' routes as
they boot and stop, the firewalls, the lab's own reads through the gateway (the indexer's /status and
/healthz with the lab CA), the gateway's verbs and a teardown that leaves nothing (without node workloads);
a 3-node mesh that can only form through the gateway; and a direct-mode lab that has none of it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devnet import firewall, procs
from devnet.lab import fetch_healthz
from devnet.labreach import LabReach
from devnet.netns import NETNS_ETC, LabNetwork, list_netns
from devnet.procs import ProcRecord
from devnet.state import DevnetState
from ops.jsonget import get_json
from tests.e2e.lab import PLAN, REPO, LabCli, RoutineRunner, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _routes(state: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(state["gateway"]["routes_file"]).read_text())["instances"]
    return data


def _in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    argv = ("ip", "netns", "exec", ns, *argv)
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)


def _send_udp(ns: str, ip: str, port: int) -> None:
    code = (
        f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'direct', ({ip!r}, {port}))"
    )
    assert _in_ns(ns, sys.executable, "-c", code).returncode == 0


def test_gateway_lab_routes_dns_firewall_and_reads_through_the_gateway(lab: LabCli) -> None:
    out = lab.run("up", "--nodes", "2", "--no-sidecar", "--transport", "gateway").stdout
    assert "transport gateway" in out
    status = lab.status()
    gw = status["gateway"]
    assert status["transport"] == "gateway"
    assert gw["domain"] == PLAN.gateway_domain and gw["address"] == str(PLAN.gateway.ip)
    assert Path(gw["ca_file"]).is_file() and gw["health_url"] == f"http://{PLAN.gateway.ip}:9443/metrics"
    assert gw["running"] == {"gateway": True, "dns": True, "routes": 3, "routes_with_ports": 1}
    state = DevnetState.from_json(json.loads(lab.state_file.read_text()))
    reach = LabReach.of(state)

    # The indexer is a CVM behind the gateway: registered as wss://, read (by status) through the gateway.
    idx = status["indexer"]
    app = idx["app_id"].lower().removeprefix("0x")
    assert idx["url"] == f"wss://{app}-8080.{PLAN.gateway_domain}/v1/subscribe"
    assert idx["gateway_health_url"] == f"https://{app}-8080.{PLAN.gateway_domain}/healthz"
    assert idx["healthz"]["healthy"] and idx["status"]["public_key"] == idx["public_key"]
    assert fetch_healthz(idx["health_url"], timeout=1.0) is None  # the underlay URL: firewalled

    # Routes: the indexer's port policy is known (its workload runs), the nodes' not (no workload).
    routes = _routes(status)
    assert routes[idx["instance_id"]] == {"app_id": app, "address": idx["ip"], "ports": [8080]}
    for node in status["nodes"]:
        node_app = node["app_id"].lower().removeprefix("0x")
        assert routes[node["instance_id"]] == {
            "app_id": node_app,
            "address": node["underlay_ip"],
            "ports": None,
        }
        assert node["gateway_health_url"] == f"https://{node_app}-9090.{PLAN.gateway_domain}/healthz"
        assert (
            (NETNS_ETC / node["netns"] / "resolv.conf").read_text().endswith(f"nameserver {gw['address']}\n")
        )
        assert firewall.tables(node["netns"]) == [f"inet {firewall.TABLE}"]
    # With no port policy yet the gateway refuses: the health route answers nothing, as on dstack.
    assert fetch_healthz(status["nodes"][0]["gateway_health_url"], timeout=2.0, reach=reach) is None

    # The lab DNS, from inside a node.
    one, two = status["nodes"]
    resolved = _in_ns(one["netns"], "getent", "hosts", f"{app}-8080.{PLAN.gateway_domain}")
    assert resolved.returncode == 0 and resolved.stdout.split()[0] == gw["address"]
    assert _in_ns(one["netns"], "getent", "hosts", "example.com").returncode == 2

    # A direct datagram from node-1 to node-2's WireGuard port is dropped at node-2, and counted.
    before = firewall.dropped(two["netns"])["udp"]
    _send_udp(one["netns"], two["underlay_ip"], 51820)
    wait_until(lambda: firewall.dropped(two["netns"])["udp"] > before, 5, "node-2's firewall to drop it")

    # A CVM that is off has no route; booted again, it is known with its port policy pending.
    lab.run("node", "stop", "node-1")
    assert one["instance_id"] not in _routes(status)
    lab.run("node", "start", "node-1")
    assert _routes(status)[one["instance_id"]]["ports"] is None

    # The gateway down: the indexer cannot be read; back with a short lifetime, it can.
    lab.run("gateway", "stop")
    down = lab.status()
    assert down["gateway"]["running"]["gateway"] is False and down["indexer"]["healthz"] is None
    started = lab.run("gateway", "start", "--set", "lifetime=20").stdout
    assert "lifetime=20" in started
    assert json.loads(lab.run("gateway", "limits").stdout)["lifetime"] == 20
    wait_until(lambda: (lab.status()["indexer"]["healthz"] or {}).get("healthy"), 30, "the indexer again")
    bad = lab.run("gateway", "start", "--set", "lifetimes=1", check=False)
    assert bad.returncode == 1 and "unknown gateway limit" in bad.stderr

    records = [ProcRecord.from_json(p) for p in lab.status()["processes"].values()]
    assert {r.name for r in records} >= {"anvil", "gateway", "dns"}
    lab.run("down")
    assert LabNetwork(PLAN).leftovers() == []
    assert not [r for r in records if procs.is_alive(r)]
    assert list(NETNS_ETC.glob(f"{PLAN.sweep_prefix}*")) == []
    assert not (lab.root / "gateway").exists()


def _active_passthrough(metrics_url: str) -> int:
    """Streams the gateway relays now on passthrough routes (the mesh's), summed over the apps."""
    text = get_json(metrics_url, 2.0).text
    pattern = r'^attestmesh_gateway_active_connections\{[^}]*kind="passthrough"[^}]*\} ([0-9.e+]+)$'
    return int(sum(float(v) for v in re.findall(pattern, text, re.MULTILINE)))


def test_three_node_mesh_forms_through_the_gateway_only(lab: LabCli, tmp_path: Path) -> None:
    lab.run("up", "--nodes", "3", "--transport", "gateway")
    lab.run("status", "--wait-healthy", "120")
    status = lab.status()
    nodes = status["nodes"]
    for node in nodes:  # each node's own account: its two peers are carried by the gateway, and up
        assert node["healthz"]["peers"]["transport"] == {"gateway": {"up": 2, "down": 0}}, node["healthz"]
    mesh_ips = {n["name"]: n["healthz"]["node"]["mesh_ip"] for n in nodes}
    for src in nodes:
        endpoints = lab.run(
            "node", "exec", src["name"], "--", "wg", "show", "attestmesh0", "endpoints"
        ).stdout
        hosts = [line.split()[1].rsplit(":", 1)[0] for line in endpoints.splitlines()]
        assert hosts == ["127.0.0.1", "127.0.0.1"], endpoints  # every peer behind a loopback bridge
        for dst, ip in mesh_ips.items():
            if dst != src["name"]:
                done = _in_ns(src["netns"], "ping", "-c", "1", "-W", "2", ip)
                assert done.returncode == 0, f"{src['name']} -> {dst}: {done.stdout}"
    # One passthrough stream per pair, and no direct path: a direct datagram is dropped and counted.
    wait_until(lambda: _active_passthrough(status["gateway"]["health_url"]) == 3, 30, "one stream per pair")
    one, two = nodes[0], nodes[1]
    before = firewall.dropped(two["netns"])["udp"]
    _send_udp(one["netns"], two["underlay_ip"], 51820)
    wait_until(lambda: firewall.dropped(two["netns"])["udp"] > before, 5, "node-2's firewall to drop it")
    assert lab.status()["indexer"]["status"]["subscribers"] == 3  # the sidecars reached it by wss://
    _operator_reads_through_the_gateway(lab, status, tmp_path)


def _operator_reads_through_the_gateway(lab: LabCli, status: dict[str, Any], tmp_path: Path) -> None:
    """An operator's surfaces work through the gateway only: `attestmesh health` on the node's gateway URL
    with the lab CA (and the gateway's address: the root namespace has no resolver for the lab's domain),
    and `deploy/node.sh NODE mesh-verify`; the node's own underlay address answers nothing."""
    node, gateway = status["nodes"][0], status["gateway"]
    url = node["gateway_health_url"]
    assert url == f"https://{node['app_id'][2:].lower()}-9090.{gateway['domain']}/healthz"
    cli = [sys.executable, "-m", "ops", "health"]
    pinned = ["--ca-file", gateway["ca_file"], "--connect-to", gateway["address"], "--timeout", "5"]
    read = subprocess.run([*cli, url, *pinned], capture_output=True, text=True, timeout=30, check=False)
    assert read.returncode == 0 and read.stdout.startswith(f"{url}: HEALTHY (HTTP 200)"), read.stderr
    untrusted = [*cli, url, "--connect-to", gateway["address"], "--timeout", "5"]
    refused = subprocess.run(untrusted, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr  # no lab CA, no trust
    direct = [*cli, f"http://{node['underlay_ip']}:9090/healthz", "--timeout", "2"]
    dropped = subprocess.run(direct, capture_output=True, text=True, timeout=30, check=False)
    assert dropped.returncode == 1 and "did not answer" in dropped.stderr  # the firewall drops it
    routine = RoutineRunner(lab, tmp_path, REPO / "deploy" / "node.sh", {"MESH_VERIFY_TIMEOUT": "60"})
    verified = routine.run(node["name"], "mesh-verify", PROVIDER="devnet")
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]


def test_direct_lab_has_no_gateway_dns_or_firewall(lab: LabCli) -> None:
    lab.run("up", "--nodes", "1", "--no-sidecar", "--no-indexer", "--transport", "direct")
    status = lab.status()
    assert status["transport"] == "direct" and status["gateway"] is None
    node = status["nodes"][0]
    assert node["gateway_health_url"] == ""
    assert PLAN.gateway.ns not in list_netns()
    assert not (NETNS_ETC / node["netns"]).exists()
    assert firewall.tables(node["netns"]) == []
    env = dict(line.split("=", 1) for line in lab.run("env", "node-1", "--sidecar").stdout.splitlines())
    assert (
        env["ATTESTMESH_ENDPOINT"] == f"{node['underlay_ip']}:51820"
        and "ATTESTMESH_GATEWAY_DOMAIN" not in env
    )
    missing = lab.run("gateway", "stop", check=False)
    assert missing.returncode == 1 and "no gateway" in missing.stderr
