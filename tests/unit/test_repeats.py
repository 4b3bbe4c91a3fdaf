"""``Repeats``: the first failure logged, then at most one summary per interval with a count, one recovery."""

from __future__ import annotations

from sidecar.core.repeats import Repeats, Report


def test_first_failure_then_one_summary_per_interval_with_the_swallowed_count() -> None:
    r = Repeats(interval=60.0)
    assert r.failed("mesh", "no device", 100.0) == Report(repeats=0, first=True)
    assert r.failed("mesh", "no device", 101.0) is None
    assert r.failed("mesh", "no device", 159.9) is None
    assert r.failed("mesh", "no device", 160.0) == Report(repeats=3, first=False)
    assert r.failed("mesh", "no device", 170.0) is None
    assert r.failed("mesh", "no device", 219.9) is None
    assert r.failed("mesh", "no device", 220.0) == Report(repeats=3, first=False)


def test_a_different_error_is_a_new_first_occurrence() -> None:
    r = Repeats(interval=60.0)
    assert r.failed("mesh", "no device", 0.0) == Report(0, True)
    assert r.failed("mesh", "permission denied", 1.0) == Report(0, True)
    assert r.failed("mesh", "permission denied", 2.0) is None


def test_recovery_is_reported_once_and_resets_the_streak() -> None:
    r = Repeats(interval=60.0)
    assert r.succeeded("mesh") is False  # nothing was failing
    r.failed("mesh", "no device", 0.0)
    assert r.failing("mesh")
    assert r.succeeded("mesh") is True
    assert r.succeeded("mesh") is False
    assert r.failed("mesh", "no device", 1.0) == Report(0, True)  # a new outage is logged at once


def test_keys_are_independent() -> None:
    r = Repeats(interval=10.0)
    assert r.failed("mesh", "x", 0.0) == Report(0, True)
    assert r.failed("endpoint", "x", 0.0) == Report(0, True)
    assert r.failed("mesh", "x", 5.0) is None
    assert r.failed("endpoint", "x", 10.0) == Report(1, False)
