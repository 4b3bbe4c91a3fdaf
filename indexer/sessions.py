"""Subscriber sessions: one WebSocket per member, authenticated against the chain, fed from the index.

Owns ``Session`` (one subscriber: the hello check, the
welcome signed over the hello's nonce, then a pump that sends every log of the cluster after the session's
position as a signed ``event`` and, once nothing more is indexed, a signed ``checkpoint`` through the
indexed block; a reader that takes ``ack``s). Replay and live delivery are the same pump reading the
shared ``ChainIndex``, so a subscriber costs no copy of the log; the frames come from
``indexer.broadcast.SignedFrames`` (protocol v2 signs per cluster), so a log is signed and encoded once and
every session writes the same string. A session's own state is its position, its count of messages sent
and the last ack. The sessions' ``indexer.hub.Hub`` runs them and wakes them; a session sees it as a
``SessionHost``.

The per-subscriber queue is the window of messages sent but not yet acked, bounded by ``queue_bound``: when
it is full (or the socket does not drain) for ``ack_timeout`` while more is pending, the session is closed
with ``overflow`` — never a silent drop; the subscriber resumes from its persisted cursor.

Frames: at most ``MAX_FRAME_BYTES`` (a larger one up to ``4 * MAX_FRAME_BYTES`` is closed ``malformed`` with a
reason; beyond that aiohttp closes with code 1009 before we see it, as it closes a text frame that is not
UTF-8 with 1007: both are counted ``malformed`` too); binary frames are ``malformed``.

A session whose member is removed is served up to and including the ``MemberRemoved`` event, then closed
``unauthorized``: a hello is checked against the chain once, and an eviction ends what it allowed.

Must not: serve a hello whose member is not a current member of its cluster on chain (``unauthorized``),
send a log of one cluster on another cluster's session, implement any of the wire format (that is
``sidecar.core.indexerwire``: ``decode``/``encode``, ``verify_hello``, ``sign_welcome``; reading a frame
is ``indexer.frames``), or let one bad
subscriber affect another (each session's failures end that session only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Protocol

import structlog
from aiohttp import web

from indexer.broadcast import SignedFrames
from indexer.chainindex import ChainIndex
from indexer.follower import MEMBER_REGISTERED, MEMBER_REMOVED
from indexer.frames import (
    CLOSE_CODES,
    CLOSE_SEND_TIMEOUT,
    HELLO_TIMEOUT,
    WS_CLOSE_TIMEOUT,
    Gone,
    Refused,
    read_frame,
)
from indexer.metrics import IndexerMetrics
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.core.cursor import WHOLE_BLOCK, Cursor, is_after
from sidecar.core.ids import Address, Bytes32
from sidecar.core.indexerwire import (
    MAX_DETAIL_CHARS,
    PROTOCOL_VERSION,
    SESSION_BYTES,
    Ack,
    Close,
    CloseReason,
    Hello,
    HelloNonces,
    Message,
    WireError,
    encode,
    sign_welcome,
    verify_hello,
)
from sidecar.core.model import ChainLog


class SessionHost(Protocol):
    """What a session needs from the hub that runs it (``indexer.hub.Hub``)."""

    index: ChainIndex
    metrics: IndexerMetrics
    conn: ChainConnection | None
    public_key: Bytes32 | None
    nonces: HelloNonces
    queue_bound: int
    ack_timeout: float
    hello_freshness_ms: int
    head: Callable[[], int | None]
    now_ms: Callable[[], int]
    monotonic: Callable[[], float]

    def frames(self) -> SignedFrames | None: ...

    def cluster_client(self, conn: ChainConnection, cluster: Address) -> ClusterClient: ...

    def seen_at(self, block: int) -> float | None: ...


log = structlog.get_logger("indexer.sessions")


class Session:
    """One subscriber (see the module docstring)."""

    def __init__(self, hub: SessionHost, ws: web.WebSocketResponse) -> None:
        self.hub = hub
        self.ws = ws
        self.hello: Hello | None = None
        self.frames: SignedFrames | None = None
        self.position: Cursor | None = None  # where the client stands after everything sent so far
        self.sent = 0  # messages sent (the ack's seq counts the same messages)
        self.acked_seq = 0
        self.acked_cursor: Cursor | None = None
        self.started = hub.monotonic()
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._ended = asyncio.Event()
        self._end: tuple[CloseReason | None, str] = (None, "")

    def wake(self) -> None:
        self._wake.set()

    def end(self, reason: CloseReason | None, detail: str = "") -> None:
        """Ask the session to stop and send ``reason`` (None: the client went away)."""
        if not self._ended.is_set():
            self._end = (reason, detail[:MAX_DETAIL_CHARS])
            self._ended.set()

    async def run(self) -> None:
        try:
            await self._handshake()
        except Refused as refused:
            self.end(refused.reason, refused.detail)
        if not self._ended.is_set():
            tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._read())]
            try:
                await self._ended.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        await self._close()

    # --- handshake ---------------------------------------------------------------------------------------

    async def _handshake(self) -> None:
        hub = self.hub
        receive = asyncio.ensure_future(self.ws.receive())
        ended = asyncio.ensure_future(self._ended.wait())
        done, _ = await asyncio.wait(
            {receive, ended}, timeout=HELLO_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        ended.cancel()
        if receive not in done:
            receive.cancel()
            if self._ended.is_set():
                return
            raise Refused("protocol", "no hello within the time limit")
        hello = self._decode(receive.result())
        if hello is None:
            return
        if not isinstance(hello, Hello):
            raise Refused("protocol", "the first frame must be a hello")
        self.hello = hello
        conn, public, frames = hub.conn, hub.public_key, hub.frames()
        if conn is None or public is None or frames is None:
            hub.metrics.hello("unavailable")
            raise Refused("unavailable", "the indexer is starting")
        if not hub.index.follows(hello.cluster):
            hub.metrics.hello("not_followed")
            raise Refused("unavailable", "cluster not followed")
        try:
            record = await hub.cluster_client(conn, hello.cluster).member_by_id(hello.member_id)
        except ChainError:
            hub.metrics.hello("unavailable")
            raise Refused("unavailable", "chain read failed") from None
        if record is None:
            hub.metrics.hello("not_member")
            raise Refused("unauthorized", "not a member of the cluster")
        refusal = verify_hello(
            hello, record.identity_pub, hub.now_ms(), hub.hello_freshness_ms, indexer_pub=public
        )
        if refusal is not None:
            hub.metrics.hello(refusal)
            raise Refused("unauthorized", refusal)
        self._admit(hello)
        start = await self._start(conn, hello)
        if not hub.index.servable(hello.cluster, start):
            hub.metrics.hello("unavailable")
            raise Refused("unavailable", "the cursor lies before what this indexer retains")
        session_id = os.urandom(SESSION_BYTES)
        self.frames, self.position = frames, start
        hub.metrics.hello("accepted")
        welcome = sign_welcome(
            nonce=hello.nonce,
            session=session_id,
            indexer=public,
            head=hub.head() or 0,
            protocol=PROTOCOL_VERSION,
            start=start,
            indexer_key=frames.key,
        )
        await self.ws.send_str(encode(welcome))
        log.info(
            "session.opened",
            cluster=str(hello.cluster),
            member_id=str(hello.member_id),
            start_block=start.block,
            replay=hello.cursor is None,
        )

    def _admit(self, hello: Hello) -> None:
        """Refuse a verified hello whose nonce was already accepted within its freshness window."""
        hub = self.hub
        admitted = hub.nonces.admit(hello, hub.now_ms())
        if admitted == "replayed":
            hub.metrics.hello("replayed")
            log.warning("session.hello_replayed", cluster=str(hello.cluster), member_id=str(hello.member_id))
            raise Refused("unauthorized", "replayed")
        if admitted == "busy":
            hub.metrics.hello("unavailable")
            raise Refused("unavailable", "too many hellos within the freshness window")

    async def _start(self, conn: ChainConnection, hello: Hello) -> Cursor:
        index = self.hub.index
        if hello.cursor is None:
            block = index.registration_block(hello.cluster, hello.member_id, MEMBER_REGISTERED)
            if block is None:
                self.hub.metrics.hello("unavailable")
                raise Refused("unavailable", "the member's registration is not indexed yet")
            return Cursor.start(block)
        cursor = hello.cursor
        if cursor.block_hash.is_zero:
            return cursor
        canonical = index.hash_at(cursor.block)
        if canonical is None:
            head = self.hub.head()
            if head is not None and cursor.block > head:  # newer than what we have seen, or forged
                self.hub.metrics.hello("unavailable")
                raise Refused("unavailable", "the cursor lies beyond this indexer's head")
            try:
                canonical = (await conn.block_header(cursor.block)).hash
            except ChainError:
                self.hub.metrics.hello("unavailable")
                raise Refused("unavailable", "chain read failed") from None
        if canonical != cursor.block_hash:
            raise Refused("reorg", "the cursor's block hash is not on the canonical chain")
        return cursor

    def _decode(self, msg: object) -> Message | None:
        """Decode a text frame; end the session (and return None) when the peer is gone."""
        frame = read_frame(msg)
        if isinstance(frame, Gone):
            self.end(None, frame.detail)
            return None
        return frame

    # --- after the welcome -------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                message = self._decode(await self.ws.receive())
                if message is None:
                    return
                if not isinstance(message, Ack):
                    raise Refused("protocol", "only acks may follow the hello")
                if message.seq > self.sent:
                    raise Refused("protocol", "ack ahead of what was sent")
                if message.seq > self.acked_seq:
                    self.acked_seq, self.acked_cursor = message.seq, message.cursor
                    self._acked.set()
        except Refused as refused:
            self.end(refused.reason, refused.detail)

    def _next(self) -> tuple[str, Cursor, ChainLog | None] | None:
        """The next frame for this session, the position after it and its log (None for a checkpoint);
        None when nothing more is indexed."""
        position, frames, hello, index = self.position, self.frames, self.hello, self.hub.index
        assert position is not None and frames is not None and hello is not None
        cluster = hello.cluster
        found = index.next_with_prev(cluster, position)
        if found is not None:
            entry, prev = found
            text = frames.event(cluster, prev, entry)
            return text, Cursor(entry.block_number, entry.log_index, entry.block_hash), entry
        through, through_hash = index.through, index.through_hash
        if (
            through_hash is None
            or through < index.start_block
            or not is_after(through, WHOLE_BLOCK, position)
        ):
            return None  # nothing indexed, or a checkpoint would not advance the position
        last = index.last_through(cluster, through)
        if last is None:
            return None
        return (
            frames.checkpoint(cluster, last, through, through_hash),
            Cursor.through(through, through_hash),
            None,
        )

    async def _pump(self) -> None:
        bound, timeout = self.hub.queue_bound, self.hub.ack_timeout
        metrics = self.hub.metrics
        try:
            while True:
                if self.sent - self.acked_seq >= bound:
                    self._acked.clear()
                    async with asyncio.timeout(timeout):
                        await self._acked.wait()
                    continue
                self._wake.clear()
                try:
                    found = self._next()
                except WireError:
                    self.end("unavailable", "a log is too large to push; poll past it")
                    return
                if found is None:
                    await self._wake.wait()
                    continue
                text, after, entry = found
                # counted before the write: the client's ack may be read while the write drains
                self.sent, self.position = self.sent + 1, after
                async with asyncio.timeout(timeout):
                    await self.ws.send_str(text)
                if entry is not None:
                    if self._removes_subscriber(entry):
                        # Served up to and including its own removal, then no more: only members are served.
                        self.end("unauthorized", "removed from the cluster")
                        return
                    metrics.events_sent.inc()
                    seen = self.hub.seen_at(entry.block_number)
                    if seen is not None and seen >= self.started:  # live delivery, not a replay
                        metrics.push_delay.observe(self.hub.monotonic() - seen)
                else:
                    metrics.checkpoints_sent.inc()
        except TimeoutError:
            self.end("overflow", f"more than {bound} messages unacknowledged for {timeout:g} s")
        except (ConnectionError, RuntimeError):
            self.end(None, "socket error")

    def _removes_subscriber(self, entry: ChainLog) -> bool:
        """Whether ``entry`` removes this subscriber's member (and no later registration brought it back:
        member ids derive from app ids, so a re-approved app re-registers under the same id)."""
        topics, hello = entry.topics, self.hello
        if hello is None or len(topics) < 2 or topics[0] != MEMBER_REMOVED:
            return False
        if topics[1].raw != hello.member_id.raw:
            return False
        again = self.hub.index.registration_block(hello.cluster, hello.member_id, MEMBER_REGISTERED)
        return again is None or again <= entry.block_number

    async def _close(self) -> None:
        reason, detail = self._end
        self.hub.metrics.session_closed(reason or "client_gone")
        if reason is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_SEND_TIMEOUT):
                    await self.ws.send_str(encode(Close(reason, detail)))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(WS_CLOSE_TIMEOUT + 1.0):
                await self.ws.close(code=CLOSE_CODES.get(reason or "", 1000), message=(reason or "").encode())
        hello = self.hello
        log.info(
            "session.closed",
            reason=reason or "client_gone",
            detail=detail,
            cluster=None if hello is None else str(hello.cluster),
            member_id=None if hello is None else str(hello.member_id),
            seq=self.sent,
            acked_seq=self.acked_seq,
        )
