"""The one clock of the sidecar, injected into every driver that needs the time.

Owns ``Clock`` (the port: ``monotonic`` seconds for intervals and liveness, ``wall`` unix seconds for CSK
request timestamps, heartbeat timestamps and WireGuard handshake ages) and ``SystemClock``, the real one.
Must not be bypassed: drivers take a ``Clock`` and never call ``time.time()`` or ``time.monotonic()``
beside it, so a unit test can drive every step with a fake clock.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The process clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


def wall_ms(clock: Clock) -> int:
    """Return the clock's wall time in unix milliseconds."""
    return int(clock.wall() * 1000)
