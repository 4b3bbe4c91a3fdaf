"""Lab-level benchmarks: the devnet driven through the ``attestmesh`` command line, as an operator would.

- **bring-up**: a cold ``attestmesh devnet up --nodes 3`` until every node's ``/healthz`` says healthy
  (each run a fresh lab directory and a fresh lab; the ``down`` is timed too);
- **restart**: ``attestmesh devnet node restart node-2`` until that node is healthy again;
- **join**: ``attestmesh devnet node add`` of a fourth node: from the block that mines the newcomer's
  registration (watched with the chain adapter every 10 ms: anvil's block timestamps are whole seconds)
  until every existing member's WireGuard device holds the newcomer's peer (UAPI ``get=1`` every 10 ms).
  Each newcomer is then evicted (``node remove``, the same two timestamps, for the peer's removal) and
  stopped, so every run joins a 3-member cluster. Measured twice: on the shared lab, whose sidecars are in
  push mode (the lab's indexer pushes the logs), and on a lab made with ``up --no-indexer``, whose
  sidecars only poll chain logs; each run also reads from the members' logs (``events.handled``) whether
  the registration log reached them by push or by poll, and the two modes are compared at the end;
- **roll**: ``deploy/node.sh NODE restart`` (a CVM reboot through the KMS gate, as an image roll does) of
  every node of the 3-node lab at once, until every ``/healthz`` says healthy again; and a rolling restart
  (``restart`` then ``mesh-verify``, one node at a time), its total wall time and each node's restart
  issued -> healthy, with the fewest healthy nodes seen at any 50 ms sample;
- **steady**: a 30 s idle window of a healthy 3-node lab: each sidecar's RSS (``/proc/PID/status``) and CPU
  (``/proc/PID/stat`` utime + stime), and its JSON-RPC calls from its ``/metrics`` counters, per method.

Labs use their own name and prefixes (``ambn``, 10.217.0.0/24, mesh 10.17.0.0/16) and a short lab directory
under /tmp (unix socket paths must stay under 108 bytes); every lab is brought down again, on failure too.
Traffic goes only to the lab (the root namespace reaches it through the lab's veth) and to loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

from devnet import procs
from devnet.lab import fetch_healthz
from devnet.state import NodeState
from devnet.topology import LabPlan
from devnet.wireguard import WireGuardError, uapi_get
from indexer.follower import MEMBER_REGISTERED
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, MemberId
from tests.e2e.lab import REPO, LabCli, RoutineRunner, as_owner, lab_dir, lab_state, sidecar_log
from tests.e2e.lab import wait_until as poll_until

LAB = "ambn"
UNDERLAY = "10.217.0.0/24"
MESH = "10.17.0.0/16"
PLAN = LabPlan(LAB, IPv4Network(UNDERLAY), IPv4Network(MESH))

NODES = 3
BRINGUP_RUNS = 3
RESTART_RUNS = 5
JOIN_RUNS = 5  # per mode: push (with the indexer) and poll only (`up --no-indexer`)
RESTART_NODE = "node-2"
IDLE_WINDOW_S = 30.0
SETTLE_S = 5.0  # after all healthy, before an idle window or the next run
RSS_SAMPLE_S = 1.0

HEALTH_POLL_S = 0.05
CHAIN_POLL_S = 0.01
DEVICE_POLL_S = 0.01
HEALTHY_TIMEOUT_S = 120.0
PROPAGATION_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 180.0

CLK_TCK = os.sysconf("SC_CLK_TCK")
RPC_METRIC = "attestmesh_rpc_calls_total"


class BenchError(RuntimeError):
    """A lab step failed; the message carries the command and its stderr tail."""


# --- the lab, through the command line -----------------------------------------------------------------


def running_nodes(lab: LabCli) -> list[NodeState]:
    """Nodes whose workload (the sidecar) is running."""
    return [n for n in lab.state().nodes if _sidecar(n) is not None]


@contextlib.contextmanager
def running_lab(*, indexer: bool = True) -> Iterator[LabCli]:
    """A fresh 3-node lab, up and healthy (with the lab's indexer unless ``indexer`` is False)."""
    with lab_dir(PLAN) as lab:
        lab.run("up", "--nodes", str(NODES), *(() if indexer else ("--no-indexer",)), timeout=CLI_TIMEOUT_S)
        wait_until(lambda: all_healthy(running_nodes(lab)), HEALTHY_TIMEOUT_S, "all nodes healthy")
        yield lab


def _sidecar(node: NodeState) -> procs.ProcRecord | None:
    rec = node.processes.get("sidecar")
    return rec if rec is not None and procs.is_alive(rec) else None


def healthy(node: NodeState) -> bool:
    body = fetch_healthz(node.health_url, timeout=1.0)
    return bool(body and body.get("healthy"))


def in_mode(mode: str, nodes: Sequence[NodeState]) -> bool:
    """Every node's event source is in ``mode`` (``push``: subscribed to the indexer; ``poll``)."""
    for node in nodes:
        body = fetch_healthz(node.health_url, timeout=1.0)
        if not body or body.get("events", {}).get("mode") != mode:
            return False
    return bool(nodes)


def all_healthy(nodes: Sequence[NodeState]) -> bool:
    return bool(nodes) and all(healthy(n) for n in nodes)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = HEALTH_POLL_S
) -> float:
    """Poll ``predicate``; return the ``perf_counter`` time at which it first held."""
    poll_until(predicate, timeout, what, interval)
    return time.perf_counter()


# --- figures -------------------------------------------------------------------------------------------


@dataclass
class Series:
    """Samples of one figure, in seconds (or any unit), printed as median / min / max."""

    name: str
    unit: str = "s"
    samples: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.samples.append(value)

    def row(self) -> str:
        if not self.samples:
            return f"{self.name:52} {'-':>9}"
        med, low, high = statistics.median(self.samples), min(self.samples), max(self.samples)
        return (
            f"{self.name:52} {_fmt(med, self.unit):>9} {_fmt(low, self.unit):>9} {_fmt(high, self.unit):>9}"
        )


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms"
    return f"{value:.1f} {unit}".rstrip()


def _print_table(title: str, rows: Sequence[Series]) -> None:
    print(title)
    print(f"{'':52} {'median':>9} {'min':>9} {'max':>9}")
    for series in rows:
        print(series.row())


# --- cold bring-up -------------------------------------------------------------------------------------


def bringup(runs: int = BRINGUP_RUNS) -> None:
    up = Series("`devnet up --nodes 3` (command wall time)")
    to_healthy = Series("command returned -> all 3 healthy")
    total = Series("cold bring-up: `up` started -> all 3 healthy")
    down = Series("`devnet down` (command wall time)")
    for _ in range(runs):
        with lab_dir(PLAN) as lab:
            t0 = time.perf_counter()
            lab.run("up", "--nodes", str(NODES))
            t1 = time.perf_counter()
            nodes = running_nodes(lab)
            t2 = wait_until(functools.partial(all_healthy, nodes), HEALTHY_TIMEOUT_S, "all nodes healthy")
            t3 = time.perf_counter()
            lab.run("down")
            down.add(time.perf_counter() - t3)
            up.add(t1 - t0)
            to_healthy.add(t2 - t1)
            total.add(t2 - t0)
    _print_table(
        f"cold bring-up — {runs} runs, each a fresh lab ({NODES} nodes, anvil automine)",
        [up, to_healthy, total, down],
    )


# --- restart -------------------------------------------------------------------------------------------


def restart(lab: LabCli, runs: int = RESTART_RUNS) -> None:
    command = Series(f"`devnet node restart {RESTART_NODE}` (command wall time)")
    after = Series("command returned (new sidecar spawned) -> healthy")
    total = Series("restart issued -> healthy")
    for _ in range(runs):
        wait_until(lambda: all_healthy(running_nodes(lab)), HEALTHY_TIMEOUT_S, "all nodes healthy")
        time.sleep(1.0)
        before = lab.state().node(RESTART_NODE).processes["sidecar"]
        t0 = time.perf_counter()
        lab.run("node", "restart", RESTART_NODE)
        t1 = time.perf_counter()
        node = lab.state().node(RESTART_NODE)
        if node.processes["sidecar"] == before or procs.is_alive(before):
            raise BenchError(f"{RESTART_NODE}: the old sidecar is still the recorded or a running one")
        t2 = wait_until(functools.partial(healthy, node), HEALTHY_TIMEOUT_S, f"{RESTART_NODE} healthy")
        command.add(t1 - t0)
        after.add(t2 - t1)
        total.add(t2 - t0)
    _print_table(
        f"single-node restart — {runs} runs, {RESTART_NODE} of a healthy {NODES}-node lab",
        [command, after, total],
    )


# --- roll: the deploy routine's restarts ---------------------------------------------------------------

ROLL_RUNS = 3
NODE_SH = REPO / "deploy" / "node.sh"


def _routine(lab: LabCli, logs: Path, node: str, verb: str) -> subprocess.Popen[str]:
    return RoutineRunner(lab, logs, NODE_SH, {"MESH_VERIFY_INTERVAL": "0.2"}).start(node, verb)


def _finish(proc: subprocess.Popen[str], what: str) -> None:
    if proc.wait(timeout=CLI_TIMEOUT_S) != 0:
        raise BenchError(f"{what} exited {proc.returncode}")


def roll(lab: LabCli, runs: int = ROLL_RUNS) -> None:
    names = [n.name for n in lab.state().nodes]
    at_once = Series(f"all {len(names)} restarted at once -> all healthy")
    rolling = Series(f"rolling restart of {len(names)} (restart + mesh-verify each)")
    per_node = Series("rolling: one node's restart issued -> healthy")
    fewest = Series("rolling: fewest healthy nodes at any sample", unit="nodes")
    with tempfile.TemporaryDirectory(prefix="ambn-deploy-") as tmp:
        logs = Path(tmp)
        for _ in range(runs):
            wait_until(lambda: all_healthy(running_nodes(lab)), HEALTHY_TIMEOUT_S, "all nodes healthy")
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            started = [_routine(lab, logs, name, "restart") for name in names]
            for proc in started:
                _finish(proc, "node.sh restart")
            nodes = lab.state().nodes
            t1 = wait_until(functools.partial(all_healthy, nodes), HEALTHY_TIMEOUT_S, "all healthy again")
            at_once.add(t1 - t0)
        for _ in range(runs):
            wait_until(lambda: all_healthy(running_nodes(lab)), HEALTHY_TIMEOUT_S, "all nodes healthy")
            time.sleep(SETTLE_S)
            low = len(names)
            t0 = time.perf_counter()
            for name in names:
                t_node = time.perf_counter()
                _finish(_routine(lab, logs, name, "restart"), f"node.sh {name} restart")
                verify = _routine(lab, logs, name, "mesh-verify")
                node = lab.state().node(name)
                while verify.poll() is None:  # sample every node while this one comes back
                    low = min(low, sum(healthy(n) for n in lab.state().nodes))
                    time.sleep(HEALTH_POLL_S)
                _finish(verify, f"node.sh {name} mesh-verify")
                per_node.add(wait_until(functools.partial(healthy, node), HEALTHY_TIMEOUT_S, name) - t_node)
            rolling.add(time.perf_counter() - t0)
            fewest.add(low)
    _print_table(
        f"deploy/node.sh restarts — {runs} runs each, a healthy {NODES}-node lab (CVM reboots, KMS gate)",
        [at_once, rolling, per_node, fewest],
    )


# --- join propagation ----------------------------------------------------------------------------------


@dataclass
class Propagation:
    chain_at: float  # perf_counter when the chain first showed the change
    device_at: dict[str, float]  # node -> perf_counter when its device showed it
    command_s: float  # wall time of the CLI command
    peer_key: str  # hex WireGuard key of the member that came or went
    member_id: MemberId  # the member that came or went

    @property
    def slowest(self) -> float:
        return max(self.device_at.values()) - self.chain_at

    @property
    def fastest(self) -> float:
        return min(self.device_at.values()) - self.chain_at


def _has_peer(socket: Path, key: str) -> bool:
    try:
        return key in uapi_get(socket)["peers"]
    except (OSError, WireGuardError):
        return False


def _watch(
    lab: LabCli, args: Sequence[str], members: Sequence[NodeState], *, joining: bool, log: Path
) -> Propagation:
    """Run ``attestmesh devnet <args>`` and time the membership change it causes: on chain, then on the
    devices of ``members``."""
    return as_owner(
        lab_state(lab),
        lambda _, cluster: _timed_change(cluster, lab, args, members, joining=joining, log=log),
    )


async def _timed_change(
    cluster: ClusterClient,
    lab: LabCli,
    args: Sequence[str],
    members: Sequence[NodeState],
    *,
    joining: bool,
    log: Path,
) -> Propagation:
    before = {m.member_id: m for m in await cluster.members()}
    t0 = time.perf_counter()
    proc = lab.spawn(*args, log=log)
    exited_at: float | None = None

    def check_exit() -> None:  # called every poll, so the command's exit is timed to ~10 ms
        nonlocal exited_at
        if exited_at is None and (returncode := proc.poll()) is not None:
            if returncode != 0:
                raise BenchError(f"`attestmesh devnet {' '.join(args)}` exited {returncode}; see {log}")
            exited_at = time.perf_counter()

    try:
        deadline = t0 + CLI_TIMEOUT_S
        while (count := await cluster.member_count()) == len(before):
            check_exit()
            if time.perf_counter() > deadline:
                raise BenchError(f"no membership change on chain after `{' '.join(args)}`")
            await asyncio.sleep(CHAIN_POLL_S)
        chain_at = time.perf_counter()
        after = {m.member_id: m for m in await cluster.members()}
        changed: set[MemberId] = set(after) ^ set(before)
        if len(changed) != 1 or (count > len(before)) != joining:
            raise BenchError(f"unexpected membership change: {len(before)} -> {count} members")
        record = (after if joining else before)[changed.pop()]
        key = record.wg_pub.hex
        device_at: dict[str, float] = {}
        pending = {m.name: Path(m.wg_socket) for m in members}
        while pending:
            check_exit()
            for name, socket in list(pending.items()):
                if _has_peer(socket, key) == joining:
                    device_at[name] = time.perf_counter()
                    del pending[name]
            if time.perf_counter() - chain_at > PROPAGATION_TIMEOUT_S:
                raise BenchError(f"peer change not on the devices of {sorted(pending)}")
            await asyncio.sleep(DEVICE_POLL_S)
        while exited_at is None:
            check_exit()
            if time.perf_counter() > deadline:
                raise BenchError(f"`attestmesh devnet {' '.join(args)}` did not finish")
            await asyncio.sleep(CHAIN_POLL_S)
        return Propagation(chain_at, device_at, exited_at - t0, key, record.member_id)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


async def _registration_log(conn: ChainConnection, cluster: Address, member: MemberId) -> tuple[int, int]:
    """The (block, log index) of ``member``'s ``MemberRegistered`` log."""
    for entry in await conn.get_logs([cluster], 0, await conn.block_number()):
        if entry.topics[0] == MEMBER_REGISTERED and entry.topics[1].raw == member.raw:
            return entry.block_number, entry.log_index
    raise BenchError(f"no MemberRegistered log of {member} on chain")


def _handled_by(lab: LabCli, members: Sequence[NodeState], member: MemberId) -> dict[str, int]:
    """How the members first handled ``member``'s registration log: ``{"push": n, "poll": m}``, read from
    their sidecars' ``events.handled`` log lines (each log position is handled at most once per node)."""
    at = as_owner(lab_state(lab), lambda conn, cluster: _registration_log(conn, cluster.address, member))
    sources: dict[str, int] = {}
    for node in members:
        for entry in sidecar_log(lab, node.name, "events.handled"):
            if (entry.get("block"), entry.get("log_index")) == at:
                sources[str(entry["source"])] = sources.get(str(entry["source"]), 0) + 1
    return sources


#: The event modes the join benchmark compares: the lab's flag and the mode every sidecar must show.
JOIN_MODES = {"push": "with the indexer (push)", "poll": "without an indexer (`up --no-indexer`, poll only)"}


@dataclass
class JoinFigures:
    """What one mode's join runs measured (for the comparison of the modes)."""

    mode: str
    fastest: Series
    slowest: Series
    evicted: Series
    handled_by: dict[str, int]


def join(lab: LabCli, runs: int = JOIN_RUNS, *, mode: str = "push") -> JoinFigures:
    add_cmd = Series("`devnet node add` (command wall time)")
    registered = Series("`node add` issued -> registration mined")
    slowest = Series("registration mined -> on every member's device")
    fastest = Series("registration mined -> on the first member's device")
    newcomer = Series("`node add` issued -> newcomer healthy")
    evicted = Series("eviction mined -> off every member's device")
    handled_by: dict[str, int] = {}
    for run in range(runs):
        members = running_nodes(lab)
        wait_until(functools.partial(all_healthy, members), HEALTHY_TIMEOUT_S, "all nodes healthy")
        wait_until(functools.partial(in_mode, mode, members), HEALTHY_TIMEOUT_S, f"every node in {mode} mode")
        time.sleep(1.0)
        name = f"join-{run + 1}"
        t0 = time.perf_counter()
        came = _watch(lab, ("node", "add", name), members, joining=True, log=lab.root / f"{name}.log")
        node = lab.state().node(name)
        t_healthy = wait_until(functools.partial(healthy, node), HEALTHY_TIMEOUT_S, f"{name} healthy")
        add_cmd.add(came.command_s)
        registered.add(came.chain_at - t0)
        slowest.add(came.slowest)
        fastest.add(came.fastest)
        newcomer.add(t_healthy - t0)
        for source, count in _handled_by(lab, members, came.member_id).items():
            handled_by[source] = handled_by.get(source, 0) + count
        went = _watch(lab, ("node", "remove", name), members, joining=False, log=lab.root / f"{name}-rm.log")
        evicted.add(went.slowest)
        lab.run("node", "stop", name)
    _print_table(
        f"join propagation {JOIN_MODES[mode]} — {runs} runs, a newcomer joining a healthy {NODES}-member"
        " cluster (sidecar chain poll interval 1 s)",
        [add_cmd, registered, fastest, slowest, newcomer, evicted],
    )
    print(
        f"  the newcomer's MemberRegistered log first reached the members by: "
        f"push {handled_by.get('push', 0)}, poll {handled_by.get('poll', 0)} (of {runs * NODES})"
    )
    return JoinFigures(mode, fastest, slowest, evicted, handled_by)


def compare_joins(push: JoinFigures, poll: JoinFigures) -> None:
    """The two modes side by side: medians, and how many times slower polling alone is."""
    print(f"join propagation, push vs poll only — medians over {len(push.slowest.samples)} runs each")
    print(f"{'':52} {'push':>9} {'poll only':>9} {'ratio':>7}")
    for with_push, poll_only in (
        (push.fastest, poll.fastest),
        (push.slowest, poll.slowest),
        (push.evicted, poll.evicted),
    ):
        a, b = statistics.median(with_push.samples), statistics.median(poll_only.samples)
        print(f"{with_push.name:52} {_fmt(a, 's'):>9} {_fmt(b, 's'):>9} {b / a:>6.1f}x")


# --- steady state --------------------------------------------------------------------------------------


def _cpu_ticks(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def _metrics(node: NodeState) -> dict[str, float]:
    """Counter samples of the node's /metrics, keyed ``name`` or ``name{labels}``."""
    url = node.health_url.replace("/healthz", "/metrics")
    with urllib.request.urlopen(url, timeout=3) as response:  # lab http only
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            metric, _, value = line.rpartition(" ")
            out[metric] = float(value)
    return out


def _rpc_calls(sample: dict[str, float]) -> dict[str, float]:
    prefix = f'{RPC_METRIC}{{method="'
    return {k[len(prefix) : -2]: v for k, v in sample.items() if k.startswith(prefix)}


def _passes(sample: dict[str, float]) -> float:
    return sum(v for k, v in sample.items() if k.startswith("attestmesh_reconcile_passes_total"))


def steady(lab: LabCli, window: float = IDLE_WINDOW_S) -> None:
    nodes = running_nodes(lab)
    wait_until(functools.partial(all_healthy, nodes), HEALTHY_TIMEOUT_S, "all nodes healthy")
    time.sleep(SETTLE_S)
    pids = {}
    for n in nodes:
        rec = _sidecar(n)
        if rec is None:
            raise BenchError(f"{n.name}: no running sidecar")
        pids[n.name] = rec.pid
    rss: dict[str, list[int]] = {n.name: [] for n in nodes}
    start = {n.name: (_cpu_ticks(pids[n.name]), _metrics(n)) for n in nodes}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < window:
        for n in nodes:
            rss[n.name].append(_status_kb(pids[n.name], "VmRSS"))
        time.sleep(min(RSS_SAMPLE_S, max(0.0, window - (time.perf_counter() - t0))))
    end = {n.name: (_cpu_ticks(pids[n.name]), _metrics(n)) for n in nodes}
    elapsed = time.perf_counter() - t0
    if not all(healthy(n) for n in nodes):
        raise BenchError("a node left healthy during the idle window")

    rss_mib = Series("sidecar RSS (median of 1 s samples)", "MiB")
    hwm_mib = Series("sidecar peak RSS since start (VmHWM)", "MiB")
    cpu = Series("sidecar CPU, idle", "%")
    rpm = Series("JSON-RPC calls per node per minute", "/min")
    ppm = Series("reconcile passes per node per minute", "/min")
    methods: dict[str, list[float]] = {}
    for n in nodes:
        (ticks0, m0), (ticks1, m1) = start[n.name], end[n.name]
        rss_mib.add(statistics.median(rss[n.name]) / 1024)
        hwm_mib.add(_status_kb(pids[n.name], "VmHWM") / 1024)
        cpu.add((ticks1 - ticks0) / CLK_TCK / elapsed * 100)
        c0, c1 = _rpc_calls(m0), _rpc_calls(m1)
        rpm.add((sum(c1.values()) - sum(c0.values())) * 60 / elapsed)
        ppm.add((_passes(m1) - _passes(m0)) * 60 / elapsed)
        for method, value in c1.items():
            methods.setdefault(method, []).append((value - c0.get(method, 0.0)) * 60 / elapsed)
    _print_table(
        f"steady state — {elapsed:.0f} s idle window of a healthy {NODES}-node lab, median over the"
        f" {len(nodes)} sidecars (resync every 15 s, chain poll every 1 s, anvil automine: no new blocks)",
        [rss_mib, hwm_mib, cpu, rpm, ppm],
    )
    print("  JSON-RPC calls per node per minute, by method (median over the sidecars):")
    for method, values in sorted(methods.items(), key=lambda kv: -statistics.median(kv[1])):
        if max(values) > 0:
            print(f"    {method:34} {statistics.median(values):>7.1f}")


# --- entry point ---------------------------------------------------------------------------------------

LAB_BENCHMARKS = ("bringup", "steady", "restart", "roll", "join")


def main(selected: Sequence[str] = LAB_BENCHMARKS) -> None:
    """Run the selected lab benchmarks: bring-up on its own labs, the others on one shared lab (with the
    indexer), and the join once more on a lab without an indexer, for the comparison."""
    if "bringup" in selected:
        bringup()
        print()
    shared = [name for name in ("steady", "restart", "roll", "join") if name in selected]
    joins: dict[str, JoinFigures] = {}
    if shared:
        with running_lab() as lab:
            for name in shared:
                if name == "join":
                    joins["push"] = join(lab, mode="push")
                else:
                    {"steady": steady, "restart": restart, "roll": roll}[name](lab)
                print()
    if "join" in selected:
        with running_lab(indexer=False) as lab:
            joins["poll"] = join(lab, mode="poll")
            print()
        compare_joins(joins["push"], joins["poll"])
        print()
