"""``deploy/node.sh`` on the devnet, end to end, as an operator runs it: ``all`` adds a healthy node and a
re-run changes nothing; ``update`` learns the new compose hash (prepare only), allowlists it, applies it and
the node keeps its identity, while applying a changed compose without the allowlist step is denied at the
KMS boot gate; a rolling ``restart`` with ``mesh-verify`` in between keeps N-1 nodes healthy and traffic
between healthy nodes flowing (sampled and measured), and a restart of every node at once recovers; ``all``
killed at each of its steps in turn, then run again, finishes without a duplicate transaction. Every run's
log is checked: a UTC timestamp on every line and no secret anywhere.

Asserted through the nodes' /healthz, the chain (the owner's nonce, contract events, member records), the
lab's state file (process records) and each node's namespace (no orphaned process).
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devnet.compose import NodeAnchors, compose_hash, encode_app_compose, node_app_compose
from devnet.lab import fetch_healthz
from devnet.netns import netns_pids
from sidecar.core.ids import Address
from tests.e2e.deploykit import (
    NOTHING_CHANGED,
    Routine,
    check_logs,
    node_record,
    owner_nonce,
    processes,
    registrations,
    steps_in_order,
)
from tests.e2e.lab import LabCli, chain, wait_until
from tests.e2e.mesh import Node, wait_all_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ALL_STEPS = ("prepare", "app", "allowlist", "boot", "fund", "mesh-verify")


@pytest.fixture
def routine(lab: LabCli, tmp_path: Path) -> Iterator[Routine]:
    found = Routine(lab, tmp_path)
    yield found
    check_logs(found)


def changed_compose(lab: LabCli, tmp_path: Path, *extra_envs: str) -> tuple[Path, str]:
    """An app-compose.json that differs from the lab's by extra sealed-env variable names (a new hash)."""
    data = encode_app_compose(node_app_compose(NodeAnchors.of_lab(lab.state()), extra_envs=extra_envs))
    path = tmp_path / f"compose-{'-'.join(extra_envs).lower()}.json"
    path.write_bytes(data)
    return path, str(compose_hash(data))


# --- 1. all ----------------------------------------------------------------------------------------------


def test_all_adds_a_healthy_node_and_a_rerun_changes_nothing(lab: LabCli, routine: Routine) -> None:
    lab.run("up", "--nodes", "2")
    wait_all_healthy(lab)
    nonce = owner_nonce(lab)
    members = chain(lab, lambda conn, c: c.member_count())

    routine.run("attestmesh-node-3", "all")
    run = routine.last_run("attestmesh-node-3")
    steps_in_order(run, *(f"step {s} done" for s in ALL_STEPS), "done: changed app,boot")
    found = wait_all_healthy(lab)
    assert set(found) == {"node-1", "node-2", "attestmesh-node-3"}
    new = found["attestmesh-node-3"].healthz()
    assert chain(lab, lambda conn, c: c.member_count()) == members + 1
    for node in found.values():

        def sees_both(n: Any = node) -> bool:
            return bool(n.healthz()["peers"]["live"] == 2)

        wait_until(sees_both, 30, f"{node.name} sees both peers")
    # The app contract, its app id's approval and the devnet's funding of the new signer: three owner
    # transactions; the compose hash was allowlisted already (the lab's nodes run the same compose).
    assert owner_nonce(lab) == nonce + 3
    assert new["node"]["compose_hash"] == node_record(lab, "attestmesh-node-3")["compose_hash"]

    before = processes(lab, "attestmesh-node-3")
    nonce = owner_nonce(lab)
    routine.run("attestmesh-node-3", "all")
    run = routine.last_run("attestmesh-node-3")
    steps_in_order(run, *(f"step {s} done" for s in ALL_STEPS), NOTHING_CHANGED)
    assert "already allowlisted; nothing changed" in run and "nothing sent" in run
    assert "already exists and runs; nothing to boot" in run
    assert owner_nonce(lab) == nonce, "a re-run sent a transaction"
    assert processes(lab, "attestmesh-node-3") == before, "a re-run restarted the node"
    assert registrations(lab, "attestmesh-node-3") == 1
    assert found["attestmesh-node-3"].healthz()["node"]["member_id"] == new["node"]["member_id"]


# --- 2. update -------------------------------------------------------------------------------------------


def test_update_allowlists_first_and_keeps_identity_while_an_unallowlisted_apply_is_denied(
    lab: LabCli, routine: Routine, tmp_path: Path
) -> None:
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    member3 = found["node-3"].healthz()["node"]["member_id"]
    member2 = found["node-2"].healthz()["node"]["member_id"]

    # The routine: prepare -> new compose hash -> allowlist transaction -> apply -> healthy, same member.
    compose, new_hash = changed_compose(lab, tmp_path, "ATTESTMESH_LOG_LEVEL")
    nonce = owner_nonce(lab)
    routine.run("node-3", "update", COMPOSE_FILE=str(compose))
    run = routine.last_run("node-3")
    steps_in_order(
        run,
        "step prepare started",
        f"new compose hash {new_hash}",
        "step allowlist started",
        f"compose hash {new_hash} on cluster",
        "allowlisted (tx 0x",
        "step apply started",
        f"-> {new_hash}; boot allowed; running, state kept",
        "step mesh-verify done",
        f"identity carried over: member {member3}",
        "done: changed allowlist,apply",
    )
    assert owner_nonce(lab) == nonce + 1  # the allowlist transaction, nothing else
    found = wait_all_healthy(lab)
    body = found["node-3"].healthz()
    assert body["node"]["member_id"] == member3 and body["node"]["compose_hash"] == new_hash
    assert registrations(lab, "node-3") == 1, "the update re-registered the node"
    assert chain(lab, lambda conn, c: c.member_count()) == 3

    # Again: nothing to do, nothing sent, nothing restarted.
    before, nonce = processes(lab, "node-3"), owner_nonce(lab)
    routine.run("node-3", "update", COMPOSE_FILE=str(compose))
    assert "already runs compose" in routine.last_run("node-3")
    assert NOTHING_CHANGED in routine.last_run("node-3")
    assert owner_nonce(lab) == nonce and processes(lab, "node-3") == before

    # The golden rule: the apply step alone with a compose nobody allowlisted leaves the node off.
    unlisted, unlisted_hash = changed_compose(lab, tmp_path, "ATTESTMESH_EXAMPLE_FLAG")
    denied = lab.run("node", "update", "node-2", "--compose-file", str(unlisted), check=False)
    assert denied.returncode == 1, denied.stderr
    assert "denied at the KMS boot gate (compose hash not allowed)" in denied.stderr
    record = node_record(lab, "node-2")
    assert record["boot"] == "denied: compose hash not allowed" and record["processes"] == {}
    n2 = found["node-2"]
    assert fetch_healthz(n2.health_url, timeout=1.0, reach=n2.reach) is None
    for name in ("node-1", "node-3"):
        wait_until(found[name].healthy, 30, f"{name} healthy while node-2 is denied")
    # The routine finishes the job the allowlist-first way; the node comes back as the same member.
    routine.run("node-2", "update", COMPOSE_FILE=str(unlisted))
    steps_in_order(routine.last_run("node-2"), f"new compose hash {unlisted_hash}", "allowlisted (tx 0x",
                   "step apply done", "step mesh-verify done")  # fmt: skip
    found = wait_all_healthy(lab)
    assert found["node-2"].healthz()["node"]["member_id"] == member2
    assert registrations(lab, "node-2") == 1


# --- 3. rolling and simultaneous restarts ------------------------------------------------------------------


@dataclass
class Sampler:
    """Samples every node's /healthz from the root namespace every ``interval`` seconds, in a thread (the
    way the lab allows: through the gateway in gateway mode)."""

    nodes: dict[str, Node]
    interval: float = 0.2
    samples: list[tuple[float, dict[str, bool]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            at = time.time()
            healthy = {}
            for name, node in self.nodes.items():
                body = fetch_healthz(node.health_url, timeout=1.0, reach=node.reach)
                healthy[name] = bool(body and body.get("healthy"))
            self.samples.append((at, healthy))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def both_healthy(self, a: str, b: str) -> list[tuple[float, float]]:
        """Intervals between consecutive samples in which ``a`` and ``b`` were both healthy."""
        spans = []
        for (t0, h0), (t1, h1) in zip(self.samples, self.samples[1:], strict=False):
            if h0[a] and h0[b] and h1[a] and h1[b]:
                spans.append((t0, t1))
        return spans


class Pings:
    """``ping -D`` from each node's namespace to every other node's mesh IP: one reply timeline per pair."""

    def __init__(self, lab: LabCli, nodes: dict[str, Any], tmp_path: Path) -> None:
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.outputs: dict[tuple[str, str], Path] = {}
        for a, na in nodes.items():
            for b, nb in nodes.items():
                if a == b:
                    continue
                out = tmp_path / f"ping-{a}-{b}.txt"
                mesh_ip = nb.healthz()["node"]["mesh_ip"]
                argv = ["ip", "netns", "exec", na.netns, "ping", "-D", "-n", "-i", "0.2", "-W", "1", mesh_ip]
                with out.open("wb") as sink:
                    self.procs[(a, b)] = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
                self.outputs[(a, b)] = out

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def replies(self, pair: tuple[str, str]) -> list[float]:
        times = []
        for line in self.outputs[pair].read_text().splitlines():
            match = re.match(r"^\[(\d+\.\d+)\] \d+ bytes from", line)
            if match:
                times.append(float(match.group(1)))
        return times


def max_gap(replies: list[float], spans: list[tuple[float, float]]) -> float:
    """The longest stretch without a reply inside the time both ends were healthy (spans merged)."""
    merged: list[list[float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1] + 1e-6:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    worst = 0.0
    for start, end in merged:
        inside = [t for t in replies if start <= t <= end]
        points = [start, *inside, end]
        worst = max(worst, *(b - a for a, b in itertools.pairwise(points)))
    return worst


def test_rolling_restart_keeps_n_minus_1_healthy_and_traffic_flowing_and_a_full_restart_recovers(
    lab: LabCli, routine: Routine, tmp_path: Path
) -> None:
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    names = sorted(found)
    members = {n: found[n].healthz()["node"]["member_id"] for n in names}
    commitment = found["node-1"].healthz()["csk"]["commitment"]
    sidecars = {n: processes(lab, n)["sidecar"] for n in names}
    pings = Pings(lab, found, tmp_path)
    try:
        wait_until(lambda: all(pings.replies(p) for p in pings.outputs), 15, "every pair answers pings")
        with Sampler({n: found[n] for n in names}) as sampler:
            for name in names:  # one node at a time, mesh-verify before the next
                routine.run(name, "restart")
                routine.run(name, "mesh-verify")
                assert "healthy after" in routine.last_run(name)
        rolled_at = sampler.samples[-1][0]
    finally:
        pings.stop()

    # Every restart happened (new sidecar process) and the sampler saw each node go down and come back.
    for name in names:
        assert processes(lab, name)["sidecar"] != sidecars[name]
        assert any(not h[name] for _, h in sampler.samples), f"{name} was never seen down: no restart?"
    worst = min(sum(h.values()) for _, h in sampler.samples)
    assert worst >= len(names) - 1, f"only {worst} of {len(names)} nodes were healthy at some sample"
    gaps = {}
    for pair in pings.outputs:
        spans = [(s, e) for s, e in sampler.both_healthy(*pair) if e <= rolled_at]
        assert spans, f"{pair} were never healthy together"
        gaps[pair] = max_gap(pings.replies(pair), spans)
    print(f"rolling restart: {len(sampler.samples)} samples, min healthy {worst}/{len(names)}, "
          f"max reply gap between healthy nodes {max(gaps.values()):.2f}s (ping every 0.2s)")  # fmt: skip
    for pair, gap in gaps.items():
        assert gap < 1.5, f"traffic {pair[0]} -> {pair[1]} stopped for {gap:.2f}s while both were healthy"

    # Every node at once: all restarts launched together, then each mesh-verified.
    started = time.monotonic()
    procs = {n: routine.start(n, "restart") for n in names}
    for proc in procs.values():
        output, _ = proc.communicate(timeout=120)
        routine.outputs.append(output)
        assert proc.returncode == 0, output
    for name in names:
        routine.run(name, "mesh-verify")
    recovered = time.monotonic() - started
    found = wait_all_healthy(lab)
    print(f"all {len(names)} nodes restarted at once: healthy again after {recovered:.1f}s")
    for name in names:
        body = found[name].healthz()
        assert body["node"]["member_id"] == members[name]
        assert body["csk"]["commitment"] == commitment and body["csk"]["held"]
        assert registrations(lab, name) == 1


# --- 4. killed at each step, run again -------------------------------------------------------------------


def test_all_killed_at_each_step_then_run_again_finishes_without_a_duplicate_transaction(
    lab: LabCli, routine: Routine
) -> None:
    lab.run("up", "--nodes", "2")
    wait_all_healthy(lab)
    nonce = owner_nonce(lab)
    node = "node-3"
    # The signer gets the devnet's 10 ETH at boot; a 20 ETH floor makes the fund step send exactly once.
    # Kill points: as each step starts (before it does anything), and for the steps that write, at their
    # first output line (mid-step: the app contract or the boot under way, the transfer sent).
    kill_points = []
    for step in ALL_STEPS:
        kill_points.append((step, "started", re.compile(rf"step {re.escape(step)} started\n")))
        if step in ("app", "boot", "fund"):
            kill_points.append(
                (step, "output", re.compile(rf"step {re.escape(step)} started\n(?:.*\n)*?\S+Z   \| "))
            )
    killed = []
    for step, where, pattern in kill_points:
        routine.kill_at(node, "all", pattern, f"{step} {where}", FUND_MIN_BALANCE="20", FUND_AMOUNT="15")
        killed.append(f"{step}@{where}")
    routine.run(node, "all", FUND_MIN_BALANCE="20", FUND_AMOUNT="15")
    run = routine.last_run(node)
    steps_in_order(run, *(f"step {s} done" for s in ALL_STEPS))

    found = wait_all_healthy(lab)
    assert found[node].healthy()
    app = Address.from_hex(node_record(lab, node)["app_id"])
    # Exactly the transactions of one uninterrupted run: the app contract, its approval, the devnet's
    # funding at boot and the fund step's top-up (the compose hash was allowlisted already).
    assert owner_nonce(lab) == nonce + 4, f"owner sent {owner_nonce(lab) - nonce} transactions ({killed})"
    assert chain(lab, lambda conn, c: c.member_count()) == 3
    assert registrations(lab, node) == 1
    balance = chain(lab, lambda conn, c: conn.get_balance(Address.from_hex(node_record(lab, node)["signer"])))
    assert 24 * 10**18 < balance <= 25 * 10**18
    assert chain(lab, lambda conn, c: c.member_id_of(app)) is not None
    # No orphan: the node's namespace runs exactly the processes the lab recorded for it.
    recorded = {pid for pid, _ in processes(lab, node).values()}
    ns = node_record(lab, node)["netns"]
    assert set(netns_pids(ns)) == recorded, f"processes in {ns} beyond the recorded {recorded}"
    # And the final run after all that changes nothing more.
    nonce = owner_nonce(lab)
    routine.run(node, "all", FUND_MIN_BALANCE="20", FUND_AMOUNT="15")
    assert NOTHING_CHANGED in routine.last_run(node) and owner_nonce(lab) == nonce
    print(
        f"killed at {len(killed)} points: {', '.join(killed)}; one duplicate-free completion", file=sys.stderr
    )
