"""The join benchmark: how fast a newcomer's registration (and its eviction) reaches every member's
WireGuard device, in push mode (the lab's indexer) and in poll-only mode (``up --no-indexer``).

Owns the timing of one membership change (on chain, then on each member's device, UAPI every 10 ms) and
the comparison of the two modes. Must not leave a newcomer running (each is evicted and stopped).
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import plots
from bench.labkit import (
    CHAIN_POLL_S,
    CLI_TIMEOUT_S,
    DEVICE_POLL_S,
    HEALTHY_TIMEOUT_S,
    JOIN_RUNS,
    NODES,
    PROPAGATION_TIMEOUT_S,
    BenchError,
    Series,
    all_healthy,
    fmt,
    healthy,
    in_mode,
    print_table,
    running_nodes,
    wait_until,
)
from devnet.state import NodeState
from devnet.wireguard import WireGuardError, uapi_get
from indexer.follower import MEMBER_REGISTERED
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, MemberId
from tests.e2e.lab import LabCli, as_owner, lab_state, sidecar_log

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
    print_table(
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
        print(f"{with_push.name:52} {fmt(a, 's'):>9} {fmt(b, 's'):>9} {b / a:>6.1f}x")
    modes = {
        label: {s.name: s.samples for s in (f.fastest, f.slowest, f.evicted)}
        for label, f in (("push", push), ("poll only", poll))
    }
    print(f"plot: {plots.join_propagation(modes, plots.Output.path('join-push-vs-poll'))}")
