"""A subscriber's WebSocket frames as the indexer reads them, and how a session is refused and closed.

Owns the session's socket limits and timeouts (hello deadline, close timeouts, heartbeat, the largest
message aiohttp may hand over), the close code of each close reason, ``Refused`` (a session ended with a
reason the subscriber is told) and ``read_frame``: one received WebSocket message → a decoded protocol
message, ``Gone`` when the peer closed or the socket failed, or ``Refused("malformed", …)`` for anything
else (a binary frame, an oversized or undecodable one, a frame aiohttp itself refused).
Must not: implement the wire format (``sidecar.core.indexerwire`` decodes), hold session state, or do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import WebSocketError, WSMsgType

from sidecar.core.indexerwire import MAX_FRAME_BYTES, CloseReason, Message, WireError, decode

HELLO_TIMEOUT: Final = 10.0
CLOSE_SEND_TIMEOUT: Final = 2.0
WS_CLOSE_TIMEOUT: Final = 2.0
WS_HEARTBEAT: Final = 20.0
MAX_WS_MESSAGE: Final = 4 * MAX_FRAME_BYTES
CLOSE_CODES: Final[dict[str, int]] = {
    "shutdown": 1000,
    "unauthorized": 1008,
    "protocol": 1008,
    "malformed": 1008,
    "unavailable": 1011,
    "overflow": 4000,
    "reorg": 4000,
}


class Refused(Exception):
    """End the session with ``reason``; the subscriber is told ``detail``."""

    def __init__(self, reason: CloseReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: CloseReason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Gone:
    """The peer closed the socket (``detail`` empty) or the socket failed: end without a reason."""

    detail: str = ""


def read_frame(msg: object) -> Message | Gone:
    """Decode one received WebSocket message; raise ``Refused("malformed", …)`` for what is not a frame."""
    kind = getattr(msg, "type", None)
    data = getattr(msg, "data", None)
    if kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        return Gone()
    if kind == WSMsgType.ERROR:
        if isinstance(data, WebSocketError):  # a frame aiohttp refused; it already closed with the code
            raise Refused("malformed", "frame refused by the WebSocket layer")
        return Gone("socket error")
    if kind != WSMsgType.TEXT or not isinstance(data, str):
        raise Refused("malformed", "frames must be text")
    if len(data) > MAX_FRAME_BYTES or len(data.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
        raise Refused("malformed", "frame exceeds the size limit")
    try:
        return decode(data)
    except WireError as exc:
        raise Refused("malformed", str(exc)) from None
