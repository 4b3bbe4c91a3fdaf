"""The shared indexer on the devnet — acceptance points 1 to 3 of the indexer issue:

1. with the indexer running every node is in push mode, and a newcomer's registration reaches every
   existing member by push;
2. an indexer outage changes no node's health: each sidecar logs the failed subscription once and polls, a
   newcomer that joins meanwhile becomes a configured peer of everyone, and when the indexer returns every
   sidecar resubscribes from its cursor (no log missed, none handled twice) and is back in push mode;
3. a rotated indexer key (registered on chain, indexer restarted with it) is accepted by the running
   sidecars, and pushes signed with the old key are rejected.

Everything runs as real processes in the lab's namespaces: anvil, the indexer (namespace ``<lab>-idx``, its
own guest agent and app id) and, per node, the guest agent, wireguard-go and the sidecar. Assertions go
through what an operator sees: ``/healthz`` (``events``), ``/metrics``, the sidecars' JSON logs
(``events.handled`` names the position and the source — push or poll — of each log the node handles, once),
the indexer's ``/status`` and log, the WireGuard devices (UAPI) and chain reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devnet.boot import SIDECAR_PUSH_BACKOFF_MAX
from devnet.kms import DevnetKms, derive_key
from indexer.follower import MEMBER_REGISTERED
from indexer.service import key_path
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.keys import ed25519_public_key
from sidecar.drivers.events import CURSOR_FILE
from tests.e2e.lab import PLAN, LabCli, chain, lab_state, log_entries, sidecar_log, wait_until
from tests.e2e.mesh import (
    DEADLINE,
    Node,
    device_key,
    in_poll_mode,
    in_push_mode,
    nodes,
    sidecar_pid,
    subscribers,
    wait_all_healthy,
    wait_for_every,
)
from tests.rogue import RogueIndexer, forge_next_event

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

T = TypeVar("T")
Position = tuple[int, int]  # (block, log index) of a chain log

#: The outage lasts at least this long: several reconnect attempts at the devnet's capped backoff (0.5-4 s),
#: so "logged once" is about a repeated failure, not a single one.
OUTAGE_MIN = 3 * SIDECAR_PUSH_BACKOFF_MAX
OUTAGE_EVENTS = ("phase.changed", "events.push_unavailable", "events.push_recovered", "events.mode_changed")


# --- what a node shows ----------------------------------------------------------------------------------


def handled(lab: LabCli, name: str) -> list[tuple[str, Position]]:
    """Every ``events.handled`` line of the node's sidecar: (source, position), in order."""
    return [(e["source"], (e["block"], e["log_index"])) for e in sidecar_log(lab, name, "events.handled")]


def sources_at(lab: LabCli, name: str, position: Position) -> list[str]:
    return [source for source, at in handled(lab, name) if at == position]


def wait_handled(
    lab: LabCli, found: Iterable[Node], position: Position, source: str, what: str, guard: Callable[[], bool]
) -> None:
    """Every node in ``found`` handles the log at ``position`` — exactly once, from ``source``."""
    for node in found:
        wait_until(
            lambda n=node: guard() and sources_at(lab, n.name, position),
            DEADLINE,
            f"{node.name} handles {what}",
        )
        assert sources_at(lab, node.name, position) == [source], f"{node.name}: {what}"


def cursor(node: Node) -> Position:
    """The node's persisted shared cursor (``cursor.json`` in its state directory)."""
    saved = Cursor.from_json(Path(node.data["state_dir"], CURSOR_FILE).read_bytes())
    return saved.block, saved.log_index


def always() -> bool:
    return True


# --- what the chain and the indexer show ----------------------------------------------------------------


def registration(lab: LabCli, node: Node) -> Position | None:
    """The position of the node's ``MemberRegistered`` log (None while it is not registered)."""
    app = Address.from_hex(node.data["app_id"])

    async def find(conn: ChainConnection, cluster: ClusterClient) -> Position | None:
        member = await cluster.member_id_of(app)
        if member is None:
            return None
        for entry in await conn.get_logs([cluster.address], 0, await conn.block_number()):
            if entry.topics[0] == MEMBER_REGISTERED and entry.topics[1].raw == member.raw:
                return entry.block_number, entry.log_index
        return None

    return chain(lab, find)


def cluster_logs(lab: LabCli) -> list[Position]:
    """Every log of the cluster contract on chain, in chain order."""

    async def read(conn: ChainConnection, cluster: ClusterClient) -> list[Position]:
        logs = await conn.get_logs([cluster.address], 0, await conn.block_number())
        return [(entry.block_number, entry.log_index) for entry in logs]

    return chain(lab, read)


def emit_cluster_log(lab: LabCli) -> Position:
    """A real cluster event that every member must hear of: the owner allows a fresh (unused) compose hash
    (an app id would have to be a member app of the cluster, deployed first)."""

    async def allow(conn: ChainConnection, cluster: ClusterClient) -> Position:
        receipt = await cluster.add_compose_hash(Bytes32(os.urandom(32)))
        entry = next(e for e in receipt.logs if e.address == cluster.address)
        return entry.block_number, entry.log_index

    return chain(lab, allow)


def indexer_seed(lab: LabCli, version: int) -> SecretBytes:
    """Key ``version`` of the lab's indexer, derived from the devnet KMS (its seed is public: a devnet-only
    shortcut, exactly what the indexer's guest agent derives). Kept in SecretBytes: never shown."""
    app = Address.from_hex(lab_state(lab)["indexer"]["app_id"])
    return derive_key(DevnetKms().app_key(app), key_path(version))


def register_indexer(lab: LabCli, endpoint: str, public_key: Bytes32) -> None:
    """``IndexerRegistry.setIndexer`` as the registry owner (the devnet's deployer)."""
    state = lab_state(lab)
    registry = Address.from_hex(state["indexer_registry"])
    code_id = Bytes32.from_hex(state["indexer"]["code_id"])

    async def register(conn: ChainConnection, cluster: ClusterClient) -> object:
        return await IndexerRegistryClient(conn, registry, cluster.submitter).set_indexer(
            endpoint, code_id, public_key
        )

    chain(lab, register)


@contextlib.contextmanager
def rogue_indexer(seed: SecretBytes) -> Iterator[RogueIndexer]:
    """A ``RogueIndexer`` on the lab's root-side address (the nodes reach it through the lab bridge), served
    by its own event loop in a background thread; stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="rogue-indexer", daemon=True)
    thread.start()
    rogue = RogueIndexer(seed, host=str(PLAN.root_ip))

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=15)

    try:
        call(rogue.__aenter__())
        try:
            yield rogue
        finally:
            call(rogue.__aexit__(None, None, None))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        loop.close()


def bring_up(lab: LabCli) -> dict[str, Node]:
    """A 3-node lab with its indexer, every node healthy and subscribed."""
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    wait_for_every(lab, found.values(), in_push_mode, "push mode after bring-up")
    wait_until(lambda: subscribers(lab) == 3, DEADLINE, "3 subscribers on the indexer")
    return found


# --- 1. push mode -----------------------------------------------------------------------------------------


def test_every_node_is_in_push_mode_and_a_newcomer_reaches_every_member_by_push(lab: LabCli) -> None:
    """Point 1: with the indexer running every node subscribes (one session each, seen by the indexer) and
    runs in push mode; a newcomer's ``MemberRegistered`` log is handled by every existing member exactly
    once, from the push stream; the newcomer becomes a configured peer of everyone and subscribes too."""
    found = bring_up(lab)
    status = lab.status()["indexer"]
    assert status["running"] == {"simulator": True, "indexer": True, "registered_key": status["public_key"]}
    assert status["healthz"]["healthy"] is True and status["status"]["registry"]["matches"] is True
    pushed = {}
    for node in found.values():
        assert node.counter("attestmesh_event_mode", mode="push") == 1
        assert node.counter("attestmesh_event_mode", mode="poll") == 0
        assert node.counter("attestmesh_push_connected") == 1
        pushed[node.name] = node.counter("attestmesh_chain_logs_pushed_total")

    lab.run("node", "add", "node-4")
    newcomer = nodes(lab)["node-4"]
    position = wait_until(
        lambda: registration(lab, newcomer), DEADLINE, "node-4's registration", interval=0.5
    )
    wait_handled(lab, found.values(), position, "push", "node-4's registration", always)
    for node in found.values():
        assert node.counter("attestmesh_chain_logs_pushed_total") > pushed[node.name]

    new_key = wait_until(lambda: device_key(newcomer), DEADLINE, "node-4's device")
    for node in found.values():
        wait_until(lambda n=node: new_key in n.device_peers(), DEADLINE, f"{node.name} configures node-4")
    wait_until(newcomer.healthy, DEADLINE, "node-4 healthy")
    wait_until(lambda: in_push_mode(newcomer), DEADLINE, "node-4 in push mode")
    wait_until(lambda: subscribers(lab) == 4, DEADLINE, "4 subscribers on the indexer")
    for node in [*found.values(), newcomer]:
        assert node.healthz()["events"]["rejected_pushes"] == 0


# --- 2. indexer outage ------------------------------------------------------------------------------------


def test_indexer_outage_falls_back_to_polling_and_push_resumes_from_each_cursor(lab: LabCli) -> None:
    """Point 2: the indexer stops. No node changes health (sampled on every wait, and no ``phase.changed``
    in any log); each sidecar logs ``events.push_unavailable`` once over an outage of several reconnect
    attempts and polls; a newcomer joins by polling and becomes a configured peer of everyone. The indexer
    returns: each sidecar logs ``events.push_recovered`` once, its new session starts at the cursor polling
    left it at (the indexer's ``session.opened``), the next newcomer arrives by push, and every cluster log
    after each node's starting cursor was handled exactly once: by poll during the outage, by push after."""
    found = bring_up(lab)
    pids = {name: sidecar_pid(node) for name, node in found.items()}
    start = {name: cursor(node) for name, node in found.items()}
    # What each sidecar had logged before the outage: the outage's lines are counted after these.
    seen = {(name, event): len(sidecar_log(lab, name, event)) for name in found for event in OUTAGE_EVENTS}

    def since_outage(name: str, event: str) -> list[dict[str, Any]]:
        return sidecar_log(lab, name, event)[seen.get((name, event), 0) :]  # node-4: everything

    def healthy() -> bool:
        for node in found.values():
            assert node.healthy(), f"{node.name} changed health during the indexer outage"
        return True

    lab.run("indexer", "stop")
    stopped_at = time.monotonic()
    wait_for_every(lab, found.values(), lambda n: healthy() and in_poll_mode(n), "falls back to polling")
    for node in found.values():
        assert node.counter("attestmesh_event_mode", mode="poll") == 1
        assert node.counter("attestmesh_push_connected") == 0

    lab.run("node", "add", "node-4")
    newcomer = nodes(lab)["node-4"]
    joined = wait_until(
        lambda: healthy() and registration(lab, newcomer), DEADLINE, "node-4's registration", interval=0.5
    )
    wait_handled(lab, found.values(), joined, "poll", "node-4's registration", healthy)
    new_key = wait_until(lambda: healthy() and device_key(newcomer), DEADLINE, "node-4's device")
    for node in found.values():
        wait_until(
            lambda n=node: healthy() and new_key in n.device_peers(),
            DEADLINE,
            f"{node.name} configures node-4",
        )
    wait_until(lambda: healthy() and newcomer.healthy(), DEADLINE, "node-4 healthy")
    assert set(newcomer.device_peers()) == {node.device()["public_key"] for node in found.values()}
    wait_until(
        lambda: healthy() and time.monotonic() - stopped_at >= OUTAGE_MIN, OUTAGE_MIN + 5, "the outage window"
    )
    assert in_poll_mode(newcomer)
    everyone = {**found, "node-4": newcomer}
    start["node-4"] = cursor(newcomer)
    for name in everyone:
        unavailable = since_outage(name, "events.push_unavailable")
        assert len(unavailable) == 1, f"{name} logged the failed subscription {len(unavailable)} times"
        assert unavailable[0]["reason"]
        assert since_outage(name, "events.push_recovered") == []
    for name in found:
        assert since_outage(name, "phase.changed") == [], f"{name} changed phase during the outage"

    # The indexer returns: every sidecar resubscribes from its cursor.
    resumed = {name: cursor(node) for name, node in everyone.items()}
    sessions_before = len(log_entries(lab, "indexer", "session.opened"))
    lab.run("indexer", "start")
    wait_for_every(lab, everyone.values(), in_push_mode, "back in push mode")
    wait_until(lambda: subscribers(lab) == 4, DEADLINE, "4 subscribers on the indexer")
    sessions = log_entries(lab, "indexer", "session.opened")[sessions_before:]
    for name, node in everyone.items():
        assert len(since_outage(name, "events.push_recovered")) == 1
        assert len(since_outage(name, "events.push_unavailable")) == 1
        member = node.healthz()["node"]["member_id"].lower()
        opened = [s for s in sessions if s["member_id"].lower() == member]
        assert opened, f"{name} did not resubscribe"
        assert opened[0]["replay"] is False  # the hello carried a cursor...
        # ...the one polling advanced (the lab mines a block a second, so polling may move it on between
        # reading it here and the hello: never back, never short of node-4's registration)
        assert opened[0]["start_block"] >= resumed[name][0] >= joined[0]

    lab.run("node", "add", "node-5")
    fifth = nodes(lab)["node-5"]
    position = wait_until(lambda: registration(lab, fifth), DEADLINE, "node-5's registration", interval=0.5)
    wait_handled(lab, everyone.values(), position, "push", "node-5's registration", always)

    # No log missed, none handled twice: polled during the outage, pushed after it.
    for name, node in everyone.items():
        wait_until(
            lambda n=node: cursor(n) >= position, DEADLINE, f"{name}'s cursor past node-5's registration"
        )
        through = cursor(node)
        lines = handled(lab, name)  # read after the cursor: every log up to it was logged before it was saved
        on_chain = cluster_logs(lab)
        positions = [at for _, at in lines]
        assert len(positions) == len(set(positions)), f"{name} handled a log twice"
        assert set(positions) <= set(on_chain), f"{name} handled a log that is not on chain"
        window = [at for at in on_chain if start[name] < at <= through]
        assert [at for at in positions if start[name] < at <= through] == window, f"{name} missed a log"
        assert position in window and (joined in window or name == "node-4")  # node-4 started after it
        for source, at in lines:
            if start[name] < at <= through:
                assert source == ("poll" if at <= resumed[name] else "push"), f"{name}: {at} by {source}"
        assert node.healthz()["events"]["rejected_pushes"] == 0
    for name in everyone:
        modes = [(e["from_mode"], e["to_mode"]) for e in since_outage(name, "events.mode_changed")]
        expected = [("poll", "push")] if name == "node-4" else [("push", "poll"), ("poll", "push")]
        assert modes == expected, name
    for name in found:
        assert since_outage(name, "phase.changed") == [], f"{name} changed phase"
    assert {name: sidecar_pid(node) for name, node in nodes(lab).items() if name in found} == pids


# --- 3. key rotation --------------------------------------------------------------------------------------


def test_rotated_key_is_accepted_without_a_restart_and_old_key_pushes_are_rejected(lab: LabCli) -> None:
    """Point 3: ``indexer rotate-key`` registers key v2 on chain and restarts the indexer with it. The same
    sidecar processes resubscribe to it and take its pushes (a new cluster log arrives by push, nothing is
    rejected). Then a rogue indexer holding the OLD key (v1) is named in the registry with the new key:
    every sidecar rejects its pushes as ``bad_signature`` (healthz, metric, log) and handles nothing from
    it; with the real indexer registered again, every node is back in push mode — still without a restart.
    """
    found = bring_up(lab)
    pids = {name: sidecar_pid(node) for name, node in found.items()}
    old_seed, new_seed = indexer_seed(lab, 1), indexer_seed(lab, 2)
    old_key, new_key = Bytes32(ed25519_public_key(old_seed)), Bytes32(ed25519_public_key(new_seed))
    assert lab_state(lab)["indexer"]["public_key"] == str(old_key)

    lab.run("indexer", "rotate-key")
    status = lab.status()["indexer"]
    assert (status["key_version"], status["running_key_version"]) == (2, 2)
    assert status["public_key"] == status["running"]["registered_key"] == str(new_key) != str(old_key)
    assert status["status"]["public_key"] == str(new_key)
    # Only the v2 indexer runs, and it refuses hellos naming another key: subscribers on it are sessions
    # whose welcome the sidecars checked against the v2 key they read from the registry.
    wait_until(lambda: subscribers(lab) == 3, DEADLINE, "3 subscribers on the rotated indexer")
    wait_for_every(lab, found.values(), in_push_mode, "push mode with the rotated key")
    position = emit_cluster_log(lab)
    wait_handled(lab, found.values(), position, "push", "a cluster log signed with the rotated key", always)
    for name, node in found.items():
        assert node.healthz()["events"]["rejected_pushes"] == 0
        assert sidecar_pid(node) == pids[name]

    # Something still signing with the old key, at the endpoint the registry names, is rejected.
    before = {name: len(handled(lab, name)) for name in found}
    with rogue_indexer(old_seed) as rogue:
        assert rogue.public_key == old_key
        rogue.script = forge_next_event
        register_indexer(lab, rogue.endpoint, new_key)
        for node in found.values():
            wait_until(
                lambda n=node: n.healthz()["events"]["rejected_by_reason"].get("bad_signature", 0) >= 1,
                DEADLINE,
                f"{node.name} rejects a push signed with the old key",
            )
        assert rogue.connections >= len(found)
        for name, node in found.items():
            events = node.healthz()["events"]
            assert set(events["rejected_by_reason"]) == {"bad_signature"}
            assert events["rejected_pushes"] == events["rejected_by_reason"]["bad_signature"]
            assert node.counter("attestmesh_push_rejected_total", reason="bad_signature") >= 1
            rejected = sidecar_log(lab, name, "events.push_rejected")
            assert rejected and {e["reason"] for e in rejected} == {"bad_signature"}
            assert [s for s, _ in handled(lab, name)[before[name] :] if s == "push"] == []
        lab.run("indexer", "start")  # the registry names the real (v2) indexer again
        wait_until(lambda: subscribers(lab) == 3, DEADLINE, "3 subscribers on the real indexer again")
    assert lab.status()["indexer"]["running"]["registered_key"] == str(new_key)
    wait_for_every(lab, found.values(), in_push_mode, "push mode with the real indexer again")
    for name, node in nodes(lab).items():
        assert sidecar_pid(node) == pids[name]
        assert len(sidecar_log(lab, name, "sidecar.started")) == 1
