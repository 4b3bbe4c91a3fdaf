"""The indexer's newHeads subscription against a real anvil (WebSocket on its HTTP port), and its fallback.

A long poll interval makes the subscription visible by counts: with a notice the follower indexes a new
block long before the poll would; with the subscription unavailable (a node that is not there, or one that
refuses ``eth_subscribe``, served by a real aiohttp application) it keeps polling and keeps retrying.
Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiohttp import WSMsgType, web

from indexer.heads import HeadWatcher
from tests.component.toolkit import DEADLINE, Chain, Factory, Serve

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]


async def until(check: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_new_block_is_indexed_on_its_notice_not_at_the_next_poll(
    make_indexer: Factory, chain: Chain
) -> None:
    service = await make_indexer(POLL_INTERVAL="600")  # the poll alone would not scan again in this test
    heads = service.heads
    assert heads is not None
    await until(lambda: service.follower.ready and heads.subscribed, "caught up and subscribed")

    def sample(name: str) -> float:
        value = service.metrics.registry.get_sample_value(name)
        assert value is not None
        return value

    scanned = sample("attestmesh_indexer_ranges_scanned_total")
    for _ in range(3):
        through = service.index.through
        await chain.mine(1)
        await until(lambda t=through: service.index.through > t, "the mined block indexed")
    assert heads.notices >= 3
    assert sample("attestmesh_indexer_ranges_scanned_total") >= scanned + 3
    assert sample("attestmesh_indexer_heads_subscribed") == 1


async def test_without_a_subscription_the_follower_polls(make_indexer: Factory, chain: Chain) -> None:
    service = await make_indexer(POLL_INTERVAL="0.1", WS_URL="ws://127.0.0.1:9/")  # nothing listens there
    await until(lambda: service.follower.ready, "caught up")
    through = service.index.through
    await chain.mine(2)
    await until(lambda: service.index.through >= through + 2, "blocks indexed by polling")
    assert service.heads is not None and not service.heads.subscribed and service.heads.notices == 0


async def test_a_refused_or_lost_subscription_is_retried(serve: Serve) -> None:
    """A node that refuses, then one that subscribes and drops the socket after one notice: the watcher
    subscribes again each time, and every notice it gets is passed on."""
    attempts: list[str] = []

    async def node(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        frame = await ws.receive()
        assert frame.type == WSMsgType.TEXT and "newHeads" in frame.data
        attempts.append(frame.data)
        if len(attempts) == 1:
            await ws.send_str('{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}')
        else:
            await ws.send_str('{"jsonrpc":"2.0","id":1,"result":"0x1"}')
            await ws.send_str("not json")  # ignored
            await ws.send_str(
                '{"method":"eth_subscription","params":{"result":{"number":"0xzz"}}}'
            )  # ignored
            number = hex(len(attempts))
            await ws.send_str(
                '{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0x1",'
                f'"result":{{"number":"{number}"}}}}}}'
            )
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/", node)
    runner = await serve(app)
    seen: list[int] = []
    watcher = HeadWatcher(f"ws://127.0.0.1:{runner.port}/", seen.append, backoff_min=0.05, backoff_max=0.1)
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: len(seen) >= 3, "notices after resubscribing")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen[:3] == [2, 3, 4]  # one notice per subscription; the refusal and the junk gave none
    assert len(attempts) >= 4
