"""The gateway-mode lab network with real namespaces: the gateway namespace, the lab DNS (dnsmasq) and the
nodes' nftables firewalls, and a sweep that leaves none of it behind.

Uses its own lab ("amtg", 10.219.0.0/24, mesh 10.19.0.0/16) so it never collides with a dev lab, the
other component labs or the e2e labs. Every lab address lives inside namespaces the test creates; the root
namespace only queries the lab DNS at the gateway's address, through the root veth, after checking the
route goes there. Probes run inside the namespaces (``tests.component.netprobe``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from devnet import firewall, labdns, procs
from devnet.netns import NETNS_ETC, LabError, LabNetwork, NodeNet, leftovers, set_resolver
from devnet.topology import LabPlan
from tests.conftest import require

pytestmark = [pytest.mark.component, pytest.mark.timeout(90)]

PLAN = LabPlan(name="amtg", underlay=IPv4Network("10.219.0.0/24"), mesh=IPv4Network("10.19.0.0/16"))
DOMAIN = PLAN.gateway_domain
PROBE_PORT = 41000
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "root (network namespaces)")
    for tool in ("dnsmasq", "nft", "getent"):
        require(shutil.which(tool) is not None, tool)


@pytest.fixture
def lab() -> Iterator[LabNetwork]:
    net = LabNetwork(PLAN)
    net.destroy()  # start-up sweep: leftovers of an earlier crashed run
    try:
        yield net
    finally:
        net.destroy()


def _in_ns(ns: str, *argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=False, timeout=timeout,
        cwd=REPO,
    )  # fmt: skip


def _probe(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _in_ns(ns, sys.executable, "-m", "tests.component.netprobe", *args)


def _serve(net: NodeNet, log: Path) -> procs.ProcRecord:
    rec = procs.spawn(
        [sys.executable, "-m", "tests.component.netprobe", "serve", str(net.ip), str(PROBE_PORT)],
        name=f"probe@{net.ns}", netns=net.ns, log_path=log, cwd=REPO,
    )  # fmt: skip
    procs.wait_for(lambda: "ready" in _lines(log), 10.0, what=f"the probe listener in {net.ns}")
    return rec


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _gateway_lab(lab: LabNetwork, tmp_path: Path) -> tuple[NodeNet, NodeNet, NodeNet, procs.ProcRecord]:
    lab.create()
    gw = lab.add_gateway()
    assert (gw.ns, gw.ip) == ("amtg-gw", IPv4Address("10.219.0.3"))
    a, b = lab.add_node("node-1", 1), lab.add_node("node-2", 2)
    for node in (a, b):
        set_resolver(node.ns, gw.ip)
        firewall.apply(node.ns, gw.ip)
    firewall.apply(a.ns, gw.ip)  # idempotent: the table is replaced, not doubled
    assert firewall.tables(a.ns) == [f"inet {firewall.TABLE}"]
    # The root namespace reaches the gateway address only through the root veth.
    route = subprocess.run(["ip", "route", "get", str(gw.ip)], capture_output=True, text=True, check=True)
    assert f"dev {PLAN.root_veth}" in route.stdout, route.stdout
    dns = labdns.start_dns(netns=gw.ns, listen=gw.ip, domain=DOMAIN, log_path=tmp_path / "dns.log")
    labdns.wait_for_dns(dns, gw.ip, DOMAIN, timeout=10.0)
    return gw, a, b, dns


def test_dns_answers_the_gateway_domain_only(lab: LabNetwork, tmp_path: Path) -> None:
    gw, a, _b, dns = _gateway_lab(lab, tmp_path)
    assert (NETNS_ETC / a.ns / "resolv.conf").read_text().endswith(f"nameserver {gw.ip}\n")

    # From inside a node, through the namespace's resolv.conf (the path every lab process takes).
    for name in (f"0123abcd-9090.{DOMAIN}", f"x.{DOMAIN}", DOMAIN):
        done = _in_ns(a.ns, "getent", "hosts", name)
        assert done.returncode == 0, (name, done.stderr)
        assert done.stdout.split()[0] == str(gw.ip), done.stdout
        resolved = _probe(a.ns, "resolve", name)
        assert resolved.stdout.split() == [str(gw.ip)], resolved
    for outside in ("example.com", "gw.test", f"x.{DOMAIN}.example.com"):
        assert _in_ns(a.ns, "getent", "hosts", outside).returncode == 2, outside

    # A raw query: the server answers names outside the zone with a refusal and no record (no upstream).
    inside = labdns.query(gw.ip, f"node.{DOMAIN}")
    assert inside == labdns.DnsAnswer(labdns.RCODE_NOERROR, (gw.ip,))
    outside_answer = labdns.query(gw.ip, "example.com")
    assert outside_answer is not None and outside_answer.addresses == ()
    assert outside_answer.rcode == labdns.RCODE_REFUSED
    # dnsmasq listens on the gateway address only (not on the gateway namespace's loopback).
    sockets = _in_ns(gw.ns, "ss", "-H", "-lnu").stdout
    assert f"{gw.ip}:53" in sockets and "127.0.0.1:53" not in sockets, sockets
    assert procs.is_alive(dns)


def test_firewall_drops_direct_traffic_between_nodes_and_accepts_the_gateway(
    lab: LabNetwork, tmp_path: Path
) -> None:
    gw, a, b, _dns = _gateway_lab(lab, tmp_path)
    log = tmp_path / "probe-b.log"
    listener = _serve(b, log)
    assert firewall.dropped(b.ns) == {"udp": 0, "tcp": 0}

    # Node A to node B, straight over the underlay: both dropped, counted, never seen by the listener.
    assert _probe(a.ns, "send-udp", str(b.ip), str(PROBE_PORT)).returncode == 0
    procs.wait_for(lambda: firewall.dropped(b.ns)["udp"] >= 1, 5.0, what="the UDP drop counter of node-2")
    assert _probe(a.ns, "connect-tcp", str(b.ip), str(PROBE_PORT), "1").returncode == 1
    assert firewall.dropped(b.ns)["tcp"] >= 1

    # The gateway's address gets through, on both protocols.
    assert _probe(gw.ns, "send-udp", str(b.ip), str(PROBE_PORT)).returncode == 0
    assert _probe(gw.ns, "connect-tcp", str(b.ip), str(PROBE_PORT), "3").returncode == 0
    procs.wait_for(
        lambda: {f"udp {gw.ip}", f"tcp {gw.ip}"} <= set(_lines(log)),
        5.0,
        what="the gateway's probes at node-2",
    )
    assert not any(str(a.ip) in line for line in _lines(log)), _lines(log)

    # ICMP and the node's own outbound connections (established replies) still work.
    assert _in_ns(a.ns, "ping", "-c", "1", "-W", "2", str(b.ip)).returncode == 0
    at_gateway = _serve(gw, tmp_path / "probe-gw.log")
    assert _probe(a.ns, "connect-tcp", str(gw.ip), str(PROBE_PORT), "3").returncode == 0
    counts = firewall.dropped(a.ns)
    assert counts == {"udp": 0, "tcp": 0}, counts  # the SYN-ACK of its own connection was not dropped
    procs.terminate_all([listener, at_gateway])


def test_teardown_leaves_no_namespace_config_process_route_or_table(lab: LabNetwork, tmp_path: Path) -> None:
    gw, a, b, dns = _gateway_lab(lab, tmp_path)
    listener = _serve(b, tmp_path / "probe-b.log")
    assert leftovers(PLAN)  # namespaces, /etc/netns, links, routes and processes are all there
    lab.destroy()
    assert leftovers(PLAN) == []
    assert not procs.is_alive(dns) and not procs.is_alive(listener)
    assert list(NETNS_ETC.glob(f"{PLAN.sweep_prefix}*")) == []
    for ns in (gw.ns, a.ns, b.ns):
        assert not Path("/run/netns", ns).exists()
        with pytest.raises(LabError):
            firewall.tables(ns)  # no namespace, so no table
    root_tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert firewall.TABLE not in root_tables  # never in the root namespace
    routes = subprocess.run(["ip", "route", "show"], capture_output=True, text=True, check=True).stdout
    assert "10.219.0." not in routes and "10.19.0.0" not in routes
    lab.destroy()  # idempotent


def test_remove_node_removes_its_resolver_and_a_sweep_finds_a_crashed_labs(
    lab: LabNetwork, tmp_path: Path
) -> None:
    lab.create()
    gw = lab.add_gateway()
    node = lab.add_node("node-1", 1)
    set_resolver(node.ns, gw.ip)
    lab.remove_node("node-1")
    assert not (NETNS_ETC / node.ns).exists()
    # A crashed lab: a namespace's resolver directory (and nothing else of it) left behind.
    set_resolver(PLAN.node_ns("node-9"), gw.ip)
    assert f"netns config {NETNS_ETC / PLAN.node_ns('node-9')}" in leftovers(PLAN)
    LabNetwork(PLAN).destroy()
    assert leftovers(PLAN) == []


def test_dropped_needs_a_firewall(lab: LabNetwork) -> None:
    lab.create()
    node = lab.add_node("node-1", 1)
    assert firewall.tables(node.ns) == []
    with pytest.raises(LabError):
        firewall.dropped(node.ns)
