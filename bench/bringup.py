"""The cold bring-up benchmark: ``attestmesh devnet up --nodes 3`` until every node's ``/healthz`` is healthy.

Each run is a fresh lab directory and a fresh lab, on each transport (``gateway``, the default, and
``direct``); the ``down`` is timed too. Besides the totals, where the seconds go: the ``up`` command's own
work (until it has spawned the last sidecar: the process's kernel start time) and, from each node's sidecar
log (JSON lines with microsecond timestamps), its Python start-up (spawned -> first log line), its
registration (-> ``registration.succeeded``, mined), the confirmations the sidecar waits for before it
brings its interface up (-> ``mesh.interface_up``: 2 blocks at the devnet's 1 s block time) and the mesh
(-> ``phase.changed`` to healthy: its peers' heartbeats and the cluster key). Must not reach anything but the
lab and loopback; every lab is brought down again, on failure too.
"""

from __future__ import annotations

import functools
import itertools
import json
import resource
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from bench.labkit import (
    BRINGUP_RUNS,
    CLI_TIMEOUT_S,
    CLK_TCK,
    HEALTHY_TIMEOUT_S,
    NODES,
    PLAN,
    READS,
    BenchError,
    Series,
    all_healthy,
    print_table,
    running_nodes,
    wait_until,
)
from devnet import procs
from devnet.labreach import LabReach
from devnet.state import DevnetState
from tests.e2e.lab import lab_dir

TRANSPORTS = ("gateway", "direct")

PHASES = (
    "`up` started -> its last sidecar spawned",
    "sidecar spawned -> first log line (Python start-up)",
    "first log line -> registration mined",
    "registration mined -> interface up (2 confirmations)",
    "interface up -> healthy (heartbeats, cluster key)",
)


def _any(_entry: dict[str, object]) -> bool:
    return True


def _event(name: str, **fields: object) -> Callable[[dict[str, object]], bool]:
    def matches(entry: dict[str, object]) -> bool:
        return entry.get("event") == name and all(entry.get(k) == v for k, v in fields.items())

    return matches


#: The sidecar log lines that end each of its phases (after its spawn): its first line, then these events.
MARKS: tuple[Callable[[dict[str, object]], bool], ...] = (
    _any,
    _event("registration.succeeded"),
    _event("mesh.interface_up"),
    _event("phase.changed", to_phase="healthy"),
)


def _boot_wall() -> float:
    """The wall-clock time of the kernel's boot, to 10 ms (``/proc/uptime``)."""
    return time.time() - float(Path("/proc/uptime").read_text().split()[0])


def _spawned_at(rec: procs.ProcRecord, boot: float) -> float:
    return boot + rec.start_time / CLK_TCK


def _entries(path: Path) -> Iterator[tuple[float, dict[str, object]]]:
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(entry, dict):
            yield at, entry


def _sidecar_phases(state: DevnetState, logs: Path, boot: float) -> list[list[float]]:
    """Per node, the sidecar's four phases (seconds), from its spawn and its log."""
    out = []
    for node in state.nodes:
        rec = node.processes.get("sidecar")
        if rec is None:
            raise BenchError(f"{node.name}: no sidecar recorded")
        marks = [_spawned_at(rec, boot)]
        for at, entry in _entries(logs / f"{node.name}-sidecar.log"):
            if len(marks) < len(MARKS) + 1 and MARKS[len(marks) - 1](entry):
                marks.append(at)
        if len(marks) != len(MARKS) + 1:
            raise BenchError(f"{node.name}: its sidecar log lacks a bring-up event ({len(marks) - 1} found)")
        out.append([b - a for a, b in itertools.pairwise(marks)])
    return out


def _lab_cpu_seconds(state: DevnetState) -> float:
    """CPU time (user + system) every process the lab recorded has used so far."""
    records = [*state.processes.values(), *(p for n in state.nodes for p in n.processes.values())]
    if state.indexer is not None:
        records += state.indexer.processes.values()
    ticks = 0
    for rec in records:
        if procs.is_alive(rec):
            fields = Path(f"/proc/{rec.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / CLK_TCK


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bringup(transport: str, runs: int = BRINGUP_RUNS) -> None:
    up = Series("`devnet up --nodes 3` (command wall time)")
    to_healthy = Series("command returned -> all 3 healthy")
    total = Series("cold bring-up: `up` started -> all 3 healthy")
    down = Series("`devnet down` (command wall time)")
    cpu = Series("CPU used until all healthy (`up` + lab processes)", unit="CPU-s")
    phases = [Series(name) for name in PHASES]
    for _ in range(runs):
        with lab_dir(PLAN) as lab:
            boot = _boot_wall()
            cli_cpu = _children_cpu_seconds()
            w0, t0 = time.time(), time.perf_counter()
            lab.run("up", "--nodes", str(NODES), "--transport", transport, timeout=CLI_TIMEOUT_S)
            t1 = time.perf_counter()
            state = lab.state()
            READS.reach = LabReach.of(state)
            try:
                nodes = running_nodes(lab)
                t2 = wait_until(functools.partial(all_healthy, nodes), HEALTHY_TIMEOUT_S, "all nodes healthy")
            finally:
                READS.reach = LabReach()
            cpu.add(_children_cpu_seconds() - cli_cpu + _lab_cpu_seconds(state))
            phases[0].add(max(_spawned_at(n.processes["sidecar"], boot) for n in state.nodes) - w0)
            for node_phases in _sidecar_phases(state, lab.root / "logs", boot):
                for series, seconds in zip(phases[1:], node_phases, strict=True):
                    series.add(seconds)
            t3 = time.perf_counter()
            lab.run("down")
            down.add(time.perf_counter() - t3)
            up.add(t1 - t0)
            to_healthy.add(t2 - t1)
            total.add(t2 - t0)
    print_table(
        f"cold bring-up, {transport} transport — {runs} runs, each a fresh lab ({NODES} nodes, anvil mines"
        " each transaction at once and a block every second)",
        [up, to_healthy, total, down, cpu],
    )
    print_table("where the seconds go (the sidecar's phases: every node of every run)", phases)


def main() -> None:
    for transport in TRANSPORTS:
        bringup(transport)
        print()
