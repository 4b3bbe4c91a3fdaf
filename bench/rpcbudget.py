"""The RPC budget on the lab (part of ``python -m bench --only steady``): JSON-RPC calls per node per minute
with the sidecar's production defaults for the push-mode intervals.

The devnet starts its sidecars with short push-mode knobs so tests see a rotated key or an outage within
seconds (``ATTESTMESH_REGISTRY_REFRESH=5``, ``ATTESTMESH_POLL_INTERVAL_PUSHED=10``,
``ATTESTMESH_RESYNC_INTERVAL=15``, ``ATTESTMESH_RESYNC_INTERVAL_PUSHED=15``). This benchmark restarts
every sidecar of the shared lab without them (``ATTESTMESH_DEVNET_SIDECAR_ENV`` with those names removed:
the sidecar's defaults apply), waits until every node is healthy and in push mode, lets the start-up reads
settle, then counts each sidecar's
``attestmesh_rpc_calls_total`` (by method) and ``attestmesh_rpc_calls_by_source_total`` (pass, poll, push)
over a window as long as the slowest default interval, so every periodic read is in it once.

Must not: leave the sidecars with another environment than the lab's (the next benchmark that restarts one
gives it back; ``restart`` and ``roll`` do), or reach anything but the lab.
"""

from __future__ import annotations

import functools
import json
import statistics
import time

from bench.labkit import (
    HEALTHY_TIMEOUT_S,
    NODES,
    READS,
    Series,
    all_healthy,
    health_url,
    in_mode,
    print_table,
    running_nodes,
    wait_until,
)
from devnet.boot import SIDECAR_ENV_ENV
from devnet.state import NodeState
from sidecar.variables import VARIABLES
from tests.e2e.lab import LabCli

#: The devnet's short push-mode knobs, removed so the sidecar's defaults apply.
DEVNET_KNOBS = (
    "ATTESTMESH_REGISTRY_REFRESH",
    "ATTESTMESH_POLL_INTERVAL_PUSHED",
    "ATTESTMESH_RESYNC_INTERVAL",
    "ATTESTMESH_RESYNC_INTERVAL_PUSHED",  # kept alone, it would undercut the default RESYNC_INTERVAL: exit 2
)
DEFAULTS = {v.name: float(v.default or 0) for v in VARIABLES if v.name.endswith(("_PUSHED", "_REFRESH"))}
WINDOW_S = max(DEFAULTS.values())  # every periodic read falls in the window once
SETTLE_S = 20.0  # after healthy and push mode: the start-up reads (first pass at a head, first safety poll)


def _counters(node: NodeState, metric: str, label: str) -> dict[str, float]:
    answer = READS.reach.get_json(health_url(node).replace("/healthz", "/metrics"), 3.0)
    prefix = f'{metric}{{{label}="'
    out: dict[str, float] = {}
    for line in answer.text.splitlines():
        if line.startswith(prefix):
            key, _, value = line.rpartition(" ")
            out[key[len(prefix) : -2]] = float(value)
    return out


def _sample(node: NodeState) -> tuple[dict[str, float], dict[str, float]]:
    return (
        _counters(node, "attestmesh_rpc_calls_total", "method"),
        _counters(node, "attestmesh_rpc_calls_by_source_total", "source"),
    )


def budget(lab: LabCli, window: float = WINDOW_S) -> None:
    """Restart the sidecars with the production push-mode defaults and count their calls over ``window``."""
    env = {SIDECAR_ENV_ENV: json.dumps(dict.fromkeys(DEVNET_KNOBS))}
    for node in running_nodes(lab):
        lab.run("node", "restart", node.name, env=env)
    nodes = running_nodes(lab)
    wait_until(functools.partial(all_healthy, nodes), HEALTHY_TIMEOUT_S, "all nodes healthy")
    wait_until(functools.partial(in_mode, "push", nodes), HEALTHY_TIMEOUT_S, "all nodes in push mode")
    time.sleep(SETTLE_S)
    start = {n.name: _sample(n) for n in nodes}
    t0 = time.perf_counter()
    time.sleep(window)
    elapsed = time.perf_counter() - t0
    end = {n.name: _sample(n) for n in nodes}
    if not in_mode("push", nodes) or not all_healthy(nodes):
        raise RuntimeError("a node left healthy push mode during the budget window")
    total = Series("JSON-RPC calls per node per minute, push mode", "/min")
    per_method: dict[str, list[float]] = {}
    per_source: dict[str, list[float]] = {}
    for n in nodes:
        (m0, s0), (m1, s1) = start[n.name], end[n.name]
        total.add((sum(m1.values()) - sum(m0.values())) * 60 / elapsed)
        for into, before, after in ((per_method, m0, m1), (per_source, s0, s1)):
            for key, value in after.items():
                into.setdefault(key, []).append((value - before.get(key, 0.0)) * 60 / elapsed)
    knobs = ", ".join(f"{name.removeprefix('ATTESTMESH_')} {value:g} s" for name, value in DEFAULTS.items())
    print_table(
        f"RPC budget — {elapsed:.0f} s window of a healthy {NODES}-node lab in push mode, median over the "
        f"{len(nodes)} sidecars, production defaults ({knobs}; 1-s blocks)",
        [total],
    )
    for title, figures in (("by method", per_method), ("by source", per_source)):
        print(f"  JSON-RPC calls per node per minute, {title} (median over the sidecars):")
        for key, values in sorted(figures.items(), key=lambda kv: -statistics.median(kv[1])):
            if max(values) > 0:
                print(f"    {key:34} {statistics.median(values):>7.2f}")
