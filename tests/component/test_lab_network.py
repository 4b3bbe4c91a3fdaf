"""The lab network with real namespaces and wireguard-go: a two-node mesh, isolation, and the sweep.

Uses its own lab ("amtc", 10.214.0.0/24, mesh 10.14.0.0/16) so it never collides with a running dev lab.
Every lab address lives inside namespaces the test creates; the root namespace only ever pings the
underlay, through the root veth, after checking the route goes there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from devnet import procs
from devnet.lab import Devnet
from devnet.netns import LabError, LabNetwork, NodeNet, leftovers, list_netns, netns_pids
from devnet.topology import BLACKHOLE_METRIC, LabPlan
from devnet.wireguard import start_wireguard_go, uapi_get, uapi_set, uapi_socket
from tests.conftest import require

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "root (network namespaces)")
    require(shutil.which("wireguard-go") is not None, "wireguard-go")


PLAN = LabPlan(name="amtc", underlay=IPv4Network("10.214.0.0/24"), mesh=IPv4Network("10.14.0.0/16"))
WG_PORT = 51820


@pytest.fixture
def lab() -> Iterator[LabNetwork]:
    net = LabNetwork(PLAN)
    net.destroy()  # start-up sweep: leftovers of an earlier crashed run
    try:
        yield net
    finally:
        net.destroy()


@dataclass
class WgNode:
    net: NodeNet
    mesh_ip: str
    private_hex: str
    public_hex: str
    sock: Path
    proc: procs.ProcRecord


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)


def _ping_from(ns: str, target: str) -> bool:
    return _run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", target).returncode == 0


def _root_blackholes() -> set[str]:
    out = _run("ip", "-4", "route", "show", "type", "blackhole").stdout
    return {line.split()[1] for line in out.splitlines() if f"metric {BLACKHOLE_METRIC}" in line}


def _start_node(lab: LabNetwork, tmp_path: Path, name: str, index: int) -> WgNode:
    net = lab.add_node(name, index)
    uapi_dir = tmp_path / f"wg-{name}"
    proc = start_wireguard_go(net.ns, uapi_dir, log_path=tmp_path / f"wg-{name}.log")
    key = X25519PrivateKey.generate()
    return WgNode(
        net=net,
        mesh_ip=str(PLAN.mesh.network_address + index),
        private_hex=key.private_bytes_raw().hex(),
        public_hex=key.public_key().public_bytes_raw().hex(),
        sock=uapi_socket(uapi_dir),
        proc=proc,
    )


def _configure(node: WgNode, peer: WgNode) -> None:
    uapi_set(
        node.sock,
        [
            f"private_key={node.private_hex}",
            f"listen_port={WG_PORT}",
            "replace_peers=true",
            f"public_key={peer.public_hex}",
            f"endpoint={peer.net.ip}:{WG_PORT}",
            "replace_allowed_ips=true",
            f"allowed_ip={peer.mesh_ip}/32",
        ],
    )
    ns = node.net.ns
    for argv in (
        ("ip", "-n", ns, "addr", "add", f"{node.mesh_ip}/{PLAN.mesh.prefixlen}", "dev", "attestmesh0"),
        ("ip", "-n", ns, "link", "set", "attestmesh0", "up"),
    ):
        done = _run(*argv)
        assert done.returncode == 0, done.stderr


def test_two_node_mesh_then_clean_destroy(lab: LabNetwork, tmp_path: Path) -> None:
    started = time.monotonic()
    lab.create()
    lab.create()  # idempotent
    assert lab.exists()
    assert _root_blackholes() >= {"10.214.0.0/24", "10.14.0.0/16"}

    a = _start_node(lab, tmp_path, "node-1", 1)
    b = _start_node(lab, tmp_path, "node-2", 2)
    assert lab.add_node("node-1", 1) == a.net  # idempotent
    assert (a.net.ns, str(a.net.ip), a.net.iface) == ("amtc-node-1", "10.214.0.11", "eth0")

    # Two attestmesh0 devices at once, each behind its own UAPI socket.
    assert a.sock != b.sock
    assert a.sock.is_socket() and b.sock.is_socket()
    assert oct(a.sock.parent.stat().st_mode & 0o777) == "0o700"
    # The bind mounts live in wireguard-go's private mount namespaces, not in ours.
    assert "/run/wireguard" not in Path("/proc/self/mountinfo").read_text()
    _configure(a, b)
    _configure(b, a)

    # No default route inside a node: the underlay and the mesh are all it can reach.
    assert "default" not in _run("ip", "-n", a.net.ns, "route", "show").stdout

    procs.wait_for(lambda: _ping_from(a.net.ns, b.mesh_ip), 10.0, 0.05, what="ping a -> b over the mesh")
    assert _ping_from(b.net.ns, a.mesh_ip)
    mesh_up = time.monotonic() - started

    dev_a, dev_b = uapi_get(a.sock), uapi_get(b.sock)
    assert dev_a["public_key"] == a.public_hex and dev_b["public_key"] == b.public_hex
    assert dev_a["listen_port"] == WG_PORT
    assert list(dev_a["peers"]) == [b.public_hex]
    assert list(dev_b["peers"]) == [a.public_hex]
    assert dev_a["peers"][b.public_hex]["allowed_ips"] == [f"{b.mesh_ip}/32"]
    assert dev_a["peers"][b.public_hex]["endpoint"] == f"{b.net.ip}:{WG_PORT}"
    assert dev_a["peers"][b.public_hex]["last_handshake_time_sec"] > 0
    assert dev_b["peers"][a.public_hex]["last_handshake_time_sec"] > 0
    assert a.private_hex not in repr(dev_a)

    # The root namespace reaches the underlay only through the root veth.
    route = _run("ip", "route", "get", str(a.net.ip)).stdout
    assert f"dev {PLAN.root_veth}" in route, route
    assert _ping_from_root(str(a.net.ip))

    torn_down = time.monotonic()
    lab.destroy()
    assert time.monotonic() - torn_down < 5.0
    assert leftovers(PLAN) == []
    assert not _root_blackholes() & {"10.214.0.0/24", "10.14.0.0/16"}
    assert not procs.is_alive(a.proc) and not procs.is_alive(b.proc)
    assert not a.sock.exists() and not b.sock.exists()  # wireguard-go cleaned up on SIGTERM
    assert not lab.exists()
    lab.destroy()  # second destroy: a no-op
    assert mesh_up < 10.0


def _ping_from_root(target: str) -> bool:
    return _run("ping", "-c", "1", "-W", "1", target).returncode == 0


def test_remove_node_and_readd(lab: LabNetwork, tmp_path: Path) -> None:
    lab.create()
    node = lab.add_node("node-1", 1)
    sleeper = procs.spawn(["sleep", "30"], name="sleeper", netns=node.ns, log_path=tmp_path / "s.log")
    assert sleeper.pid in netns_pids(node.ns)  # spawn returns once the child is inside the namespace
    lab.remove_node("node-1")
    assert not procs.is_alive(sleeper)
    assert node.ns not in list_netns()
    assert "v1" not in _run("ip", "-n", PLAN.hub_ns, "-br", "link").stdout
    lab.remove_node("node-1")  # absent: a no-op
    assert lab.add_node("node-1", 1) == node  # the same index again, straight away
    with pytest.raises(LabError, match="wrong index"):
        lab.add_node("node-1", 3)


def test_add_node_needs_a_created_lab(lab: LabNetwork) -> None:
    with pytest.raises(LabError, match="create"):
        lab.add_node("node-1", 1)
    assert leftovers(PLAN) == []


def test_sweep_after_a_crash(tmp_path: Path) -> None:
    net = LabNetwork(PLAN)
    net.destroy()
    try:
        net.create()
        node = net.add_node("node-1", 1)
        wg = start_wireguard_go(node.ns, tmp_path / "wg", log_path=tmp_path / "wg.log")
        sleeper = procs.spawn(["sleep", "30"], name="sleeper", netns=node.ns, log_path=tmp_path / "s.log")
        # Half-made state on top: a node namespace with no link yet.
        assert subprocess.run(["ip", "netns", "add", "amtc-half"], check=False).returncode == 0
        del net, node  # the "crash": no cleanup ran, only the plan survives
        assert leftovers(PLAN)  # namespaces, links, routes and processes are all still there

        LabNetwork(PLAN).destroy()
        assert leftovers(PLAN) == []
        assert not procs.is_alive(wg) and not procs.is_alive(sleeper)
        assert not _root_blackholes() & {"10.214.0.0/24", "10.14.0.0/16"}
        LabNetwork(PLAN).destroy()  # idempotent
    finally:
        LabNetwork(PLAN).destroy()


def test_refuses_a_plan_whose_prefixes_are_in_use() -> None:
    first = LabNetwork(PLAN)
    # The same underlay, or only the same mesh, under another lab name: neither may piggyback on the
    # first lab's routes (its destroy would pull the blackholes from under them).
    same_underlay = LabNetwork(LabPlan(name="amtd", underlay=PLAN.underlay, mesh=IPv4Network("10.15.0.0/16")))
    same_mesh = LabNetwork(LabPlan(name="amte", underlay=IPv4Network("10.215.0.0/24"), mesh=PLAN.mesh))
    first.destroy()
    try:
        first.create()
        for other in (same_underlay, same_mesh):
            with pytest.raises(LabError, match="overlaps"):
                other.create()
            assert not any(other.plan.sweep_prefix in line for line in leftovers(other.plan))
            assert not other.exists()
        assert _root_blackholes() >= {"10.214.0.0/24", "10.14.0.0/16"}
        assert not _root_blackholes() & {"10.215.0.0/24", "10.15.0.0/16"}
    finally:
        first.destroy()
    for net in (first, same_underlay, same_mesh):
        assert leftovers(net.plan) == []


def test_crash_before_the_hub_needs_a_sweep_first() -> None:
    net = LabNetwork(PLAN)
    net.destroy()
    try:
        # A crash right after the blackholes went in: create() will not adopt them blind, destroy() clears.
        for prefix in PLAN.blackhole_prefixes:
            done = _run("ip", "route", "add", "blackhole", str(prefix), "metric", str(BLACKHOLE_METRIC))
            assert done.returncode == 0, done.stderr
        with pytest.raises(LabError, match="destroy"):
            net.create()
        net.destroy()
        assert leftovers(PLAN) == []
        net.create()
        assert net.exists()
    finally:
        net.destroy()


def test_bridge_mac_does_not_change_when_nodes_join(lab: LabNetwork) -> None:
    """A bridge MAC that follows its ports would leave the root's neighbour entry for the hub stale."""

    def bridge_mac() -> str:
        out = subprocess.run(
            ["ip", "-n", lab.plan.hub_ns, "-br", "link", "show", lab.plan.bridge],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return out.split()[2]

    lab.create()
    assert bridge_mac() == lab.plan.bridge_mac
    for index in (1, 2, 3):
        lab.add_node(f"n{index}", index)
        assert bridge_mac() == lab.plan.bridge_mac


def test_each_lab_starts_fresh_logs_and_keeps_the_previous_runs(lab: LabNetwork) -> None:
    """``up``, ``down``, ``up``: the new logs hold none of the first run's lines; those are in ``logs.1``."""
    root = Path(tempfile.mkdtemp(prefix="amtc-", dir="/tmp"))  # unix socket paths must stay short
    devnet = Devnet(root, PLAN)
    try:
        devnet.up(1, sidecars=False, indexer=False, transport="direct")
        names = sorted(p.name for p in devnet.logs.iterdir())
        assert "anvil.log" in names and "node-1-simulator.log" in names
        marker = f"first run {os.urandom(8).hex()}\n"
        for name in names:  # a line only the first run wrote, in every one of its logs
            with (devnet.logs / name).open("a") as fh:
                fh.write(marker)
        first = {name: (devnet.logs / name).read_text() for name in names}
        assert devnet.down() == []
        devnet.up(1, sidecars=False, indexer=False, transport="direct")
        for name in names:
            assert marker not in (devnet.logs / name).read_text(), name
            assert (root / "logs.1" / name).read_text().startswith(first[name])  # then its shutdown lines
    finally:
        devnet.down()
        shutil.rmtree(root, ignore_errors=True)


def test_a_boot_ends_a_process_no_record_names_in_the_node(lab: LabNetwork, tmp_path: Path) -> None:
    """A command killed between spawning a process and journalling it leaves one the lab does not know:
    power-off and boot end every process the lab spawned in the node's namespace, recorded or not, so a
    reboot never runs beside it (the routines' kill-at-each-step test hits that window now and then); what
    others run there stays."""
    root = Path(tempfile.mkdtemp(prefix="amtc-", dir="/tmp"))
    devnet = Devnet(root, PLAN)
    try:
        devnet.up(1, sidecars=False, indexer=False, transport="direct")
        node = devnet.running_state().node("node-1")
        stray = procs.spawn(["sleep", "60"], name="stray", netns=node.netns, log_path=tmp_path / "stray.log")
        devnet.stop_node("node-1")
        assert not procs.is_alive(stray) and netns_pids(node.netns) == []
        stray = procs.spawn(["sleep", "60"], name="stray", netns=node.netns, log_path=tmp_path / "stray.log")
        # Somebody else's process in the node (an operator's shell, a test's ping) is not the lab's to end.
        other = subprocess.Popen(["ip", "netns", "exec", node.netns, "sleep", "60"])
        try:
            booted = devnet.start_node("node-1")
            assert not procs.is_alive(stray) and other.poll() is None
            lab_pids = {rec.pid for rec in booted.processes.values()}
            assert set(netns_pids(node.netns)) == lab_pids | {other.pid}
        finally:
            other.kill()
            other.wait()
    finally:
        devnet.down()
        shutil.rmtree(root, ignore_errors=True)
