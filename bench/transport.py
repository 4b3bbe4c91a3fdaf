"""The transport benchmark: the mesh between two nodes, carried directly (WireGuard UDP) and through the
gateway (WireGuard over one TLS stream through the dstack-gateway stand-in), in one run.

Per transport, a fresh 2-node lab without the indexer (``devnet up --transport direct|gateway``), then:
iperf3 (Debian) TCP throughput from node-1 to node-2 over their mesh IPs (``IPERF_RUNS`` runs of
``IPERF_SECONDS`` s), ping RTT over the mesh (``PING_COUNT`` echoes), and the CPU time the two sidecars
spent while iperf3 ran, per 100 Mbit/s carried; in gateway mode also the stand-in gateway's CPU, so that a
bottleneck in the stand-in itself shows separately. Prints both, the throughput ratio (target ≥ 50 %) and
the added median RTT (target ≤ 1 ms).

Owns nothing but the measuring; every command runs inside the lab's namespaces (``ip netns exec``) and
targets only mesh addresses there. Must not leave an iperf3 or a lab behind.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field

from bench.labkit import CLI_TIMEOUT_S, CLK_TCK, HEALTHY_TIMEOUT_S, PLAN, BenchError
from devnet import procs
from tests.e2e.lab import LabCli, lab_dir

TRANSPORTS = ("direct", "gateway")
IPERF_RUNS = 5
IPERF_SECONDS = 5
IPERF_PORT = 5201
PING_COUNT = 200
PING_INTERVAL_S = 0.01
_RTT = re.compile(r"time=([0-9.]+) ms")


@dataclass
class TransportFigures:
    transport: str
    mbit_s: list[float] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)
    sidecar_cpu_s: list[float] = field(default_factory=list)
    gateway_cpu_s: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return statistics.median(self.mbit_s)

    @property
    def rtt(self) -> float:
        return statistics.median(self.rtt_ms)

    def cpu_per_100mbit(self, samples: list[float]) -> float:
        """CPU seconds per second of carrying 100 Mbit/s (1.0 = one core busy), median over the runs."""
        per_run = [cpu / IPERF_SECONDS / (mbit / 100) for cpu, mbit in zip(samples, self.mbit_s, strict=True)]
        return statistics.median(per_run)


def _netns(ns: str, *argv: str, timeout: float = 60.0) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} in {ns}: {result.stderr.strip()[-500:]}")
    return result.stdout


def _mesh_ip(ns: str) -> str:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", "attestmesh0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return str(json.loads(out)[0]["addr_info"][0]["local"])


def _cpu_seconds(rec: procs.ProcRecord | None) -> float:
    if rec is None:
        return 0.0
    with open(f"/proc/{rec.pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, after the "(comm)" field


def _iperf(client_ns: str, server_ns: str, server_ip: str) -> float:
    """One iperf3 TCP run over the mesh; received Mbit/s."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip, "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # the one-off server may not be listening yet: retry the client until it connects
            result = subprocess.run(
                ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", str(IPERF_PORT),
                 "-t", str(IPERF_SECONDS), "-J"],
                capture_output=True, text=True, timeout=IPERF_SECONDS + 30, check=False,
            )  # fmt: skip
            report = json.loads(result.stdout or "{}")
            if result.returncode == 0 and "sum_received" in report.get("end", {}):
                return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
            if time.monotonic() > deadline:
                raise BenchError(f"iperf3 failed: {report.get('error', result.stderr)[-300:]}")
            time.sleep(0.1)
    finally:
        server.kill()
        server.wait()


def measure(transport: str) -> TransportFigures:
    figures = TransportFigures(transport)
    with lab_dir(PLAN) as lab:
        lab.run("up", "--nodes", "2", "--no-indexer", "--transport", transport, timeout=CLI_TIMEOUT_S)
        lab.run("status", "--wait-healthy", str(int(HEALTHY_TIMEOUT_S)), timeout=CLI_TIMEOUT_S)
        state = lab.state()
        one, two = state.nodes[0], state.nodes[1]
        target = _mesh_ip(two.netns)
        out = _netns(one.netns, "ping", "-c", str(PING_COUNT), "-i", str(PING_INTERVAL_S), "-W", "1", target)
        figures.rtt_ms = [float(t) for t in _RTT.findall(out)]
        sidecars = [one.processes.get("sidecar"), two.processes.get("sidecar")]
        gateway = _gateway_process(lab)
        for _ in range(IPERF_RUNS):
            before = sum(_cpu_seconds(rec) for rec in sidecars), _cpu_seconds(gateway)
            figures.mbit_s.append(_iperf(one.netns, two.netns, target))
            after = sum(_cpu_seconds(rec) for rec in sidecars), _cpu_seconds(gateway)
            figures.sidecar_cpu_s.append(after[0] - before[0])
            figures.gateway_cpu_s.append(after[1] - before[1])
    return figures


def _gateway_process(lab: LabCli) -> procs.ProcRecord | None:
    rec = lab.state().processes.get("gateway")
    return rec if rec is not None and procs.is_alive(rec) else None


def main() -> None:
    results = {name: measure(name) for name in TRANSPORTS}
    runs = f"iperf3 TCP, {IPERF_RUNS} runs of {IPERF_SECONDS} s; ping, {PING_COUNT} echoes"
    print(f"mesh between two nodes: {runs}")
    head = f"{'Mbit/s':>10} {'RTT ms':>8} {'sidecars CPU':>14} {'gateway CPU':>13}"
    print(f"{'(medians)':10} {head}  (CPU: core-seconds per second per 100 Mbit/s)")
    for name, fig in results.items():
        standin = f"{fig.cpu_per_100mbit(fig.gateway_cpu_s):.2f}" if name == "gateway" else "-"
        sidecars = fig.cpu_per_100mbit(fig.sidecar_cpu_s)
        print(f"{name:10} {fig.throughput:10.0f} {fig.rtt:8.3f} {sidecars:14.2f} {standin:>13}")
    direct, via = results["direct"], results["gateway"]
    print(
        f"gateway/direct throughput {via.throughput / direct.throughput:.0%} (target >= 50 %); "
        f"added median RTT {via.rtt - direct.rtt:+.3f} ms (target <= 1 ms)"
    )
    print(
        f"runs, Mbit/s: direct {[round(x) for x in direct.mbit_s]}, gateway {[round(x) for x in via.mbit_s]}"
    )
