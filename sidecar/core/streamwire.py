"""The gateway transport's stream protocol, version 1: frames, the dialer's hello and the acceptor's gate.

Through the dstack gateway (TLS passthrough, routed by SNI) one TCP stream per member pair carries
WireGuard datagrams both ways (DESIGN §4 "Transport"). This module owns what travels on that stream: the
frame format (``encode_frame`` and the incremental ``FrameReader``), the ``Hello`` the dialer sends first
(``encode_hello`` signs it with the dialer's identity key, ``decode_hello`` parses it) and ``HelloGate``,
the acceptor's decision to bind the stream to a peer. Must not do I/O, read a clock or draw random numbers
(``now_ms`` and nonces are passed in), or let key material into a repr or an error message.

Frames (all integers big-endian, no padding)::

    offset  size    field
    0       1       type: 1 hello, 2 data, 3 keepalive, 4 close
    1       2       length of the payload (u16)
    3       length  payload

- ``data``: one WireGuard datagram, 1 to ``MAX_DATAGRAM_BYTES`` bytes.
- ``keepalive``: no payload; either side may send it, and it only proves the stream is alive.
- ``close``: one byte, the reason (``CLOSE_REASONS``), then the sender closes.
- ``hello``: exactly ``HELLO_BYTES`` bytes, the first frame of a stream and only from the dialer::

      offset  size  field
      0       1     version = 1
      1       20    cluster address
      21      32    dialer member id (the lower of the pair)
      53      32    acceptor member id
      85      8     timestamp_ms (u64, unix milliseconds)
      93      16    nonce (random, never reused)
      109     64    Ed25519 signature by the dialer's identity key over ``DOMAIN_HELLO`` + bytes 0..108

A frame of an unknown type, a length over the type's limit, a ``keepalive`` with a payload or an empty
``data`` is a protocol error: the reader raises ``FrameError`` with the reason and the stream is closed.

The acceptor's gate (``HelloGate.check``), in order: the hello names this cluster (``wrong_cluster``) and
this node as acceptor (``wrong_acceptor``); the dialer is a current member (``not_member``) and the lower
member id of the pair (``wrong_direction``: only one stream per pair); the signature verifies against the
dialer's on-chain identity key (``bad_signature``); the timestamp is within ``freshness_ms`` of ``now_ms``
(``stale`` / ``future``); the (dialer, nonce) pair was not accepted before within the freshness window
(``replayed``). Its state changes only on acceptance.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, cast, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import ed25519_verifies

VERSION: Final = 1
DOMAIN_HELLO: Final = b"attestmesh/transport-hello/v1\x00"

FRAME_HELLO: Final = 1
FRAME_DATA: Final = 2
FRAME_KEEPALIVE: Final = 3
FRAME_CLOSE: Final = 4
FrameType = Literal[1, 2, 3, 4]

_FRAME_HEADER = struct.Struct(">BH")
FRAME_HEADER_BYTES: Final = _FRAME_HEADER.size  # 3
MAX_DATAGRAM_BYTES: Final = 4096  # WireGuard at MTU 1420 sends at most 1452-byte datagrams
_HELLO_BODY = struct.Struct(">B20s32s32sQ16s")
NONCE_BYTES: Final = 16
SIGNATURE_BYTES: Final = 64
HELLO_BYTES: Final = _HELLO_BODY.size + SIGNATURE_BYTES  # 173
DEFAULT_FRESHNESS_MS: Final = 30_000
_U64: Final = 2**64

CloseReason = Literal["shutdown", "refused", "protocol", "idle"]
CLOSE_REASONS: Final[tuple[str, ...]] = get_args(CloseReason)
FrameProblem = Literal["oversized", "unknown_type", "malformed"]
HelloRefusal = Literal[
    "wrong_cluster", "wrong_acceptor", "not_member", "wrong_direction", "bad_signature", "stale", "future",
    "replayed",
]  # fmt: skip
HELLO_REFUSALS: Final[tuple[str, ...]] = get_args(HelloRefusal)
_MAX_PAYLOAD: Final[dict[int, int]] = {
    FRAME_HELLO: HELLO_BYTES,
    FRAME_DATA: MAX_DATAGRAM_BYTES,
    FRAME_KEEPALIVE: 0,
    FRAME_CLOSE: 1,
}


class FrameError(ValueError):
    """A stream that broke the protocol; ``reason`` names how (the stream is closed, counted by it)."""

    def __init__(self, reason: FrameProblem, detail: str) -> None:
        super().__init__(detail)
        self.reason: FrameProblem = reason


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: its type and its payload (a datagram, a hello, a close reason byte, or nothing)."""

    kind: FrameType
    payload: bytes = field(repr=False)


def encode_frame(kind: FrameType, payload: bytes = b"") -> bytes:
    """One frame on the wire; raise ``FrameError`` when the payload is not what the type allows."""
    limit = _MAX_PAYLOAD.get(kind)
    if limit is None:
        raise FrameError("unknown_type", f"unknown frame type {kind}")
    if len(payload) > limit:
        raise FrameError("oversized", f"payload of {len(payload)} bytes over the type's limit of {limit}")
    _check_payload(kind, payload)
    return _FRAME_HEADER.pack(kind, len(payload)) + payload


def data_frame(datagram: bytes) -> bytes:
    return encode_frame(FRAME_DATA, datagram)


def keepalive_frame() -> bytes:
    return encode_frame(FRAME_KEEPALIVE)


def close_frame(reason: CloseReason) -> bytes:
    return encode_frame(FRAME_CLOSE, bytes([CLOSE_REASONS.index(reason)]))


def close_reason(frame: Frame) -> CloseReason | None:
    """The reason a ``close`` frame carries (None for an unknown code, which still means close)."""
    code = frame.payload[0]
    return cast(CloseReason, CLOSE_REASONS[code]) if code < len(CLOSE_REASONS) else None


def _check_payload(kind: int, payload: bytes) -> None:
    if kind == FRAME_DATA and not payload:
        raise FrameError("malformed", "an empty data frame")
    if kind == FRAME_HELLO and len(payload) != HELLO_BYTES:
        raise FrameError("malformed", f"a hello is {HELLO_BYTES} bytes, not {len(payload)}")
    if kind == FRAME_CLOSE and len(payload) != 1:
        raise FrameError("malformed", "a close frame carries one reason byte")


class FrameReader:
    """Cuts a byte stream into frames (h11 style: feed bytes, get frames; no I/O, bounded buffer)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return every complete frame; raise ``FrameError`` on a protocol error."""
        buffer = bytes(self._buffer) + data if self._buffer else data
        frames: list[Frame] = []
        start, size = 0, len(buffer)
        try:
            while size - start >= FRAME_HEADER_BYTES:
                kind, length = _FRAME_HEADER.unpack_from(buffer, start)
                limit = _MAX_PAYLOAD.get(kind)
                if limit is None:
                    raise FrameError("unknown_type", f"unknown frame type {kind}")
                if length > limit:
                    raise FrameError(
                        "oversized", f"a frame of {length} bytes over the type's limit of {limit}"
                    )
                end = start + FRAME_HEADER_BYTES + length
                if size < end:
                    break
                payload = bytes(buffer[start + FRAME_HEADER_BYTES : end])
                _check_payload(kind, payload)
                frames.append(Frame(cast(FrameType, kind), payload))
                start = end
        finally:
            self._buffer = bytearray(buffer[start:])  # the partial frame left, copied once per feed
        return frames

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame (at most one frame's worth)."""
        return len(self._buffer)


@dataclass(frozen=True, slots=True)
class Hello:
    """The dialer's claim: this stream carries the pair (dialer, acceptor) of this cluster, now."""

    cluster: Address
    dialer: MemberId
    acceptor: MemberId
    timestamp_ms: int
    nonce: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SignedHello:
    """A decoded hello with its signature and the exact bytes the signature covers."""

    hello: Hello
    signature: bytes = field(repr=False)
    signed: bytes = field(repr=False)


def _hello_body(hello: Hello) -> bytes:
    if not 0 <= hello.timestamp_ms < _U64:
        raise ValueError("timestamp out of range")
    if len(hello.nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    return _HELLO_BODY.pack(
        VERSION, hello.cluster.raw, hello.dialer.raw, hello.acceptor.raw, hello.timestamp_ms, hello.nonce
    )


def encode_hello(hello: Hello, identity_key: SecretBytes) -> bytes:
    """The hello frame, signed with the dialer's 32-byte Ed25519 identity seed."""
    body = _hello_body(hello)
    seed = identity_key.reveal()
    if len(seed) != 32:
        raise ValueError("identity key must be a 32-byte Ed25519 seed")
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(DOMAIN_HELLO + body)
    return encode_frame(FRAME_HELLO, body + signature)


def decode_hello(frame: Frame) -> SignedHello:
    """Parse a hello frame (signature not yet checked); raise ``FrameError`` when it is not one."""
    if frame.kind != FRAME_HELLO:
        raise FrameError("malformed", "the first frame must be a hello")
    body, signature = frame.payload[:-SIGNATURE_BYTES], frame.payload[-SIGNATURE_BYTES:]
    version, cluster, dialer, acceptor, timestamp_ms, nonce = _HELLO_BODY.unpack(body)
    if version != VERSION:
        raise FrameError("malformed", f"unsupported hello version {version}")
    hello = Hello(Address(cluster), MemberId(dialer), MemberId(acceptor), timestamp_ms, nonce)
    return SignedHello(hello, signature, body)


def verify_hello_signature(signed: SignedHello, identity_pub: Bytes32) -> bool:
    """Tell whether the hello's signature verifies against the Ed25519 public key."""
    return ed25519_verifies(identity_pub, signed.signature, DOMAIN_HELLO + signed.signed)


@dataclass(slots=True)
class HelloGate:
    """The acceptor's admission of streams; remembers accepted (dialer, nonce) pairs for the window."""

    freshness_ms: int = DEFAULT_FRESHNESS_MS
    _seen: dict[tuple[MemberId, bytes], int] = field(default_factory=dict, repr=False)

    def check(
        self,
        signed: SignedHello,
        *,
        me: MemberId,
        cluster: Address,
        members: Mapping[MemberId, Bytes32],
        now_ms: int,
    ) -> HelloRefusal | None:
        """Judge one hello; ``members`` maps member id to its on-chain identity public key. None: accepted."""
        self._expire(now_ms)
        reason = next(self._problems(signed, me, cluster, members, now_ms), None)
        if reason is None:
            self._seen[(signed.hello.dialer, signed.hello.nonce)] = signed.hello.timestamp_ms
        return reason

    def _problems(
        self,
        signed: SignedHello,
        me: MemberId,
        cluster: Address,
        members: Mapping[MemberId, Bytes32],
        now_ms: int,
    ) -> Iterator[HelloRefusal]:
        """Yield the refusal reasons in order, lazily (the signature is checked only when needed)."""
        hello = signed.hello
        if hello.cluster != cluster:
            yield "wrong_cluster"
        if hello.acceptor != me:
            yield "wrong_acceptor"
        identity_pub = members.get(hello.dialer)
        if identity_pub is None:
            yield "not_member"
            return
        if not hello.dialer.raw < me.raw:
            yield "wrong_direction"
        if not verify_hello_signature(signed, identity_pub):
            yield "bad_signature"
        if now_ms - hello.timestamp_ms > self.freshness_ms:
            yield "stale"
        if hello.timestamp_ms - now_ms > self.freshness_ms:
            yield "future"
        if (hello.dialer, hello.nonce) in self._seen:
            yield "replayed"

    def _expire(self, now_ms: int) -> None:
        """Forget nonces older than the window: a hello that old is refused as stale anyway."""
        horizon = now_ms - 2 * self.freshness_ms
        for key in [k for k, ts in self._seen.items() if ts < horizon]:
            del self._seen[key]

    @property
    def remembered(self) -> int:
        """How many accepted hellos are remembered for replay protection."""
        return len(self._seen)
