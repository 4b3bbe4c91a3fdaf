"""The one retry policy: capped exponential backoff with jitter, reset after a healthy run, bounded.

Owns ``Backoff``: the delay before the next attempt after ``n`` consecutive failures (``minimum`` doubling
up to ``maximum``, then ``jitter`` of it drawn away at random: with the default 0.5 a delay lies in
``[ceiling/2, ceiling]``), the count of consecutive failures, the reset after a run that lasted
``healthy_after`` seconds, and the optional bounds (``max_attempts`` failures, ``max_elapsed`` seconds
since the first failure of a streak), past which ``next()`` raises ``BackoffExhausted``. The supervisor
(sidecar and indexer), the push subscriber, wireguard-go's restarts and the indexer's start-up use it.
``Redial`` wraps two of them for a peer expected back soon: quick delays for a window, then the normal
policy (the gateway transport's dialler).

Must not: sleep, read a clock of its own (time and randomness are injected), or log: callers do the I/O.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Final

#: Doubling stops here; 2**32 times any sane minimum is far above any sane maximum.
MAX_DOUBLINGS: Final = 32


class BackoffExhausted(Exception):
    """The policy's bound (attempts or elapsed time) is reached: stop retrying, report the failure."""


class Backoff:
    """Capped exponential backoff with jitter; ``next()`` after a failure, ``reset()`` after a success."""

    def __init__(
        self,
        minimum: float,
        maximum: float,
        *,
        jitter: float = 0.5,
        random: Callable[[], float] = _random.random,
        healthy_after: float | None = None,
        max_attempts: int | None = None,
        max_elapsed: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("backoff needs 0 < minimum <= maximum")
        if not 0 <= jitter <= 1:
            raise ValueError("backoff jitter must lie in [0, 1]")
        if max_elapsed is not None and clock is None:
            raise ValueError("a backoff bounded in time needs a clock")
        self.minimum, self.maximum, self.jitter = minimum, maximum, jitter
        self.random = random
        #: A run at least this long resets the policy (default: the cap, as a run that outlived a delay).
        self.healthy_after = maximum if healthy_after is None else healthy_after
        self.max_attempts, self.max_elapsed = max_attempts, max_elapsed
        self.clock = clock
        self.failures = 0
        self._since: float | None = None

    def __repr__(self) -> str:
        return f"Backoff({self.minimum:g}..{self.maximum:g}s, failures={self.failures})"

    def ceiling(self, failures: int) -> float:
        """The delay without jitter after ``failures`` consecutive failures (at least 1)."""
        return min(self.maximum, self.minimum * 2.0 ** min(max(failures, 1) - 1, MAX_DOUBLINGS))

    def delay(self, failures: int) -> float:
        """A jittered delay after ``failures`` consecutive failures: in ``[ceiling*(1-jitter), ceiling]``."""
        return self.ceiling(failures) * (1.0 - self.jitter * self.random())

    def next(self) -> float:
        """Count one more failure and return the delay before the next attempt; raise when bounded out."""
        if self.failures == 0 and self.clock is not None:
            self._since = self.clock()
        self.failures += 1
        if self.max_attempts is not None and self.failures > self.max_attempts:
            raise BackoffExhausted(f"gave up after {self.max_attempts} attempts")
        delay = self.delay(self.failures)
        if self.max_elapsed is not None and self.elapsed() + delay > self.max_elapsed:
            raise BackoffExhausted(f"gave up after {self.max_elapsed:g}s of failures")
        return delay

    def elapsed(self) -> float:
        """Seconds since the first failure of the current streak (0 without a clock or failures)."""
        if self.clock is None or self._since is None:
            return 0.0
        return self.clock() - self._since

    def reset(self) -> None:
        """Forget the failures: the next delay is the minimum again (call it after a success)."""
        self.failures = 0
        self._since = None

    def ran(self, seconds: float) -> None:
        """Note how long the last attempt ran before it ended: a healthy run resets the policy."""
        if seconds >= self.healthy_after:
            self.reset()


class Redial:
    """Backoff for reaching a peer that is expected back soon: quick for a window, then the normal cap.

    ``expect()`` opens the window (a new peer, or its working stream just ended: a workload restart, the
    gateway's lifetime cap). Inside it, delays are capped at ``quick_max``, so a peer whose listener comes
    back after a second of start-up is reached a fraction of a second later instead of after a doubled
    delay near the normal cap; past it, the normal policy (``minimum`` doubling to ``maximum``) counts the
    whole streak of failures. ``clock`` is monotonic and injected, like ``random``.
    """

    def __init__(
        self,
        minimum: float,
        maximum: float,
        *,
        quick_max: float,
        window: float,
        clock: Callable[[], float],
        random: Callable[[], float] = _random.random,
    ) -> None:
        if window < 0:
            raise ValueError("a redial window cannot be negative")
        self.quick = Backoff(minimum, max(minimum, min(quick_max, maximum)), random=random)
        self.normal = Backoff(minimum, maximum, random=random)
        self.window, self.clock = window, clock
        self.quick_until = clock() + window

    def __repr__(self) -> str:
        return f"Redial({self.normal!r}, quick for {max(0.0, self.quick_until - self.clock()):.1f}s)"

    def expect(self) -> None:
        """The peer should be back soon: forget the failures and open the quick window."""
        self.reset()
        self.quick_until = self.clock() + self.window

    def reset(self) -> None:
        """Forget the failures (the window stays as it is)."""
        self.quick.reset()
        self.normal.reset()

    def next(self) -> float:
        """Count one more failure and return the delay before the next attempt."""
        normal = self.normal.next()
        quick = self.quick.next()
        return quick if self.clock() < self.quick_until else normal


class Spacing:
    """At most one attempt per window, whatever asks for it: for a write a lying source can ask for again
    and again (``setEndpoint`` when the chain keeps showing another endpoint).

    The first attempt is allowed at once; each attempt opens a window (``minimum`` doubling per attempt up
    to ``maximum``) in which no other is allowed. The windows shrink back to ``minimum`` only once nothing
    needed an attempt for ``maximum`` seconds after the last one (``settled``), so a source that alternates
    faster than that cannot reset them. ``now`` is passed in (a monotonic clock).
    """

    def __init__(self, minimum: float, maximum: float) -> None:
        self._windows = Backoff(minimum, maximum, jitter=0.0)
        self.attempts = 0  # attempts since the windows last shrank back
        self.last: float | None = None

    def wait(self, now: float) -> float:
        """Seconds until the next attempt is allowed (0.0: allowed now)."""
        if self.last is None or self.attempts == 0:
            return 0.0
        return max(0.0, self.last + self._windows.ceiling(self.attempts) - now)

    def attempted(self, now: float) -> None:
        """Record an attempt at ``now`` (whatever its result: a failed write may still have cost gas)."""
        self.attempts += 1
        self.last = now

    def settled(self, now: float) -> None:
        """Nothing needs an attempt at ``now``: after ``maximum`` quiet seconds the windows shrink back."""
        if self.last is not None and now - self.last >= self._windows.maximum:
            self.attempts, self.last = 0, None
