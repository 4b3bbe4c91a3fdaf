"""A whole reconcile pass with small honest fakes (``tests/unit/passkit.py``): no anvil, no WireGuard.

Covers the healthy path, every reason of the phase table (``sidecar.core.phases``), the degraded rule,
and — one test per step — that the phase and reason a failing step's outcome must produce are what the
node reports, so a controller that ignored any step's outcome fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar.chain.errors import ChainIdMismatch, ChainUnavailable, InsufficientFunds, UnexpectedChainError
from sidecar.core import csk as cskcore
from sidecar.core.ids import Bytes32, SecretBytes
from sidecar.core.model import BootVerdict, MemberRecord, MeshCidr
from sidecar.core.outcome import fold
from sidecar.core.peerplan import WgKey
from sidecar.core.phases import next_phase
from sidecar.core.quorum import ProviderAnswer, agree
from sidecar.drivers.chainlink import ClusterChain, QuorumNotReached
from sidecar.drivers.clock import Clock
from sidecar.drivers.csk import CskFetcher
from sidecar.drivers.identity import KeySource
from sidecar.drivers.nodestate import NodeState
from sidecar.drivers.steps import ENDPOINT_RETRY_MIN
from sidecar.observability import Metrics
from sidecar.wg.device import WgDevice, WgError
from tests.unit.passkit import (
    ENDPOINT,
    FakeAgent,
    FakeChain,
    FakeClock,
    FakeDevice,
    FakePeers,
    World,
    mesh_ip,
    other_member,
    world,
)
from tests.unit.proofkit import CLUSTER, ROGUE_KMS, derived_member

CSK = SecretBytes(b"\x42" * 32)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"metric {name}{labels} is not exported"
    return value


def with_peer(chain: FakeChain, *, committed: bool = True) -> MemberRecord:
    """An originator already on chain (and, if ``committed``, its CSK commitment)."""
    peer = other_member(1, chain.mesh)
    chain.members.append(peer)
    if committed:
        chain.commitment = cskcore.commitment(CSK)
    return peer


async def healthy(tmp_path: Path) -> tuple[World, MemberRecord]:
    """A node that registers, configures its one peer, pulls the CSK from it and hears it: healthy."""
    chain = FakeChain()
    peer = with_peer(chain)
    w = world(tmp_path, chain)
    w.peers.key = CSK
    w.hear(peer)
    assert await w.pass_once() == ("register", "not registered: registration pending")
    assert w.node.controller.requeue == 0.0  # a registration asks for the next pass at once
    assert await w.pass_once() == ("healthy", "")
    return w, peer


async def test_the_healthy_path_registers_configures_the_peer_and_pulls_the_key(tmp_path: Path) -> None:
    w, peer = await healthy(tmp_path)
    assert w.chain.registrations == 1
    assert list(w.device.peers) and next(iter(w.device.peers.values())).endpoint == peer.endpoint
    assert mesh_ip(w) is not None
    assert w.node.csk.held.source == "peer" and w.node.controller.csk_value() is not None
    status = w.node.controller.status
    assert (status.peers_desired, status.peers_configured, status.peers_live) == (1, 1, 1)
    assert status.chain_reachable is True and status.csk_source == "peer"
    # the CSK request is stamped by the injected wall clock
    (request,) = w.peers.requests
    assert request.timestamp_ms == int(w.clock.wall() * 1000)
    assert await w.pass_once() == ("healthy", "")  # steady state: nothing more
    assert w.chain.registrations == 1 and len(w.peers.requests) == 1


# --- one failing step at a time -------------------------------------------------------------------------


async def test_identity_step_agent_unreachable(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.agent.down = True
    phase, reason = await w.pass_once()
    assert (phase, reason) == (
        "boot_gate",
        "guest agent unreachable: guest agent socket refused the connection",
    )
    assert w.node.controller.status.chain_reachable is False


async def test_chain_step_unreachable(tmp_path: Path) -> None:
    w = world(tmp_path, FakeChain(fail=ChainUnavailable("RPC endpoint unreachable: refused")))
    assert await w.pass_once() == ("boot_gate", "chain unreachable: RPC endpoint unreachable: refused")
    assert w.node.controller.status.chain_reachable is False


async def test_chain_step_chain_id_mismatch_is_reachable(tmp_path: Path) -> None:
    w = world(tmp_path, FakeChain(fail=ChainIdMismatch(1, 31337)))
    assert await w.pass_once() == ("boot_gate", "chain id mismatch: expected 1, the RPC serves 31337")
    status = w.node.controller.status
    assert status.chain_reachable is True and w.node.controller.facts.chain_ok is True


async def test_chain_step_no_contract_at_the_cluster_address_is_reachable(tmp_path: Path) -> None:
    chain = FakeChain(fail=UnexpectedChainError("call returned no usable output"), code=False)
    w = world(tmp_path, chain)
    phase, reason = await w.pass_once()
    assert phase == "boot_gate" and reason.startswith(f"no cluster contract at {chain.cluster}")
    assert w.node.controller.status.chain_reachable is True


async def test_membership_step_lost_state(tmp_path: Path) -> None:
    chain = FakeChain()
    w = world(tmp_path, chain)
    await w.pass_once()  # registers
    mine = chain.members[0]
    chain.members[0] = MemberRecord(
        mine.member_id, mine.app_id, mine.signer, Bytes32(b"\x09" * 32), mine.wg_pub, mine.identity_pub,
        mine.endpoint, mine.mesh_ip, mine.registered_at,
    )  # fmt: skip
    assert await w.pass_once() == ("boot_gate", "lost state: on-chain keys differ from the derived keys")
    assert chain.registrations == 1


async def test_membership_step_boot_policy_denies(tmp_path: Path) -> None:
    w = world(tmp_path, FakeChain(verdict=BootVerdict(False, "app id not allowed")))
    assert await w.pass_once() == ("boot_gate", "boot policy denies: app id not allowed")
    assert w.chain.registrations == 0


def test_boot_policy_not_checked_yet_until_a_chain_outcome_carries_the_verdict() -> None:
    # A pass always reads the verdict with the chain, so this row is reached only by facts folded without a
    # chain outcome: the chain step's outcome is what moves the node past it.
    facts = fold(NodeState().facts, {"agent_ok": True, "chain_ok": True})
    assert next_phase(facts)[1] == "boot policy not checked yet"
    assert next_phase(fold(facts, {"boot_allowed": True}))[1].startswith("not registered")


async def test_membership_step_registration_fails(tmp_path: Path) -> None:
    chain = FakeChain(register_fail=InsufficientFunds("insufficient funds for gas"))
    w = world(tmp_path, chain)
    phase, reason = await w.pass_once()
    assert phase == "register"
    assert (
        reason == "not registered: no gas: the signer has no funds to register (insufficient funds for gas)"
    )


async def test_endpoint_step_failure_is_reported_once_and_the_pass_goes_on(tmp_path: Path) -> None:
    w, _ = await healthy(tmp_path)
    w.chain.members[-1] = MemberRecord(
        *(getattr(w.chain.members[-1], f) for f in ("member_id", "app_id", "signer", "seal_pub", "wg_pub",
          "identity_pub")), "10.88.0.99:51820", w.chain.members[-1].mesh_ip, 0,
    )  # fmt: skip
    w.chain.endpoint_fail = ChainUnavailable("refused")
    with capture_logs() as logs:
        assert await w.pass_once() == ("healthy", "")
        assert await w.pass_once() == ("healthy", "")
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["endpoint.update_failed"]
    w.chain.endpoint_fail = None
    w.clock.advance(ENDPOINT_RETRY_MIN)  # the retry waits for the first window to close
    await w.pass_once()
    assert w.chain.record(w.node.state.member_id).endpoint == ENDPOINT  # type: ignore[arg-type,union-attr]


async def test_a_chain_that_keeps_showing_an_old_endpoint_gets_one_set_endpoint_per_window(
    tmp_path: Path,
) -> None:
    """Issue 12: a lying RPC that never shows this node's new endpoint made it send ``setEndpoint`` on every
    pass; now the attempts are spaced by doubling windows (30 s … 600 s), and the deferrals are counted."""
    w, peer = await healthy(tmp_path)
    mine = w.chain.record(w.node.state.member_id)  # type: ignore[arg-type]
    assert mine is not None
    stale = dataclasses.replace(mine, endpoint="10.88.0.99:51820")
    sent: list[float] = []

    async def lying_set_endpoint(identity: object, endpoint: str) -> None:
        sent.append(w.clock.monotonic())  # "sent" — and the next read still shows the old endpoint

    w.chain.set_endpoint = lying_set_endpoint  # type: ignore[method-assign,assignment]
    w.chain.members[w.chain.members.index(mine)] = stale
    start = w.clock.monotonic()
    with capture_logs() as logs:
        for _ in range(120):  # 20 minutes of passes every 10 s
            w.hear(peer)
            assert (await w.pass_once())[0] == "healthy"
            w.clock.advance(10.0)
    assert [t - start for t in sent] == [0.0, 30.0, 90.0, 210.0, 450.0, 930.0]
    deferred = w.metrics.endpoint_updates.labels(result="deferred")._value.get()
    assert deferred == 120 - len(sent)
    assert w.metrics.endpoint_updates.labels(result="sent")._value.get() == len(sent)
    assert sum(e["event"] == "endpoint.update_deferred" for e in logs) == len(sent)  # once per window


async def test_mesh_step_device_not_up(tmp_path: Path) -> None:
    chain = FakeChain()
    w = world(tmp_path, chain)
    w.device.fail = WgError("no such device")
    await w.pass_once()  # registers
    assert await w.pass_once() == ("mesh", "mesh device not up: no such device")


async def test_mesh_step_device_out_of_sync(tmp_path: Path) -> None:
    chain = FakeChain()
    with_peer(chain)
    w = world(tmp_path, chain)
    w.device.sticky = False  # applies nothing
    await w.pass_once()
    assert await w.pass_once() == ("mesh", "device out of sync with chain")


async def test_the_originator_commits_once_and_waits_for_the_commitment_to_be_confirmed(
    tmp_path: Path,
) -> None:
    w = world(tmp_path)  # alone: it becomes index 0
    await w.pass_once()  # registers
    await w.pass_once()  # commits
    assert w.chain.commits == 1
    committed_at = w.chain.head
    w.chain.commitment, w.chain.head = (
        None,
        committed_at - 1,
    )  # the confirmed snapshot predates the commitment
    for _ in range(3):
        assert await w.pass_once() == (
            "csk_acquire",
            "waiting for the cluster shared key: waiting for the commitment to be confirmed",
        )
    assert w.chain.commits == 1  # never sent twice
    w.chain.head = committed_at  # a confirmed snapshot at its block without it: a reorg dropped it
    await w.pass_once()
    assert w.chain.commits == 2 and w.chain.commitment is not None  # the same derived key, committed again
    assert await w.pass_once() == ("healthy", "")


async def test_csk_step_waiting_for_the_originator(tmp_path: Path) -> None:
    chain = FakeChain()
    peer = with_peer(chain, committed=False)
    w = world(tmp_path, chain)
    w.hear(peer)
    await w.pass_once()
    assert await w.pass_once() == (
        "csk_acquire",
        "waiting for the cluster shared key: waiting for the originator to commit the cluster shared key of "
        "epoch 1",
    )


async def test_csk_step_no_peer_serves_the_key(tmp_path: Path) -> None:
    chain = FakeChain()
    peer = with_peer(chain)
    w = world(tmp_path, chain)
    w.hear(peer)  # live, but it does not hold the key (w.peers.key is None)
    await w.pass_once()
    phase, reason = await w.pass_once()
    assert phase == "csk_acquire"
    assert reason.startswith(
        "waiting for the cluster shared key: no peer served a valid cluster shared key of epoch 1 ("
    )


async def test_a_key_from_a_peer_that_cannot_prove_itself_is_never_adopted(tmp_path: Path) -> None:
    chain = FakeChain()
    peer = with_peer(chain)
    w = world(tmp_path, chain)
    w.peers.key = CSK  # the right key, matching the commitment the chain shows
    rogue, _, _ = derived_member(peer.app_id, ROGUE_KMS)  # ... from a peer whose root nobody measured
    w.peers.proof_of[peer.member_id] = rogue
    w.hear(peer)
    await w.pass_once()
    with capture_logs() as logs:
        phase, reason = await w.pass_once()
    assert phase == "csk_acquire" and reason.endswith(f"({str(peer.member_id)[:10]}: unproven)")
    assert w.node.csk.held.value is None and w.node.controller.csk_value() is None
    assert sample(w.metrics, "attestmesh_csk_pull_attempts_total", result="unproven") == 1
    (rejected,) = [e for e in logs if e["event"] == "csk.pull_rejected"]
    assert rejected["result"] == "unproven" and "untrusted_root" in rejected["reason"]
    w.peers.proof_of.clear()  # the peer proves itself: the key is adopted
    w.clock.advance(1.0)
    w.hear(peer)
    assert await w.pass_once() == ("healthy", "")


@pytest.mark.parametrize("unset", ["ATTESTMESH_MEMBER_APP_FACTORY", "ATTESTMESH_KMS_ROOTS"])
async def test_without_the_anchors_the_key_is_neither_taken_nor_served(tmp_path: Path, unset: str) -> None:
    chain = FakeChain()
    peer = with_peer(chain)
    w = world(tmp_path, chain, unset=(unset,))
    w.peers.key = CSK
    w.hear(peer)
    await w.pass_once()
    phase, reason = await w.pass_once()  # no crash: a named reason
    assert phase == "csk_acquire"
    assert reason == (
        "waiting for the cluster shared key: cannot take the cluster shared key from peers: "
        f"{unset} not set: member proofs cannot be checked"
    )
    assert w.peers.requests == []  # never asked a peer
    status = w.node.controller.status
    assert status.csk_peering_error == f"{unset} not set: member proofs cannot be checked"
    answer = w.node.csk.respond({}, IPv4Address("10.77.0.9"))
    assert answer.status == 400  # malformed still comes first
    request = cskcore.sign_request(
        cskcore.CskRequest(CLUSTER, peer.member_id, peer.member_id, 0), SecretBytes(b"\x01" * 32), None
    )
    answer = w.node.csk.respond(request, IPv4Address("10.77.0.9"))
    assert (answer.status, answer.body["reason"]) == (503, "anchors_missing")
    assert sample(w.metrics, "attestmesh_csk_requests_refused_total", reason="anchors_missing") == 1


async def test_the_originator_commits_for_the_epoch_it_read(tmp_path: Path) -> None:
    chain = FakeChain(epoch=3)  # rotated twice before this node's first pass
    w = world(tmp_path, chain)
    await w.pass_once()  # registers: the first member, so the originator
    await w.pass_once()  # derives and commits
    assert chain.committed_epochs == [3]


async def test_peers_no_live_peer(tmp_path: Path) -> None:
    chain = FakeChain()
    w = world(tmp_path, chain)
    await w.pass_once()  # registers: the first member, so the originator, which derives and commits
    chain.members.append(other_member(2, chain.mesh))  # a second member that never sends a heartbeat
    assert (await w.pass_once())[0] == "csk_acquire"  # committed; held as verified once the chain shows it
    assert await w.pass_once() == ("mesh", "no live peer")
    assert w.node.csk.held.source == "derived" and chain.commitment is not None


# --- the degraded rule and the device_up defect -----------------------------------------------------------


async def test_degraded_an_unreachable_chain_keeps_the_mesh_and_names_the_chain(tmp_path: Path) -> None:
    w, peer = await healthy(tmp_path)
    w.chain.fail = ChainUnavailable("refused")
    assert await w.pass_once() == ("mesh", "chain unreachable: refused")
    assert list(w.device.peers)  # nothing torn down
    w.clock.advance(60.0)  # the peer's heartbeats age out meanwhile
    w.liveness.expire(w.clock.monotonic())
    assert await w.pass_once() == ("mesh", "chain unreachable: refused; no live peer")
    w.chain.fail = None
    w.hear(peer)
    assert await w.pass_once() == ("healthy", "")


async def test_providers_that_disagree_change_nothing_and_are_named(tmp_path: Path) -> None:
    w, peer = await healthy(tmp_path)
    device_before, snapshot_before = dict(w.device.peers), w.node.state.snapshot
    fake = other_member(9, w.chain.mesh)  # what the lying provider adds
    assert snapshot_before is not None
    honest = ProviderAnswer(0, 10, Bytes32(b"\x0a" * 32), snapshot_before)
    lying = ProviderAnswer(
        1, 10, Bytes32(b"\x0a" * 32), replace(snapshot_before, members=(*snapshot_before.members, fake))
    )
    w.chain.fail = QuorumNotReached(agree([honest, lying], [], providers=2, quorum=2))
    w.chain.members.append(fake)  # were it read, the fake member would become a peer
    phase, reason = await w.pass_once()
    assert phase == "mesh"
    assert reason.startswith("rpc_disagreement: provider 1 disagrees with provider 0: membership digest 0x")
    assert w.device.peers == device_before and w.node.state.snapshot is snapshot_before  # nothing changed
    status = w.node.controller.status
    assert not status.healthy and status.chain_error == reason and status.chain_reachable is False
    assert w.metrics.registry.get_sample_value("attestmesh_chain_errors_total", {"kind": "transient"}) == 1.0
    w.chain.fail = None
    w.chain.members.remove(fake)
    w.hear(peer)
    assert await w.pass_once() == ("healthy", "")


async def test_a_wireguard_failure_after_the_device_was_up_reads_device_not_up_then_recovers(
    tmp_path: Path,
) -> None:
    w, _ = await healthy(tmp_path)
    w.device.fail = WgError("interface wg-mesh vanished")
    assert await w.pass_once() == ("mesh", "mesh device not up: interface wg-mesh vanished")
    assert w.node.controller.facts.device_up is False
    w.device.fail = None
    assert await w.pass_once() == ("healthy", "")


async def test_mesh_failures_are_logged_once_then_summarised_with_a_count(tmp_path: Path) -> None:
    w, _ = await healthy(tmp_path)
    w.device.fail = WgError("no such device")
    with capture_logs() as logs:
        for _ in range(4):
            await w.pass_once()
            w.clock.advance(10.0)  # 40 s: within the 60 s interval
        w.clock.advance(30.0)
        await w.pass_once()  # 70 s after the first: a summary
        w.device.fail = None
        await w.pass_once()
    failed = [e for e in logs if e["event"] == "mesh.failed"]
    assert [e.get("repeats") for e in failed] == [None, 4]
    assert len([e for e in logs if e["event"] == "mesh.interface_up"]) == 1  # the recovery, once


@pytest.mark.parametrize("step", ["identity", "chain", "membership", "mesh", "csk"])
async def test_a_pass_stops_at_the_first_failing_step(tmp_path: Path, step: str) -> None:
    # The phases a failing step must produce, each from a fresh node (the per-step tests above give the text).
    chain = FakeChain()
    peer = with_peer(chain)
    w = world(tmp_path, chain)
    w.hear(peer)
    if step == "identity":
        w.agent.down = True
    elif step == "chain":
        chain.fail = ChainUnavailable("refused")
    elif step == "membership":
        chain.register_fail = InsufficientFunds("no funds")
    elif step == "mesh":
        w.device.fail = WgError("no such device")
    await w.pass_once()
    phase, _ = await w.pass_once()
    expected = {"identity": "boot_gate", "chain": "boot_gate", "membership": "register", "mesh": "mesh"}
    assert phase == expected.get(step, "csk_acquire")


@pytest.mark.parametrize(
    ("fake", "port"),
    [
        (FakeAgent, KeySource),
        (FakeChain, ClusterChain),
        (FakeDevice, WgDevice),
        (FakePeers, CskFetcher),
        (FakeClock, Clock),
    ],
)
def test_the_fakes_implement_the_ports_the_steps_depend_on(fake: type, port: type) -> None:
    # Same members, same parameter names, same sync/async kind: a port that grows or changes breaks here.
    for name, member in vars(port).items():
        if name.startswith("_"):
            continue
        ours = getattr(fake, name)
        if isinstance(member, property):
            assert isinstance(ours, property), name
            continue
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(member), name
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(member).parameters), name


def step_failures(w: World) -> dict[tuple[str, str], float]:
    """The non-zero ``attestmesh_reconcile_step_failures_total`` series: (step, failure) -> count."""
    found: dict[tuple[str, str], float] = {}
    for metric in w.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "attestmesh_reconcile_step_failures_total" and sample.value:
                found[(sample.labels["step"], sample.labels["failure"])] = sample.value
    return found


async def test_each_failed_step_is_counted_by_its_class(tmp_path: Path) -> None:
    """The outcome's failure class reaches the metrics: transient and terminal, named by step."""
    w = world(tmp_path, FakeChain(fail=ChainUnavailable("RPC endpoint unreachable: refused")))
    await w.pass_once()
    await w.pass_once()
    assert step_failures(w) == {("chain", "transient"): 2}

    w = world(tmp_path, FakeChain(fail=ChainIdMismatch(1, 31337)))
    await w.pass_once()
    assert step_failures(w) == {("chain", "terminal"): 1}

    w = world(tmp_path, FakeChain(register_fail=InsufficientFunds("insufficient funds for gas")))
    await w.pass_once()
    assert step_failures(w) == {("membership", "terminal"): 1}

    w, _ = await healthy(tmp_path)
    assert step_failures(w) == {}  # a healthy path has no failed step


# --- unusable member records (issue 12, item 6) -----------------------------------------------------------


def _variant(record: MemberRecord, index: int, **changes: object) -> MemberRecord:
    """Another member (its own ids and registration order) that copies ``record``'s other fields."""
    fresh = other_member(index, MeshCidr.parse("10.77.0.0/24"))
    own: dict[str, object] = {
        "member_id": fresh.member_id, "app_id": fresh.app_id, "registered_at": fresh.registered_at,
        "mesh_ip": fresh.mesh_ip,
    }  # fmt: skip
    return dataclasses.replace(record, **{**own, **changes})


async def test_unusable_records_are_excluded_and_the_node_stays_healthy_with_the_key(tmp_path: Path) -> None:
    """Records the device cannot take (a zone-id endpoint, a stolen key, our own key, a foreign mesh IP, an
    endpoint that does not parse) used to make every pass raise or never sync; now they are listed."""
    chain = FakeChain()
    peer = with_peer(chain)
    w = world(tmp_path, chain)
    w.peers.key = CSK
    w.hear(peer)
    assert await w.pass_once() == ("register", "not registered: registration pending")
    mine = chain.members[-1]
    bad = [
        _variant(peer, 2, wg_pub=Bytes32(b"\x02" * 32), endpoint="udp://[fe80::1%eth0]:51820"),
        _variant(peer, 3),  # the peer's WireGuard key, registered later
        _variant(peer, 4, wg_pub=mine.wg_pub),
        _variant(peer, 5, wg_pub=Bytes32(b"\x05" * 32), mesh_ip=IPv4Address("192.0.2.1")),
        _variant(peer, 6, wg_pub=Bytes32(b"\x06" * 32), endpoint="x"),
    ]
    chain.members.extend(bad)
    with capture_logs() as logs:
        assert await w.pass_once() == ("healthy", "")
        assert await w.pass_once() == ("healthy", "")  # the second pass logs nothing new
    assert set(w.device.peers) == {WgKey(peer.wg_pub.raw)}
    assert w.node.csk.held.source == "peer"  # the CSK step ran
    status = w.node.controller.status
    assert status.peers_excluded == tuple(
        (str(r.member_id), reason)
        for r, reason in zip(
            bad, ("bad_endpoint", "duplicate_key", "own_key", "bad_mesh_ip", "bad_endpoint"), strict=True
        )
    )
    assert (status.peers_desired, status.peers_configured, status.peers_live) == (1, 1, 1)
    excluded_logs = [e for e in logs if e["event"] == "peer.excluded"]
    assert [e["member_id"] for e in excluded_logs] == [str(r.member_id) for r in bad]
    gauge = w.metrics.registry.get_sample_value
    assert gauge("attestmesh_peers_excluded", {"reason": "bad_endpoint"}) == 2
    assert gauge("attestmesh_peers_excluded", {"reason": "own_key"}) == 1
    # the record is fixed: it is let back in, logged once, and configured
    fixed = dataclasses.replace(bad[0], endpoint="10.88.0.99:51820")
    chain.members[chain.members.index(bad[0])] = fixed
    with capture_logs() as logs:
        assert await w.pass_once() == ("healthy", "")
    assert [e["event"] for e in logs if e["event"].startswith("peer.")] == ["peer.readmitted", "peer.added"]
    assert WgKey(fixed.wg_pub.raw) in w.device.peers
    assert gauge("attestmesh_peers_excluded", {"reason": "bad_endpoint"}) == 1


async def test_a_node_whose_only_other_member_is_excluded_needs_no_live_peer(tmp_path: Path) -> None:
    """The "a live peer" rule counts usable peers: an excluded record is neither desired nor needed live."""
    chain = FakeChain()
    peer = with_peer(chain, committed=False)
    chain.members[0] = dataclasses.replace(peer, endpoint="not an endpoint")
    w = world(tmp_path, chain)
    assert await w.pass_once() == ("register", "not registered: registration pending")
    phase, _ = await w.pass_once()
    assert phase == "csk_acquire"  # past the mesh: the device is in sync with what it can apply
    status = w.node.controller.status
    assert status.peers_desired == 0 and status.peers_excluded == ((str(peer.member_id), "bad_endpoint"),)
