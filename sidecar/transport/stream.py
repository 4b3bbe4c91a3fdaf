"""One established gateway stream (after the hello): frames in, frames out, keepalive and idle detection.

Owns ``Stream``: confirmation (an acceptor's stream is confirmed from the start, and it says so at once
with a ``keepalive``; a dialer's stream is confirmed by the first frame it receives, which tells it that
the acceptor admitted its hello), the read loop (datagrams to the peer's bridge; a ``keepalive`` only
proves life; a ``close`` or end of file ends the stream; a protocol error sends ``close(protocol)`` and
ends it), a keepalive every ``keepalive`` seconds, the idle rule (nothing received for ``idle_timeout``
ends the stream, so a stream the gateway silently lost is noticed), and ``send`` with a bounded write
buffer: a datagram that would grow the buffer past ``max_buffer`` is dropped (``backpressure``) as the
network would drop it, never queued without bound. ``run`` returns why the stream ended.

Must not: dial, accept, authenticate or reconnect (``sidecar.transport.gateway`` does), or log payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final, Literal, Protocol

from sidecar.core.streamwire import (
    FRAME_CLOSE,
    FRAME_DATA,
    FRAME_KEEPALIVE,
    FrameError,
    FrameReader,
    close_frame,
    data_frame,
    keepalive_frame,
)
from sidecar.transportmetrics import StreamEnd

DEFAULT_MAX_BUFFER: Final = 256 * 1024
_READ_CHUNK: Final = 256 * 1024
_CLOSE_GRACE: Final = 1.0


class Tally(Protocol):
    """Where a stream counts its traffic (per peer)."""

    def sent(self, nbytes: int) -> None: ...

    def received(self, nbytes: int) -> None: ...

    def dropped(self, reason: str) -> None: ...


class Stream:
    """A stream bound to one peer; ``run`` until it ends, ``send`` datagrams, ``close`` from outside."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        deliver: Callable[[bytes], None],
        tally: Tally,
        monotonic: Callable[[], float],
        keepalive: float,
        idle_timeout: float,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        confirmed: bool = False,
        on_confirmed: Callable[[], None] = lambda: None,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.deliver, self.tally = deliver, tally
        self.monotonic = monotonic
        self.keepalive, self.idle_timeout = keepalive, idle_timeout
        self.max_buffer = max_buffer
        self.opened_at = monotonic()
        self.confirmed = confirmed
        self.on_confirmed = on_confirmed
        if confirmed:
            writer.write(keepalive_frame())  # the acceptor's answer to an admitted hello
        self._frames = FrameReader()
        self._queue: list[bytes] = []
        self._queued = 0
        self._end: StreamEnd | None = None
        self._closed = asyncio.Event()

    @property
    def age(self) -> float:
        return self.monotonic() - self.opened_at

    @property
    def open(self) -> bool:
        return self._end is None

    def send(self, datagram: bytes) -> None:
        """Queue one datagram; drop it (counted) when the stream is closing or its buffer is full."""
        if self._end is not None or self.writer.is_closing():
            self.tally.dropped("no_stream")
            return
        if self._queued + self.writer.transport.get_write_buffer_size() > self.max_buffer:
            self.tally.dropped("backpressure")
            return
        frame = data_frame(datagram)
        self._queue.append(frame)
        self._queued += len(frame)
        if len(self._queue) == 1:  # the first of this loop iteration: write them all at its end
            asyncio.get_running_loop().call_soon(self._flush)
        self.tally.sent(len(datagram))

    def _flush(self) -> None:
        """Write the frames queued in this loop iteration as one buffer: TLS then seals them in one record
        (up to 16 KiB) instead of one record per datagram, which is most of the transport's CPU cost."""
        queue, self._queue, self._queued = self._queue, [], 0
        if queue and not self.writer.is_closing():
            self.writer.write(b"".join(queue))

    def close(self, reason: StreamEnd) -> None:
        """End the stream from outside (replaced, peer removed, shutdown); ``run`` then returns ``reason``."""
        if self._end is None:
            self._end = reason
            self._say_close("shutdown" if reason == "shutdown" else "refused")
        self._closed.set()

    async def run(self) -> StreamEnd:
        """Carry frames until the stream ends; return why."""
        ticker = asyncio.create_task(self._keepalives())
        reading = asyncio.create_task(self._read())
        closed = asyncio.create_task(self._closed.wait())
        try:
            await asyncio.wait({reading, closed}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done() and self._end is None:
                self._end = reading.result()
        finally:
            for task in (ticker, reading, closed):
                task.cancel()
            await asyncio.gather(ticker, reading, closed, return_exceptions=True)
            await self._shut()
        assert self._end is not None
        return self._end

    async def _read(self) -> StreamEnd:
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(self.reader.read(_READ_CHUNK), self.idle_timeout)
                except TimeoutError:
                    return "idle"
                if not chunk:
                    return "eof"
                if (end := self._handle(chunk)) is not None:
                    return end
        except (ConnectionError, OSError):
            return "error"

    def _handle(self, chunk: bytes) -> StreamEnd | None:
        try:
            frames = self._frames.feed(chunk)
        except FrameError:
            self._say_close("protocol")
            return "protocol"
        for frame in frames:
            if not self.confirmed and frame.kind != FRAME_CLOSE:  # a refusal is a close, not a confirmation
                self.confirmed = True
                self.on_confirmed()
            if frame.kind == FRAME_DATA:
                self.tally.received(len(frame.payload))
                self.deliver(frame.payload)
            elif frame.kind == FRAME_CLOSE:
                return "peer_closed"
            elif frame.kind != FRAME_KEEPALIVE:  # a second hello
                self._say_close("protocol")
                return "protocol"
        return None

    async def _keepalives(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive)
            if not self.writer.is_closing():
                self.writer.write(keepalive_frame())

    def _say_close(self, reason: Literal["shutdown", "refused", "protocol"]) -> None:
        if not self.writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                self.writer.write(close_frame(reason))

    async def _shut(self) -> None:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), _CLOSE_GRACE)
