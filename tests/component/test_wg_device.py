"""The WireGuard adapter against real devices: wireguard-go (and the kernel module where there is one) in
lab namespaces, driven by ``sidecar.wg`` running INSIDE each node's namespace, as the sidecar does.

Uses its own lab ("amwg", underlay 10.216.0.0/24, mesh 10.16.0.0/16). Each node runs a small agent
(``tests.component.wg_agent``, one process per node, ``ip netns exec``) that holds the adapter object; the
test plans with ``plan_peers`` and checks the devices through independent means (``devnet.wireguard``'s
UAPI client or ``wg show``, ``ip -j``, ``ip monitor``, ``/proc/net/udp``, ``ping``). Socket-level
behaviour (missing socket, timeouts, serialisation, errno) is checked against small local unix servers;
the test process itself never configures a link: only agents in lab namespaces do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from devnet import procs
from devnet.netns import LabNetwork, NodeNet
from devnet.topology import LabPlan
from devnet.wireguard import start_wireguard_go, uapi_get, uapi_socket
from sidecar.core.ids import MemberId, SecretBytes
from sidecar.core.peerplan import ActualPeer, DesiredPeer, PeerPlan, WgKey, plan_peers
from sidecar.wg.device import InterfaceConfig, WgError
from sidecar.wg.kernel import kernel_available
from sidecar.wg.uapi import UapiDevice
from tests.component.wg_agent import actual_from_json, config_to_json, plan_to_json
from tests.conftest import require

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

PLAN = LabPlan(name="amwg", underlay=IPv4Network("10.216.0.0/24"), mesh=IPv4Network("10.16.0.0/16"))
IFNAME = "attestmesh0"
WG_PORT = 51820
REPO = Path(__file__).resolve().parents[2]
KERNEL = kernel_available()
#: Every backend this machine can run: the mesh tests run on each (the kernel one where the module is).
BACKENDS = ["userspace", "kernel"] if KERNEL else ["userspace"]
TIMINGS: dict[str, list[float]] = defaultdict(list)


@pytest.fixture(autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "root (network namespaces)")
    require(shutil.which("wireguard-go") is not None, "wireguard-go")
    require(shutil.which("wg") is not None, "wireguard-tools (wg)")
    require(shutil.which("ping") is not None, "ping (iputils-ping)")


@pytest.fixture
def lab() -> Iterator[LabNetwork]:
    net = LabNetwork(PLAN)
    net.destroy()  # start-up sweep: leftovers of an earlier crashed run
    try:
        net.create()
        yield net
    finally:
        net.destroy()
        assert LabNetwork(PLAN).leftovers() == []


# --- the agent: the adapter inside a namespace ------------------------------------------------------------


class AgentError(RuntimeError):
    """The agent process died or did not answer."""


class AgentClient:
    """One ``wg_agent`` process inside a namespace; ``call`` raises the agent's ``WgError`` here."""

    def __init__(self, ns: str, proc: asyncio.subprocess.Process) -> None:
        self.ns = ns
        self.proc = proc

    @classmethod
    async def start(cls, ns: str) -> AgentClient:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, "-m", "tests.component.wg_agent",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        return cls(ns, proc)

    async def call(self, op: str, **fields: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise AgentError(f"agent in {self.ns} exited (status {await self.proc.wait()})")
        reply = json.loads(line)
        if not reply["ok"]:
            error = reply["error"]
            raise WgError(error["message"], transient=error["transient"], errno=error["errno"])
        TIMINGS[op].append(reply["seconds"])
        return reply["result"]

    async def read_peers(self) -> list[ActualPeer]:
        return [actual_from_json(p) for p in await self.call("read_peers")]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # EOF: the agent closes its adapter and exits
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()  # our own child, by its PID
                await self.proc.wait()


@dataclass
class Node:
    index: int
    net: NodeNet
    key: SecretBytes
    uapi_dir: Path
    agent: AgentClient
    wg: procs.ProcRecord | None
    port: int = WG_PORT

    @property
    def public(self) -> WgKey:
        raw = X25519PrivateKey.from_private_bytes(self.key.reveal()).public_key().public_bytes_raw()
        return WgKey(raw)

    @property
    def mesh_ip(self) -> str:
        return str(PLAN.mesh.network_address + self.index)

    @property
    def address(self) -> IPv4Interface:
        return IPv4Interface(f"{self.mesh_ip}/{PLAN.mesh.prefixlen}")

    @property
    def endpoint(self) -> str:
        return f"{self.net.ip}:{self.port}"

    def config(self, **changes: Any) -> dict[str, Any]:
        fields = {"private_key": self.key, "listen_port": self.port, "address": self.address, **changes}
        return config_to_json(InterfaceConfig(**fields))

    def desired(self, endpoint: str | None = None) -> DesiredPeer:
        return DesiredPeer(
            member_id=MemberId(bytes([self.index]) * 32),
            public_key=self.public,
            endpoint=endpoint or self.endpoint,
            allowed_ips=(IPv4Network(f"{self.mesh_ip}/32"),),
        )


@dataclass
class Cluster:
    backend: str
    nodes: list[Node] = field(default_factory=list)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.agent.stop()
        for node in self.nodes:
            if node.wg is not None:
                procs.terminate(node.wg)


async def add_node(cluster: Cluster, lab: LabNetwork, tmp_path: Path, index: int) -> Node:
    net = lab.add_node(f"n{index}", index)
    uapi_dir = tmp_path / f"wg-n{index}"
    wg = None
    if cluster.backend == "userspace":
        wg = start_wireguard_go(net.ns, uapi_dir, ifname=IFNAME, log_path=tmp_path / f"wg-n{index}.log")
    agent = await AgentClient.start(net.ns)
    node = Node(index, net, SecretBytes(X25519PrivateKey.generate().private_bytes_raw()), uapi_dir, agent, wg)
    cluster.nodes.append(node)
    await agent.call("open", backend=cluster.backend, ifname=IFNAME, uapi_dir=str(uapi_dir))
    return node


@pytest.fixture
async def cluster_factory(
    lab: LabNetwork, tmp_path: Path
) -> AsyncIterator[Callable[[str, int], Awaitable[Cluster]]]:
    clusters: list[Cluster] = []

    async def make(backend: str, size: int) -> Cluster:
        cluster = Cluster(backend)
        clusters.append(cluster)
        for index in range(1, size + 1):
            await add_node(cluster, lab, tmp_path, index)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            await cluster.stop()


# --- independent views of a node ------------------------------------------------------------------------


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=15)


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    done = run("ip", "-n", ns, "-j", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]")  # type: ignore[no-any-return]


def link_facts(ns: str) -> dict[str, Any]:
    (link,) = ip_json(ns, "addr", "show", "dev", IFNAME)
    routes = ip_json(ns, "-4", "route", "show", "table", "main", "dev", IFNAME)
    return {
        "mtu": link["mtu"],
        "up": "UP" in link["flags"],
        "ipv4": sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"),
        "routes": sorted(r["dst"] for r in routes),
    }


def device_facts(node: Node, backend: str) -> dict[str, Any]:
    """Key, port and peers as the device reports them, read without our adapter (keys hex)."""
    if backend == "userspace":
        dev = uapi_get(uapi_socket(node.uapi_dir, IFNAME))
        peers = {
            key: {
                "endpoint": p["endpoint"],
                "allowed_ips": sorted(p["allowed_ips"]),
                "keepalive": p["persistent_keepalive_interval"],
                "handshake": p["last_handshake_time_sec"],
            }
            for key, p in dev["peers"].items()
        }
        return {"public_key": dev["public_key"], "listen_port": dev["listen_port"], "peers": peers}
    done = run("ip", "netns", "exec", node.net.ns, "wg", "show", IFNAME, "dump")
    assert done.returncode == 0, "wg show failed"  # its output holds the private key: never shown
    rows = [line.split("\t") for line in done.stdout.splitlines()]

    def hexkey(b64: str) -> str:
        return base64.b64decode(b64).hex()

    return {
        "public_key": hexkey(rows[0][1]),
        "listen_port": int(rows[0][2]),
        "peers": {
            hexkey(r[0]): {
                "endpoint": None if r[2] == "(none)" else r[2],
                "allowed_ips": [] if r[3] == "(none)" else sorted(r[3].split(",")),
                "keepalive": 0 if r[7] == "off" else int(r[7]),
                "handshake": int(r[4]),
            }
            for r in rows[1:]
        },
    }


def udp_inodes(ns: str, port: int) -> set[str]:
    """Inodes of the UDP sockets bound to ``port`` in ``ns``: they change when wireguard-go rebinds."""
    done = run("ip", "netns", "exec", ns, "cat", "/proc/net/udp", "/proc/net/udp6")
    suffix = f":{port:04X}"
    return {f[9] for f in (line.split() for line in done.stdout.splitlines()) if f[1].endswith(suffix)}


def ping(ns: str, target: str) -> bool:
    return run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", target).returncode == 0


def wait_ping(src: Node, dst: Node) -> None:
    procs.wait_for(
        lambda: ping(src.net.ns, dst.mesh_ip), 15.0, 0.05, what=f"ping n{src.index} -> n{dst.index}"
    )


async def netlink_events_during(ns: str, action: Callable[[], Awaitable[Any]]) -> list[str]:
    """Run ``action`` while ``ip monitor`` watches ``ns``; return the events seen between two markers.

    The markers (loopback addresses added in the lab namespace) prove the monitor was listening before the
    action and had delivered everything up to after it; no sleep stands in for that.
    """
    monitor = await asyncio.create_subprocess_exec(
        "ip", "-n", ns, "monitor", "link", "address", "route", stdout=asyncio.subprocess.PIPE
    )
    assert monitor.stdout is not None
    stdout = monitor.stdout

    async def mark(addr: str, into: list[str] | None) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            run("ip", "-n", ns, "addr", "replace", f"{addr}/32", "dev", "lo")
            try:
                while True:
                    line = (await asyncio.wait_for(stdout.readline(), 0.5)).decode()
                    if addr in line:
                        return
                    if into is not None:
                        into.append(line.strip())
            except TimeoutError:
                run("ip", "-n", ns, "addr", "del", f"{addr}/32", "dev", "lo")  # not seen: listen again
        raise AssertionError(f"ip monitor in {ns} never reported marker {addr}")

    events: list[str] = []
    try:
        await mark("127.0.0.2", None)
        await action()
        await mark("127.0.0.3", events)
    finally:
        monitor.terminate()
        await monitor.wait()
        for addr in ("127.0.0.2", "127.0.0.3"):
            run("ip", "-n", ns, "addr", "del", f"{addr}/32", "dev", "lo")
    return events


def others(cluster: Cluster, node: Node) -> list[Node]:
    return [n for n in cluster.nodes if n is not node]


def check_peers(
    cluster: Cluster, node: Node, expected: list[Node], *, endpoints: dict[int, str] | None = None
) -> None:
    facts = device_facts(node, cluster.backend)
    assert set(facts["peers"]) == {n.public.hex for n in expected}
    for peer in expected:
        got = facts["peers"][peer.public.hex]
        assert got["endpoint"] == (endpoints or {}).get(peer.index, peer.endpoint)
        assert got["allowed_ips"] == [f"{peer.mesh_ip}/32"]
        assert got["keepalive"] == 25


def report_timings(label: str) -> None:
    parts = []
    for op, values in sorted(TIMINGS.items()):
        if op in ("open", "hold_udp"):
            continue
        ms = [v * 1000 for v in values]
        parts.append(
            f"{op}: n={len(ms)} min={min(ms):.2f} median={statistics.median(ms):.2f} max={max(ms):.2f} "
            f"(in order: {' '.join(f'{v:.1f}' for v in ms)})"
        )
    print(f"\n[{label}] adapter latency in ms, inside the agent:\n  " + "\n  ".join(parts))


# --- the mesh -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_three_node_mesh(
    backend: str, cluster_factory: Callable[[str, int], Awaitable[Cluster]]
) -> None:
    TIMINGS.clear()
    started = time.monotonic()
    cluster = await cluster_factory(backend, 3)
    n1, n2, n3 = cluster.nodes

    # ensure_up: key, port, address, MTU, up, route.
    for node in cluster.nodes:
        await node.agent.call("ensure_up", config=node.config())
        facts = device_facts(node, backend)
        assert (facts["public_key"], facts["listen_port"], facts["peers"]) == (node.public.hex, WG_PORT, {})
        assert link_facts(node.net.ns) == {
            "mtu": 1420,
            "up": True,
            "ipv4": [str(node.address)],
            "routes": ["10.16.0.0/16"],
        }
        assert await node.agent.call("public_key") == node.public.hex

    # A second ensure_up changes nothing: no netlink event for the interface, no UDP rebind.
    inodes = udp_inodes(n1.net.ns, WG_PORT)
    assert backend != "userspace" or inodes
    events = await netlink_events_during(n1.net.ns, lambda: n1.agent.call("ensure_up", config=n1.config()))
    assert [e for e in events if IFNAME in e or "10.16." in e] == []
    assert udp_inodes(n1.net.ns, WG_PORT) == inodes

    # Full mesh from plan_peers(desired, read_peers()).
    desired = {n.index: [o.desired() for o in others(cluster, n)] for n in cluster.nodes}
    for node in cluster.nodes:
        plan = plan_peers(desired[node.index], await node.agent.read_peers())
        assert plan.describe() == {"added": 2, "removed": 0, "updated": 0}
        await node.agent.call("apply", plan=plan_to_json(plan))
    for node in cluster.nodes:
        check_peers(cluster, node, others(cluster, node))
    for src in cluster.nodes:
        for dst in others(cluster, src):
            wait_ping(src, dst)
    mesh_up = time.monotonic() - started

    # Planning again: nothing to do (with and without the previous pass's desired state).
    for node in cluster.nodes:
        actual = await node.agent.read_peers()
        assert all(p.last_handshake is not None for p in actual)
        previous = {p.public_key: p for p in desired[node.index]}
        assert plan_peers(desired[node.index], actual, previous, time.time()).empty
        assert plan_peers(desired[node.index], actual).empty
        await node.agent.call("apply", plan=plan_to_json(PeerPlan()))  # an empty plan is a no-op

    # n3 leaves the mesh: exactly its peer goes from n1 and n2.
    for node in (n1, n2):
        previous = {p.public_key: p for p in desired[node.index]}
        desired[node.index] = [p for p in desired[node.index] if p.public_key != n3.public]
        plan = plan_peers(desired[node.index], await node.agent.read_peers(), previous, time.time())
        assert plan == PeerPlan(remove=(n3.public,))
        await node.agent.call("apply", plan=plan_to_json(plan))
        check_peers(cluster, node, [o for o in (n1, n2) if o is not node])
    assert not ping(n1.net.ns, n3.mesh_ip)

    # n2's endpoint changes on chain: n1's device follows (to an unused lab address), then back.
    for endpoint in ("10.216.0.99:51820", n2.endpoint):
        previous = {p.public_key: p for p in desired[1]}
        desired[1] = [n2.desired(endpoint)]
        plan = plan_peers(desired[1], await n1.agent.read_peers(), previous, time.time())
        assert [(p.public_key, p.endpoint) for p in plan.update] == [(n2.public, endpoint)]
        assert not plan.add and not plan.remove
        await n1.agent.call("apply", plan=plan_to_json(plan))
        check_peers(cluster, n1, [n2], endpoints={2: endpoint})
    wait_ping(n1, n2)

    # A sidecar restart (new process, new adapter object): ensure_up leaves the peers as they are.
    before = {p.public_key: p for p in await n1.agent.read_peers()}
    handshakes = {k: v["handshake"] for k, v in device_facts(n1, backend)["peers"].items()}
    await n1.agent.stop()
    n1.agent = await AgentClient.start(n1.net.ns)
    await n1.agent.call("open", backend=backend, ifname=IFNAME, uapi_dir=str(n1.uapi_dir))
    await n1.agent.call("ensure_up", config=n1.config())
    after = {p.public_key: p for p in await n1.agent.read_peers()}
    assert {k: (p.endpoint, p.allowed_ips, p.keepalive) for k, p in after.items()} == {
        k: (p.endpoint, p.allowed_ips, p.keepalive) for k, p in before.items()
    }
    assert {k: v["handshake"] for k, v in device_facts(n1, backend)["peers"].items()} == handshakes
    assert ping(n1.net.ns, n2.mesh_ip)

    report_timings(f"{backend} mesh, up in {mesh_up:.2f}s")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_ensure_up_repairs_drift_and_reports_a_busy_port(
    backend: str, cluster_factory: Callable[[str, int], Awaitable[Cluster]]
) -> None:
    (node,) = (await cluster_factory(backend, 1)).nodes
    ns = node.net.ns
    await node.agent.call("ensure_up", config=node.config())
    stray = IPv4Network("10.16.9.0/24")
    peer_key = WgKey(b"\x77" * 32)
    plan = PeerPlan(add=(DesiredPeer(MemberId(b"\x07" * 32), peer_key, "10.216.0.77:51820", (stray,)),))
    await node.agent.call("apply", plan=plan_to_json(plan))

    # Someone changed the interface under us: an extra address, no route, another MTU, link down.
    for argv in (
        ("addr", "add", "10.16.9.9/16", "dev", IFNAME),
        ("route", "del", "10.16.0.0/16", "dev", IFNAME),
        ("link", "set", IFNAME, "mtu", "1300"),
        ("link", "set", IFNAME, "down"),
    ):
        done = run("ip", "-n", ns, *argv)
        assert done.returncode == 0, done.stderr
    await node.agent.call("ensure_up", config=node.config())
    assert link_facts(ns) == {
        "mtu": 1420,
        "up": True,
        "ipv4": [str(node.address)],
        "routes": ["10.16.0.0/16"],
    }

    # A new mesh address replaces the old one; peers are never touched.
    moved = IPv4Interface("10.16.0.200/16")
    await node.agent.call("ensure_up", config=node.config(address=moved))
    assert link_facts(ns)["ipv4"] == [str(moved)]
    assert [p.public_key for p in await node.agent.read_peers()] == [peer_key]

    # A listen port another socket holds: a transient error carrying the errno, never the key.
    await node.agent.call("hold_udp", port=51830)
    with pytest.raises(WgError) as info:
        await node.agent.call("ensure_up", config=node.config(listen_port=51830))
    assert info.value.transient
    assert info.value.errno in (-98, 98)
    assert node.key.reveal().hex() not in str(info.value)
    await node.agent.call("ensure_up", config=node.config())
    assert device_facts(node, backend)["listen_port"] == WG_PORT


# --- the kernel backend ---------------------------------------------------------------------------------


async def test_kernel_backend_matches_this_kernel(lab: LabNetwork) -> None:
    """kernel_available() agrees with iproute2; without the module every kernel operation fails clearly."""
    net = lab.add_node("k1", 1)
    probe = run("ip", "-n", net.ns, "link", "add", "wgprobe", "type", "wireguard")
    if probe.returncode == 0:
        assert run("ip", "-n", net.ns, "link", "del", "wgprobe").returncode == 0
    assert (probe.returncode == 0) == KERNEL

    agent = await AgentClient.start(net.ns)
    try:
        chosen = await agent.call("open", backend="auto", ifname=IFNAME, uapi_dir="/nonexistent")
        assert chosen == ("KernelDevice" if KERNEL else "UapiDevice")
        assert (
            await agent.call("open", backend="kernel", ifname=IFNAME, uapi_dir="/nonexistent")
            == "KernelDevice"
        )
        if KERNEL:
            return  # the mesh tests above ran on the kernel backend too
        key = SecretBytes(os.urandom(32))
        config = config_to_json(
            InterfaceConfig(private_key=key, listen_port=WG_PORT, address=IPv4Interface("10.16.0.1/16"))
        )
        with pytest.raises(WgError, match="kernel WireGuard not available") as info:
            await agent.call("ensure_up", config=config)
        assert not info.value.transient
        assert key.reveal().hex() not in str(info.value)
        for op, fields in (
            ("read_peers", {}),
            ("public_key", {}),
            ("apply", {"plan": plan_to_json(PeerPlan(remove=(WgKey(b"\x01" * 32),)))}),
        ):
            with pytest.raises(WgError, match="kernel WireGuard not available"):
                await agent.call(op, **fields)
        await agent.call("apply", plan=plan_to_json(PeerPlan()))  # empty: nothing to refuse
        assert IFNAME not in run("ip", "-n", net.ns, "link", "show").stdout  # no link was touched
    finally:
        await agent.stop()


# --- the UAPI socket --------------------------------------------------------------------------------------


@dataclass
class FakeUapi:
    """A local stand-in for wireguard-go's socket: canned replies, optional delay, concurrency count."""

    path: Path
    set_reply: bytes = b"errno=0\n\n"
    delay: float = 0.0
    silent: bool = False
    active: int = 0
    max_active: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            request = await reader.readuntil(b"\n\n")
            self.requests.append(request)
            if self.silent:
                await reader.read()  # until the client gives up
                return
            await asyncio.sleep(self.delay)
            writer.write(b"listen_port=0\nerrno=0\n\n" if request == b"get=1\n\n" else self.set_reply)
            await writer.drain()
        finally:
            self.active -= 1
            writer.close()


@pytest.fixture
async def fake_uapi(tmp_path: Path) -> AsyncIterator[FakeUapi]:
    fake = FakeUapi(tmp_path / "uapi" / f"{IFNAME}.sock")
    fake.path.parent.mkdir()
    server = await asyncio.start_unix_server(fake.handle, path=fake.path)
    try:
        yield fake
    finally:
        server.close()
        await server.wait_closed()


async def test_missing_socket_is_a_transient_not_found(tmp_path: Path) -> None:
    device = UapiDevice(tmp_path / f"{IFNAME}.sock", IFNAME)
    for call in (device.read_peers, device.public_key):
        with pytest.raises(WgError, match=r"wireguard-go socket .* not found") as info:
            await call()
        assert info.value.transient
    await device.close()


async def test_stale_socket_is_transient(tmp_path: Path) -> None:
    path = tmp_path / f"{IFNAME}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: what a crashed wireguard-go leaves
    with pytest.raises(WgError, match="refused") as info:
        await UapiDevice(path, IFNAME).read_peers()
    assert info.value.transient


async def test_a_silent_device_times_out_and_frees_the_lock(fake_uapi: FakeUapi) -> None:
    fake_uapi.silent = True
    device = UapiDevice(fake_uapi.path, IFNAME, timeout=0.2)
    for _ in range(2):  # the second call is not stuck behind the first
        with pytest.raises(WgError, match="no reply within") as info:
            await device.read_peers()
        assert info.value.transient


async def test_exchanges_never_interleave(fake_uapi: FakeUapi) -> None:
    fake_uapi.delay = 0.005
    device = UapiDevice(fake_uapi.path, IFNAME)
    plan = PeerPlan(remove=(WgKey(b"\x01" * 32),))
    await asyncio.gather(*(device.read_peers() if i % 2 else device.apply(plan) for i in range(20)))
    assert fake_uapi.max_active == 1
    assert len(fake_uapi.requests) == 20


async def test_set_errors_carry_the_errno_never_the_request(fake_uapi: FakeUapi, lab: LabNetwork) -> None:
    fake_uapi.set_reply = b"errno=-22\n\n"
    device = UapiDevice(fake_uapi.path, IFNAME)
    with pytest.raises(WgError) as info:
        await device.apply(PeerPlan(remove=(WgKey(b"\x01" * 32),)))
    assert (info.value.errno, info.value.transient) == (-22, False)
    assert "01" * 32 not in str(info.value)

    # ensure_up sends the private key: run it where it belongs, in a lab namespace, against the fake.
    net = lab.add_node("u1", 1)
    agent = await AgentClient.start(net.ns)
    try:
        await agent.call("open", backend="userspace", ifname=IFNAME, uapi_dir=str(fake_uapi.path.parent))
        key = SecretBytes(os.urandom(32))
        config = InterfaceConfig(private_key=key, listen_port=WG_PORT, address=IPv4Interface("10.16.0.1/16"))
        with pytest.raises(WgError) as info:
            await agent.call("ensure_up", config=config_to_json(config))
    finally:
        await agent.stop()
    assert info.value.errno == -22
    assert key.reveal().hex() not in str(info.value)
    assert any(key.reveal().hex().encode() in r for r in fake_uapi.requests)  # it was sent, over the socket
    assert IFNAME not in run("ip", "-n", net.ns, "link", "show").stdout


def test_no_lab_process_or_namespace_is_left() -> None:
    """After the module's tests: nothing of the lab remains (namespaces, links, routes, processes)."""
    assert LabNetwork(PLAN).leftovers() == []
