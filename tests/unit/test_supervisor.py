"""The one supervisor on fake time: restart after a crash or a return with exact backoff delays, the reset
after a healthy run, one task per name, a stop bounded by its grace even for a task that resists; and the
one SIGTERM/SIGINT handling."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from structlog.testing import capture_logs

from sidecar.core.backoff import Backoff
from sidecar.drivers.supervisor import StopSignal, Supervisor

DEADLINE = 5.0


class FakeTime:
    """A clock and a sleep: sleeping records the delay and moves the clock, without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def supervisor(fake: FakeTime) -> Supervisor:
    return Supervisor(
        backoff=lambda: Backoff(0.5, 4.0, random=lambda: 0.0), clock=fake.clock, sleep=fake.sleep
    )


def runs(
    behaviours: list[Callable[[], Awaitable[None]]], last: asyncio.Event
) -> Callable[[], Awaitable[None]]:
    """A task factory playing ``behaviours`` in turn; ``last`` is set when the last one starts."""
    calls = iter(behaviours)

    def factory() -> Awaitable[None]:
        behaviour = next(calls)
        if behaviour is behaviours[-1]:
            last.set()
        return behaviour()

    return factory


async def crash() -> None:
    raise RuntimeError("boom")


async def give_up() -> None:
    return


async def forever() -> None:
    await asyncio.Event().wait()


async def wait(event: asyncio.Event) -> None:
    async with asyncio.timeout(DEADLINE):
        await event.wait()


async def test_a_crash_and_a_return_are_logged_and_restarted_with_backoff() -> None:
    fake, done = FakeTime(), asyncio.Event()
    sup = supervisor(fake)
    with capture_logs() as logs:
        sup.start("loop", runs([crash, give_up, crash, crash, crash, crash, forever], done))
        await wait(done)
    assert fake.slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert sup.restarts == {"loop": 6}
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events[:4] == [
        ("task.crashed", "error"),
        ("task.restarted", "info"),
        ("task.returned", "error"),
        ("task.restarted", "info"),
    ]
    assert sum(1 for e in logs if e["event"] == "task.crashed") == 5
    assert all(e["task"] == "loop" for e in logs)
    assert await sup.stop(1.0) == []


async def test_a_healthy_run_resets_the_backoff() -> None:
    fake, done = FakeTime(), asyncio.Event()

    async def healthy_then_crash() -> None:
        fake.now += 4.0  # ran as long as the cap: healthy
        raise RuntimeError("late boom")

    sup = supervisor(fake)
    with capture_logs():
        sup.start("loop", runs([crash, crash, crash, healthy_then_crash, crash, forever], done))
        await wait(done)
    assert fake.slept == [0.5, 1.0, 2.0, 0.5, 1.0]
    await sup.stop(1.0)


async def test_one_task_per_name() -> None:
    fake, started = FakeTime(), []

    async def task() -> None:
        started.append(1)
        await forever()

    sup = supervisor(fake)
    sup.start("once", task)
    sup.start("once", task)
    await asyncio.sleep(0)
    assert len(started) == 1 and list(sup.tasks) == ["once"]
    await sup.stop(1.0)
    assert sup.tasks["once"].cancelled()


async def test_stop_is_bounded_by_its_grace() -> None:
    fake, release, resisting = FakeTime(), asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            resisting.set()
            await release.wait()  # ignores the cancellation until released
            raise

    sup = supervisor(fake)
    sup.start("stubborn", stubborn)
    sup.start("polite", forever)
    await asyncio.sleep(0)
    started = time.monotonic()
    with capture_logs() as logs:
        stuck = await sup.stop(0.05)
    assert time.monotonic() - started < 1.0
    assert stuck == ["stubborn"]
    assert resisting.is_set() and sup.tasks["polite"].cancelled()
    assert [e["event"] for e in logs] == ["task.stop_timed_out"]
    release.set()
    await wait_done(sup.tasks["stubborn"])
    assert sup.tasks["stubborn"].cancelled()


async def wait_done(task: asyncio.Task[None]) -> None:
    await asyncio.wait({task}, timeout=DEADLINE)


async def test_a_first_signal_asks_for_a_shutdown() -> None:
    """SIGTERM once: ``wait`` returns and ``<service>.stopping`` is logged (nothing exits)."""
    stop = StopSignal("svc")
    with capture_logs() as logs:
        stop.install()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            async with asyncio.timeout(DEADLINE):
                await stop.wait()
        finally:
            loop = asyncio.get_running_loop()
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)
    assert [e["event"] for e in logs] == ["svc.stopping"]


def test_a_second_signal_exits_at_once() -> None:
    """The second signal's path (``os._exit(1)``) runs in a child process: it exits 1 while it would
    otherwise sleep for 30 s, and says why."""
    child = (
        "import asyncio, os, signal\n"
        "from sidecar.drivers.supervisor import StopSignal\n"
        "async def main():\n"
        "    stop = StopSignal('svc'); stop.install()\n"
        "    os.kill(os.getpid(), signal.SIGTERM); await stop.wait()\n"
        "    os.kill(os.getpid(), signal.SIGINT); await asyncio.sleep(30)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, timeout=DEADLINE * 4, check=False
    )
    assert done.returncode == 1
    assert b"svc.forced_exit" in done.stdout + done.stderr
