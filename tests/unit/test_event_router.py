"""The shared cursor, the router's mode and the daemon's wiring of the event source — no chain, no network.

The end-to-end behaviour (push, fallback, rotation, rogue indexers) is in tests/component/test_push.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest

from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, Bytes32
from sidecar.core.indexerwire import RejectReason
from sidecar.core.readpin import PushedPositions
from sidecar.daemon import Daemon
from sidecar.drivers.events import CURSOR_FILE, ChainLogPoller, HandledLog, SharedCursor
from sidecar.drivers.push import PushSubscriber
from sidecar.drivers.router import EventRouter
from sidecar.drivers.store import StateStore
from sidecar.metricvocab import PUSH_REJECTIONS
from sidecar.observability import Metrics
from sidecar.settings import load_settings

H1, H2 = Bytes32(b"\x01" * 32), Bytes32(b"\x02" * 32)
CLUSTER = Address(b"\xcd" * 20)


def test_the_shared_cursor_dedups_never_moves_back_and_persists(tmp_path: Path) -> None:
    handled: list[HandledLog] = []
    shared = SharedCursor(StateStore(tmp_path), on_handled=handled.append)
    assert shared.load() is None
    assert shared.advance(Cursor.through(10, H1))
    assert not shared.note(10, 3, H1, "push")  # at or before the cursor: never handled again
    assert shared.note(11, 0, H2, "push")
    assert not shared.note(11, 0, H2, "poll")
    assert not shared.advance(Cursor.through(10, H1))  # never backwards
    assert handled == [HandledLog("push", 11, 0)]
    shared.save()
    again = SharedCursor(StateStore(tmp_path))
    assert again.load() == Cursor(11, 0, H2)
    shared.rewind(Cursor.start(5))
    assert shared.rewinds == 1 and SharedCursor(StateStore(tmp_path)).load() == Cursor.start(5)
    assert (tmp_path / CURSOR_FILE).stat().st_mode & 0o777 == 0o600


def test_backoff_is_capped_exponential_with_jitter(tmp_path: Path) -> None:
    sub = PushSubscriber(
        connection=lambda: None,
        registry=CLUSTER,
        cluster=CLUSTER,
        credentials=lambda: None,
        cursor=SharedCursor(StateStore(tmp_path)),
        wake=lambda reason: None,
        metrics=Metrics(),
        registry_refresh=60,
        backoff_min=1.0,
        backoff_max=8.0,
        rng=random.Random(7),
    )
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (500, 8.0)]:
        for _ in range(20):
            assert ceiling / 2 <= sub.backoff(failures) <= ceiling


def test_every_verifier_rejection_has_a_metric_label() -> None:
    assert set(get_args(RejectReason)) | {"crosscheck"} == set(PUSH_REJECTIONS)


class _Push:
    """The subscriber's side of the router: ``on_change`` is wired at construction, as the daemon does."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.healthy = self.connected = False
        self.head: int | None = None
        self.rejected_total = 0
        self.rejected: dict[str, int] = {}
        self.positions = PushedPositions()

    async def run(self) -> None:  # pragma: no cover - not run here
        raise NotImplementedError


def test_the_router_follows_push_health_and_reports_it(tmp_path: Path) -> None:
    metrics = Metrics()
    poller = ChainLogPoller(
        connection=lambda: None,
        cluster=CLUSTER,
        store=StateStore(tmp_path),
        wake=lambda reason: None,
        metrics=metrics,
        interval=2,
        confirmations=0,
        max_range=10,
    )
    push = _Push(on_change=lambda: router.push_changed())  # noqa: PLW0108 - the router is built next
    changes: list[str] = []
    router = EventRouter(
        poller=poller,
        push=push,
        poll_interval=2,
        safety_interval=30,
        metrics=metrics,
        on_change=lambda: changes.append(router.mode),
    )
    assert (router.mode, router.interval, router.indexer_connected) == ("poll", 2, False)
    push.healthy = push.connected = True
    push.head, poller.head = 40, 38
    push.on_change()  # the subscriber reports a flip
    assert (router.mode, router.interval, router.indexer_connected, router.head_block) == (
        "push",
        30,
        True,
        40,
    )
    assert metrics.registry.get_sample_value("attestmesh_event_mode", {"mode": "push"}) == 1
    push.healthy = push.connected = False
    push.rejected_total, push.rejected = 2, {"bad_signature": 2}
    push.on_change()
    assert (router.mode, router.interval, router.rejected_pushes) == ("poll", 2, 2)
    assert router.rejected_by_reason == {"bad_signature": 2}
    assert changes == ["push", "poll"]


@pytest.mark.parametrize("registry", ["", "0x" + "ab" * 20])
def test_the_daemon_runs_the_router_and_subscribes_only_with_a_registry(
    tmp_path: Path, registry: str
) -> None:
    env = {
        "ATTESTMESH_RPC_URL": "http://127.0.0.1:8545",
        "ATTESTMESH_RPC_ALLOW_HTTP": "true",
        "ATTESTMESH_CHAIN_ID": "31337",
        "ATTESTMESH_CLUSTER": "0x" + "cd" * 20,
        "ATTESTMESH_MEMBER_APP_FACTORY": "0x" + "fa" * 20,
        "ATTESTMESH_KMS_ROOTS": "0x" + "12" * 20,
        "ATTESTMESH_ENDPOINT": "10.88.0.2:51820",
        "ATTESTMESH_STATE_DIR": str(tmp_path),
        "ATTESTMESH_INDEXER_REGISTRY": registry,
    }
    daemon = Daemon(load_settings(env), env=env)
    assert daemon.controller.events is daemon.events
    assert (daemon.push is not None) == bool(registry)
    assert daemon.events.push is daemon.push and daemon.events.poller is daemon.poller
    if daemon.push is not None:
        assert daemon.push.shared is daemon.poller.shared  # ONE cursor
    daemon.controller.refresh_events()
    body = daemon.controller.status
    assert (body.events_mode, body.indexer_connected, body.rejected_pushes) == ("poll", False, 0)


class _Poller:
    """Records what the router asks of each poll; flips push health after the first and third poll."""

    def __init__(self, tmp_path: Path, push: _Push) -> None:
        self.shared = SharedCursor(StateStore(tmp_path))
        self.push = push
        self.head: int | None = None
        self.calls: list[int | None] = []

    async def poll_guarded(self, through: int | None = None) -> bool:
        self.calls.append(through)
        self.head = 10 + len(self.calls)  # the chain moves between polls
        if len(self.calls) in (1, 3):
            self.push.healthy = self.push.connected = len(self.calls) == 1
            self.push.on_change()
        if len(self.calls) == 4:
            raise asyncio.CancelledError
        return True


async def test_the_safety_poll_scans_only_what_the_previous_poll_saw(tmp_path: Path) -> None:
    push = _Push(on_change=lambda: router.push_changed())  # noqa: PLW0108 - the router is built next
    poller = _Poller(tmp_path, push)
    router = EventRouter(
        poller=poller,  # type: ignore[arg-type]
        push=push,
        poll_interval=0.01,
        safety_interval=0.01,
        metrics=Metrics(),
    )
    with pytest.raises(asyncio.CancelledError):
        await router._poll_forever()
    # poll mode: the whole chain; push mode: through the previous poll's head; poll mode again: everything
    assert poller.calls == [None, 11, 12, None]


async def test_each_poll_measures_how_deep_the_pushed_position_lay_below_the_head_it_read(
    tmp_path: Path,
) -> None:
    push = _Push(on_change=lambda: router.push_changed())  # noqa: PLW0108 - the router is built next
    push.positions.note(9, Bytes32(b"\x09" * 32))  # pushed before the first poll, which reads head 11
    poller = _Poller(tmp_path, push)
    router = EventRouter(
        poller=poller,  # type: ignore[arg-type]
        push=push,
        poll_interval=0.01,
        safety_interval=0.01,
        metrics=Metrics(),
    )
    with pytest.raises(asyncio.CancelledError):
        await router._poll_forever()
    assert push.positions.depth == 2  # the shallowest seen: 11 - 9 (later polls read higher heads)
