"""Phase rules of sidecar.core.phases: each precondition, the degraded chain rule, transitions, tracker."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.phases import (
    ORDER,
    TRANSITIONS,
    Facts,
    Phase,
    PhaseTracker,
    is_expected,
    mermaid_diagram,
    next_phase,
)

HEALTHY = Facts(
    agent_ok=True,
    chain_ok=True,
    boot_allowed=True,
    registered=True,
    device_up=True,
    device_in_sync=True,
    csk_held=True,
    other_members=2,
    live_peers=1,
)


def with_(**changes: object) -> Facts:
    return dataclasses.replace(HEALTHY, **changes)  # type: ignore[arg-type]


def test_all_met_is_healthy_without_reason() -> None:
    assert next_phase(HEALTHY) == (Phase.HEALTHY, "")


def test_lone_member_needs_no_live_peer() -> None:
    assert next_phase(with_(other_members=0, live_peers=0)) == (Phase.HEALTHY, "")


@pytest.mark.parametrize(
    ("changes", "phase", "reason_start"),
    [
        (
            {"agent_ok": False, "agent_error": "connection refused"},
            Phase.BOOT_GATE,
            "guest agent unreachable: connection refused",
        ),
        ({"agent_ok": False}, Phase.BOOT_GATE, "guest agent unreachable"),
        (
            {"chain_ok": False, "chain_error": "timeout", "registered": False},
            Phase.BOOT_GATE,
            "chain unreachable: timeout",
        ),
        (
            {"chain_ok": False, "chain_error": "timeout", "device_up": False},
            Phase.BOOT_GATE,
            "chain unreachable: timeout",
        ),
        ({"chain_id_ok": False}, Phase.BOOT_GATE, "chain id mismatch"),
        ({"boot_allowed": None}, Phase.BOOT_GATE, "boot policy not checked yet"),
        (
            {"boot_allowed": False, "boot_reason": "compose hash not allowed"},
            Phase.BOOT_GATE,
            "boot policy denies: compose hash not allowed",
        ),
        ({"lost_state": True}, Phase.BOOT_GATE, "lost state: on-chain keys differ from the derived keys"),
        ({"registered": False, "register_error": "out of gas"}, Phase.REGISTER, "not registered: out of gas"),
        ({"registered": False}, Phase.REGISTER, "not registered: registration pending"),
        ({"device_up": False}, Phase.MESH, "mesh device not up"),
        ({"device_in_sync": False}, Phase.MESH, "device out of sync with chain"),
        (
            {"csk_held": False, "csk_error": "no live peer to pull from"},
            Phase.CSK_ACQUIRE,
            "waiting for the cluster shared key: no live peer to pull from",
        ),
        ({"csk_held": False}, Phase.CSK_ACQUIRE, "waiting for the cluster shared key"),
        ({"live_peers": 0}, Phase.MESH, "no live peer"),
    ],
)
def test_each_precondition_names_its_phase(
    changes: dict[str, object], phase: Phase, reason_start: str
) -> None:
    got_phase, reason = next_phase(with_(**changes))
    assert got_phase is phase
    assert reason.startswith(reason_start)
    assert reason


def test_lost_state_is_reported_before_a_boot_denial() -> None:
    phase, reason = next_phase(with_(lost_state=True, boot_allowed=False, boot_reason="x"))
    assert phase is Phase.BOOT_GATE
    assert reason.startswith("lost state")


def test_first_unmet_precondition_wins() -> None:
    facts = with_(registered=False, device_up=False, csk_held=False, live_peers=0)
    assert next_phase(facts)[0] is Phase.REGISTER


def test_unreachable_chain_after_registration_keeps_the_mesh_but_is_not_healthy() -> None:
    phase, reason = next_phase(with_(chain_ok=False, chain_error="rpc timeout"))
    assert (phase, reason) == (Phase.MESH, "chain unreachable: rpc timeout")


def test_unreachable_chain_keeps_the_later_phase_and_names_the_chain() -> None:
    phase, reason = next_phase(with_(chain_ok=False, chain_error="rpc timeout", csk_held=False))
    assert phase is Phase.CSK_ACQUIRE
    assert reason.startswith("chain unreachable: rpc timeout; waiting for the cluster shared key")


def test_unreachable_chain_skips_stale_chain_checks_but_not_known_denials() -> None:
    assert next_phase(with_(chain_ok=False, chain_id_ok=False, boot_allowed=None))[0] is Phase.MESH
    phase, reason = next_phase(with_(chain_ok=False, lost_state=True))
    assert phase is Phase.BOOT_GATE
    assert reason.startswith("chain unreachable")
    assert "lost state" in reason


def test_transition_table_shape() -> None:
    for a, b in itertools.pairwise(ORDER):
        assert is_expected(a, b)
    for i, a in enumerate(ORDER):
        for b in ORDER[:i]:
            assert is_expected(a, b) == (b is not Phase.REGISTER), (a, b)
        assert not is_expected(a, a)
    for later in ORDER[1:]:
        assert is_expected(Phase.BOOT_GATE, later)
    assert is_expected(Phase.MESH, Phase.HEALTHY)
    assert is_expected(Phase.REGISTER, Phase.CSK_ACQUIRE)
    assert is_expected(Phase.REGISTER, Phase.HEALTHY)


def test_mermaid_diagram_draws_every_transition() -> None:
    text = mermaid_diagram()
    assert text.startswith("stateDiagram-v2\n")
    assert "[*] --> boot_gate" in text
    edges = [line.strip() for line in text.splitlines()[2:]]
    assert len(edges) == len(TRANSITIONS)
    for a, b in TRANSITIONS:
        assert any(e.startswith(f"{a.value} --> {b.value}") for e in edges)


def test_tracker_reports_changes_only() -> None:
    tracker = PhaseTracker()
    first = tracker.observe(Phase.BOOT_GATE, "chain unreachable: x", 10.0)
    assert first is not None
    assert (first.from_phase, first.to_phase, first.expected, first.elapsed) == (
        None,
        Phase.BOOT_GATE,
        True,
        None,
    )
    assert tracker.observe(Phase.BOOT_GATE, "chain id mismatch", 11.0) is None
    assert tracker.reason == "chain id mismatch"
    change = tracker.observe(Phase.MESH, "mesh device not up", 15.5)
    assert change is not None
    assert (change.from_phase, change.to_phase, change.reason, change.expected) == (
        Phase.BOOT_GATE,
        Phase.MESH,
        "mesh device not up",
        True,
    )
    assert change.at == 15.5
    assert change.elapsed == 5.5
    assert tracker.since == 15.5


def test_tracker_flags_an_unexpected_transition() -> None:
    tracker = PhaseTracker()
    tracker.observe(Phase.HEALTHY, "", 0.0)
    change = tracker.observe(Phase.REGISTER, "not registered: x", 1.0)  # a reorg dropped the registration
    assert change is not None
    assert change.expected is False


facts_strategy = st.builds(
    Facts,
    agent_ok=st.booleans(),
    chain_ok=st.booleans(),
    chain_id_ok=st.booleans(),
    boot_allowed=st.sampled_from([None, True, False]),
    lost_state=st.booleans(),
    registered=st.booleans(),
    device_up=st.booleans(),
    device_in_sync=st.booleans(),
    csk_held=st.booleans(),
    other_members=st.integers(0, 3),
    live_peers=st.integers(0, 3),
)


@given(facts_strategy)
def test_reason_is_empty_exactly_when_healthy(facts: Facts) -> None:
    phase, reason = next_phase(facts)
    assert (phase is Phase.HEALTHY) == (reason == "")
    if phase is Phase.HEALTHY:
        assert facts.agent_ok and facts.chain_ok and facts.registered and facts.csk_held
    if facts.agent_ok and not facts.chain_ok:
        assert phase is not Phase.HEALTHY
        assert reason.startswith("chain unreachable")


@given(st.lists(facts_strategy, min_size=1, max_size=30))
def test_every_observed_transition_is_in_the_table_or_flagged(sequence: list[Facts]) -> None:
    tracker = PhaseTracker()
    for now, facts in enumerate(sequence):
        before = tracker.phase
        phase, reason = next_phase(facts)
        change = tracker.observe(phase, reason, float(now))
        if before is phase:
            assert change is None
            continue
        assert change is not None
        assert change.to_phase is phase
        if before is not None:
            assert change.expected == ((before, phase) in TRANSITIONS)
