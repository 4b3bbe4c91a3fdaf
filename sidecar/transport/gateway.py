"""The gateway transport: WireGuard datagrams over one TLS stream per member pair, through the dstack gateway.

Owns ``GatewayCarrier``: the TLS listener on the gateway port (the peer's passthrough route ends here),
one ``PeerLink`` per gateway peer (``sidecar.transport.link``: its bridge, stream, counts) and the rules of
DESIGN §4 "Transport":
- per pair ONE stream, dialled by the member with the lower member id to the peer's SNI name; it carries
  both directions;
- the dialer's first frame is its signed hello; the acceptor reads it within ``hello_timeout`` (TLS
  handshake included) and binds the stream to that peer only if ``HelloGate`` admits it — anything else
  (no hello, garbage, an oversized frame, a non-member, a replay, another cluster) is closed and counted
  under its reason, and never reaches a bridge or the device; at most ``max_pending`` connections may be
  waiting for their hello at once;
- reconnect at once after an established stream ends, then jittered capped backoff while dials fail (the
  gateway closes every connection at its lifetime cap and refuses dials while a booting CVM's port
  policy is unknown: reconnecting fast and quietly is the normal path); for ``redial_window`` seconds
  after a link is made or its working stream ends the delays stay under ``redial_quick_max`` (the peer is
  expected back: a restarted sidecar listens again about a second later), then the normal cap;
- a stream that reconnects never changes the device: the bridge's port is the peer's endpoint for as long
  as the peer is a member.

Must not: read the chain (``update`` is given the peers and their identity keys), touch the device, trust
the TLS certificate for anything (see ``sidecar.transport.tlsconf``) or log key material or payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Final

import structlog

from sidecar.core.backoff import Redial
from sidecar.core.endpoint import GatewayEndpoint
from sidecar.core.ids import MemberId
from sidecar.core.streamwire import (
    FRAME_HEADER_BYTES,
    NONCE_BYTES,
    FrameError,
    FrameReader,
    Hello,
    HelloGate,
    close_frame,
    decode_hello,
    encode_hello,
)
from sidecar.observability import Metrics
from sidecar.transport.link import (
    GatewayOptions,
    GatewayPeer,
    LocalMember,
    PeerLink,
    PeerTransport,
    Role,
)
from sidecar.transport.tlsconf import client_context, server_context
from sidecar.transportmetrics import StreamRefusal

log = structlog.get_logger("sidecar.transport")

#: A confirmed stream that lived at least this long earns an immediate reconnect (shorter ones back off).
HEALTHY_STREAM_SECONDS: Final = 1.0
_LISTEN_HOST: Final = "0.0.0.0"  # noqa: S104 - the gateway reaches the CVM's published port on any address


class GatewayCarrier:
    """The gateway transport of one node: the listener, and one link per gateway peer."""

    def __init__(
        self,
        options: GatewayOptions,
        metrics: Metrics,
        *,
        wall_ms: Callable[[], int],
        monotonic: Callable[[], float],
        dial_target: Callable[[GatewayEndpoint], tuple[str, int]] | None = None,
        on_change: Callable[[], None] = lambda: None,
        on_stream_opened: Callable[[MemberId], None] = lambda member: None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.options, self.metrics = options, metrics
        self.wall_ms, self.monotonic = wall_ms, monotonic
        self.dial_target = dial_target or (lambda endpoint: (endpoint.host, endpoint.port))
        self.on_change = on_change
        self.on_stream_opened = on_stream_opened  # a peer's stream became current (it can carry now)
        self.random = random
        self.me: LocalMember | None = None
        self.links: dict[MemberId, PeerLink] = {}
        self.gate = HelloGate()
        self._server: asyncio.Server | None = None
        self._server_tls: ssl.SSLContext | None = None
        self._client_tls = client_context()
        self._pending: set[asyncio.Task[None]] = set()
        metrics.transport_traffic.add_source(lambda: [link.tally.traffic() for link in self.links.values()])

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the gateway port (idempotent); the certificate is made here, in memory."""
        if self._server is not None:
            return
        self._server_tls = server_context("attestmesh-transport")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Arrival(self._arrived), _LISTEN_HOST, self.options.port
        )
        log.info("transport.listening", port=self.options.port)

    @property
    def listening_port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self.links.values():
            if link.stream is not None:
                link.stream.close("shutdown")
            link.close()
        tasks = [t for t in (*self._pending, *(link.task for link in self.links.values())) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.links.clear()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # --- desired peers ---------------------------------------------------------------------------------

    async def update(self, me: LocalMember, peers: Mapping[MemberId, GatewayPeer]) -> dict[MemberId, str]:
        """Make the links match ``peers``; return each peer's WireGuard endpoint (its bridge)."""
        await self.start()
        self.me = me
        for member in [m for m in self.links if m not in peers or self._moved(self.links[m], peers[m])]:
            link = self.links.pop(member)
            link.close()
            self.metrics.transport_peer_removed(link.peer.label)
            log.info("transport.peer_removed", peer=link.peer.label)
        for member, peer in peers.items():
            if member not in self.links:
                await self._add(me, peer)
        self.changed(None)
        return {member: link.bridge.endpoint for member, link in self.links.items()}

    @staticmethod
    def _moved(link: PeerLink, peer: GatewayPeer) -> bool:
        return link.peer.endpoint != peer.endpoint or link.peer.identity_pub != peer.identity_pub

    async def _add(self, me: LocalMember, peer: GatewayPeer) -> None:
        role: Role = "dialer" if me.member_id.raw < peer.member_id.raw else "acceptor"
        link = PeerLink(self, peer, role)
        await link.bridge.open()
        self.links[peer.member_id] = link
        self.metrics.transport_peer_added(peer.label)
        if role == "dialer":
            link.task = asyncio.create_task(self._dial_forever(link), name=f"transport-dial-{peer.label}")
        log.info("transport.peer_added", peer=peer.label, role=role, endpoint=str(peer.endpoint))

    def changed(self, _link: PeerLink | None) -> None:
        for transport, up, count in self._counts():
            self.metrics.transport_peers.labels(transport=transport, state=up).set(count)
        for link in self.links.values():
            self.metrics.transport_up.labels(peer=link.peer.label).set(1 if link.up else 0)
        self.on_change()

    def _counts(self) -> list[tuple[str, str, int]]:
        up = sum(1 for link in self.links.values() if link.up)
        return [("gateway", "up", up), ("gateway", "down", len(self.links) - up)]

    def views(self) -> dict[MemberId, PeerTransport]:
        for link in self.links.values():
            stream = link.stream
            age = stream.age if stream is not None and stream.open else 0.0
            self.metrics.transport_stream_age.labels(peer=link.peer.label).set(age)
        return {member: link.view() for member, link in self.links.items()}

    # --- dialling --------------------------------------------------------------------------------------

    async def _dial_forever(self, link: PeerLink) -> None:
        options = self.options
        backoff = Redial(
            options.backoff_min,
            options.backoff_max,
            quick_max=options.redial_quick_max,
            window=options.redial_window,
            clock=asyncio.get_running_loop().time,
        )
        while True:
            try:
                reader, writer = await self._dial(link)
            except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as exc:
                self.metrics.transport_dial_failed.inc()
                delay = backoff.next()
                log.debug("transport.dial_failed", peer=link.peer.label, error=_why(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            stream = await link.carry(reader, writer, accepted=False)
            if stream.confirmed and stream.age >= HEALTHY_STREAM_SECONDS:
                # A stream that worked ended (the gateway's cap, the peer restarting): reconnect at once,
                # then keep retrying quickly for a while, the peer is expected back.
                backoff.expect()
                continue
            if not stream.confirmed:  # the route or the peer refused us (booting, not yet a member, …)
                self.metrics.transport_dial_failed.inc()
            await asyncio.sleep(backoff.next())

    async def _dial(self, link: PeerLink) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        me, endpoint = self.me, link.peer.endpoint
        assert me is not None
        host, port = self.dial_target(endpoint)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=self._client_tls,
                server_hostname=endpoint.host,
                ssl_handshake_timeout=self.options.connect_timeout,
            ),
            self.options.connect_timeout,
        )
        hello = Hello(me.cluster, me.member_id, link.peer.member_id, self.wall_ms(), self.random(NONCE_BYTES))
        writer.write(encode_hello(hello, me.identity_key))
        return reader, writer

    # --- accepting -------------------------------------------------------------------------------------

    def _arrived(self, raw: asyncio.Transport) -> None:
        """A TCP connection arrived (reading paused): admit it in its own task, unless too many wait."""
        if len(self._pending) >= self.options.max_pending:
            raw.abort()
            self.metrics.transport_refused("overloaded")
            return
        task = asyncio.create_task(self._accept(raw), name="transport-accept")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _accept(self, raw: asyncio.Transport) -> None:
        """TLS, then the hello, both within ``hello_timeout``; then carry the stream for its peer."""
        assert self._server_tls is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = _TlsStreamProtocol(reader)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.options.hello_timeout):
                try:
                    tls = await loop.start_tls(
                        raw, protocol, self._server_tls, server_side=True,
                        ssl_handshake_timeout=2 * self.options.hello_timeout,
                    )  # fmt: skip
                except (ssl.SSLError, OSError, ConnectionError):
                    raw.abort()
                    self.metrics.transport_refused("tls_failed")
                    return
                assert tls is not None
                protocol.connection_made(tls)  # start_tls does not: the reader gets its transport
                writer = asyncio.StreamWriter(tls, protocol, reader, loop)
                link = await self._admit(reader, writer)
        except TimeoutError:
            if writer is None:
                raw.abort()
                self.metrics.transport_refused("no_hello")
            else:
                self._refuse(writer, "no_hello")
            return
        if link is not None:
            await link.carry(reader, writer, accepted=True)

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> PeerLink | None:
        """The hello: the link the stream is bound to, or None (refused, counted, closed)."""
        try:
            header = await reader.readexactly(FRAME_HEADER_BYTES)
            frames = FrameReader()
            frames.feed(header)  # checks the type and the length before the payload is read
            payload = await reader.readexactly(_length(header))
            (frame,) = frames.feed(payload)
            signed = decode_hello(frame)
        except FrameError:
            return self._refuse(writer, "protocol")
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            return self._refuse(writer, "protocol", say=False)
        me = self.me
        if me is None:
            return self._refuse(writer, "not_member")
        refusal = self.gate.check(  # a link whose role is "dialer" is refused here as the wrong direction
            signed,
            me=me.member_id,
            cluster=me.cluster,
            members={m: link.peer.identity_pub for m, link in self.links.items()},
            now_ms=self.wall_ms(),
        )
        if refusal is not None:
            return self._refuse(writer, refusal)
        return self.links[signed.hello.dialer]

    def _refuse(
        self, writer: asyncio.StreamWriter, reason: StreamRefusal, *, say: bool = True
    ) -> PeerLink | None:
        self.metrics.transport_refused(reason)
        log.debug("transport.stream_refused", reason=reason)
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if say and not writer.is_closing():
                writer.write(close_frame("refused"))
            writer.close()
        return None  # "no link": the callers answer with it


class _TlsStreamProtocol(asyncio.StreamReaderProtocol):
    """The acceptor's stream protocol, always wrapped in TLS by ``start_tls``.

    ``start_tls`` never calls ``connection_made`` on the protocol it wraps, so the stream protocol would
    believe it runs over plain TCP: its end of file would ask to keep a half-open connection, which TLS
    cannot, and asyncio would log a warning on every peer's close_notify (one line per connection, which
    anyone can cause). A close_notify can arrive with the handshake, before ``start_tls`` returns and
    ``connection_made`` can be called, so the answer is fixed here: never keep the connection half open.
    """

    def eof_received(self) -> bool:
        super().eof_received()
        return False


class _Arrival(asyncio.Protocol):
    """A new connection: reading is paused at once, so the TLS layer started next sees the ClientHello."""

    def __init__(self, arrived: Callable[[asyncio.Transport], None]) -> None:
        self.arrived = arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.arrived(transport)


def _length(header: bytes) -> int:
    return int.from_bytes(header[1:3], "big")


def _why(exc: BaseException) -> str:
    """A short reason for a failed dial (never a payload)."""
    text = str(exc) or type(exc).__name__
    return text[:200]
