"""Rate-limiting a failure that repeats every pass: the first occurrence, a periodic count, one recovery.

Owns ``Repeats``: per key (for example ``"mesh"``), the first failure is reported at once; while it goes
on, at most one summary per ``interval`` seconds carries how many failures were swallowed since the last
report (``repeats``); a different error text is a new first occurrence; the first success after a failure
is reported once as a recovery. Must not do I/O or read a clock: ``now`` is passed in, the caller logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Report:
    """Log this failure now; ``repeats`` is how many were not logged since the previous report."""

    repeats: int
    first: bool


@dataclass(slots=True)
class _Streak:
    error: str
    reported_at: float
    swallowed: int = 0


@dataclass(slots=True)
class Repeats:
    """Decides which repeated failures to log (pure: ``now`` is passed in)."""

    interval: float = DEFAULT_INTERVAL
    _streaks: dict[str, _Streak] = field(default_factory=dict, repr=False)

    def failed(self, key: str, error: str, now: float) -> Report | None:
        """Record a failure at ``now``; return a report when it should be logged, else None."""
        streak = self._streaks.get(key)
        if streak is None or streak.error != error:
            self._streaks[key] = _Streak(error, now)
            return Report(repeats=0, first=True)
        streak.swallowed += 1
        if now - streak.reported_at < self.interval:
            return None
        report = Report(repeats=streak.swallowed, first=False)
        streak.reported_at, streak.swallowed = now, 0
        return report

    def succeeded(self, key: str) -> bool:
        """Record a success; return True exactly when it ends a failure streak (log the recovery once)."""
        return self._streaks.pop(key, None) is not None

    def failing(self, key: str) -> bool:
        """Tell whether ``key`` is in a failure streak."""
        return key in self._streaks
