"""What the lab benchmarks share: the benchmark lab's name and prefixes, its running nodes and their
health, timing with a deadline, and the figures' tables.

Owns the benchmark lab plan (``ambn``, 10.217.0.0/24, mesh 10.17.0.0/16; ``ATTESTMESH_BENCH_LAB``,
``ATTESTMESH_BENCH_UNDERLAY`` and ``ATTESTMESH_BENCH_MESH`` pick another, so two checkouts can measure side
by side) and the knobs of every lab benchmark. Must
not drive the lab itself beyond ``up`` (the e2e toolkit's ``LabCli`` does), nor reach anything but the
lab and loopback.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from devnet import procs
from devnet.lab import fetch_healthz
from devnet.labreach import LabReach
from devnet.state import NodeState
from devnet.topology import LabPlan
from tests.e2e.lab import LabCli, lab_dir
from tests.e2e.lab import wait_until as poll_until

LAB = os.environ.get("ATTESTMESH_BENCH_LAB", "ambn")
UNDERLAY = os.environ.get("ATTESTMESH_BENCH_UNDERLAY", "10.217.0.0/24")
MESH = os.environ.get("ATTESTMESH_BENCH_MESH", "10.17.0.0/16")
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
    return [n for n in lab.state().nodes if sidecar_of(n) is not None]


@dataclass
class Reads:
    """How the benchmarks read the lab that runs now: directly, or through its gateway (gateway mode: the
    nodes accept nothing else). ``running_lab`` sets it for the lab's lifetime."""

    reach: LabReach = field(default_factory=LabReach)


READS = Reads()


@contextlib.contextmanager
def running_lab(*, indexer: bool = True, transport: str = "direct") -> Iterator[LabCli]:
    """A fresh 3-node lab on ``transport``, up and healthy (with the lab's indexer unless ``indexer`` is
    False)."""
    with lab_dir(PLAN) as lab:
        no_indexer = () if indexer else ("--no-indexer",)
        lab.run("up", "--nodes", str(NODES), "--transport", transport, *no_indexer, timeout=CLI_TIMEOUT_S)
        READS.reach = LabReach.of(lab.state())
        try:
            wait_until(lambda: all_healthy(running_nodes(lab)), HEALTHY_TIMEOUT_S, "all nodes healthy")
            yield lab
        finally:
            READS.reach = LabReach()


def health_url(node: NodeState) -> str:
    """The node's /healthz as the running lab allows: its gateway URL in gateway mode."""
    return node.gateway_health_url if READS.reach.gateway is not None else node.health_url


def sidecar_of(node: NodeState) -> procs.ProcRecord | None:
    rec = node.processes.get("sidecar")
    return rec if rec is not None and procs.is_alive(rec) else None


def healthy(node: NodeState) -> bool:
    body = fetch_healthz(health_url(node), timeout=1.0, reach=READS.reach)
    return bool(body and body.get("healthy"))


def in_mode(mode: str, nodes: Sequence[NodeState]) -> bool:
    """Every node's event source is in ``mode`` (``push``: subscribed to the indexer; ``poll``)."""
    for node in nodes:
        body = fetch_healthz(health_url(node), timeout=1.0, reach=READS.reach)
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
        return f"{self.name:52} {fmt(med, self.unit):>9} {fmt(low, self.unit):>9} {fmt(high, self.unit):>9}"


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms"
    return f"{value:.1f} {unit}".rstrip()


def print_table(title: str, rows: Sequence[Series]) -> None:
    print(title)
    print(f"{'':52} {'median':>9} {'min':>9} {'max':>9}")
    for series in rows:
        print(series.row())
