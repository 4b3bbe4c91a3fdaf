"""The indexer's subscriber hub: every open session, the follower's listener, the subscribe endpoint.

Owns ``Hub``: the ``/v1/subscribe`` handler (upgrade to a WebSocket, run one ``indexer.sessions.Session``
on it), the set of open sessions, waking them when the index advances (``advanced``), closing the ones past
a reorg point (``reorged``), closing all on shutdown (``close_all``), the nonces of accepted hellos so a
replayed hello is refused ``unauthorized``/``replayed``, one ``ClusterClient`` per cluster, the shared
``SignedFrames`` of the current key, and when each block's logs became deliverable (``seen_at``, for the
push-delay histogram).

Must not: speak the subscription protocol itself (a session does: ``indexer.sessions``), read the chain
(sessions check hellos through the clients it keeps), or let one session's failure reach another.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from indexer.broadcast import SignedFrames
from indexer.chainindex import ChainIndex
from indexer.frames import MAX_WS_MESSAGE, WS_CLOSE_TIMEOUT, WS_HEARTBEAT
from indexer.metrics import IndexerMetrics
from indexer.sessions import Session
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.indexerwire import CloseReason, HelloNonces

#: How many recent commits ``seen_at`` remembers.
INDEXED_AT_KEPT: Final = 256


class Hub:
    """Every open session; the follower's listener; the subscribe endpoint."""

    def __init__(
        self,
        index: ChainIndex,
        metrics: IndexerMetrics,
        *,
        queue_bound: int,
        ack_timeout: float,
        hello_freshness_ms: int,
        head: Callable[[], int | None],
        now_ms: Callable[[], int] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self.metrics = metrics
        self.queue_bound = queue_bound
        self.ack_timeout = ack_timeout
        self.hello_freshness_ms = hello_freshness_ms
        #: The nonces of accepted hellos within their freshness window: a replayed hello is refused.
        self.nonces = HelloNonces(hello_freshness_ms)
        self.head = head
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.monotonic = monotonic
        self.key: SecretBytes | None = None
        self.public_key: Bytes32 | None = None
        self._frames: SignedFrames | None = None
        self._frames_seed: SecretBytes | None = None
        self.conn: ChainConnection | None = None
        self.sessions: set[Session] = set()
        #: One client per cluster (when a client was a web3 contract object, building one per hello under
        #: a herd of reconnecting subscribers alone grew the heap by tens of MiB; one per cluster suffices).
        self._clients: dict[Address, ClusterClient] = {}
        #: (indexed-through block, monotonic time) of recent commits: when a block's logs became deliverable.
        self.indexed_at: collections.deque[tuple[int, float]] = collections.deque(maxlen=INDEXED_AT_KEPT)
        self.closing = False
        self._drained = asyncio.Event()

    def frames(self) -> SignedFrames | None:
        """The shared signed frames for the current key (None before the key exists)."""
        key = self.key
        if key is None:
            return None
        if self._frames is None or self._frames_seed is not key:
            self._frames, self._frames_seed = SignedFrames(key), key
        return self._frames

    # --- follower listener ------------------------------------------------------------------------------

    def advanced(self) -> None:
        self.indexed_at.append((self.index.through, self.monotonic()))
        for session in self.sessions:
            session.wake()

    def cluster_client(self, conn: ChainConnection, cluster: Address) -> ClusterClient:
        client = self._clients.get(cluster)
        if client is None or client.connection is not conn:
            client = self._clients[cluster] = ClusterClient(conn, cluster)
        return client

    def seen_at(self, block: int) -> float | None:
        """When the commit that made ``block`` deliverable happened (None when no longer remembered).

        Searched from the newest commit back (a live block is covered by the last one or two), since every
        session asks this for every event it sends."""
        found = None
        for through, at in reversed(self.indexed_at):
            if through < block:
                break
            found = at
        return found

    def reorged(self, good_block: int) -> None:
        for session in list(self.sessions):
            if session.position is not None and session.position.block > good_block:
                session.end("reorg", f"blocks above {good_block} were reorganised")
            else:
                session.wake()

    # --- serving -----------------------------------------------------------------------------------------

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/subscribe``: upgrade to a WebSocket and run one session on it."""
        ws = web.WebSocketResponse(
            max_msg_size=MAX_WS_MESSAGE, heartbeat=WS_HEARTBEAT, timeout=WS_CLOSE_TIMEOUT
        )
        await ws.prepare(request)
        session = Session(self, ws)
        self.sessions.add(session)
        self.metrics.subscribers.set(len(self.sessions))
        try:
            if self.closing:
                session.end("shutdown", "the indexer is stopping")
            await session.run()
        finally:
            self.sessions.discard(session)
            self.metrics.subscribers.set(len(self.sessions))
            if not self.sessions:
                self._drained.set()
        return ws

    async def close_all(self, reason: CloseReason, detail: str, timeout: float) -> None:  # noqa: ASYNC109
        """End every session with ``reason``; wait at most ``timeout`` for them to finish."""
        self.closing = True
        for session in list(self.sessions):
            session.end(reason, detail)
        if self.sessions:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._drained.wait()
