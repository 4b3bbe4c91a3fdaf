"""The indexer⇄sidecar push protocol, version 1: messages, their JSON form, the signed bytes, the verifier.

Owns the message values (``Hello``, ``Welcome``, ``Event``, ``Checkpoint``, ``Ack``, ``Close``), their
JSON text form (``encode`` / ``decode``), the exact bytes each signature covers (``signed_bytes``), the
signing helpers (``sign_hello``, ``sign_event``, ``sign_checkpoint`` and the indexer-side ``PushSigner``),
the indexer's hello check (``verify_hello``) and the client's stream check (``PushVerifier``). This is the
ONE implementation of the protocol: the indexer and the sidecar both import it. docs/protocol.md is its
specification (with test vectors asserted by tests/unit/test_indexerwire.py).

Must not do I/O, read a clock or draw random numbers (nonces and session ids are passed in), or let key
material into a repr or an exception message (seeds travel as ``SecretBytes``). Cursor semantics are those
of ``sidecar.core.cursor`` exactly: after an event the client's cursor is ``(block, log_index,
block_hash)`` of its log, after a checkpoint it is ``Cursor.through(block, block_hash)``; the push stream
and the poller share one persisted cursor.

Every message is one WebSocket text frame holding one JSON object with ``"v": 1`` and ``"type"``; every
binary value is lowercase 0x-prefixed hex; integers are JSON integers. Signed bytes are a fixed binary
layout (domain separator, then fields in a fixed order; integers 8-byte big-endian two's complement; the
log's topics prefixed by a one-byte count, its data by a four-byte length) — never the JSON text.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sidecar.core.cursor import BEFORE_BLOCK, WHOLE_BLOCK, Cursor, CursorError, is_after
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.model import ChainLog

VERSION = 1
PROTOCOL_VERSION = VERSION
DOMAIN_HELLO = b"attestmesh/indexer-hello/v1\x00"
DOMAIN_EVENT = b"attestmesh/indexer-event/v1\x00"
DOMAIN_CHECKPOINT = b"attestmesh/indexer-checkpoint/v1\x00"

MAX_FRAME_BYTES = 64 * 1024
MAX_TOPICS = 4
MAX_DATA_BYTES = 16 * 1024
MAX_DETAIL_CHARS = 256
NONCE_BYTES = 16
SESSION_BYTES = 16
SIGNATURE_BYTES = 64
DEFAULT_HELLO_FRESHNESS_MS = 30_000
MAX_INT = 2**63 - 1  # every wire integer fits a signed 64-bit integer
MAX_LOG_INDEX = WHOLE_BLOCK - 1  # a real log index is never the whole-block sentinel

CloseReason = Literal["overflow", "unauthorized", "malformed", "protocol", "shutdown", "reorg", "unavailable"]
CLOSE_REASONS: frozenset[str] = frozenset(
    {"overflow", "unauthorized", "malformed", "protocol", "shutdown", "reorg", "unavailable"}
)
HelloRefusal = Literal["wrong_indexer", "bad_signature", "stale", "future"]
RejectReason = Literal[
    "bad_signature", "wrong_indexer", "wrong_cluster", "gap", "replay", "out_of_order", "reorg", "malformed"
]

_I64 = struct.Struct(">q")
_U32 = struct.Struct(">I")
_HEX_DIGITS = frozenset("0123456789abcdef")


class WireError(ValueError):
    """A message that cannot be encoded or decoded; the text is a short reason and never holds input data."""


# --- values ------------------------------------------------------------------------------------------------


def _check_int(value: object, lo: int, hi: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WireError(f"{what} must be an integer in [{lo}, {hi}]")


def _check_bytes(value: object, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise WireError(f"{what} must be {length} bytes")


def _check_type(value: object, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise WireError(f"{what} must be a {kind.__name__}")


def _check_cursor(cursor: object, what: str) -> None:
    if not isinstance(cursor, Cursor):
        raise WireError(f"{what} must be a Cursor")
    _check_int(cursor.block, 0, MAX_INT, f"{what} block")


def _check_signature(value: object) -> None:
    _check_bytes(value, SIGNATURE_BYTES, "signature")


@dataclass(frozen=True, slots=True)
class Hello:
    """Client → indexer, first frame: who subscribes, to which cluster, from where; signed by the member."""

    cluster: Address
    member_id: MemberId
    indexer: Bytes32  # the indexer public key the client read from the registry (the hello's audience)
    cursor: Cursor | None  # None: replay from the member's registration block
    timestamp_ms: int
    nonce: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_type(self.cluster, Address, "cluster")
        _check_type(self.member_id, MemberId, "member id")
        _check_type(self.indexer, Bytes32, "indexer")
        if self.cursor is not None:
            _check_cursor(self.cursor, "cursor")
        _check_int(self.timestamp_ms, 0, MAX_INT, "timestamp_ms")
        _check_bytes(self.nonce, NONCE_BYTES, "nonce")
        _check_signature(self.signature)


@dataclass(frozen=True, slots=True)
class Welcome:
    """Indexer → client, first frame: the session, the indexer's key, its head and where the stream starts."""

    session: bytes
    indexer: Bytes32
    head: int
    protocol: int
    start: Cursor  # the hello's cursor, or Cursor.start(registration block): the first message's prev

    def __post_init__(self) -> None:
        _check_bytes(self.session, SESSION_BYTES, "session")
        _check_type(self.indexer, Bytes32, "indexer")
        _check_int(self.head, 0, MAX_INT, "head")
        _check_int(self.protocol, PROTOCOL_VERSION, PROTOCOL_VERSION, "protocol")
        _check_cursor(self.start, "start")


def _check_log(log: object) -> None:
    if not isinstance(log, ChainLog):
        raise WireError("log must be a ChainLog")
    _check_type(log.address, Address, "log address")
    _check_int(log.block_number, 0, MAX_INT, "log block_number")
    _check_type(log.block_hash, Bytes32, "log block_hash")
    if log.block_hash.is_zero:
        raise WireError("log block_hash must not be zero")
    _check_int(log.log_index, 0, MAX_LOG_INDEX, "log log_index")
    _check_type(log.tx_hash, Bytes32, "log tx_hash")
    if not isinstance(log.topics, tuple) or len(log.topics) > MAX_TOPICS:
        raise WireError(f"log topics must be a tuple of at most {MAX_TOPICS}")
    for topic in log.topics:
        _check_type(topic, Bytes32, "log topic")
    if not isinstance(log.data, bytes) or len(log.data) > MAX_DATA_BYTES:
        raise WireError(f"log data must be at most {MAX_DATA_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Event:
    """Indexer → client: one confirmed log of the cluster, in sequence; signed by the indexer."""

    cluster: Address
    session: bytes
    seq: int
    prev: Cursor  # the cursor the client must be at before this event
    log: ChainLog
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_type(self.cluster, Address, "cluster")
        _check_bytes(self.session, SESSION_BYTES, "session")
        _check_int(self.seq, 1, MAX_INT, "seq")
        _check_cursor(self.prev, "prev")
        _check_log(self.log)
        _check_signature(self.signature)

    @property
    def cursor(self) -> Cursor:
        """The client's cursor after handling this event."""
        return Cursor(self.log.block_number, self.log.log_index, self.log.block_hash)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Indexer → client: every log of the cluster up to and including ``block`` has been sent."""

    cluster: Address
    session: bytes
    seq: int
    prev: Cursor
    block: int
    block_hash: Bytes32
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_type(self.cluster, Address, "cluster")
        _check_bytes(self.session, SESSION_BYTES, "session")
        _check_int(self.seq, 1, MAX_INT, "seq")
        _check_cursor(self.prev, "prev")
        _check_int(self.block, 0, MAX_INT, "through block")
        _check_type(self.block_hash, Bytes32, "through block_hash")
        if self.block_hash.is_zero:
            raise WireError("through block_hash must not be zero")
        _check_signature(self.signature)

    @property
    def cursor(self) -> Cursor:
        """The client's cursor after handling this checkpoint."""
        return Cursor.through(self.block, self.block_hash)


@dataclass(frozen=True, slots=True)
class Ack:
    """Client → indexer: it has handled and persisted everything through ``seq``; it stands at ``cursor``."""

    seq: int
    cursor: Cursor

    def __post_init__(self) -> None:
        _check_int(self.seq, 1, MAX_INT, "seq")
        _check_cursor(self.cursor, "cursor")


@dataclass(frozen=True, slots=True)
class Close:
    """The last frame: why the stream ends. Unsigned, so never trusted for data; the client reconnects."""

    reason: CloseReason
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in CLOSE_REASONS:
            raise WireError("unknown close reason")
        if not isinstance(self.detail, str) or len(self.detail) > MAX_DETAIL_CHARS:
            raise WireError(f"close detail must be a string of at most {MAX_DETAIL_CHARS} characters")


Message: TypeAlias = Hello | Welcome | Event | Checkpoint | Ack | Close


# --- signed bytes ------------------------------------------------------------------------------------------


def _i64(value: int) -> bytes:
    return _I64.pack(value)


def _cursor_bytes(cursor: Cursor) -> bytes:
    return _i64(cursor.block) + _i64(cursor.log_index) + cursor.block_hash.raw


def _hello_bytes(msg: Hello) -> bytes:
    cursor = b"\x00" + bytes(48) if msg.cursor is None else b"\x01" + _cursor_bytes(msg.cursor)
    return (
        DOMAIN_HELLO
        + msg.cluster.raw
        + msg.member_id.raw
        + msg.indexer.raw
        + cursor
        + _i64(msg.timestamp_ms)
        + msg.nonce
    )


def _log_bytes(log: ChainLog) -> bytes:
    return (
        _i64(log.block_number)
        + log.block_hash.raw
        + _i64(log.log_index)
        + log.tx_hash.raw
        + log.address.raw
        + bytes([len(log.topics)])
        + b"".join(t.raw for t in log.topics)
        + _U32.pack(len(log.data))
        + log.data
    )


def signed_bytes(msg: Hello | Event | Checkpoint) -> bytes:
    """Return the exact bytes a message's signature covers (its domain separator included)."""
    if isinstance(msg, Hello):
        return _hello_bytes(msg)
    head = msg.cluster.raw + msg.session + _i64(msg.seq) + _cursor_bytes(msg.prev)
    if isinstance(msg, Event):
        return DOMAIN_EVENT + head + _log_bytes(msg.log)
    return DOMAIN_CHECKPOINT + head + _i64(msg.block) + msg.block_hash.raw


def _private(seed: SecretBytes, what: str) -> Ed25519PrivateKey:
    raw = seed.reveal()
    if len(raw) != 32:
        raise WireError(f"{what} must be a 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(raw)


def verify_signature(msg: Hello | Event | Checkpoint, public_key: Bytes32) -> bool:
    """Tell whether the message's signature verifies against the Ed25519 public key."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key.raw).verify(msg.signature, signed_bytes(msg))
    except (InvalidSignature, ValueError):
        return False
    return True


_NO_SIGNATURE = bytes(SIGNATURE_BYTES)


def sign_hello(
    *,
    cluster: Address,
    member_id: MemberId,
    indexer: Bytes32,
    cursor: Cursor | None,
    timestamp_ms: int,
    nonce: bytes,
    identity_key: SecretBytes,
) -> Hello:
    """Build a hello signed with the member's Ed25519 identity seed (``nonce``: 16 fresh random bytes)."""
    unsigned = Hello(cluster, member_id, indexer, cursor, timestamp_ms, nonce, _NO_SIGNATURE)
    signature = _private(identity_key, "identity key").sign(signed_bytes(unsigned))
    return Hello(cluster, member_id, indexer, cursor, timestamp_ms, nonce, signature)


def sign_event(
    *, cluster: Address, session: bytes, seq: int, prev: Cursor, log: ChainLog, indexer_key: SecretBytes
) -> Event:
    """Build an event signed with the indexer's Ed25519 seed."""
    unsigned = Event(cluster, session, seq, prev, log, _NO_SIGNATURE)
    return Event(
        cluster, session, seq, prev, log, _private(indexer_key, "indexer key").sign(signed_bytes(unsigned))
    )


def sign_checkpoint(
    *,
    cluster: Address,
    session: bytes,
    seq: int,
    prev: Cursor,
    block: int,
    block_hash: Bytes32,
    indexer_key: SecretBytes,
) -> Checkpoint:
    """Build a checkpoint ("every log through ``block`` sent") signed with the indexer's Ed25519 seed."""
    unsigned = Checkpoint(cluster, session, seq, prev, block, block_hash, _NO_SIGNATURE)
    signature = _private(indexer_key, "indexer key").sign(signed_bytes(unsigned))
    return Checkpoint(cluster, session, seq, prev, block, block_hash, signature)


def verify_hello(
    hello: Hello, identity_pub: Bytes32, now_ms: int, freshness_ms: int, *, indexer_pub: Bytes32
) -> HelloRefusal | None:
    """Judge a hello (indexer side); ``identity_pub`` is the member's key read from the chain.

    The caller has already checked on chain that ``hello.member_id`` is a member of ``hello.cluster``.
    Checked in order: addressed to this indexer (``wrong_indexer``), signature (``bad_signature``),
    timestamp within ``freshness_ms`` of ``now_ms`` either way (``stale`` / ``future``).
    """
    if hello.indexer != indexer_pub:
        return "wrong_indexer"
    if not verify_signature(hello, identity_pub):
        return "bad_signature"
    if now_ms - hello.timestamp_ms > freshness_ms:
        return "stale"
    if hello.timestamp_ms - now_ms > freshness_ms:
        return "future"
    return None


# --- JSON ---------------------------------------------------------------------------------------------------


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def _cursor_json(cursor: Cursor) -> dict[str, Any]:
    return {"block": cursor.block, "log_index": cursor.log_index, "block_hash": _hex(cursor.block_hash.raw)}


def _log_json(log: ChainLog) -> dict[str, Any]:
    return {
        "block_number": log.block_number,
        "block_hash": _hex(log.block_hash.raw),
        "log_index": log.log_index,
        "tx_hash": _hex(log.tx_hash.raw),
        "address": _hex(log.address.raw),
        "topics": [_hex(t.raw) for t in log.topics],
        "data": _hex(log.data),
    }


def _to_json(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Hello):
        return {
            "type": "hello",
            "cluster": _hex(msg.cluster.raw),
            "member_id": _hex(msg.member_id.raw),
            "indexer": _hex(msg.indexer.raw),
            "cursor": None if msg.cursor is None else _cursor_json(msg.cursor),
            "timestamp_ms": msg.timestamp_ms,
            "nonce": _hex(msg.nonce),
            "signature": _hex(msg.signature),
        }
    if isinstance(msg, Welcome):
        return {
            "type": "welcome",
            "session": _hex(msg.session),
            "indexer": _hex(msg.indexer.raw),
            "head": msg.head,
            "protocol": msg.protocol,
            "start": _cursor_json(msg.start),
        }
    if isinstance(msg, Event):
        return {
            "type": "event",
            "cluster": _hex(msg.cluster.raw),
            "session": _hex(msg.session),
            "seq": msg.seq,
            "prev": _cursor_json(msg.prev),
            "log": _log_json(msg.log),
            "signature": _hex(msg.signature),
        }
    if isinstance(msg, Checkpoint):
        return {
            "type": "checkpoint",
            "cluster": _hex(msg.cluster.raw),
            "session": _hex(msg.session),
            "seq": msg.seq,
            "prev": _cursor_json(msg.prev),
            "through": {"block": msg.block, "block_hash": _hex(msg.block_hash.raw)},
            "signature": _hex(msg.signature),
        }
    if isinstance(msg, Ack):
        return {"type": "ack", "seq": msg.seq, "cursor": _cursor_json(msg.cursor)}
    if isinstance(msg, Close):
        return {"type": "close", "reason": msg.reason, "detail": msg.detail}
    raise WireError("not a protocol message")


def encode(msg: Message) -> str:
    """Return the message as the JSON text of one WebSocket text frame."""
    text = json.dumps({"v": VERSION, **_to_json(msg)}, separators=(",", ":"), ensure_ascii=True)
    if len(text) > MAX_FRAME_BYTES:
        raise WireError("message exceeds the frame limit")
    return text


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise WireError("duplicate key")
    return obj


def _no_constants(_: str) -> Any:
    raise WireError("NaN and Infinity are not JSON")


def _object(value: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{what} must be an object")
    if set(value) != keys:
        raise WireError(f"{what} must have exactly: " + ", ".join(sorted(keys)))
    return value


def _int(value: object, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WireError(f"{what} must be an integer in [{lo}, {hi}]")
    return value


def _hex_body(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise WireError(f"{what} must be 0x-prefixed lowercase hex")
    body = value[2:]
    if len(body) % 2 or not _HEX_DIGITS.issuperset(body):
        raise WireError(f"{what} must be 0x-prefixed lowercase hex")
    return body


def _fixed(value: object, length: int, what: str) -> bytes:
    body = _hex_body(value, what)
    if len(body) != 2 * length:
        raise WireError(f"{what} must be {length} bytes")
    return bytes.fromhex(body)


def _cursor(value: object, what: str) -> Cursor:
    obj = _object(value, _CURSOR_KEYS, what)
    block = _int(obj["block"], 0, MAX_INT, f"{what} block")
    log_index = _int(obj["log_index"], BEFORE_BLOCK, WHOLE_BLOCK, f"{what} log_index")
    try:
        return Cursor(block, log_index, Bytes32(_fixed(obj["block_hash"], 32, f"{what} block_hash")))
    except CursorError:
        raise WireError(f"{what} is not a cursor") from None


def _log(value: object) -> ChainLog:
    obj = _object(value, _LOG_KEYS, "log")
    topics = obj["topics"]
    if not isinstance(topics, list) or len(topics) > MAX_TOPICS:
        raise WireError(f"log topics must be a list of at most {MAX_TOPICS}")
    data = obj["data"]
    if isinstance(data, str) and len(data) > 2 + 2 * MAX_DATA_BYTES:
        raise WireError(f"log data must be at most {MAX_DATA_BYTES} bytes")
    return ChainLog(
        address=Address(_fixed(obj["address"], 20, "log address")),
        topics=tuple(Bytes32(_fixed(t, 32, "log topic")) for t in topics),
        data=bytes.fromhex(_hex_body(data, "log data")),
        block_number=_int(obj["block_number"], 0, MAX_INT, "log block_number"),
        block_hash=Bytes32(_fixed(obj["block_hash"], 32, "log block_hash")),
        tx_hash=Bytes32(_fixed(obj["tx_hash"], 32, "log tx_hash")),
        log_index=_int(obj["log_index"], 0, MAX_LOG_INDEX, "log log_index"),
    )


def _parse_hello(obj: dict[str, Any]) -> Hello:
    cursor = obj["cursor"]
    return Hello(
        cluster=Address(_fixed(obj["cluster"], 20, "cluster")),
        member_id=MemberId(_fixed(obj["member_id"], 32, "member_id")),
        indexer=Bytes32(_fixed(obj["indexer"], 32, "indexer")),
        cursor=None if cursor is None else _cursor(cursor, "cursor"),
        timestamp_ms=_int(obj["timestamp_ms"], 0, MAX_INT, "timestamp_ms"),
        nonce=_fixed(obj["nonce"], NONCE_BYTES, "nonce"),
        signature=_fixed(obj["signature"], SIGNATURE_BYTES, "signature"),
    )


def _parse_welcome(obj: dict[str, Any]) -> Welcome:
    return Welcome(
        session=_fixed(obj["session"], SESSION_BYTES, "session"),
        indexer=Bytes32(_fixed(obj["indexer"], 32, "indexer")),
        head=_int(obj["head"], 0, MAX_INT, "head"),
        protocol=_int(obj["protocol"], PROTOCOL_VERSION, PROTOCOL_VERSION, "protocol"),
        start=_cursor(obj["start"], "start"),
    )


def _parse_event(obj: dict[str, Any]) -> Event:
    return Event(
        cluster=Address(_fixed(obj["cluster"], 20, "cluster")),
        session=_fixed(obj["session"], SESSION_BYTES, "session"),
        seq=_int(obj["seq"], 1, MAX_INT, "seq"),
        prev=_cursor(obj["prev"], "prev"),
        log=_log(obj["log"]),
        signature=_fixed(obj["signature"], SIGNATURE_BYTES, "signature"),
    )


def _parse_checkpoint(obj: dict[str, Any]) -> Checkpoint:
    through = _object(obj["through"], _THROUGH_KEYS, "through")
    return Checkpoint(
        cluster=Address(_fixed(obj["cluster"], 20, "cluster")),
        session=_fixed(obj["session"], SESSION_BYTES, "session"),
        seq=_int(obj["seq"], 1, MAX_INT, "seq"),
        prev=_cursor(obj["prev"], "prev"),
        block=_int(through["block"], 0, MAX_INT, "through block"),
        block_hash=Bytes32(_fixed(through["block_hash"], 32, "through block_hash")),
        signature=_fixed(obj["signature"], SIGNATURE_BYTES, "signature"),
    )


def _parse_ack(obj: dict[str, Any]) -> Ack:
    return Ack(seq=_int(obj["seq"], 1, MAX_INT, "seq"), cursor=_cursor(obj["cursor"], "cursor"))


def _parse_close(obj: dict[str, Any]) -> Close:
    reason, detail = obj["reason"], obj["detail"]
    if not isinstance(reason, str) or reason not in CLOSE_REASONS:
        raise WireError("unknown close reason")
    if not isinstance(detail, str):
        raise WireError("close detail must be a string")
    return Close(cast(CloseReason, reason), detail)


_CURSOR_KEYS = frozenset({"block", "log_index", "block_hash"})
_THROUGH_KEYS = frozenset({"block", "block_hash"})
_LOG_KEYS = frozenset({"block_number", "block_hash", "log_index", "tx_hash", "address", "topics", "data"})
_ENVELOPE = frozenset({"v", "type"})
_PARSERS: dict[str, tuple[frozenset[str], Any]] = {
    "hello": (
        _ENVELOPE | {"cluster", "member_id", "indexer", "cursor", "timestamp_ms", "nonce", "signature"},
        _parse_hello,
    ),
    "welcome": (_ENVELOPE | {"session", "indexer", "head", "protocol", "start"}, _parse_welcome),
    "event": (_ENVELOPE | {"cluster", "session", "seq", "prev", "log", "signature"}, _parse_event),
    "checkpoint": (
        _ENVELOPE | {"cluster", "session", "seq", "prev", "through", "signature"},
        _parse_checkpoint,
    ),
    "ack": (_ENVELOPE | {"seq", "cursor"}, _parse_ack),
    "close": (_ENVELOPE | {"reason", "detail"}, _parse_close),
}


def decode(text: str | bytes) -> Message:
    """Parse one frame; raise WireError unless it is exactly a v1 message (signatures are not checked)."""
    if len(text) > MAX_FRAME_BYTES:
        raise WireError("frame exceeds the size limit")
    try:
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if len(raw) > MAX_FRAME_BYTES:
            raise WireError("frame exceeds the size limit")
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except WireError:
        raise
    except (ValueError, RecursionError):  # UnicodeError and JSONDecodeError are ValueErrors
        raise WireError("frame is not UTF-8 JSON") from None
    if not isinstance(obj, dict) or not set(obj) >= _ENVELOPE:
        raise WireError('message must be an object with "v" and "type"')
    version = obj["v"]
    if type(version) is not int or version != VERSION:
        raise WireError("unsupported protocol version")
    kind = obj["type"]
    if not isinstance(kind, str) or kind not in _PARSERS:
        raise WireError("unknown message type")
    keys, parse = _PARSERS[kind]
    message: Message = parse(_object(obj, keys, kind))
    return message


# --- the indexer's side of a session -----------------------------------------------------------------------


@dataclass(slots=True)
class PushSigner:
    """Indexer side of one session: numbers and signs events and checkpoints from the welcome's start on."""

    cluster: Address
    session: bytes
    cursor: Cursor  # the position the client will be at after everything signed so far
    indexer_key: SecretBytes = field(repr=False)
    seq: int = 0

    def __post_init__(self) -> None:
        _check_bytes(self.session, SESSION_BYTES, "session")
        _check_cursor(self.cursor, "start")

    def event(self, log: ChainLog) -> Event:
        """Sign the next event; the log must lie after the current position."""
        if not is_after(log.block_number, log.log_index, self.cursor):
            raise WireError("event does not lie after the session's position")
        msg = sign_event(
            cluster=self.cluster,
            session=self.session,
            seq=self.seq + 1,
            prev=self.cursor,
            log=log,
            indexer_key=self.indexer_key,
        )
        self.seq, self.cursor = msg.seq, msg.cursor
        return msg

    def checkpoint(self, block: int, block_hash: Bytes32) -> Checkpoint | None:
        """Sign a checkpoint through ``block``, or return None when it would not advance the position."""
        if not is_after(block, WHOLE_BLOCK, self.cursor):
            return None
        msg = sign_checkpoint(
            cluster=self.cluster,
            session=self.session,
            seq=self.seq + 1,
            prev=self.cursor,
            block=block,
            block_hash=block_hash,
            indexer_key=self.indexer_key,
        )
        self.seq, self.cursor = msg.seq, msg.cursor
        return msg


# --- the client's side of a session ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a pushed message is refused; any rejection means the stream must be torn down."""

    reason: RejectReason


@dataclass(frozen=True, slots=True)
class Verified:
    """A message that passed every check; hand it back to ``PushVerifier.accept`` once it is handled."""

    message: Event | Checkpoint
    cursor: Cursor  # the client's cursor once the message is accepted


@dataclass(slots=True)
class PushVerifier:
    """Client side of one session: checks the welcome and every event and checkpoint against its state.

    The cursor and seq change only through ``accept``; after any rejection every later check is rejected
    too (the stream must be torn down and a new session started from the persisted cursor).
    """

    cluster: Address
    indexer_pub: Bytes32
    start: Cursor
    cursor: Cursor = field(init=False)
    seq: int = field(default=0, init=False)
    session: bytes | None = field(default=None, init=False)
    failed: Rejection | None = field(default=None, init=False)
    _pending: Verified | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.cursor = self.start

    def _reject(self, reason: RejectReason) -> Rejection:
        if self.failed is None:
            self.failed = Rejection(reason)
        self._pending = None
        return self.failed

    def welcome(self, msg: Message) -> Rejection | None:
        """Check the session's first frame: a welcome from the registry's key, starting at our cursor."""
        if self.failed is not None:
            return self.failed
        if not isinstance(msg, Welcome) or self.session is not None:
            return self._reject("malformed")
        if msg.indexer != self.indexer_pub:
            return self._reject("wrong_indexer")
        if msg.start != self.cursor:
            return self._reject(self._position_mismatch(msg.start))
        self.session = msg.session
        return None

    def check(self, msg: Message) -> Verified | Rejection:
        """Check one pushed message; nothing changes until ``accept``."""
        if self.failed is not None:
            return self.failed
        if not isinstance(msg, Event | Checkpoint):
            return self._reject("malformed")
        reason = next(self._problems(msg), None)
        if reason is not None:
            return self._reject(reason)
        self._pending = Verified(msg, msg.cursor)
        return self._pending

    def _problems(self, msg: Event | Checkpoint) -> Iterator[RejectReason]:
        """Yield the rejection reasons in order, lazily (the signature first: nothing unsigned is read)."""
        if self.session is None:
            yield "malformed"  # no welcome yet
        if not verify_signature(msg, self.indexer_pub):
            yield "bad_signature"
        if msg.cluster != self.cluster or (isinstance(msg, Event) and msg.log.address != self.cluster):
            yield "wrong_cluster"
        if msg.session != self.session or msg.seq <= self.seq:
            yield "replay"
        if msg.seq > self.seq + 1:
            yield "gap"
        if msg.prev != self.cursor:
            yield self._position_mismatch(msg.prev)
        after = msg.cursor
        if not is_after(after.block, after.log_index, self.cursor):
            yield "out_of_order"
        here = self.cursor
        if after.block == here.block and not here.block_hash.is_zero and after.block_hash != here.block_hash:
            yield "reorg"

    def _position_mismatch(self, claimed: Cursor) -> RejectReason:
        here = self.cursor
        if (claimed.block, claimed.log_index) == (here.block, here.log_index):
            return "reorg"  # same position, another block hash
        return "gap" if is_after(claimed.block, claimed.log_index, here) else "replay"

    def accept(self, verified: Verified) -> Cursor:
        """Advance past a verified message the client has handled and persisted; return the new cursor."""
        if self.failed is not None or verified is not self._pending:
            raise ValueError("accept() takes the latest result of check() on a healthy stream")
        self.seq, self.cursor, self._pending = verified.message.seq, verified.cursor, None
        return self.cursor

    def ack(self) -> Ack | None:
        """Return the ack for everything accepted so far (None before the first accepted message)."""
        return None if self.seq == 0 else Ack(self.seq, self.cursor)
