"""The one supervisor of eternal asyncio tasks, used by the sidecar daemon and the indexer.

Owns ``Supervisor``: every long-running task runs under it by name; a task that returns is a bug and is
logged ``task.returned`` (error), one that raises is logged ``task.crashed`` (error, with the traceback);
either way it is restarted (``task.restarted``) after a delay from its own ``Backoff`` (capped exponential
with jitter, reset after a healthy run). ``stop(grace)`` cancels every task and waits at most ``grace``
seconds; what did not stop in time is named in ``task.stop_timed_out`` and returned. Also owns
``StopSignal``, the one SIGTERM/SIGINT handling of both services (a second signal exits at once).

Must not: catch ``CancelledError`` (cancellation is how tasks stop), retry inside a task (the task's own
loop owns its transient failures; the supervisor only catches what a loop let through), or sleep with
anything but the injected ``sleep`` (tests run it on fake time).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from sidecar.core.backoff import Backoff

log = structlog.get_logger("attestmesh.supervisor")

RESTART_MIN: Final = 0.5
RESTART_MAX: Final = 30.0

TaskFactory = Callable[[], Awaitable[None]]


def restart_backoff() -> Backoff:
    """The default restart policy: 0.5 s doubling to 30 s, with jitter, reset after 30 s of healthy run."""
    return Backoff(RESTART_MIN, RESTART_MAX)


class Supervisor:
    """Runs eternal tasks by name; one that ends is logged and restarted with backoff."""

    def __init__(
        self,
        *,
        backoff: Callable[[], Backoff] = restart_backoff,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` as the eternal task ``name`` (nothing happens while one by that name runs)."""
        if name in self.tasks and not self.tasks[name].done():
            return
        self.tasks[name] = asyncio.create_task(self._keep(name, factory), name=name)

    async def _keep(self, name: str, factory: TaskFactory) -> None:
        backoff = self._backoff()
        while True:
            started = self._clock()
            try:
                await factory()
                log.error("task.returned", task=name)  # an eternal task that returns is a bug
            except asyncio.CancelledError:
                raise
            except Exception:  # the one place that catches what a loop let through
                log.exception("task.crashed", task=name)
            backoff.ran(self._clock() - started)
            await self._sleep(backoff.next())
            self.restarts[name] = self.restarts.get(name, 0) + 1
            log.info("task.restarted", task=name, restarts=self.restarts[name])

    async def stop(self, grace: float) -> list[str]:
        """Cancel every task and wait at most ``grace`` seconds; return the names still running."""
        for task in self.tasks.values():
            task.cancel()
        if not self.tasks:
            return []
        await asyncio.wait(self.tasks.values(), timeout=grace)
        stuck = sorted(name for name, task in self.tasks.items() if not task.done())
        if stuck:
            log.warning("task.stop_timed_out", tasks=stuck, grace_s=grace)
        return stuck


class StopSignal:
    """SIGTERM/SIGINT for a service: the first asks for a bounded shutdown, a second exits at once.

    Logs ``<service>.stopping`` on the first signal and ``<service>.forced_exit`` on the second; ``request``
    asks for the same shutdown from code (tests, a fatal start-up condition).
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._stop = asyncio.Event()

    def install(self) -> None:
        """Handle SIGTERM and SIGINT on the running loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled)

    def request(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    def _signalled(self) -> None:
        if self._stop.is_set():
            log.warning(f"{self.service}.forced_exit")
            os._exit(1)
        log.info(f"{self.service}.stopping")
        self._stop.set()
