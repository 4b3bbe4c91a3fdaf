"""The push protocol's JSON text form: ``encode`` a message into one frame, ``decode`` one frame strictly.

Every message is one WebSocket text frame holding one JSON object with ``"v": 2`` and ``"type"``; every
binary value is lowercase 0x-prefixed hex; integers are JSON integers. Owns ``encode`` and ``decode`` and
the strict parsing rules (exact key sets, no duplicate keys, no NaN, the frame limit).

Must not: check signatures or session state (``decode`` returns a well-formed message, nothing more), do
I/O, or quote input data in a ``WireError``.
"""

from __future__ import annotations

import json
from typing import Any, cast

from sidecar.core.cursor import BEFORE_BLOCK, WHOLE_BLOCK, Cursor, CursorError
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.indexerwire.messages import (
    CLOSE_REASONS,
    MAX_DATA_BYTES,
    MAX_FRAME_BYTES,
    MAX_INT,
    MAX_LOG_INDEX,
    MAX_TOPICS,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    SESSION_BYTES,
    SIGNATURE_BYTES,
    VERSION,
    Ack,
    Checkpoint,
    Close,
    CloseReason,
    Event,
    Hello,
    Message,
    Welcome,
    WireError,
)
from sidecar.core.model import ChainLog

_HEX_DIGITS = frozenset("0123456789abcdef")


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
            "signature": _hex(msg.signature),
        }
    if isinstance(msg, Event):
        return {
            "type": "event",
            "cluster": _hex(msg.cluster.raw),
            "prev": _cursor_json(msg.prev),
            "log": _log_json(msg.log),
            "signature": _hex(msg.signature),
        }
    if isinstance(msg, Checkpoint):
        return {
            "type": "checkpoint",
            "cluster": _hex(msg.cluster.raw),
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
        signature=_fixed(obj["signature"], SIGNATURE_BYTES, "signature"),
    )


def _parse_event(obj: dict[str, Any]) -> Event:
    return Event(
        cluster=Address(_fixed(obj["cluster"], 20, "cluster")),
        prev=_cursor(obj["prev"], "prev"),
        log=_log(obj["log"]),
        signature=_fixed(obj["signature"], SIGNATURE_BYTES, "signature"),
    )


def _parse_checkpoint(obj: dict[str, Any]) -> Checkpoint:
    through = _object(obj["through"], _THROUGH_KEYS, "through")
    return Checkpoint(
        cluster=Address(_fixed(obj["cluster"], 20, "cluster")),
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
    "welcome": (
        _ENVELOPE | {"session", "indexer", "head", "protocol", "start", "signature"},
        _parse_welcome,
    ),
    "event": (_ENVELOPE | {"cluster", "prev", "log", "signature"}, _parse_event),
    "checkpoint": (_ENVELOPE | {"cluster", "prev", "through", "signature"}, _parse_checkpoint),
    "ack": (_ENVELOPE | {"seq", "cursor"}, _parse_ack),
    "close": (_ENVELOPE | {"reason", "detail"}, _parse_close),
}


def decode(text: str | bytes) -> Message:
    """Parse one frame; raise WireError unless it is exactly a v2 message (signatures are not checked)."""
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
