"""The two kinds of stream end the relay moves bytes between: a plain TCP end and a TLS-terminated end.

Owns ``End`` (read a chunk, write and drain, half-close, close, abort), ``TcpEnd``, ``TlsEnd`` (TLS served
by an ``ssl.SSLObject`` over two ``ssl.MemoryBIO``; ``TlsEnd.accept`` runs the server handshake) and
``terminating_context`` (TLS 1.2 only, the wildcard certificate, ALPN ``h2`` only when asked), mirroring the
shipped dstack-gateway config (``tls_versions = ["1.2"]``; ``proxy/tls_terminate.rs``).

Why memory BIOs rather than ``loop.start_tls`` or a peeked socket: the gateway has already consumed the
ClientHello from the socket to read its SNI, and asyncio's TLS transport cannot be handed bytes it did not
read itself (peeking instead of reading spins: the socket stays readable while a partial hello waits for
the rest). asyncio's TLS transport also cannot half-close (``write_eof`` is unsupported), and dstack's
behaviour is that each direction ends on its own: the client's ``close_notify`` becomes a FIN towards the
app, the app's FIN becomes a ``close_notify`` (then a FIN) towards the client, and the other direction goes
on. Driving ``SSLObject`` ourselves gives both: the buffered ClientHello is the first input of the
handshake, and ``unwrap`` sends our ``close_notify`` while reading continues.

One invariant keeps that half-close safe: OpenSSL's second ``SSL_shutdown`` (inside ``unwrap``) reads a
record and fails on application data (``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``), so ``close_write`` first
decrypts every complete record already received into ``_pending`` (returned by the next ``read``); only a
partial record can be left in the BIO, and OpenSSL keeps partial records for the next ``SSL_read``.
Renegotiation is disabled, so application reads and writes never wait on each other.

Must not: parse the relayed bytes, or log them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import Final, Protocol

CHUNK_BYTES: Final = 64 * 1024


class End(Protocol):
    """One side of a relayed connection."""

    async def read(self) -> bytes:
        """The next chunk of payload; ``b""`` once this side has finished sending."""
        ...

    async def write(self, data: bytes) -> None:
        """Send payload to this side and wait until it is accepted (back-pressure)."""
        ...

    async def close_write(self) -> None:
        """Tell this side nothing more will come (half-close); reading goes on."""
        ...

    def close(self) -> None:
        """Close after both directions ended (flushes what is buffered)."""
        ...

    def abort(self) -> None:
        """Drop the connection now (idle, lifetime, shutdown, error)."""
        ...


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _write_eof(writer: asyncio.StreamWriter) -> None:
    """Send a FIN after what is buffered; a peer that has already closed its socket needs none."""
    if writer.can_write_eof() and not writer.is_closing():
        with contextlib.suppress(OSError):
            writer.write_eof()


class TcpEnd:
    """A plain TCP end: raw bytes both ways; half-close is a FIN."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        _set_nodelay(writer)

    async def read(self) -> bytes:
        return await self._reader.read(CHUNK_BYTES)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close_write(self) -> None:
        _write_eof(self._writer)

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.transport.abort()


class TlsEnd:
    """A TLS-terminated end: plaintext in and out, TLS records on the wire, half-close is ``close_notify``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._pending = bytearray()
        self._read_ended = False
        self._ragged = False
        _set_nodelay(writer)

    @classmethod
    async def accept(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: ssl.SSLContext,
        received: bytes,
    ) -> TlsEnd:
        """Run the server handshake, starting from the bytes already ``received``; raises ``ssl.SSLError``.

        A failed handshake's alert is flushed to the client before the error propagates. The caller bounds
        the time.
        """
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        end = cls(reader, writer, context.wrap_bio(incoming, outgoing, server_side=True), incoming, outgoing)
        incoming.write(received)
        while True:
            try:
                end._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                end._flush()
                await end._feed()
            except ssl.SSLError:
                end._flush()
                raise
        end._flush()
        await writer.drain()
        return end

    @property
    def alpn(self) -> str | None:
        """The ALPN protocol negotiated, if any."""
        return self._tls.selected_alpn_protocol()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._writer.write(data)

    async def _feed(self) -> None:
        raw = await self._reader.read(CHUNK_BYTES)
        if raw:
            self._incoming.write(raw)
        else:
            self._incoming.write_eof()

    def _decrypt_ready(self) -> None:
        """Move every complete record's plaintext into ``_pending`` (until OpenSSL wants more bytes)."""
        while not self._read_ended:
            try:
                chunk = self._tls.read(CHUNK_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._read_ended = True
                break
            except ssl.SSLEOFError:
                # A FIN without close_notify: dstack ignores the missing close_notify too
                # (IgnoreUnexpectedEofStream). OpenSSL has failed the session, so none can be sent back.
                self._read_ended = self._ragged = True
                break
            if not chunk:  # SSLObject returns b"" for the peer's close_notify before we sent ours
                self._read_ended = True
                break
            self._pending += chunk
        self._flush()

    async def read(self) -> bytes:
        while True:
            self._decrypt_ready()
            if self._pending:
                data = bytes(self._pending)
                self._pending.clear()
                return data
            if self._read_ended:
                return b""
            await self._feed()

    async def write(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()
        await self._writer.drain()

    async def close_write(self) -> None:
        if self._writer.is_closing():
            return
        self._decrypt_ready()  # the invariant in the module docstring
        if not self._ragged:
            with contextlib.suppress(ssl.SSLWantReadError):  # ours is out; theirs comes when they finish
                self._tls.unwrap()
            self._flush()
        _write_eof(self._writer)
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.transport.abort()


def terminating_context(cert_file: Path, key_file: Path, *, h2: bool) -> ssl.SSLContext:
    """A TLS 1.2-only server context with the wildcard certificate; ALPN offers exactly ``h2`` when ``h2``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert_file, key_file)
    if h2:
        context.set_alpn_protocols(["h2"])
    return context
