"""The push protocol's message values: what each of the six messages holds, and the limits on it.

Owns the protocol constants (``VERSION``, the size limits, ``MAX_INT``), ``WireError``, the close reasons and
the six frozen message values (``Hello``, ``Welcome``, ``Event``, ``Checkpoint``, ``Ack``, ``Close``), each
of which validates itself on construction, so no malformed value exists to be encoded or signed.

Must not: know the JSON text form (``codec``), the signed bytes (``signing``) or any session state
(``session``); do I/O, read a clock, or show a signature in a repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from sidecar.core.cursor import WHOLE_BLOCK, Cursor
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import ChainLog

VERSION = 2
PROTOCOL_VERSION = VERSION

MAX_FRAME_BYTES = 64 * 1024
MAX_TOPICS = 4
MAX_DATA_BYTES = 16 * 1024
MAX_DETAIL_CHARS = 256
NONCE_BYTES = 16
SESSION_BYTES = 16
SIGNATURE_BYTES = 64
MAX_INT = 2**63 - 1  # every wire integer fits a signed 64-bit integer
MAX_LOG_INDEX = WHOLE_BLOCK - 1  # a real log index is never the whole-block sentinel

CloseReason = Literal["overflow", "unauthorized", "malformed", "protocol", "shutdown", "reorg", "unavailable"]
CLOSE_REASONS: frozenset[str] = frozenset(
    {"overflow", "unauthorized", "malformed", "protocol", "shutdown", "reorg", "unavailable"}
)


class WireError(ValueError):
    """A message that cannot be encoded or decoded; the text is a short reason and never holds input data."""


def _check_int(value: object, lo: int, hi: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WireError(f"{what} must be an integer in [{lo}, {hi}]")


def check_bytes(value: object, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise WireError(f"{what} must be {length} bytes")


def _check_type(value: object, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise WireError(f"{what} must be a {kind.__name__}")


def check_cursor(cursor: object, what: str) -> None:
    if not isinstance(cursor, Cursor):
        raise WireError(f"{what} must be a Cursor")
    _check_int(cursor.block, 0, MAX_INT, f"{what} block")


def _check_signature(value: object) -> None:
    check_bytes(value, SIGNATURE_BYTES, "signature")


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
            check_cursor(self.cursor, "cursor")
        _check_int(self.timestamp_ms, 0, MAX_INT, "timestamp_ms")
        check_bytes(self.nonce, NONCE_BYTES, "nonce")
        _check_signature(self.signature)


@dataclass(frozen=True, slots=True)
class Welcome:
    """Indexer → client, first frame: the session, the indexer's key, its head and where the stream starts;
    signed by the indexer over the hello's nonce too, so it answers that hello and no other."""

    session: bytes
    indexer: Bytes32
    head: int
    protocol: int
    start: Cursor  # the hello's cursor, or Cursor.start(registration block): the first message's prev
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_bytes(self.session, SESSION_BYTES, "session")
        _check_type(self.indexer, Bytes32, "indexer")
        _check_int(self.head, 0, MAX_INT, "head")
        _check_int(self.protocol, PROTOCOL_VERSION, PROTOCOL_VERSION, "protocol")
        check_cursor(self.start, "start")
        _check_signature(self.signature)


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
    """Indexer → client: one confirmed log of the cluster, chained to the cluster's previous log; signed once
    by the indexer (nothing in it is per subscriber: every subscriber gets the same bytes)."""

    cluster: Address
    prev: Cursor  # the position of the cluster's previous log (or the indexer's floor for the cluster)
    log: ChainLog
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_type(self.cluster, Address, "cluster")
        check_cursor(self.prev, "prev")
        _check_log(self.log)
        if (self.prev.block, self.prev.log_index) >= (self.log.block_number, self.log.log_index):
            raise WireError("prev must lie before the log")
        _check_signature(self.signature)

    @property
    def cursor(self) -> Cursor:
        """The client's cursor after handling this event."""
        return Cursor(self.log.block_number, self.log.log_index, self.log.block_hash)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Indexer → client: every log of the cluster up to and including ``block`` has been sent; the last of
    them is at ``prev``. Signed once per cluster and block."""

    cluster: Address
    prev: Cursor  # the position of the cluster's last log at or before ``block`` (or the indexer's floor)
    block: int
    block_hash: Bytes32
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_type(self.cluster, Address, "cluster")
        check_cursor(self.prev, "prev")
        _check_int(self.block, 0, MAX_INT, "through block")
        _check_type(self.block_hash, Bytes32, "through block_hash")
        if self.block_hash.is_zero:
            raise WireError("through block_hash must not be zero")
        if self.prev.block > self.block:
            raise WireError("prev must not lie after the through block")
        _check_signature(self.signature)

    @property
    def cursor(self) -> Cursor:
        """The client's cursor after handling this checkpoint."""
        return Cursor.through(self.block, self.block_hash)


@dataclass(frozen=True, slots=True)
class Ack:
    """Client → indexer: it has handled and persisted the first ``seq`` pushed messages of this session (a
    count kept by each side, never signed); it stands at ``cursor``."""

    seq: int
    cursor: Cursor

    def __post_init__(self) -> None:
        _check_int(self.seq, 1, MAX_INT, "seq")
        check_cursor(self.cursor, "cursor")


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
