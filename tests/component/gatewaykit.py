"""The gateway stand-in's component toolkit: loopback origins, a TLS peer that can half-close, the
in-process gateway with its routes file, and polling with deadlines.

The origin speaks a one-line command protocol (plain TCP behind terminated routes, TLS behind passthrough
routes), modelled on dstack-gateway's ``test-run/proxy/origin.py``::

    bytes N      send N pattern bytes, then wait for the next command
    close N      send N pattern bytes, then close (TLS: close_notify, then FIN)
    upload       read to the client's end, answer the sha256 hex of what came, close
    halfclose    read to the client's end, then send 4096 pattern bytes and close
    appfirst     send "bye" and half-close; read to the client's end, keep it in ``Origin.received``; close
    silent       read to the client's end, then never answer
    hold         never answer
    echo         echo every chunk until the client's end, then close

Must not: import another test module, leave a server or a connection open, or use anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from devnet.gateway.config import GatewayConfig
from devnet.gateway.labca import LabCa
from devnet.gateway.service import GatewayService

HOST = "127.0.0.1"
DOMAIN = "amlab.gw.test"
PATTERN = b"attestmesh-gateway-standin-0123456789abcdef"
CHUNK = 65536


def payload(size: int) -> bytes:
    """``size`` bytes of a pattern that is not all zeroes (a misaligned relay cannot look right)."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


async def eventually(check: Callable[[], bool], *, within: float = 5.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


class Stream(Protocol):
    async def recv(self) -> bytes: ...
    async def send(self, data: bytes) -> None: ...
    async def close_write(self) -> None: ...
    def close(self) -> None: ...


class PlainStream:
    """A TCP connection with the Stream methods."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def recv(self) -> bytes:
        return await self.reader.read(CHUNK)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close_write(self) -> None:
        self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()


class TlsStream:
    """TLS over memory BIOs on an asyncio connection, client or server side, able to half-close.

    Like dstack's ``tlsclient.py``: ``close_write`` sends close_notify (then FIN) without waiting for the
    peer's, which ``ssl.SSLSocket`` cannot do. ``ragged`` tells whether the peer ended without close_notify.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: ssl.SSLContext,
        *,
        server_name: str | None = None,
        server_side: bool = False,
    ) -> None:
        self.reader, self.writer = reader, writer
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_name
        )
        self.ragged = False

    @classmethod
    async def open(cls, port: int, server_name: str | None, context: ssl.SSLContext) -> TlsStream:
        reader, writer = await asyncio.open_connection(HOST, port)
        stream = cls(reader, writer, context, server_name=server_name)
        try:
            await stream._handshake()
        except BaseException:
            writer.close()
            raise
        return stream

    @classmethod
    async def accept(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
    ) -> TlsStream:
        stream = cls(reader, writer, context, server_side=True)
        await stream._handshake()
        return stream

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.writer.write(data)

    async def _fill(self) -> None:
        raw = await self.reader.read(CHUNK)
        if raw:
            self._incoming.write(raw)
        else:
            self._incoming.write_eof()

    async def _handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                await self.writer.drain()
                await self._fill()
        self._flush()
        await self.writer.drain()

    async def recv(self) -> bytes:
        while True:
            try:
                data = self.tls.read(CHUNK)
                self._flush()
                return data  # b"": the peer's close_notify
            except ssl.SSLWantReadError:
                self._flush()
                await self._fill()
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLEOFError:
                self.ragged = True
                return b""

    async def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()
        await self.writer.drain()

    async def close_write(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self._flush()
        self.writer.write_eof()
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


async def recv_exactly(stream: Stream, size: int) -> bytes:
    """Read exactly ``size`` bytes (fails on an early end)."""
    data = bytearray()
    while len(data) < size:
        chunk = await stream.recv()
        if not chunk:
            raise AssertionError(f"stream ended after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


async def recv_to_end(stream: Stream) -> bytes:
    """Read until the peer ends its side."""
    data = bytearray()
    while chunk := await stream.recv():
        data += chunk
    return bytes(data)


@dataclass
class Origin:
    """A loopback app server speaking the command protocol (TLS when ``context`` is given)."""

    context: ssl.SSLContext | None = None
    received: list[bytes] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> Origin:
        self._server = await asyncio.start_server(self._accepted, HOST, 0)
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            stream: Stream
            if self.context is not None:
                stream = await TlsStream.accept(reader, writer, self.context)
            else:
                stream = PlainStream(reader, writer)
            await self._serve(stream)
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass  # cancelled by close(): ending normally keeps asyncio's server callback quiet
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _serve(self, stream: Stream) -> None:
        buffered = b""
        while True:
            while b"\n" not in buffered:
                chunk = await stream.recv()
                if not chunk:
                    return
                buffered += chunk
            line, _, buffered = buffered.partition(b"\n")
            verb, _, argument = line.decode().partition(" ")
            if verb == "bytes":
                await stream.send(payload(int(argument)))
                continue
            if verb == "close":
                await stream.send(payload(int(argument)))
                await stream.close_write()
            elif verb == "upload":
                await stream.send(digest(buffered + await recv_to_end(stream)))
                await stream.close_write()
            elif verb == "halfclose":
                await recv_to_end(stream)
                await stream.send(payload(4096))
                await stream.close_write()
            elif verb == "appfirst":
                await stream.send(b"bye")
                await stream.close_write()
                self.received.append(buffered + await recv_to_end(stream))
            elif verb == "silent":
                await recv_to_end(stream)
                await asyncio.Event().wait()
            elif verb == "hold":
                await asyncio.Event().wait()
            elif verb == "echo":
                await stream.send(buffered)
                while chunk := await stream.recv():
                    await stream.send(chunk)
                await stream.close_write()
            await recv_to_end(stream)  # let the other side finish before the socket closes
            return


def first_flight(server_name: str) -> bytes:
    """A real ClientHello for ``server_name`` (what a slow client sends part of)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def client_context(ca: LabCa, *, alpn: list[str] | None = None, tls13_only: bool = False) -> ssl.SSLContext:
    """A client context trusting only the lab CA, checking the host name."""
    context = ssl.create_default_context(cafile=str(ca.ca_cert))
    if alpn:
        context.set_alpn_protocols(alpn)
    if tls13_only:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def origin_context(ca: LabCa) -> ssl.SSLContext:
    """The passthrough origin's server context: the lab's wildcard certificate, any TLS version."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.cert, ca.key)
    return context


def write_routes(path: Path, instances: dict[str, dict[str, Any]]) -> None:
    """Write the routes file atomically, as the devnet does."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"instances": instances}))
    os.replace(temporary, path)


def route(app_id: str, ports: list[int] | None) -> dict[str, Any]:
    return {"app_id": app_id, "address": HOST, "ports": ports}


@dataclass
class GatewayLab:
    """A gateway in process with its routes file and registry, and the origins behind it."""

    service: GatewayService
    registry: CollectorRegistry
    routes_file: Path
    ca: LabCa
    dialed: list[TlsStream] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.service.port

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def outcome(self, kind: str, outcome: str) -> float:
        return self.sample("attestmesh_gateway_connections_total", kind=kind, outcome=outcome)

    def closed(self, kind: str, reason: str) -> float:
        return self.sample("attestmesh_gateway_closed_total", kind=kind, reason=reason)

    def active(self, kind: str, app_id: str) -> float:
        return self.sample("attestmesh_gateway_active_connections", kind=kind, app_id=app_id)

    def name(self, label: str) -> str:
        return f"{label}.{DOMAIN}"

    async def dial(self, label: str, **context: Any) -> TlsStream:
        """A TLS connection through the gateway to ``<label>.<domain>``, verified against the lab CA."""
        stream = await TlsStream.open(self.port, self.name(label), client_context(self.ca, **context))
        self.dialed.append(stream)
        return stream

    async def refused(self, label: str | None, *, outcome: str, kind: str = "none", **context: Any) -> None:
        """Dial and expect the gateway to close without a TLS session, counted as ``outcome``."""
        before = self.outcome(kind, outcome)
        server_name = self.name(label) if label is not None else None
        context_ = client_context(self.ca, **context)
        if server_name is None:
            context_.check_hostname = False
        try:
            stream = await TlsStream.open(self.port, server_name, context_)
        except (ssl.SSLError, ConnectionError):
            pass
        else:
            stream.close()
            raise AssertionError(f"{label} was not refused")
        await eventually(lambda: self.outcome(kind, outcome) == before + 1, what=f"{kind}/{outcome} counted")


@contextlib.asynccontextmanager
async def running_gateway(
    tmp_path: Path, ca: LabCa, instances: dict[str, dict[str, Any]] | None = None, **limits: Any
) -> AsyncIterator[GatewayLab]:
    """Start a gateway on 127.0.0.1 (free ports) with ``instances`` in its routes file; stop it after."""
    routes_file = tmp_path / "routes.json"
    if instances is not None:
        write_routes(routes_file, instances)
    config = GatewayConfig.from_json(
        {
            "listen": f"{HOST}:0",
            "domain": DOMAIN,
            "cert_file": str(ca.cert),
            "key_file": str(ca.key),
            "routes_file": str(routes_file),
            "metrics_listen": f"{HOST}:0",
            "connect_timeout": 2,
            "handshake_timeout": 2,
            "route_poll_interval": 0.02,
            **limits,
        },
        tmp_path,
    )
    registry = CollectorRegistry()
    service = await GatewayService.start(config, registry=registry)
    lab = GatewayLab(service=service, registry=registry, routes_file=routes_file, ca=ca)
    try:
        yield lab
    finally:
        for stream in lab.dialed:
            stream.close()
        await service.close(grace=2.0)


@contextlib.asynccontextmanager
async def origins(ca: LabCa) -> AsyncIterator[tuple[Origin, Origin]]:
    """A plain origin (behind terminated routes) and a TLS origin (behind passthrough routes)."""
    plain = await Origin().start()
    tls = await Origin(context=origin_context(ca)).start()
    try:
        yield plain, tls
    finally:
        await plain.close()
        await tls.close()
