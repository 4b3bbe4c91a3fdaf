"""Relaying one connection: both directions at once, each half-closing on its own, under one idle watchdog.

Owns ``relay`` (runs until both directions ended — ``eof`` —, one failed — ``error`` —, or neither moved for
the idle window — ``idle``; the lifetime cap and shutdown are the caller's, by cancellation) and
``IdleWatch`` (pure: dstack-gateway's ``proxy/idle.rs`` watchdog — a progress counter sampled
``idle_checks_per_window`` times per window; the connection is stalled after a whole window of samples
without progress, so it closes between one and ``1 + 1/checks`` windows after the last byte). Progress is a
completed read or write in either direction, so a write blocked on a client that stopped reading counts
as silence (dstack's "stalled write" case), and the watchdog keeps running after one direction ended.

Must not: look at the payload, close the ends (the caller does, knowing why), or read a wall clock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from devnet.gateway.metrics import Direction
from devnet.gateway.streams import End

MIN_IDLE_TICK: Final = 0.01
"""The shortest sampling period (dstack's floor is 500 ms; the stand-in's tests use sub-second windows)."""

RelayEnd = Literal["eof", "idle", "error"]


class IdleWatch:
    """Decides from periodic samples of a progress counter whether a connection has stalled."""

    def __init__(self, idle: float, checks: int) -> None:
        self.tick = max(idle / checks, MIN_IDLE_TICK)
        self.max_idle_ticks = max(math.floor(idle / self.tick + 1e-9), 1)
        self._idle_ticks = 0
        self._last_seen = 0

    def stalled(self, progress: int) -> bool:
        """Record one sample; True when the counter has not moved for a whole idle window."""
        if progress == self._last_seen:
            self._idle_ticks += 1
            return self._idle_ticks >= self.max_idle_ticks
        self._idle_ticks = 0
        self._last_seen = progress
        return False


@dataclass(frozen=True, slots=True)
class RelayResult:
    """How the relay ended; ``error`` names the failure (an exception type and message, never payload)."""

    end: RelayEnd
    error: str | None = None


async def relay(
    client: End,
    app: End,
    *,
    idle: float,
    checks: int,
    on_bytes: Callable[[Direction, int], None],
) -> RelayResult:
    """Move bytes both ways until both directions end, one fails, or the connection idles out."""
    progress = 0

    async def pump(source: End, sink: End, direction: Direction) -> None:
        nonlocal progress
        while data := await source.read():
            progress += 1
            await sink.write(data)
            progress += 1
            on_bytes(direction, len(data))
        await sink.close_write()

    async def watch() -> None:
        watchdog = IdleWatch(idle, checks)
        while True:
            await asyncio.sleep(watchdog.tick)
            if watchdog.stalled(progress):
                return

    pumps = {
        asyncio.create_task(pump(client, app, "to_app")),
        asyncio.create_task(pump(app, client, "to_client")),
    }
    watchdog = asyncio.create_task(watch())
    try:
        while pumps:
            done, _ = await asyncio.wait({*pumps, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if watchdog in done:
                return RelayResult("idle")
            for task in done:
                pumps.discard(task)
                error = task.exception()
                if error is not None:
                    return RelayResult("error", f"{type(error).__name__}: {error}"[:200])
        return RelayResult("eof")
    finally:
        # Every task, finished ones included: a direction that failed in the same round as the one reported
        # must have its exception retrieved too, or asyncio logs it as never retrieved.
        remaining = [*pumps, watchdog]
        for task in remaining:
            task.cancel()
        await asyncio.gather(*remaining, return_exceptions=True)
