"""The push subscription: the registered indexer's signed event stream, verified, as a wake-up accelerator.

Owns ``PushSubscriber``: read ``IndexerRegistry.current()`` (no record → push not available), open a WebSocket
to its endpoint (aiohttp), send a hello signed with the member's identity key carrying the SHARED cursor and a
fresh nonce, check the welcome (signed by the registry key over that nonce: nothing from the stream is trusted
before it verifies) and every event and checkpoint with ``PushVerifier`` against the registry key and our
cluster, optionally cross-check a pushed log against ``eth_getLogs`` (rate ``crosscheck``), and for each
accepted message: under the shared cursor's lock, handle the log if it lies after the cursor (wake the control
loop with a reason string — nothing else), persist the cursor, then ack. Any rejection tears the stream down,
is counted by reason and logged (rate-limited); every new attempt re-reads the registry, and the registry is
also re-read every ``registry_refresh`` seconds while subscribed, so a rotated key or a moved endpoint is
picked up without a restart. Reconnects use the shared ``Backoff`` (capped, jittered); the outage is logged
once when it starts and once when it recovers.

Must not: implement any of the wire format (``sidecar.core.indexerwire`` is the one implementation), let
pushed data reach membership (the control loop only ever gets ``wake(reason)`` and re-reads the chain), move
the shared cursor backwards, ack before the cursor is persisted, or log key material.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import aiohttp
import structlog

from sidecar.chain.contracts import IndexerRegistryClient
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.core.backoff import Backoff
from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, MemberId, SecretBytes
from sidecar.core.indexerwire import (
    MAX_FRAME_BYTES,
    NONCE_BYTES,
    Checkpoint,
    Close,
    Event,
    Message,
    PushVerifier,
    Rejection,
    Verified,
    Welcome,
    WireError,
    decode,
    encode,
    sign_hello,
)
from sidecar.core.model import ChainLog, IndexerRecord
from sidecar.core.readpin import PushedPositions
from sidecar.drivers.events import SharedCursor
from sidecar.metricvocab import PushRejection
from sidecar.observability import Metrics

log = structlog.get_logger("sidecar.push")

HANDSHAKE_TIMEOUT: Final = 10.0
WS_HEARTBEAT: Final = 20.0
WATCH_TICK: Final = 1.0
REJECTION_LOG_INTERVAL: Final = 60.0
#: Closes that mean "come back soon" (the stream was fine): reconnect at the minimum backoff.
BENIGN_CLOSES: Final = frozenset({"overflow", "shutdown"})

EndKind = Literal["not_ready", "unregistered", "unavailable", "closed", "rejected", "refresh"]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who subscribes: the member id and its Ed25519 identity seed (never shown)."""

    member_id: MemberId
    identity_key: SecretBytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """Why an attempt or a session ended; ``detail`` is short public text."""

    kind: EndKind
    reason: str
    welcomed: bool = False


class PushSubscriber:
    """Subscribes to the registered indexer forever; see the module docstring."""

    def __init__(
        self,
        *,
        connection: Callable[[], ChainConnection | None],
        registry: Address,
        cluster: Address,
        credentials: Callable[[], Credentials | None],
        cursor: SharedCursor,
        wake: Callable[[str], None],
        metrics: Metrics,
        registry_refresh: float,
        backoff_min: float,
        backoff_max: float,
        crosscheck: float = 0.0,
        ready_interval: float = 2.0,
        rng: random.Random | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] = lambda: None,
        nonce: Callable[[], bytes] = lambda: os.urandom(NONCE_BYTES),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.connection = connection
        #: How a ``wss://`` endpoint is verified (None: the system roots).
        self.tls = tls
        self.registry = registry
        self.cluster = cluster
        self.credentials = credentials
        self.shared = cursor
        self.wake = wake
        self.metrics = metrics
        self.registry_refresh = registry_refresh
        self.crosscheck = crosscheck
        self.ready_interval = ready_interval
        self.rng = rng or random.Random()  # noqa: S311 -- jitter and sampling, not cryptography
        self.retry = Backoff(backoff_min, backoff_max, random=self.rng.random)
        self.now_ms = now_ms
        self.nonce = nonce
        self.monotonic = monotonic
        #: Called whenever ``connected`` flips (the router re-evaluates its mode).
        self.on_change = on_change
        self.connected = False
        self.head: int | None = None
        #: The verified stream's newest block and hash (where push mode's passes read, ``core.readpin``).
        self.positions = PushedPositions()
        self.record: IndexerRecord | None = None
        self.rejected: dict[str, int] = {}
        self.sessions = 0
        self._outage: str | None = None
        self._outage_since = 0.0
        self._rejection_logged: dict[str, float] = {}

    # --- what the router reads -----------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """A verified session is open (its welcome passed, nothing rejected since)."""
        return self.connected

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    # --- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=HANDSHAKE_TIMEOUT, sock_connect=HANDSHAKE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    end = await self.attempt(http)
                except Exception:  # the one broad catch of this loop: polling must not stop because of us
                    log.exception("events.push_failed")
                    end = SessionEnd("unavailable", "internal error")
                self._set_connected(False)
                if end.kind == "not_ready":
                    await asyncio.sleep(self.ready_interval)
                    continue
                if end.kind == "refresh":
                    self.retry.reset()
                    continue
                self._outage_started(end)
                if end.kind == "unregistered":
                    self.retry.reset()
                    await asyncio.sleep(self.registry_refresh)
                    continue
                if end.kind == "closed" and end.welcomed:
                    self.retry.reset()
                await asyncio.sleep(self.retry.next())

    def backoff(self, failures: int) -> float:
        """The reconnect delay after ``failures`` consecutive failures (the shared ``Backoff`` policy)."""
        return self.retry.delay(failures)

    async def attempt(self, http: aiohttp.ClientSession) -> SessionEnd:
        """One subscription: registry, connect, hello, welcome, then the stream until it ends."""
        conn, creds, cursor = self.connection(), self.credentials(), self.shared.value
        if conn is None or creds is None or cursor is None:
            return SessionEnd("not_ready", "node not registered or chain not connected yet")
        try:
            record = await IndexerRegistryClient(conn, self.registry).current()
        except ChainError as exc:
            return SessionEnd("unavailable", f"registry unreadable: {type(exc).__name__}")
        self.record = record
        if not record.registered:
            return SessionEnd("unregistered", "no indexer registered")
        try:
            async with http.ws_connect(
                record.endpoint,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                max_msg_size=4 * MAX_FRAME_BYTES,
                heartbeat=WS_HEARTBEAT,
                autoping=True,
                ssl=self.tls if self.tls is not None else True,
            ) as ws:
                return await self._session(ws, conn, creds, record, cursor)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            return SessionEnd("unavailable", f"cannot connect: {type(exc).__name__}")

    async def _session(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        conn: ChainConnection,
        creds: Credentials,
        record: IndexerRecord,
        cursor: Cursor,
    ) -> SessionEnd:
        nonce = self.nonce()  # fresh per hello: the welcome must be signed over it
        hello = sign_hello(
            cluster=self.cluster,
            member_id=creds.member_id,
            indexer=record.pub_key,
            cursor=cursor,
            timestamp_ms=self.now_ms(),
            nonce=nonce,
            identity_key=creds.identity_key,
        )
        await ws.send_str(encode(hello))
        try:
            first = await self._receive(ws, HANDSHAKE_TIMEOUT)
        except TimeoutError:
            return SessionEnd("unavailable", "no welcome")
        if isinstance(first, SessionEnd):
            return first
        if isinstance(first, Close):
            return self._closed(first, welcomed=False)
        verifier = PushVerifier(self.cluster, record.pub_key, cursor, nonce)
        refused = verifier.welcome(first)
        if refused is not None:
            return self._rejected(refused.reason)
        if isinstance(first, Welcome):  # always, once the verifier took it
            self.head = first.head
        self.sessions += 1
        self.positions.clear()  # a new session: its depth is measured afresh
        self._set_connected(True)
        rewinds = self.shared.rewinds
        pump = asyncio.create_task(self._pump(ws, conn, verifier, rewinds), name="push-pump")
        watch = asyncio.create_task(self._watch(record, rewinds), name="push-watch")
        try:
            done, _ = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
            return done.pop().result()
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)

    async def _receive(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        timeout: float | None,  # noqa: ASYNC109
    ) -> Message | SessionEnd:
        msg = await ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                return decode(msg.data)
            except WireError:
                return self._rejected("malformed")
        if msg.type == aiohttp.WSMsgType.BINARY:
            return self._rejected("malformed")
        if msg.type == aiohttp.WSMsgType.ERROR and isinstance(ws.exception(), aiohttp.WebSocketError):
            return self._rejected("malformed")  # for example a frame over the size limit
        return SessionEnd("closed", "connection lost")

    async def _pump(
        self, ws: aiohttp.ClientWebSocketResponse, conn: ChainConnection, verifier: PushVerifier, rewinds: int
    ) -> SessionEnd:
        while True:
            msg = await self._receive(ws, None)
            if isinstance(msg, SessionEnd):
                return dataclasses.replace(msg, welcomed=True)
            if isinstance(msg, Close):
                return self._closed(msg, welcomed=True)
            checked = verifier.check(msg)
            if isinstance(checked, Rejection):
                return self._rejected(checked.reason)
            pushed = checked.message
            if (
                isinstance(pushed, Event)
                and self.crosscheck > 0
                and self.rng.random() < self.crosscheck
                and not await self._matches_chain(conn, pushed.log)
            ):
                return self._rejected("crosscheck")
            if self.shared.rewinds != rewinds:
                return SessionEnd("refresh", "cursor rewound by a reorg")
            await self._handle(checked)
            verifier.accept(checked)
            self.positions.note(checked.cursor.block, checked.cursor.block_hash)
            ack = verifier.ack()
            if ack is not None:
                await ws.send_str(encode(ack))

    async def _handle(self, checked: Verified) -> None:
        """Handle an accepted message: wake on a new log, persist the shared cursor (before the ack)."""
        pushed = checked.message
        new = False
        async with self.shared.lock:
            if isinstance(pushed, Event):
                entry = pushed.log
                new = self.shared.note(entry.block_number, entry.log_index, entry.block_hash, "push")
                self.shared.save()
            else:
                self.shared.advance(checked.cursor)
        if isinstance(pushed, Checkpoint):
            self.head = max(self.head or 0, pushed.block)
        elif new:
            self.metrics.logs_pushed()
            self.wake("pushed event")

    async def _matches_chain(self, conn: ChainConnection, pushed: ChainLog) -> bool:
        """Check a pushed log against ``eth_getLogs`` at its block (an unreadable chain gives no verdict)."""
        try:
            if pushed.block_number > await conn.block_number():
                return False  # a block the chain does not have yet
            logs = await conn.get_logs([self.cluster], pushed.block_number, pushed.block_number)
        except ChainError as exc:
            log.debug("events.crosscheck_skipped", error=str(exc)[:200])
            return True
        return any(entry == pushed for entry in logs)

    async def _watch(self, record: IndexerRecord, rewinds: int) -> SessionEnd:
        """End the session when the registry names another key or endpoint, or the cursor was rewound."""
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.registry_refresh
        while True:
            await asyncio.sleep(max(0.0, min(WATCH_TICK, next_refresh - loop.time())))
            if self.shared.rewinds != rewinds:
                return SessionEnd("refresh", "cursor rewound by a reorg")
            if loop.time() < next_refresh:
                continue
            next_refresh = loop.time() + self.registry_refresh
            conn = self.connection()
            if conn is None:
                continue
            try:
                current = await IndexerRegistryClient(conn, self.registry).current()
            except ChainError as exc:
                log.debug("events.registry_refresh_failed", error=str(exc)[:200])
                continue
            if current.endpoint != record.endpoint or current.pub_key != record.pub_key:
                log.info(
                    "events.indexer_changed",
                    endpoint=current.endpoint,
                    public_key=str(current.pub_key),
                    registered=current.registered,
                )
                return SessionEnd("refresh", "indexer registry changed")

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _rejected(self, reason: PushRejection) -> SessionEnd:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.metrics.push_rejection(reason)
        now = self.monotonic()
        last = self._rejection_logged.get(reason)
        if last is None or now - last >= REJECTION_LOG_INTERVAL:
            self._rejection_logged[reason] = now
            log.warning("events.push_rejected", reason=reason, rejected_total=self.rejected[reason])
        return SessionEnd("rejected", f"push rejected: {reason}", welcomed=True)

    def _closed(self, close: Close, *, welcomed: bool) -> SessionEnd:
        log.debug("events.push_closed", reason=close.reason, detail=close.detail[:120])
        kind: EndKind = "closed" if close.reason in BENIGN_CLOSES else "unavailable"
        return SessionEnd(kind, f"indexer closed the stream: {close.reason}", welcomed=welcomed)

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        self.metrics.set_push_connected(connected)
        if connected:
            endpoint = self.record.endpoint if self.record else None
            if self._outage is not None:
                log.info(
                    "events.push_recovered",
                    endpoint=endpoint,
                    down_seconds=round(self.monotonic() - self._outage_since, 1),
                )
                self._outage = None
            elif self.sessions == 1:
                log.info("events.push_subscribed", endpoint=endpoint)
        self.on_change()

    def _outage_started(self, end: SessionEnd) -> None:
        if self._outage is None:
            self._outage = end.reason
            self._outage_since = self.monotonic()
            log.warning("events.push_unavailable", reason=end.reason)
        else:
            log.debug("events.push_retry_failed", reason=end.reason)
