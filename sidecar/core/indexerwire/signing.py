"""The push protocol's signatures: the exact bytes each one covers, and signing and checking them.

Owns the domain separators, ``signed_bytes`` (a fixed binary layout: domain separator, then the fields in a
fixed order; integers 8-byte big-endian two's complement; the log's topics prefixed by a one-byte count, its
data by a four-byte length — never the JSON text), ``welcome_bytes`` (a welcome's, bound to the nonce of the
hello it answers), ``verify_signature`` and ``verify_welcome``, the signing helpers (``sign_hello``,
``sign_welcome``, ``sign_event``, ``sign_checkpoint``), ``IndexerKey`` (the indexer's seed turned into a
signing key once, not per message) and ``PushSigner`` (a cluster's log chain signed in order: each event's
``prev`` is the previous event's log). Version 2: an event or checkpoint covers only per-cluster fields
(cluster, the cluster's previous log, the log or the through block), so the indexer signs it once and sends
the same bytes to every subscriber; the per-session binding is the welcome's (signed over the hello's nonce).

Must not: draw random numbers (nonces and session ids are passed in), read a clock, or let key material
into a repr or an exception message (seeds travel as ``SecretBytes``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.core.cursor import WHOLE_BLOCK, Cursor, is_after
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.indexerwire.messages import (
    NONCE_BYTES,
    SIGNATURE_BYTES,
    Checkpoint,
    Event,
    Hello,
    Welcome,
    WireError,
    check_bytes,
    check_cursor,
)
from sidecar.core.keys import ed25519_verifies
from sidecar.core.model import ChainLog

DOMAIN_HELLO = b"attestmesh/indexer-hello/v2\x00"
DOMAIN_EVENT = b"attestmesh/indexer-event/v2\x00"
DOMAIN_CHECKPOINT = b"attestmesh/indexer-checkpoint/v2\x00"
DOMAIN_WELCOME = b"attestmesh/indexer-welcome/v2\x00"

_I64 = struct.Struct(">q")
_U32 = struct.Struct(">I")


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
    head = msg.cluster.raw + _cursor_bytes(msg.prev)
    if isinstance(msg, Event):
        return DOMAIN_EVENT + head + _log_bytes(msg.log)
    return DOMAIN_CHECKPOINT + head + _i64(msg.block) + msg.block_hash.raw


def welcome_bytes(msg: Welcome, nonce: bytes) -> bytes:
    """Return the bytes a welcome's signature covers: the domain, the nonce of the hello it answers, then
    everything the welcome carries (session, indexer key, head, protocol, start)."""
    check_bytes(nonce, NONCE_BYTES, "nonce")
    return (
        DOMAIN_WELCOME
        + nonce
        + msg.session
        + msg.indexer.raw
        + _i64(msg.head)
        + _i64(msg.protocol)
        + _cursor_bytes(msg.start)
    )


def verify_welcome(msg: Welcome, nonce: bytes, public_key: Bytes32) -> bool:
    """Tell whether a welcome answers the hello with ``nonce`` and is signed by the Ed25519 ``public_key``."""
    return len(nonce) == NONCE_BYTES and ed25519_verifies(
        public_key, msg.signature, welcome_bytes(msg, nonce)
    )


class IndexerKey:
    """The indexer's Ed25519 signing key, built from its seed once (building it derives the public key: doing
    that per message would double the cost of signing). Never shown in a repr."""

    __slots__ = ("_key",)

    def __init__(self, seed: SecretBytes) -> None:
        self._key = _private(seed, "indexer key")

    def __repr__(self) -> str:
        return "IndexerKey(<secret>)"

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def _private(seed: SecretBytes, what: str) -> Ed25519PrivateKey:
    raw = seed.reveal()
    if len(raw) != 32:
        raise WireError(f"{what} must be a 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(raw)


def _signer(key: SecretBytes | IndexerKey) -> IndexerKey:
    return key if isinstance(key, IndexerKey) else IndexerKey(key)


def verify_signature(msg: Hello | Event | Checkpoint, public_key: Bytes32) -> bool:
    """Tell whether the message's signature verifies against the Ed25519 public key."""
    return ed25519_verifies(public_key, msg.signature, signed_bytes(msg))


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


def sign_welcome(
    *,
    nonce: bytes,
    session: bytes,
    indexer: Bytes32,
    head: int,
    protocol: int,
    start: Cursor,
    indexer_key: SecretBytes | IndexerKey,
) -> Welcome:
    """Build the welcome answering the hello with ``nonce``, signed with the indexer's Ed25519 seed."""
    unsigned = Welcome(session, indexer, head, protocol, start, _NO_SIGNATURE)
    signature = _signer(indexer_key).sign(welcome_bytes(unsigned, nonce))
    return Welcome(session, indexer, head, protocol, start, signature)


def sign_event(
    *, cluster: Address, prev: Cursor, log: ChainLog, indexer_key: SecretBytes | IndexerKey
) -> Event:
    """Build an event (``prev``: the cluster's previous log, or the indexer's floor for the cluster) signed
    with the indexer's key."""
    unsigned = Event(cluster, prev, log, _NO_SIGNATURE)
    return Event(cluster, prev, log, _signer(indexer_key).sign(signed_bytes(unsigned)))


def sign_checkpoint(
    *,
    cluster: Address,
    prev: Cursor,
    block: int,
    block_hash: Bytes32,
    indexer_key: SecretBytes | IndexerKey,
) -> Checkpoint:
    """Build a checkpoint ("every log through ``block`` sent; the last at ``prev``") signed with the indexer's
    key."""
    unsigned = Checkpoint(cluster, prev, block, block_hash, _NO_SIGNATURE)
    return Checkpoint(cluster, prev, block, block_hash, _signer(indexer_key).sign(signed_bytes(unsigned)))


@dataclass(slots=True)
class PushSigner:
    """One cluster's log chain, signed in order: each event's ``prev`` is the log of the previous event (at
    first ``tip``); a checkpoint's ``prev`` is the last event's log. ``position`` is where a client that
    received everything signed so far stands. The indexer signs from its index instead (one signature per
    log, shared by every session); this is the same chain for one stream, used by tests and test peers."""

    cluster: Address
    tip: Cursor  # the cluster's last log so far (or the floor): the next message's prev
    indexer_key: SecretBytes | IndexerKey = field(repr=False)
    position: Cursor | None = None  # defaults to ``tip``

    def __post_init__(self) -> None:
        check_cursor(self.tip, "tip")
        self.indexer_key = _signer(self.indexer_key)
        if self.position is None:
            self.position = self.tip

    @property
    def cursor(self) -> Cursor:
        assert self.position is not None
        return self.position

    def event(self, log: ChainLog) -> Event:
        """Sign the next event; the log must lie after the current position."""
        if not is_after(log.block_number, log.log_index, self.cursor):
            raise WireError("event does not lie after the stream's position")
        msg = sign_event(cluster=self.cluster, prev=self.tip, log=log, indexer_key=self.indexer_key)
        self.tip = self.position = msg.cursor
        return msg

    def checkpoint(self, block: int, block_hash: Bytes32) -> Checkpoint | None:
        """Sign a checkpoint through ``block``, or return None when it would not advance the position."""
        if not is_after(block, WHOLE_BLOCK, self.cursor):
            return None
        msg = sign_checkpoint(
            cluster=self.cluster,
            prev=self.tip,
            block=block,
            block_hash=block_hash,
            indexer_key=self.indexer_key,
        )
        self.position = msg.cursor
        return msg
