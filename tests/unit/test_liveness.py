"""Liveness windows of sidecar.core.liveness, with exact durations under a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.ids import MemberId
from sidecar.core.liveness import HEARTBEAT_INTERVAL, HEARTBEAT_MISSES, LIVENESS_WINDOW, Liveness, Transition

A = MemberId(b"\x01" * 32)
B = MemberId(b"\x02" * 32)


def test_default_window_is_interval_times_misses() -> None:
    assert LIVENESS_WINDOW == HEARTBEAT_INTERVAL * HEARTBEAT_MISSES == 6.0
    assert Liveness().window == 6.0


def test_rejects_a_non_positive_window() -> None:
    with pytest.raises(ValueError, match="positive"):
        Liveness(0)


def test_up_at_first_heard_down_exactly_after_the_window_and_back_up() -> None:
    live = Liveness(6.0)
    assert live.heard(A, 100.0) == Transition(A, True, 100.0)
    assert live.heard(A, 102.0) is None
    assert live.last_heard(A) == 102.0
    assert live.expire(108.0) == []  # exactly the window: still live
    assert live.is_live(A, 108.0)
    assert not live.is_live(A, 108.001)
    assert live.expire(108.001) == [Transition(A, False, 108.001)]
    assert live.expire(200.0) == []  # a down is emitted once
    assert live.live(200.0) == frozenset()
    assert live.heard(A, 201.0) == Transition(A, True, 201.0)
    assert live.live(201.0) == frozenset({A})


def test_steady_heartbeats_never_flap() -> None:
    live = Liveness()
    events = []
    for tick in range(100):
        now = tick * HEARTBEAT_INTERVAL
        if (t := live.heard(A, now)) is not None:
            events.append(t)
        events += live.expire(now + 0.5)
    assert events == [Transition(A, True, 0.0)]


def test_two_missed_heartbeats_are_tolerated_three_are_not() -> None:
    live = Liveness()
    live.heard(A, 0.0)
    assert live.expire(5.999) == []  # missed the ones at 2 and 4
    assert live.expire(6.0) == []
    assert [t.up for t in live.expire(6.5)] == [False]  # the one at 6 did not come either


def test_expire_reports_each_member_separately() -> None:
    live = Liveness(6.0)
    live.heard(A, 0.0)
    live.heard(B, 3.0)
    assert live.expire(7.0) == [Transition(A, False, 7.0)]
    assert live.live(7.0) == frozenset({B})
    assert live.expire(9.5) == [Transition(B, False, 9.5)]


def test_forget_emits_nothing_and_clears_state() -> None:
    live = Liveness(6.0)
    live.heard(A, 0.0)
    live.forget(A)
    assert live.last_heard(A) is None
    assert not live.is_live(A, 0.0)
    assert live.expire(100.0) == []
    live.forget(B)  # unknown members are fine
    assert live.heard(A, 101.0) == Transition(A, True, 101.0)


def test_an_out_of_order_time_does_not_move_last_heard_back() -> None:
    live = Liveness(6.0)
    live.heard(A, 10.0)
    live.heard(A, 9.0)
    assert live.last_heard(A) == 10.0


@given(st.lists(st.tuples(st.booleans(), st.floats(0.0, 20.0)), max_size=60))
def test_transitions_alternate_and_match_is_live(steps: list[tuple[bool, float]]) -> None:
    live = Liveness(6.0)
    now = 0.0
    state = False
    for hear, dt in steps:
        now += dt
        events = live.expire(now)
        if hear:
            t = live.heard(A, now)
            if t is not None:
                events.append(t)
        for event in events:
            assert event.up != state
            state = event.up
        if hear:
            assert state and live.is_live(A, now)
