"""The devnet lab's network: namespaces, bridge, veths, addresses and the root namespace's routes.

Owns: applying a ``LabPlan`` with iproute2 (``LabNetwork.create``/``add_node``/``add_indexer``/
``add_gateway``/``remove_node``), a namespace's resolver (``set_resolver``: ``/etc/netns/<ns>/resolv.conf``,
which ``ip netns exec`` bind-mounts over ``/etc/resolv.conf`` for everything the lab runs there), the sweep
that removes everything carrying the lab's prefix after a clean stop or a crash (``destroy``), and
``leftovers`` which tests use to prove nothing is left behind.

Network safety (hard rule): lab addresses exist only inside namespaces created here, plus the root veth
into the lab bridge; the root namespace's blackhole routes for every lab prefix are added before anything
else and removed after everything else. Must not: enable forwarding or NAT, give a node a default route,
touch a namespace, link or route outside the lab's prefixes, or signal a process outside the lab's
namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path

from devnet import procs
from devnet.topology import BLACKHOLE_METRIC, NODE_IFACE, Attachment, LabPlan

NETNS_DIR = Path("/run/netns")
#: Per-namespace files ``ip netns exec NS`` bind-mounts over their ``/etc`` namesakes.
NETNS_ETC = Path("/etc/netns")
_KILL_TIMEOUT = 5.0
_KILL_ROUNDS = 3
_VANISH_TIMEOUT = 5.0


class LabError(RuntimeError):
    """The lab network could not be brought to the requested state."""


class IpCommandError(LabError):
    """An ``ip`` command failed; carries its argv, exit status and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {self.stderr}")


@dataclass(frozen=True, slots=True)
class NodeNet:
    """A node's place on the underlay: its namespace, its address and the interface holding it."""

    ns: str
    ip: IPv4Address
    iface: str


# --- iproute2 -----------------------------------------------------------------------------------------


def _ip(*args: str, ns: str | None = None, stdin: str | None = None) -> str:
    argv = ["ip", *(("-n", ns) if ns is not None else ()), *args]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise IpCommandError(argv, done.returncode, done.stderr)
    return done.stdout


def _ip_batch(lines: Iterable[str], *, ns: str | None = None) -> None:
    """Run several ``ip`` commands in one process; stops at (and reports) the first failing line."""
    script = "".join(f"{line}\n" for line in lines)
    if script:
        _ip("-batch", "-", ns=ns, stdin=script)


def _ip_json(*args: str, ns: str | None = None) -> list[dict[str, object]]:
    out = _ip("-j", *args, ns=ns).strip()
    if not out:
        return []
    parsed = json.loads(out)
    if not isinstance(parsed, list):
        raise LabError(f"unexpected JSON from ip {' '.join(args)}")
    return [entry for entry in parsed if isinstance(entry, dict)]


def list_netns() -> list[str]:
    """Return the names of all named network namespaces (files under /run/netns)."""
    try:
        return sorted(entry.name for entry in os.scandir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def netns_etc_dirs(prefix: str) -> list[Path]:
    """The ``/etc/netns`` directories of the namespaces whose names start with ``prefix``."""
    try:
        return sorted(Path(entry.path) for entry in os.scandir(NETNS_ETC) if entry.name.startswith(prefix))
    except FileNotFoundError:
        return []


def set_resolver(ns: str, nameserver: IPv4Address) -> Path:
    """Make ``nameserver`` the only resolver of what runs in ``ns`` (through ``ip netns exec``)."""
    directory = NETNS_ETC / ns
    directory.mkdir(parents=True, exist_ok=True)
    # Written in place, before anything runs in the namespace: every file in this directory is bind-mounted
    # over its namesake in /etc, so a temporary file beside it would be too.
    path = directory / "resolv.conf"
    path.write_text(f"# the AttestMesh devnet's lab DNS, removed with the lab\nnameserver {nameserver}\n")
    return path


def remove_netns_etc(ns: str) -> None:
    """Remove ``/etc/netns/<ns>`` (no-op when absent)."""
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def link_names(ns: str | None = None) -> list[str]:
    """Return the interface names in namespace ``ns`` (None: the root namespace)."""
    return [str(link["ifname"]) for link in _ip_json("link", "show", ns=ns) if "ifname" in link]


def netns_pids(ns: str) -> list[int]:
    """Return the PIDs of the processes living in namespace ``ns`` (empty if it does not exist)."""
    try:
        out = _ip("netns", "pids", ns)
    except IpCommandError:
        if netns_exists(ns):
            raise
        return []
    return [int(tok) for tok in out.split()]


def _ipv4_addrs(ns: str, dev: str) -> list[str]:
    addrs: list[str] = []
    for link in _ip_json("-4", "addr", "show", "dev", dev, ns=ns):
        infos = link.get("addr_info")
        if isinstance(infos, list):
            addrs.extend(f"{i['local']}/{i['prefixlen']}" for i in infos if isinstance(i, dict))
    return addrs


def _route_net(route: dict[str, object]) -> IPv4Network | None:
    dst = route.get("dst")
    if not isinstance(dst, str) or dst == "default":
        return None
    net = ip_network(dst, strict=False)
    return net if isinstance(net, IPv4Network) else None


def _is_our_blackhole(route: dict[str, object], plan: LabPlan) -> bool:
    return (
        route.get("type") == "blackhole"
        and route.get("metric") == BLACKHOLE_METRIC
        and _route_net(route) in plan.blackhole_prefixes
    )


def _root_routes() -> list[dict[str, object]]:
    return _ip_json("-4", "route", "show", "table", "main")


def _ignore_missing(exc: IpCommandError) -> None:
    """Re-raise ``exc`` unless it says the object is already gone (a concurrent or earlier removal)."""
    gone = ("Cannot find device", "No such process", "No such file", "does not exist", "not found")
    if not any(text in exc.stderr for text in gone):
        raise exc


def kill_namespace_processes(
    namespaces: Sequence[str], *, spawned_only: bool = False
) -> list[procs.ProcRecord]:
    """Stop every process in ``namespaces`` (with ``spawned_only``, only those ``procs.spawn`` started);
    return those that survived SIGKILL.

    A few rounds, so a process forked while the first round was stopping its parent goes too.
    """
    for _round in range(_KILL_ROUNDS):
        records = [
            rec
            for ns in namespaces
            for pid in netns_pids(ns)
            if (not spawned_only or procs.spawned_here(pid))
            and (rec := procs.record_for(pid, f"{ns}:{pid}")) is not None
        ]
        if not records:
            return []
        survivors = procs.terminate_all(records, timeout=_KILL_TIMEOUT)
        if survivors:
            return survivors  # unkillable (uninterruptible sleep): another round would not help
    return []


# --- the lab --------------------------------------------------------------------------------------------


class LabNetwork:
    """Applies a ``LabPlan``: idempotent create/add/remove, and a crash-proof sweep."""

    def __init__(self, plan: LabPlan) -> None:
        self.plan = plan

    def exists(self) -> bool:
        """Tell whether the lab has been created (its hub namespace exists)."""
        return netns_exists(self.plan.hub_ns)

    def create(self) -> None:
        """Create (or complete) the hub namespace, bridge, root veth and the root's blackhole routes."""
        plan = self.plan
        self._check_no_foreign_routes()
        # Blackholes first: from here on no packet for a lab prefix can leave the machine.
        _ip_batch(
            f"route replace blackhole {prefix} metric {BLACKHOLE_METRIC}"
            for prefix in plan.blackhole_prefixes
        )
        self._ensure_netns(plan.hub_ns)
        hub_links = link_names(plan.hub_ns)
        if plan.bridge not in hub_links:
            # A fixed MAC: a bridge without one takes the lowest MAC of its ports, so every node added would
            # change it and leave the root namespace's neighbour entry for the hub (anvil) stale for seconds.
            _ip("link", "add", plan.bridge, "address", plan.bridge_mac, "type", "bridge", ns=plan.hub_ns)
        root_links = link_names()
        # One end without the other means a half-swept earlier lab: start the pair again.
        if plan.root_veth in root_links and plan.hub_root_port not in hub_links:
            _ip("link", "del", plan.root_veth)
            root_links.remove(plan.root_veth)
        if plan.hub_root_port in hub_links and plan.root_veth not in root_links:
            _ip("link", "del", plan.hub_root_port, ns=plan.hub_ns)
        if plan.root_veth not in root_links:
            _ip("link", "add", plan.root_veth, "type", "veth", "peer", "name", plan.hub_root_port,
                "netns", plan.hub_ns)  # fmt: skip
        _ip_batch(
            [
                f"addr replace {plan.hub_ip}/{plan.prefixlen} dev {plan.bridge}",
                f"link set {plan.bridge} up",
                f"link set {plan.hub_root_port} master {plan.bridge}",
                f"link set {plan.hub_root_port} up",
            ],
            ns=plan.hub_ns,
        )
        # Defence in depth: nothing arriving from the lab is ever forwarded by the root namespace (even if
        # someone turns global forwarding on), and the root end of the lab link has no IPv6 at all.
        self._write_sysctl(f"net/ipv4/conf/{plan.root_veth}/forwarding", "0")
        self._write_sysctl(f"net/ipv6/conf/{plan.root_veth}/disable_ipv6", "1")
        _ip_batch(
            [
                f"addr replace {plan.root_ip}/{plan.prefixlen} dev {plan.root_veth}",
                f"link set {plan.root_veth} up",
            ]
        )

    def add_node(self, name: str, index: int) -> NodeNet:
        """Create (or complete) node ``name``'s namespace and its port on the bridge at ``index``."""
        return self._attach(self.plan.node(name, index))

    def add_indexer(self) -> NodeNet:
        """Create (or complete) the indexer's namespace ``<lab>-idx`` and its port on the bridge."""
        return self._attach(self.plan.indexer)

    def add_gateway(self) -> NodeNet:
        """Create (or complete) the gateway's namespace ``<lab>-gw`` and its port on the bridge."""
        return self._attach(self.plan.gateway)

    def remove_node(self, name: str) -> None:
        """Stop every process in node ``name``'s namespace and delete the namespace (no-op if absent)."""
        ns = self.plan.node_ns(name)
        if not netns_exists(ns):
            return
        survivors = kill_namespace_processes([ns])
        if NODE_IFACE in link_names(ns):
            # Deleting our end takes the hub port with it now, not when the kernel frees the namespace.
            try:
                _ip("link", "del", NODE_IFACE, ns=ns)
            except IpCommandError as exc:
                _ignore_missing(exc)
        self._delete_netns(ns)
        remove_netns_etc(ns)
        if survivors:
            raise LabError(f"processes survived SIGKILL in {ns}: {[r.pid for r in survivors]}")

    def destroy(self) -> None:
        """Sweep everything carrying the lab's prefix; works on partial state, no-op when nothing is left."""
        plan = self.plan
        namespaces = [ns for ns in list_netns() if ns.startswith(plan.sweep_prefix)]
        survivors = kill_namespace_processes(namespaces)
        # Root-side links first, synchronously: their peers may otherwise outlive `ip netns del` briefly.
        for link in link_names():
            if link.startswith(plan.sweep_prefix):
                try:
                    _ip("link", "del", link)
                except IpCommandError as exc:
                    _ignore_missing(exc)
        # Reverse order of creation: nodes, then the hub.
        for ns in sorted(namespaces, key=lambda n: n == plan.hub_ns):
            self._delete_netns(ns)
        for directory in netns_etc_dirs(plan.sweep_prefix):
            shutil.rmtree(directory, ignore_errors=True)
        # Blackholes last: they stay until nothing of the lab can emit a packet.
        for route in _root_routes():
            if _is_our_blackhole(route, plan):
                try:
                    _ip("route", "del", "blackhole", str(route["dst"]), "metric", str(BLACKHOLE_METRIC))
                except IpCommandError as exc:
                    _ignore_missing(exc)
        procs.reap()
        remaining = leftovers(plan)
        if survivors or remaining:
            raise LabError(
                f"lab {plan.name} not fully removed: {[f'process {r.pid}' for r in survivors] + remaining}"
            )

    def leftovers(self) -> list[str]:
        """Describe anything of this lab still present (empty when the sweep is complete)."""
        return leftovers(self.plan)

    # --- steps ---------------------------------------------------------------------------------------

    def _check_no_foreign_routes(self) -> None:
        """Refuse to create the lab if another network (or another lab) already routes its prefixes.

        Blackholes are known only by prefix and metric, so one with our prefix counts as ours only while
        this lab is (partly) present; otherwise it may be another lab's, which that lab's destroy would
        remove from under us.
        """
        plan = self.plan
        present = self.exists() or plan.root_veth in link_names()
        for route in _root_routes():
            net = _route_net(route)
            if net is None or route.get("dev") == plan.root_veth:
                continue
            if present and _is_our_blackhole(route, plan):
                continue
            for prefix in plan.blackhole_prefixes:
                if net.overlaps(prefix):
                    raise LabError(
                        f"route {net} (dev {route.get('dev', '-')}, type {route.get('type', 'unicast')}) "
                        f"overlaps lab prefix {prefix}: another lab or network uses it (pick other prefixes "
                        f"for lab {plan.name}), or a crashed {plan.name} left it (destroy() first)"
                    )

    def _attach(self, slot: Attachment) -> NodeNet:
        plan = self.plan
        if not self.exists():
            raise LabError(f"lab {plan.name} is not created: call create() first")
        self._ensure_netns(slot.ns)
        hub_links = link_names(plan.hub_ns)
        if slot.iface not in link_names(slot.ns):
            if slot.hub_port in hub_links:
                # Either a namespace deleted moments ago (the kernel frees its veth asynchronously) or
                # another live attachment using the same index: wait briefly, then refuse.
                try:
                    procs.wait_for(
                        lambda: slot.hub_port not in link_names(plan.hub_ns),
                        _VANISH_TIMEOUT,
                        what=f"stale hub port {slot.hub_port} to vanish",
                    )
                except procs.WaitTimeout:
                    raise LabError(
                        f"hub port {slot.hub_port} is in use: is index of {slot.name} taken by another node?"
                    ) from None
            # Created directly in place: the pair is never visible in the root namespace.
            _ip("link", "add", slot.iface, "type", "veth", "peer", "name", slot.hub_port,
                "netns", plan.hub_ns, ns=slot.ns)  # fmt: skip
        elif slot.hub_port not in hub_links:
            raise LabError(f"{slot.ns} has {slot.iface} but the hub has no {slot.hub_port}: wrong index?")
        want = f"{slot.ip}/{slot.prefixlen}"
        foreign = [addr for addr in _ipv4_addrs(slot.ns, slot.iface) if addr != want]
        if foreign:
            raise LabError(f"{slot.ns} {slot.iface} already holds {foreign}, not {want}: wrong index?")
        _ip_batch(
            [f"link set {slot.hub_port} master {plan.bridge}", f"link set {slot.hub_port} up"],
            ns=plan.hub_ns,
        )
        _ip_batch(
            [f"addr replace {want} dev {slot.iface}", f"link set {slot.iface} up"],
            ns=slot.ns,
        )
        return NodeNet(ns=slot.ns, ip=slot.ip, iface=slot.iface)

    @staticmethod
    def _ensure_netns(ns: str) -> None:
        if not netns_exists(ns):
            _ip("netns", "add", ns)
        _ip("link", "set", "lo", "up", ns=ns)

    @staticmethod
    def _delete_netns(ns: str) -> None:
        try:
            _ip("netns", "del", ns)
        except IpCommandError as exc:
            _ignore_missing(exc)

    @staticmethod
    def _write_sysctl(key: str, value: str) -> None:
        path = Path("/proc/sys", key)
        if path.exists():  # the IPv6 tree is absent when the kernel has IPv6 disabled
            path.write_text(value)


def leftovers(plan: LabPlan) -> list[str]:
    """Describe anything of ``plan``'s lab still present: namespaces, mounts, links, routes, processes and
    ``/etc/netns`` directories."""
    found: list[str] = []
    prefix = plan.sweep_prefix
    for ns in list_netns():
        if ns.startswith(prefix):
            found.append(f"netns file {NETNS_DIR / ns}")
            found.extend(f"process {pid} in {ns}" for pid in netns_pids(ns))
    found.extend(f"netns config {directory}" for directory in netns_etc_dirs(prefix))
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        if mount_point.startswith(f"{NETNS_DIR}/{prefix}"):
            found.append(f"mount {mount_point}")
    found.extend(f"link {link}" for link in link_names() if link.startswith(prefix))
    for route in _root_routes():
        # Routes of other labs or networks that overlap our prefixes are not ours: create() refuses them.
        if _is_our_blackhole(route, plan) or str(route.get("dev", "")).startswith(prefix):
            found.append(
                f"route {route.get('type', 'unicast')} {route.get('dst')} dev {route.get('dev', '-')} "
                f"metric {route.get('metric', 0)}"
            )
    return found
