"""The e2e toolkit for the gateway-mode fault tests: what they read of a node from inside its namespace, the
device's configuration, the gateway stand-in's process and metrics, and the pingers over the mesh.

A node's ``/healthz`` and ``/metrics`` are read on loopback inside the node's namespace (the operator's path
goes through the gateway, which a fault test takes down); the device through its UAPI socket (public
values only: ``devnet.wireguard.uapi_get`` never keeps the private key); the gateway's metrics on its metrics
listener. Pingers are processes the test starts inside a node's namespace, records and ends itself.
Must not import pytest or another test module, nor reach anything but loopback, the lab's UAPI sockets and
the lab's addresses.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from devnet import procs
from devnet.boot import HEALTH_PORT
from devnet.procs import ProcRecord
from ops.jsonget import get_json
from tests.e2e.lab import REPO, LabCli, lab_state, wait_until
from tests.e2e.mesh import Node

#: A node's health listener from inside its own namespace (the sidecar binds 0.0.0.0; loopback is allowed
#: by the lab's firewall).
LOOPBACK_HEALTH = f"http://127.0.0.1:{HEALTH_PORT}"
#: A node whose two peers are both carried by the gateway, and up / down.
ALL_UP = {"up": 2, "down": 0}
ALL_DOWN = {"up": 0, "down": 2}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- a node, read from inside its namespace ----------------------------------------------------------------


def inside(node: Node, path: str) -> str:
    """GET ``path`` of the node's health listener from inside the node (any status); the body."""
    return str(node.probe("http", "GET", f"{LOOPBACK_HEALTH}{path}")["body"])


def healthz_inside(node: Node) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(inside(node, "/healthz"))
    return body


def gateway_peers(body: Mapping[str, Any]) -> dict[str, int] | None:
    """``peers.transport.gateway`` of a ``/healthz`` body: the node's gateway peers up and down."""
    counts = body["peers"]["transport"].get("gateway")
    return None if counts is None else dict(counts)


def shows(node: Node, want: Mapping[str, int]) -> bool:
    """Whether the node's ``/healthz`` (read from inside) shows its gateway peers as ``want``."""
    return gateway_peers(healthz_inside(node)) == want


def wait_transport(found: Iterable[Node], want: Mapping[str, int], timeout: float, what: str) -> None:
    """Each node in turn shows its gateway peers as ``want`` within ``timeout``."""
    for node in found:
        wait_until(functools.partial(shows, node, want), timeout, f"{node.name}: {what}")


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def sample(found: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist)."""
    return found.get((name, frozenset(labels.items())), 0.0)


def metrics_inside(node: Node) -> Samples:
    return samples(inside(node, "/metrics"))


def reconnects(found: Samples) -> dict[str, float]:
    """``attestmesh_transport_reconnects_total`` per peer (its mesh IP)."""
    return {
        dict(labels)["peer"]: value
        for (name, labels), value in found.items()
        if name == "attestmesh_transport_reconnects_total"
    }


def refusals(found: Samples) -> dict[str, float]:
    """``attestmesh_transport_streams_refused_total`` per reason."""
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in found.items()
        if name == "attestmesh_transport_streams_refused_total"
    }


def sidecar_record(lab: LabCli, name: str) -> ProcRecord:
    """The node's sidecar process as the state file records it (PID and start time)."""
    (node,) = [n for n in lab_state(lab)["nodes"] if n["name"] == name]
    return ProcRecord.from_json(node["processes"]["sidecar"])


# --- the device ---------------------------------------------------------------------------------------------


def device_config(node: Node) -> dict[str, Any]:
    """The device's configuration, public values only: its key and port, and per peer (by public key) the
    endpoint, allowed IPs and keepalive. Counters and handshake times are left out: they move."""
    device = node.device()
    return {
        "public_key": device["public_key"],
        "listen_port": device["listen_port"],
        "peers": {
            key: {
                "endpoint": peer["endpoint"],
                "allowed_ips": sorted(peer["allowed_ips"]),
                "keepalive": peer["persistent_keepalive_interval"],
            }
            for key, peer in device["peers"].items()
        },
    }


def device_configs(found: Iterable[Node]) -> dict[str, dict[str, Any]]:
    return {node.name: device_config(node) for node in found}


# --- the gateway stand-in -----------------------------------------------------------------------------------


def gateway_samples(lab: LabCli) -> Samples:
    """The stand-in's own metrics, from its metrics listener (on the lab's gateway address)."""
    return samples(get_json(lab_state(lab)["gateway"]["health_url"], 3.0).text)


def gateway_listening(lab: LabCli) -> bool:
    """Whether the stand-in listens on ``<gw ip>:443``, asked of the kernel (``ss``): a probe connection
    would count as a failed client in the gateway's metrics."""
    address = lab_state(lab)["gateway"]["address"]
    done = subprocess.run(
        ["ip", "netns", "exec", lab.plan.gateway.ns, "ss", "-H", "-ltn", f"src {address}:443"],
        capture_output=True, text=True, check=False, timeout=5,
    )  # fmt: skip
    return done.returncode == 0 and bool(done.stdout.strip())


def gateway_record(lab: LabCli) -> ProcRecord:
    """The stand-in's process, checked to be it: recorded in ``processes.gateway``, alive with the
    recorded start time, running ``python -m devnet.gateway`` with the lab's config, in ``<lab>-gw``."""
    state = lab_state(lab)
    record = ProcRecord.from_json(state["processes"]["gateway"])
    assert procs.is_alive(record), f"the recorded gateway {record} does not run"
    argv = Path(f"/proc/{record.pid}/cmdline").read_bytes().decode().split("\0")
    assert "devnet.gateway" in argv and state["gateway"]["config_file"] in argv, argv
    netns = os.stat(f"/proc/{record.pid}/ns/net").st_ino
    assert netns == os.stat(f"/run/netns/{lab.plan.gateway.ns}").st_ino, "not in the gateway's namespace"
    return record


def kill(record: ProcRecord) -> None:
    """SIGKILL the recorded process through a pidfd (a recycled PID cannot be hit); wait until it is gone."""
    fd = os.pidfd_open(record.pid)
    try:
        assert procs.read_start_time(record.pid) == record.start_time, "the PID was recycled"
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)
    wait_until(lambda: not procs.is_alive(record), 5, f"{record.name} ({record.pid}) to die")


# --- watching and pinging from inside the nodes ------------------------------------------------------------


def watch_transport(node: Node, want: Mapping[str, int], timeout: float) -> subprocess.Popen[str]:
    """Start a watcher inside the node that prints when its ``/healthz`` first shows ``want``
    (``tests.e2e.probe transport``); ``watched`` collects it."""
    return subprocess.Popen(
        ["ip", "netns", "exec", node.netns, sys.executable, "-m", "tests.e2e.probe", "transport",
         f"{LOOPBACK_HEALTH}/healthz", str(want["up"]), str(want["down"]), str(timeout)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def watched(watcher: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """A watcher's result (it ends by itself at its deadline; killed if it overruns ours)."""
    try:
        out, err = watcher.communicate(timeout=timeout)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(5)
    assert watcher.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")
_REPLY = re.compile(r"icmp_seq=(\d+) ttl=")


@dataclass
class PingFigures:
    """What one pinger saw: echoes sent and answered, and the longest run of unanswered echoes."""

    transmitted: int
    received: int
    lost: int  # unanswered, not counting an echo still in flight when the pinger was stopped
    longest_gap: int  # the longest run of consecutive unanswered echoes


@dataclass
class Pinger:
    """``ping -i INTERVAL -D -O DST`` inside ``src``'s namespace, its output in ``log``; started and ended
    (SIGINT, so it prints its summary) by the test. ``pid`` is recorded at start."""

    src: Node
    dst: str
    interval: float
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        ping = ("ping", "-i", str(self.interval), "-D", "-O", self.dst)
        with self.log.open("wb") as out:  # `ip netns exec` execs ping: the PID is ping's
            argv = ["ip", "netns", "exec", self.src.netns, *ping]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """End the pinger (SIGINT; SIGKILL if it lingers); idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def figures(self) -> PingFigures:
        text = self.log.read_text()
        summary = _SUMMARY.search(text)
        assert summary is not None, f"ping {self.src.name} -> {self.dst} printed no summary:\n{text[-2000:]}"
        transmitted, received = int(summary[1]), int(summary[2])
        answered = {int(seq) for seq in _REPLY.findall(text)}
        in_flight = 0 if transmitted in answered else 1  # the last echo, sent just before the stop
        longest = run = 0
        for seq in range(1, transmitted):
            run = 0 if seq in answered else run + 1
            longest = max(longest, run)
        return PingFigures(transmitted, received, transmitted - received - in_flight, longest)


def stop_all(pingers: Iterable[Pinger]) -> None:
    for pinger in pingers:
        pinger.stop()
