"""A whole reconcile pass with small honest fakes (``tests/unit/passkit.py``): no anvil, no WireGuard.

Covers the healthy path, every reason of the phase table (``sidecar.core.phases``), the degraded rule,
and — one test per step — that the phase and reason a failing step's outcome must produce are what the
node reports, so a controller that ignored any step's outcome fails here.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar.chain.errors import ChainIdMismatch, ChainUnavailable, InsufficientFunds, UnexpectedChainError
from sidecar.core import csk as cskcore
from sidecar.core.ids import Bytes32, SecretBytes
from sidecar.core.model import BootVerdict, MemberRecord
from sidecar.core.outcome import fold
from sidecar.core.phases import next_phase
from sidecar.drivers.chainlink import ClusterChain
from sidecar.drivers.clock import Clock
from sidecar.drivers.csk import CskFetcher
from sidecar.drivers.identity import KeySource
from sidecar.drivers.nodestate import NodeState
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

CSK = SecretBytes(b"\x42" * 32)


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
    await w.pass_once()
    assert w.chain.record(w.node.state.member_id).endpoint == ENDPOINT  # type: ignore[arg-type,union-attr]


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


async def test_csk_step_waiting_for_the_originator(tmp_path: Path) -> None:
    chain = FakeChain()
    peer = with_peer(chain, committed=False)
    w = world(tmp_path, chain)
    w.hear(peer)
    await w.pass_once()
    assert await w.pass_once() == (
        "csk_acquire",
        "waiting for the cluster shared key: waiting for the originator to commit the cluster shared key",
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
        "waiting for the cluster shared key: no peer served a valid cluster shared key ("
    )


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
