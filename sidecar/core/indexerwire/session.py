"""The push protocol's session checks: the indexer judges a hello, the client judges the stream.

Owns ``verify_hello`` (the indexer's check of a client's first frame), ``HelloNonces`` (the indexer's memory
of the hello nonces it accepted within the freshness window, bounded, so a captured hello cannot be replayed)
and ``PushVerifier`` (the client's check of the welcome — signed by the registry's key over the nonce of the
hello it sent — and of every event and checkpoint, with its ``check``/``accept`` split: once rejected, a
session stays rejected) and the reasons each can give.

Cursor semantics are those of ``sidecar.core.cursor`` exactly: after an event the client's cursor is
``(block, log_index, block_hash)`` of its log, after a checkpoint it is ``Cursor.through(block,
block_hash)``; the push stream and the poller share one persisted cursor.

Must not: do I/O, read a clock (``now_ms`` is passed in), or parse text (``codec`` does).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from sidecar.core.cursor import Cursor, is_after
from sidecar.core.ids import Address, Bytes32
from sidecar.core.indexerwire.messages import Ack, Checkpoint, Event, Hello, Message, Welcome
from sidecar.core.indexerwire.signing import verify_signature, verify_welcome

DEFAULT_HELLO_FRESHNESS_MS = 30_000
#: The most hello nonces ``HelloNonces`` remembers; when full, a new hello is refused (``busy``), never
#: admitted by forgetting one still inside its window.
MAX_REMEMBERED_HELLOS = 100_000

HelloRefusal = Literal["wrong_indexer", "bad_signature", "stale", "future", "replayed"]
RejectReason = Literal[
    "bad_signature", "wrong_indexer", "wrong_cluster", "gap", "replay", "out_of_order", "reorg", "malformed"
]


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


class HelloNonces:
    """The nonces of accepted hellos, each kept until no hello with it could still be fresh.

    A hello is fresh while its timestamp lies within ``freshness_ms`` of now, either way, so a nonce first
    seen at ``now`` is kept until ``now + 2 * freshness_ms``: expiry follows arrival order, and the expired
    ones are dropped from the front. At most ``limit`` are kept; ``admit`` says ``busy`` rather than forget
    one early. Keyed by (cluster, member id, nonce). ``now_ms`` is passed in.
    """

    def __init__(self, freshness_ms: int, limit: int = MAX_REMEMBERED_HELLOS) -> None:
        self.keep_ms = 2 * freshness_ms
        self.limit = limit
        self._seen: collections.OrderedDict[tuple[bytes, bytes, bytes], int] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, hello: Hello, now_ms: int) -> Literal["ok", "replayed", "busy"]:
        """Remember a verified hello's nonce: ``ok`` the first time, ``replayed`` after that."""
        while self._seen:
            key, until = next(iter(self._seen.items()))
            if until > now_ms:
                break
            del self._seen[key]
        key = (hello.cluster.raw, hello.member_id.raw, hello.nonce)
        if key in self._seen:
            return "replayed"
        if len(self._seen) >= self.limit:
            return "busy"
        self._seen[key] = now_ms + self.keep_ms
        return "ok"


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

    ``nonce`` is the nonce of the hello this session sent: the welcome must be signed over it. Events and
    checkpoints are signed per cluster (v2), so this session's freshness comes from the position: each must
    advance ``cursor`` (else ``replay``), and its ``prev`` (the cluster's log before it, as the indexer
    signed it) must not lie after ``cursor`` (else a log was skipped: ``gap``) and, once this session has
    seen a log or a checkpoint, must be exactly the ``tip`` it reached (else ``out_of_order``).
    The cursor, tip and seq (the count of accepted messages, which the ack carries) change only through
    ``accept``; after any rejection every later check is rejected too (the stream must be torn down and a
    new session started from the persisted cursor).
    """

    cluster: Address
    indexer_pub: Bytes32
    start: Cursor
    nonce: bytes
    cursor: Cursor = field(init=False)
    tip: Cursor | None = field(default=None, init=False)
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
        """Check the session's first frame: a welcome signed by the registry's key over our hello's nonce
        (checked first: nothing unsigned is read), naming that key, starting at our cursor."""
        if self.failed is not None:
            return self.failed
        if not isinstance(msg, Welcome) or self.session is not None:
            return self._reject("malformed")
        if not verify_welcome(msg, self.nonce, self.indexer_pub):
            return self._reject("bad_signature")
        if msg.indexer != self.indexer_pub:
            return self._reject("wrong_indexer")
        if msg.start != self.cursor:
            return self._reject(_mismatch(msg.start, self.cursor))
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
        here, after, prev = self.cursor, msg.cursor, msg.prev
        if not is_after(after.block, after.log_index, here):
            yield "replay"  # already handled: a duplicate, or an old message replayed
        if _hash_differs(after, here) or _hash_differs(prev, here):
            yield "reorg"  # another block at our position's height
        if is_after(prev.block, prev.log_index, here):
            yield "gap"  # the log at prev lies after our cursor and never reached us
        if self.tip is not None and prev != self.tip:
            yield "out_of_order"  # the cluster's chain does not continue from the log we reached

    def accept(self, verified: Verified) -> Cursor:
        """Advance past a verified message the client has handled and persisted; return the new cursor."""
        if self.failed is not None or verified is not self._pending:
            raise ValueError("accept() takes the latest result of check() on a healthy stream")
        msg = verified.message
        self.tip = msg.cursor if isinstance(msg, Event) else msg.prev
        self.seq, self.cursor, self._pending = self.seq + 1, verified.cursor, None
        return self.cursor

    def ack(self) -> Ack | None:
        """Return the ack for everything accepted so far (None before the first accepted message)."""
        return None if self.seq == 0 else Ack(self.seq, self.cursor)


def _hash_differs(position: Cursor, here: Cursor) -> bool:
    """Whether ``position`` names another hash for the block of our cursor (both hashes known)."""
    return (
        position.block == here.block
        and not here.block_hash.is_zero
        and not position.block_hash.is_zero
        and position.block_hash != here.block_hash
    )


def _mismatch(claimed: Cursor, here: Cursor) -> RejectReason:
    """Why a welcome's start is not our cursor."""
    if (claimed.block, claimed.log_index) == (here.block, here.log_index):
        return "reorg"  # same position, another block hash
    return "gap" if is_after(claimed.block, claimed.log_index, here) else "replay"
