"""The event source of a node: push from the registered indexer as the accelerator, polling as the floor.

Owns ``EventRouter``: it runs the push subscriber (``sidecar.drivers.push``) and the chain-log poller
(``sidecar.drivers.events``) over the shared cursor (the poller scans from its own, chain-verified one),
polls at the fast interval while push is down or untrusted and at the slow safety interval while push is
healthy, reports the mode (``/healthz`` ``events``) and, after each poll, how deep the push stream's newest
position lay below the head the poll read (``sidecar.core.readpin``: push mode's reads pin to it); and
``PushSource``, what it needs of the subscriber. Events are wake-ups only (see ``sidecar.drivers.events``).
Must not: change membership or the device, or read a pushed log's data.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

import structlog

from sidecar.core.readpin import PushedPositions
from sidecar.drivers.events import ChainLogPoller, EventMode, SharedCursor
from sidecar.observability import Metrics
from sidecar.rpctally import rpc_tally

log = structlog.get_logger("sidecar.events")


class PushSource(Protocol):
    """What the router needs of the push subscriber (``sidecar.drivers.push.PushSubscriber``), which calls
    the router's ``push_changed`` (wired at its construction) whenever its health or connection flips."""

    @property
    def healthy(self) -> bool: ...

    @property
    def connected(self) -> bool: ...

    @property
    def head(self) -> int | None: ...

    @property
    def rejected_total(self) -> int: ...

    @property
    def rejected(self) -> dict[str, int]: ...

    @property
    def positions(self) -> PushedPositions: ...

    async def run(self) -> None: ...


class EventRouter:
    """The event source with an indexer: push as the accelerator, polling as the floor, one shared cursor.

    Polls at ``poll_interval`` while push is down or untrusted, at ``safety_interval`` while it is healthy
    (then only through the head the previous poll saw, so that it does not race the stream for fresh
    blocks); a change of push health interrupts the wait, so the switch to fast polling is immediate. Each
    mode change is logged once (``events.mode_changed``) and reported through ``on_change``.
    """

    def __init__(
        self,
        *,
        poller: ChainLogPoller,
        push: PushSource | None,
        poll_interval: float,
        safety_interval: float,
        metrics: Metrics,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.poller = poller
        self.push = push
        self.poll_interval = poll_interval
        self.safety_interval = safety_interval
        self.metrics = metrics
        self.on_change = on_change
        self._mode: EventMode = "poll"
        self._changed = asyncio.Event()

    @property
    def shared(self) -> SharedCursor:
        return self.poller.shared

    @property
    def mode(self) -> EventMode:
        return self._mode

    @property
    def indexer_connected(self) -> bool:
        return self.push is not None and self.push.connected

    @property
    def cursor_block(self) -> int | None:
        return self.shared.block

    @property
    def head_block(self) -> int | None:
        pushed = None if self.push is None else self.push.head
        heads = [h for h in (self.poller.head, pushed) if h is not None]
        return max(heads) if heads else None

    @property
    def rejected_pushes(self) -> int:
        return 0 if self.push is None else self.push.rejected_total

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return {} if self.push is None else dict(self.push.rejected)

    def push_changed(self) -> None:
        """Called by the subscriber when push health or connection flips: re-evaluate the mode now."""
        mode: EventMode = "push" if self.push is not None and self.push.healthy else "poll"
        if mode != self._mode:
            log.info("events.mode_changed", from_mode=self._mode, to_mode=mode)
            self._mode = mode
            self.metrics.set_event_mode(mode)
            self._changed.set()
        self.on_change()

    @property
    def interval(self) -> float:
        return self.safety_interval if self._mode == "push" else self.poll_interval

    async def run(self) -> None:
        self.shared.load()
        self.metrics.set_event_mode(self._mode)
        async with asyncio.TaskGroup() as tasks:
            if self.push is not None:
                tasks.create_task(self._push_forever(self.push), name="push")
            tasks.create_task(self._poll_forever(), name="poll")

    async def _push_forever(self, push: PushSource) -> None:
        with rpc_tally("push"):  # the registry reads and cross-checks count as the subscriber's
            await push.run()

    async def _poll_forever(self) -> None:
        seen: int | None = None  # the head the previous poll saw
        positions = None if self.push is None else self.push.positions
        while True:
            self._changed.clear()
            # While push is healthy, the safety poll scans only the blocks the previous poll already saw:
            # a new log gets a whole safety interval to arrive by push (the poll would otherwise race the
            # stream for fresh blocks), and whatever push missed is still caught within two intervals.
            mark = None if positions is None else positions.mark()
            with rpc_tally("poll"):
                polled = await self.poller.poll_guarded(through=seen if self._mode == "push" else None)
            if polled and positions is not None and mark is not None and self.poller.head is not None:
                positions.observe_head(self.poller.head, mark)  # how deep the pushed positions lie
            seen = self.poller.head
            self.on_change()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races with
            # the event being set, and the task would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._changed.wait()
