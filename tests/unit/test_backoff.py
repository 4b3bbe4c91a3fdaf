"""The one retry policy: exact delays with an injected random, jitter bounds, cap, reset and bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.backoff import Backoff, BackoffExhausted, Redial, Spacing


def fixed(value: float) -> Backoff:
    return Backoff(0.5, 8.0, random=lambda: value)


def test_delays_double_from_the_minimum_up_to_the_cap() -> None:
    top = fixed(0.0)  # no jitter drawn: the ceiling itself
    assert [top.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert top.failures == 7
    half = fixed(1.0)  # all the jitter drawn: half the ceiling
    assert [half.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_huge_failure_count_stays_at_the_cap() -> None:
    assert fixed(0.0).delay(10_000) == 8.0


@given(
    failures=st.integers(min_value=1, max_value=200),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_jitter_stays_within_its_band(failures: int, jitter: float, draw: float) -> None:
    policy = Backoff(0.5, 30.0, jitter=jitter, random=lambda: draw)
    ceiling = policy.ceiling(failures)
    assert ceiling * (1 - jitter) <= policy.delay(failures) <= ceiling <= 30.0


def test_default_jitter_with_a_seeded_random_is_reproducible() -> None:
    a = Backoff(1.0, 8.0, random=random.Random(7).random)
    b = Backoff(1.0, 8.0, random=random.Random(7).random)
    delays = [a.next() for _ in range(10)]
    assert delays == [b.next() for _ in range(10)]
    assert len(set(delays)) > 1
    for failures, delay in enumerate(delays, start=1):
        ceiling = min(8.0, 2.0 ** (failures - 1))
        assert ceiling / 2 <= delay <= ceiling


def test_reset_and_a_healthy_run_start_again_at_the_minimum() -> None:
    policy = Backoff(1.0, 16.0, random=lambda: 0.0, healthy_after=10.0)
    assert [policy.next() for _ in range(3)] == [1.0, 2.0, 4.0]
    policy.ran(9.9)  # not long enough to count as healthy
    assert policy.next() == 8.0
    policy.ran(10.0)
    assert policy.failures == 0
    assert policy.next() == 1.0
    policy.reset()
    assert policy.next() == 1.0


def test_healthy_after_defaults_to_the_cap() -> None:
    policy = fixed(0.0)
    policy.next()
    policy.next()
    policy.ran(7.9)
    assert policy.failures == 2
    policy.ran(8.0)
    assert policy.failures == 0


def test_bounded_by_attempts() -> None:
    policy = Backoff(1.0, 4.0, random=lambda: 0.0, max_attempts=3)
    assert [policy.next() for _ in range(3)] == [1.0, 2.0, 4.0]
    with pytest.raises(BackoffExhausted, match="3 attempts"):
        policy.next()
    policy.reset()
    assert policy.next() == 1.0


def test_bounded_by_time_since_the_first_failure() -> None:
    now = [100.0]
    policy = Backoff(1.0, 4.0, random=lambda: 0.0, max_elapsed=10.0, clock=lambda: now[0])
    assert policy.next() == 1.0  # the streak starts at 100
    now[0] = 104.0
    assert policy.next() == 2.0  # 4 s + 2 s <= 10 s
    now[0] = 107.0
    with pytest.raises(BackoffExhausted, match="10s"):
        policy.next()  # 7 s + 4 s > 10 s
    assert policy.elapsed() == 7.0
    policy.reset()
    assert policy.elapsed() == 0.0
    assert policy.next() == 1.0


@pytest.mark.parametrize(
    ("minimum", "maximum", "extra"),
    [(0.0, 1.0, {}), (2.0, 1.0, {}), (1.0, 2.0, {"jitter": 1.5}), (1.0, 2.0, {"max_elapsed": 5.0})],
)
def test_nonsense_is_refused(minimum: float, maximum: float, extra: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(minimum, maximum, **extra)  # type: ignore[arg-type]


def test_spacing_allows_one_attempt_per_doubling_window_and_shrinks_back_only_after_a_quiet_maximum() -> None:
    spacing = Spacing(30.0, 600.0)
    assert spacing.wait(0.0) == 0.0
    spacing.attempted(0.0)
    assert spacing.wait(10.0) == 20.0
    assert spacing.wait(30.0) == 0.0
    spacing.attempted(30.0)
    assert spacing.wait(30.0) == 60.0  # the window doubled
    spacing.settled(100.0)  # quiet, but not for the maximum: the windows stay wide
    assert spacing.attempts == 2
    spacing.settled(629.0)
    assert spacing.attempts == 2
    spacing.settled(630.0)  # quiet for the maximum after the last attempt: back to the minimum
    assert spacing.attempts == 0 and spacing.wait(630.0) == 0.0
    for at in range(10):
        spacing.attempted(at * 10_000.0)
    assert spacing.wait(90_000.0) == 600.0  # capped


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def redial(clock: Clock) -> Redial:
    return Redial(0.1, 2.0, quick_max=0.25, window=10.0, clock=clock, random=lambda: 0.0)


def test_redial_stays_quick_inside_its_window_then_takes_the_normal_cap() -> None:
    clock = Clock()
    policy = redial(clock)  # a new link: the peer is expected up soon
    inside = [policy.next() for _ in range(6)]
    assert inside == [0.1, 0.2, 0.25, 0.25, 0.25, 0.25]
    clock.now += 10.0  # the window has passed: the whole streak counts under the normal policy
    assert policy.next() == 2.0


def test_expect_reopens_the_window_and_forgets_the_streak() -> None:
    clock = Clock()
    policy = redial(clock)
    clock.now += 30.0
    assert [policy.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.6]
    policy.expect()  # the peer's working stream ended: it should be back soon
    assert [policy.next() for _ in range(4)] == [0.1, 0.2, 0.25, 0.25]
    clock.now += 10.5
    assert policy.next() == 1.6  # five failures since expect(): the normal policy's fifth delay


def test_redial_quick_cap_never_exceeds_the_normal_cap_or_undercuts_the_minimum() -> None:
    clock = Clock()
    low = Redial(0.5, 1.0, quick_max=0.1, window=5.0, clock=clock, random=lambda: 0.0)
    assert [low.next() for _ in range(2)] == [0.5, 0.5]
    high = Redial(0.1, 1.0, quick_max=5.0, window=5.0, clock=clock, random=lambda: 0.0)
    assert [high.next() for _ in range(6)][-1] == 1.0
    with pytest.raises(ValueError, match="negative"):
        Redial(0.1, 1.0, quick_max=0.2, window=-1.0, clock=clock)
