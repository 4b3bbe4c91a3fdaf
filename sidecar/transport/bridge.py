"""A peer's bridge: the stable loopback UDP socket that is the peer's WireGuard endpoint on this node.

The device sends the peer's datagrams to the bridge (``127.0.0.1:<bridge port>``), the bridge hands them
to whatever currently carries the peer (a gateway stream, or nothing while it reconnects), and datagrams
that arrive from the peer are sent to the device from the bridge, so the device always sees the peer at
the same endpoint: a reconnect never changes the device's configuration.

Owns ``Bridge`` (one socket per peer, bound to loopback). Must not: accept a datagram from anything but
the device's own port (anything else on loopback is dropped and counted as ``foreign_source``), buffer
datagrams (UDP semantics: a datagram with nowhere to go is dropped, counted, and WireGuard retransmits), or
know about streams or TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Literal

from sidecar.core.streamwire import MAX_DATAGRAM_BYTES

LOOPBACK: Final = "127.0.0.1"
BridgeDrop = Literal["foreign_source", "oversized"]


class Bridge(asyncio.DatagramProtocol):
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
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def open(self) -> int:
        """Bind the socket to a free loopback port; return the port (the peer's WireGuard endpoint)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(LOOPBACK, 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self.port

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if tuple(addr[:2]) != self.device:
            self.on_drop("foreign_source")
        elif len(data) > MAX_DATAGRAM_BYTES:
            self.on_drop("oversized")
        else:
            self.on_datagram(data)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable while the device restarts
        pass

    def deliver(self, datagram: bytes) -> None:
        """Send a datagram that arrived from the peer to the device, from the peer's endpoint."""
        if self._transport is not None:
            self._transport.sendto(datagram, self.device)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
