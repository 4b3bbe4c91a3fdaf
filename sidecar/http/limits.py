"""Connection limits for a TCP surface: a cap on concurrent connections and a request-head deadline.

Owns ``ConnectionLimits`` and ``GuardedTCPSite``, an aiohttp ``TCPSite`` whose protocol factory wraps
aiohttp's: a connection over ``max_connections`` is closed at once (the client sees EOF, before any byte is
read); a connection that has not delivered a complete request head (through the blank line) within
``header_timeout`` of connecting, or of its previous head, is closed (slowloris: a client that trickles a
header line at a time, or sends nothing, holds a slot for at most that long). Both are reported through
``on_drop`` (``"over_limit"`` / ``"header_timeout"``), which the caller counts. aiohttp has no setting for
either: its ``keepalive_timeout`` closes idle keep-alive connections, not slow heads on every version.

Must not: read or log request bytes beyond looking for the end of the head, or change what aiohttp does
with a connection it keeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from sidecar.metricvocab import ConnectionDrop

_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """At most ``max_connections`` open at once; a request head within ``header_timeout`` seconds."""

    max_connections: int
    header_timeout: float

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not self.header_timeout > 0:
            raise ValueError("header_timeout must be > 0")


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Guarded(asyncio.Protocol):
    """Forwards everything to aiohttp's handler; closes the connection when a head is late."""

    def __init__(self, inner: asyncio.Protocol, guard: _Guard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._arm()
        self.inner.connection_made(transport)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.limits.header_timeout, self._expired)
        self.tail = b""

    def _expired(self) -> None:
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.guard.on_drop("header_timeout")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.timer is None:  # the previous head is done: these bytes start the next request
            self._arm()
        seen = self.tail + data
        if _HEAD_END in seen:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = None
        self.tail = seen[-(len(_HEAD_END) - 1) :]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.guard.open.discard(self)
        self.inner.connection_lost(exc)


class _Guard:
    """The protocol factory: aiohttp's handler behind the cap and the head deadline."""

    def __init__(
        self,
        inner: Callable[[], asyncio.Protocol],
        limits: ConnectionLimits,
        on_drop: Callable[[ConnectionDrop], None],
    ) -> None:
        self.inner = inner
        self.limits = limits
        self.on_drop = on_drop
        self.open: set[_Guarded] = set()

    def __call__(self) -> asyncio.Protocol:
        if len(self.open) >= self.limits.max_connections:
            self.on_drop("over_limit")
            return _Refused()
        protocol = _Guarded(self.inner(), self)
        self.open.add(protocol)
        return protocol


class GuardedTCPSite(web.TCPSite):
    """A ``TCPSite`` that serves through ``_Guard`` (see the module docstring)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limits: ConnectionLimits,
        on_drop: Callable[[ConnectionDrop], None],
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self._limits = limits
        self._on_drop = on_drop

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            _Guard(server, self._limits, self._on_drop),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
