"""Lab-level benchmarks: the devnet driven through the ``attestmesh`` command line, as an operator would.

- **bring-up** (``bench/bringup.py``): a cold ``attestmesh devnet up --nodes 3`` until every node's
  ``/healthz`` says healthy, on each transport, and where its seconds go;
- **restart**: ``attestmesh devnet node restart node-2`` until that node is healthy again;
- **join** (``bench/join.py``): ``attestmesh devnet node add`` of a fourth node: from the block that mines
  the newcomer's registration (watched with the chain adapter every 10 ms: anvil's block timestamps are
  whole seconds) until every existing member's WireGuard device holds the newcomer's peer (UAPI ``get=1``
  every 10 ms).
  Each newcomer is then evicted (``node remove``, the same two timestamps, for the peer's removal) and
  stopped, so every run joins a 3-member cluster. Measured twice: on the shared lab, whose sidecars are in
  push mode (the lab's indexer pushes the logs), and on a lab made with ``up --no-indexer``, whose
  sidecars only poll chain logs; each run also reads from the members' logs (``events.handled``) whether
  the registration log reached them by push or by poll, and the two modes are compared at the end;
- **roll**: ``deploy/node.sh NODE restart`` (a CVM reboot through the KMS gate, as an image roll does) of
  every node of the 3-node lab at once, until every ``/healthz`` says healthy again; and a rolling restart
  (``restart`` then ``mesh-verify``, one node at a time), its total wall time and each node's restart
  issued -> healthy, with the number of healthy nodes sampled every 50 ms throughout (the fewest printed,
  the series plotted: ``bench.plots.healthy_over_time``);
- **steady**: a 30 s idle window of a healthy 3-node lab: each sidecar's RSS (``/proc/PID/status``) and CPU
  (``/proc/PID/stat`` utime + stime), and its JSON-RPC calls from its ``/metrics`` counters, per method;
  then the RPC budget (``bench/rpcbudget.py``): the same counters over a longer window, the sidecars
  restarted with the production defaults of the push-mode intervals.

Labs use their own name and prefixes (``ambn``, 10.217.0.0/24, mesh 10.17.0.0/16) and a short lab directory
under /tmp (unix socket paths must stay under 108 bytes); every lab is brought down again, on failure too.
Traffic goes only to the lab (the root namespace reaches it through the lab's veth) and to loopback.
"""

from __future__ import annotations

import functools
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import bringup, plots
from bench.join import JoinFigures, compare_joins, join
from bench.labkit import (
    CLI_TIMEOUT_S,
    CLK_TCK,
    HEALTH_POLL_S,
    HEALTHY_TIMEOUT_S,
    IDLE_WINDOW_S,
    NODES,
    READS,
    RESTART_NODE,
    RESTART_RUNS,
    RPC_METRIC,
    RSS_SAMPLE_S,
    SETTLE_S,
    BenchError,
    Series,
    all_healthy,
    health_url,
    healthy,
    print_table,
    running_lab,
    running_nodes,
    sidecar_of,
    wait_until,
)
from bench.rpcbudget import budget
from devnet import procs
from devnet.state import NodeState
from tests.e2e.lab import REPO, LabCli, RoutineRunner

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
    print_table(
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


def _healthy_count(lab: LabCli) -> int:
    return sum(healthy(n) for n in lab.state().nodes)


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
        timelines: list[list[tuple[float, int]]] = []
        for _ in range(runs):
            wait_until(lambda: all_healthy(running_nodes(lab)), HEALTHY_TIMEOUT_S, "all nodes healthy")
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            timeline = [(0.0, len(names))]  # (seconds since t0, healthy nodes), one sample every 50 ms
            for name in names:
                t_node = time.perf_counter()
                for verb in ("restart", "mesh-verify"):
                    step = _routine(lab, logs, name, verb)
                    while step.poll() is None:  # sample every node while this one goes and comes back
                        timeline.append((time.perf_counter() - t0, _healthy_count(lab)))
                        time.sleep(HEALTH_POLL_S)
                    _finish(step, f"node.sh {name} {verb}")
                node = lab.state().node(name)
                per_node.add(wait_until(functools.partial(healthy, node), HEALTHY_TIMEOUT_S, name) - t_node)
            rolling.add(time.perf_counter() - t0)
            timeline.append((time.perf_counter() - t0, _healthy_count(lab)))
            fewest.add(min(count for _, count in timeline))
            timelines.append(timeline)
    print_table(
        f"deploy/node.sh restarts — {runs} runs each, a healthy {NODES}-node lab (CVM reboots, KMS gate)",
        [at_once, rolling, per_node, fewest],
    )
    print(f"plot: {plots.healthy_over_time(timelines, plots.Output.path('roll-healthy'), nodes=len(names))}")


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
    answer = READS.reach.get_json(health_url(node).replace("/healthz", "/metrics"), 3.0)
    if not answer.ok:
        raise BenchError(f"{node.name}: /metrics answered {answer.status}")
    text = answer.text
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
        rec = sidecar_of(n)
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
    print_table(
        f"steady state — {elapsed:.0f} s idle window of a healthy {NODES}-node lab, median over the"
        f" {len(nodes)} sidecars (the devnet's knobs: resync every 15 s, chain poll every 1 s, safety"
        " poll every 10 s and registry refresh every 5 s in push mode; an empty block every second)",
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
        bringup.main()
    shared = [name for name in ("steady", "restart", "roll", "join") if name in selected]
    joins: dict[str, JoinFigures] = {}
    if shared:
        with running_lab() as lab:
            for name in shared:
                if name == "join":
                    joins["push"] = join(lab, mode="push")
                else:
                    {"steady": steady, "restart": restart, "roll": roll}[name](lab)
                if name == "steady":  # the RPC budget, with the production push-mode defaults
                    print()
                    budget(lab)
                print()
    if "join" in selected:
        with running_lab(indexer=False) as lab:
            joins["poll"] = join(lab, mode="poll")
            print()
        compare_joins(joins["push"], joins["poll"])
        print()
    gateway = [name for name in ("restart", "join") if name in selected]
    if gateway:  # the same figures with the mesh carried through the gateway stand-in (a CVM's network)
        print("-- the same on the gateway transport (devnet up --transport gateway) --")
        with running_lab(transport="gateway") as lab:
            for name in gateway:
                if name == "join":
                    join(lab, mode="push")
                else:
                    restart(lab)
                print()
