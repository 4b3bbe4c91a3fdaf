"""What the stand-in reads from a connection before routing it: the ClientHello and the SNI name's route.

Owns ``parse_client_hello`` (incremental: the bytes received so far → ``None`` when more are needed, a
``ClientHello`` with the SNI host name and the offered ALPN protocols, or ``HelloError`` when the bytes are
not a TLS ClientHello or it is larger than ``MAX_HELLO_BYTES``), ``parse_dst_info`` (dstack-gateway's
``<id>[-<port>][s|g]`` first label, mirrored rule for rule from ``dstack/gateway/src/proxy.rs``) and
``route_for`` (a whole SNI name against the gateway's wildcard domain).

Routing rules (dstack-gateway, ``proxy.rs`` ``handle_connection`` / ``parse_dst_info``): the name is split at
its first dot; the rest must be the gateway's domain; the first label is split at ``-``: the id, then an
optional port part; a trailing ``g`` (ALPN ``h2``, terminated) is stripped first, then a trailing ``s``
(passthrough); both together are refused, as is a third ``-`` part; the port defaults to 80, or 443 with
``s``; the port text is what Rust's ``u16`` parser accepts (ASCII digits, an optional leading ``+``, at most
65535). A bare ``<id>s`` is the id ``<id>s`` on port 80. The ids ``health`` and ``gateway`` are the real
gateway's own pages: the stand-in refuses them (``reserved_id``).

Must not do I/O or hold state: the proxy feeds the bytes and acts on the result.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final, Literal, get_args

MAX_HELLO_BYTES: Final = 16 * 1024
"""The most bytes read while waiting for a complete ClientHello (records included)."""

RECORD_HEADER_BYTES: Final = 5
MAX_RECORD_BYTES: Final = 1 << 14  # TLSPlaintext.length: 2^14 at most (RFC 8446 §5.1)
CONTENT_HANDSHAKE: Final = 22
HANDSHAKE_CLIENT_HELLO: Final = 1
EXTENSION_SERVER_NAME: Final = 0
EXTENSION_ALPN: Final = 16
NAME_TYPE_HOST_NAME: Final = 0

DEFAULT_PORT: Final = 80
DEFAULT_TLS_PORT: Final = 443
RESERVED_IDS: Final = frozenset({"health", "gateway"})

RouteKind = Literal["terminate", "passthrough", "h2"]
"""No suffix: TLS terminated, plaintext relayed, no ALPN; ``s``: raw TLS relayed; ``g``: terminated, h2."""
ROUTE_KINDS: Final[tuple[RouteKind, ...]] = get_args(RouteKind)

NameRefusal = Literal["bad_name", "foreign_domain", "reserved_id"]
NAME_REFUSALS: Final[tuple[NameRefusal, ...]] = get_args(NameRefusal)

_PORT: Final = re.compile(r"\+?[0-9]+", re.ASCII)


class HelloError(ValueError):
    """The bytes are not a TLS ClientHello the gateway can read (the message says why)."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What routing needs from a ClientHello: the SNI host name and the ALPN protocols offered.

    ``server_name`` is the first ``host_name`` entry decoded as Latin-1 (lossless: any byte is kept, and a
    name that is not a DNS name simply routes nowhere); None when the hello carries no SNI. ``alpn`` is None
    when the client sent no ALPN extension.
    """

    server_name: str | None
    alpn: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class DstInfo:
    """Where a routable name points: the instance or app ``id`` (as written), the app's ``port``, the kind."""

    id: str
    port: int
    kind: RouteKind


@dataclass(frozen=True, slots=True)
class NameRefused:
    """A name the gateway does not route: ``reason`` (a metric label), a short ``detail``, and ``kind`` when
    the label parsed (a reserved id)."""

    reason: NameRefusal
    detail: str
    kind: RouteKind | None = None


class _Reader:
    """Bounds-checked big-endian reads over one handshake message; any overrun is a ``HelloError``."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int, what: str) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            raise HelloError(f"ClientHello truncated in {what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack(">H", self.take(2, what))[0]
        return value

    def vector8(self, what: str) -> bytes:
        return self.take(self.u8(what), what)

    def vector16(self, what: str) -> bytes:
        return self.take(self.u16(what), what)

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)


def _handshake_message(data: bytes, max_bytes: int) -> bytes | None:
    """Reassemble the first handshake message from the handshake records at the start of ``data``."""
    fragments = bytearray()
    pos = 0
    while True:
        if len(fragments) >= 4:
            wanted = 4 + int.from_bytes(fragments[1:4], "big")
            if wanted > max_bytes:
                raise HelloError(f"ClientHello of {wanted} bytes is larger than {max_bytes}")
            if len(fragments) >= wanted:
                return bytes(fragments[:wanted])
        header = data[pos : pos + RECORD_HEADER_BYTES]
        if header and header[0] != CONTENT_HANDSHAKE:
            raise HelloError("not a TLS handshake record")
        if len(header) >= 2 and header[1] != 3:
            raise HelloError("not a TLS record version")
        if len(header) < RECORD_HEADER_BYTES:
            return None
        length = int.from_bytes(header[3:5], "big")
        if not 0 < length <= MAX_RECORD_BYTES:
            raise HelloError(f"TLS record length {length} out of range")
        fragment = data[pos + RECORD_HEADER_BYTES : pos + RECORD_HEADER_BYTES + length]
        if not fragments and fragment and fragment[0] != HANDSHAKE_CLIENT_HELLO:
            raise HelloError("the first handshake message is not a ClientHello")
        fragments += fragment
        if len(fragment) < length:
            if len(fragments) >= 4 and 4 + int.from_bytes(fragments[1:4], "big") > max_bytes:
                raise HelloError(f"ClientHello larger than {max_bytes} bytes")
            return None
        pos += RECORD_HEADER_BYTES + length


def _parse_body(body: bytes) -> ClientHello:
    reader = _Reader(body)
    reader.take(2 + 32, "version and random")
    session_id = reader.vector8("session id")
    if len(session_id) > 32:
        raise HelloError("ClientHello session id longer than 32 bytes")
    suites = reader.vector16("cipher suites")
    if not suites or len(suites) % 2:
        raise HelloError("ClientHello cipher suites malformed")
    if not reader.vector8("compression methods"):
        raise HelloError("ClientHello offers no compression method")
    if reader.done:
        return ClientHello(server_name=None, alpn=None)
    extensions = _Reader(reader.vector16("extensions"))
    if not reader.done:
        raise HelloError("bytes after the ClientHello extensions")
    server_name: str | None = None
    alpn: tuple[str, ...] | None = None
    seen: set[int] = set()
    while not extensions.done:
        kind = extensions.u16("extension type")
        data = extensions.vector16("extension")
        if kind in seen:
            continue  # a duplicate is the TLS stack's to refuse; routing keeps the first
        seen.add(kind)
        if kind == EXTENSION_SERVER_NAME:
            server_name = _server_name(data)
        elif kind == EXTENSION_ALPN:
            alpn = _alpn(data)
    return ClientHello(server_name=server_name, alpn=alpn)


def _server_name(data: bytes) -> str | None:
    reader = _Reader(data)
    names = _Reader(reader.vector16("server name list"))
    if not reader.done:
        raise HelloError("bytes after the server name list")
    first: str | None = None
    while not names.done:
        name_type = names.u8("server name type")
        name = names.vector16("server name")
        if name_type == NAME_TYPE_HOST_NAME and first is None:
            first = name.decode("latin-1")
    return first


def _alpn(data: bytes) -> tuple[str, ...]:
    reader = _Reader(data)
    protocols = _Reader(reader.vector16("ALPN list"))
    if not reader.done:
        raise HelloError("bytes after the ALPN list")
    offered: list[str] = []
    while not protocols.done:
        name = protocols.vector8("ALPN protocol")
        if not name:
            raise HelloError("empty ALPN protocol name")
        offered.append(name.decode("latin-1"))
    return tuple(offered)


def parse_client_hello(data: bytes, *, max_bytes: int = MAX_HELLO_BYTES) -> ClientHello | None:
    """Read the ClientHello at the start of ``data``: None while incomplete, else the hello or ``HelloError``.

    Bytes after the ClientHello (a client may send more before the server answers) are ignored. Raises
    ``HelloError`` when ``data`` cannot start a ClientHello, or when the hello (or the bytes still without a
    complete one) would exceed ``max_bytes``.
    """
    message = _handshake_message(data, max_bytes)
    if message is None:
        if len(data) >= max_bytes:
            raise HelloError(f"no complete ClientHello within {max_bytes} bytes")
        return None
    return _parse_body(message[4:])


def parse_dst_info(label: str) -> DstInfo | NameRefused:
    """Parse a first label ``<id>[-<port>][s|g]`` the way dstack-gateway's ``parse_dst_info`` does."""
    parts = label.split("-")
    app_id = parts[0]
    if not app_id:
        return NameRefused("bad_name", "the id is empty")
    if len(parts) > 2:
        return NameRefused("bad_name", "more than one '-' in the first label")
    is_tls = is_h2 = False
    port: int | None = None
    if len(parts) == 2:
        port_text = parts[1]
        if port_text.endswith("g"):
            port_text, is_h2 = port_text[:-1], True
        if port_text.endswith("s"):
            port_text, is_tls = port_text[:-1], True
        if is_tls and is_h2:
            return NameRefused("bad_name", "the suffixes s and g together")
        if port_text:
            if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
                return NameRefused("bad_name", "the port is not a number from 0 to 65535")
            port = int(port_text)
    if port is None:
        port = DEFAULT_TLS_PORT if is_tls else DEFAULT_PORT
    kind: RouteKind = "passthrough" if is_tls else "h2" if is_h2 else "terminate"
    return DstInfo(id=app_id, port=port, kind=kind)


def route_for(server_name: str, domain: str) -> DstInfo | NameRefused:
    """Route an SNI name (any case) under ``*.<domain>``: the first label's ``DstInfo``, or why not."""
    name = server_name.lower()
    label, dot, rest = name.partition(".")
    if not dot:
        return NameRefused("bad_name", "the name has no dot")
    if rest != domain.lower():
        return NameRefused("foreign_domain", "the name is not under the gateway's domain")
    dst = parse_dst_info(label)
    if isinstance(dst, DstInfo) and dst.id in RESERVED_IDS:
        return NameRefused("reserved_id", f"{dst.id!r} is reserved by the gateway", kind=dst.kind)
    return dst
