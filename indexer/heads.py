"""New-block notices: ``eth_subscribe("newHeads")`` over the RPC's WebSocket, so the follower scans at once.

Owns ``HeadWatcher``: open a WebSocket to the node (anvil serves one on its HTTP port; the URL comes from
``ATTESTMESH_INDEXER_WS_URL`` or is derived from the RPC URL by ``indexer.settings.ws_url_for``),
subscribe to ``newHeads`` and call ``on_head(number)`` for every notice; when the subscription cannot be
made or is lost, log it once, wait with the shared capped, jittered ``Backoff`` and subscribe again. The
follower's poll stays the floor: a notice only cuts its wait short, so a lost subscription costs latency,
never a block.

Must not: read logs or block contents (the follower does, over HTTP), trust a notice for anything but a
wake-up, or put the URL in a log line (it may carry an API key).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Final

import aiohttp
import structlog

from sidecar.core.backoff import Backoff

log = structlog.get_logger("indexer.heads")

SUBSCRIBE_TIMEOUT: Final = 10.0
HEARTBEAT: Final = 20.0
#: A notice is a few hundred bytes; anything much larger is not one.
MAX_NOTICE_BYTES: Final = 1 << 20


class SubscriptionLost(Exception):
    """The node refused the subscription or the socket ended; the text is short and holds no URL."""


def head_number(message: object) -> int | None:
    """The block number of an ``eth_subscription`` newHeads notice (None for anything else)."""
    if not isinstance(message, dict) or message.get("method") != "eth_subscription":
        return None
    params = message.get("params")
    result = params.get("result") if isinstance(params, dict) else None
    number = result.get("number") if isinstance(result, dict) else None
    if not isinstance(number, str) or not number.startswith("0x"):
        return None
    try:
        return int(number, 16)
    except ValueError:
        return None


class HeadWatcher:
    """Subscribes to new heads forever; see the module docstring."""

    def __init__(
        self,
        url: str,
        on_head: Callable[[int], None],
        *,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        on_change: Callable[[bool], None] = lambda _: None,
    ) -> None:
        self.url = url
        self.on_head = on_head
        self.on_change = on_change
        self.retry = Backoff(backoff_min, backoff_max)
        self.subscribed = False
        self.notices = 0
        self._down = False

    def __repr__(self) -> str:
        return f"HeadWatcher(subscribed={self.subscribed}, notices={self.notices})"

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=SUBSCRIBE_TIMEOUT, sock_connect=SUBSCRIBE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    await self._session(http)
                    reason = "closed by the node"
                except SubscriptionLost as exc:
                    reason = str(exc)
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    reason = type(exc).__name__
                self._set(False)
                if not self._down:
                    self._down = True
                    log.warning("heads.subscription_lost", reason=reason[:120], fallback="polling")
                await asyncio.sleep(self.retry.next())

    async def _session(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(self.url, heartbeat=HEARTBEAT, max_msg_size=MAX_NOTICE_BYTES) as ws:
            request = {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
            await ws.send_str(json.dumps(request))
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                answer = await ws.receive()
            if answer.type != aiohttp.WSMsgType.TEXT:
                raise SubscriptionLost("no answer to eth_subscribe")
            reply = _json(answer.data)
            if not isinstance(reply, dict) or not isinstance(reply.get("result"), str):
                raise SubscriptionLost("eth_subscribe refused")
            self._set(True)
            if self._down:
                self._down = False
                log.info("heads.subscription_recovered")
            self.retry.reset()
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                number = head_number(_json(frame.data))
                if number is not None:
                    self.notices += 1
                    self.on_head(number)

    def _set(self, subscribed: bool) -> None:
        if subscribed != self.subscribed:
            self.subscribed = subscribed
            self.on_change(subscribed)


def _json(text: object) -> object:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
