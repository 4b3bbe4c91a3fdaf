"""A peer's bridge: the stable loopback UDP socket that is the peer's WireGuard endpoint on this node.

The device sends the peer's datagrams to the bridge (``127.0.0.1:<bridge port>``), the bridge hands them
to whatever currently carries the peer (a gateway stream, or nothing while it reconnects), and datagrams
that arrive from the peer are sent to the device from the bridge, so the device always sees the peer at
the same endpoint: a reconnect never changes the device's configuration.

Owns ``Bridge`` (one socket per peer, bound to loopback). It reads with the event loop's reader callback
and drains up to ``BATCH`` datagrams per wake-up (asyncio's datagram transport reads one per loop
iteration, so a burst from the device overflowed the socket's buffer long before the CPU was busy), and
asks for large socket buffers (``SOCKET_BUFFER_BYTES``) to absorb bursts.

Must not: accept a datagram from anything but the device's own port (anything else on loopback is dropped
and counted as ``foreign_source``), buffer datagrams in memory (UDP semantics: a datagram with nowhere to
go is dropped, counted, and WireGuard retransmits; the one exception, a single handshake initiation per
peer kept for the peer's next stream, is the link's: ``sidecar.transport.link``), or know about streams
or TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Final, Literal

from sidecar.core.streamwire import MAX_DATAGRAM_BYTES

LOOPBACK: Final = "127.0.0.1"
BATCH: Final = 256
SOCKET_BUFFER_BYTES: Final = 4 * 1024 * 1024
BridgeDrop = Literal["foreign_source", "oversized"]
#: SO_RCVBUFFORCE / SO_SNDBUFFORCE (Linux; past net.core.*mem_max, with CAP_NET_ADMIN, which the sidecar has).
_FORCE: Final = {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32}


def _large_buffers(sock: socket.socket) -> None:
    for option, forced in _FORCE.items():
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER_BYTES)
        except OSError:  # no CAP_NET_ADMIN: as large as net.core.rmem_max / wmem_max allow
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


class Bridge:
    """One peer's loopback endpoint; ``on_datagram`` gets what the device sends towards the peer."""

    def __init__(
        self,
        wg_port: int,
        on_datagram: Callable[[bytes], None],
        on_drop: Callable[[BridgeDrop], None],
    ) -> None:
        self.device: Final = (LOOPBACK, wg_port)
        self.on_datagram = on_datagram
        self.on_drop = on_drop
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    async def open(self) -> int:
        """Bind the socket to a free loopback port; return the port (the peer's WireGuard endpoint)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _large_buffers(sock)
            sock.bind((LOOPBACK, 0))
        except BaseException:
            sock.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._drain)
        self._sock = sock
        self.port = sock.getsockname()[1]
        return self.port

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _drain(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable while the device restarts: nothing to read
                continue
            if addr != self.device:
                self.on_drop("foreign_source")
            elif len(data) > MAX_DATAGRAM_BYTES:
                self.on_drop("oversized")
            else:
                self.on_datagram(data)

    def deliver(self, datagram: bytes) -> None:
        """Send a datagram that arrived from the peer to the device, from the peer's endpoint."""
        if self._sock is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionRefusedError):
                self._sock.sendto(datagram, self.device)  # a full buffer drops it, as the network would

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
