"""Signed, replay-protected heartbeats bound to the sender's mesh IP: wire format v1 and the receive gate.

Owns the ``Heartbeat`` value, its binary encoding (``encode`` / ``decode``), ``HeartbeatGate`` (which
heartbeats count as proof of liveness), ``next_seq`` and ``live_page`` (which live ids one heartbeat
carries). Must not do I/O, read a clock or decide
liveness: the driver sends and receives the datagrams, passes ``now_ms`` in, and feeds accepted
heartbeats to ``liveness.Liveness``.

Wire format v1 (all integers big-endian, no padding)::

    offset  size      field
    0       4         magic b"AMHB"
    4       1         version = 1
    5       32        sender member id
    37      8         timestamp_ms (u64, unix milliseconds)
    45      8         seq (u64)
    53      2         count (u16, <= 256)
    55      32*count  live member ids: the sender first, then a page of the others (see "Live list")
    55+32n  64        Ed25519 signature

The signature is made with the sender's identity key over ``b"attestmesh/heartbeat/v1\\x00"`` followed by
every byte before the signature (offsets 0 .. 55+32n). A datagram is 119 bytes (no ids) to 8311 bytes (256
ids), so receive buffers must hold ``MAX_HEARTBEAT_BYTES``. Anything else — short, long, wrong magic or
version, count over the limit, a length that disagrees with count — is rejected by ``decode``.

Live list (``live_page``): at most ``MAX_LIVE_IDS`` (256) ids, so a datagram stays within 8311 bytes
whatever the cluster's size. The sender is always first; the others it sees live follow, sorted by id, 255
at a time: with more than 255 of them, heartbeat ``k`` carries page ``k mod pages``, so successive
heartbeats cycle through every live member. The list is therefore PARTIAL by design: a receiver may read it
only as "at least these were live at the sender", never as "the others were not". Receivers today use only
the sender (its liveness); the list is advisory, which is why paging needs no new wire version.

Acceptance (``HeartbeatGate.check``), checked in this order: the sender is a current member
(``unknown_sender``); the datagram came from the sender's on-chain mesh IP (``wrong_source``); the
signature verifies against the sender's on-chain identity key (``bad_signature``); the timestamp is within
``freshness_ms`` of ``now_ms`` either way (``stale`` / ``future``); ``seq`` is strictly greater than the
last accepted seq from that sender (``replayed``). The gate's state changes only on acceptance.

Sequence numbers must keep increasing across a sender restart, so senders use ``next_seq``: the previous
seq + 1, but never less than the current wall-clock milliseconds.

Answering a sender that does not see us (``should_answer``): a receiver that accepts a heartbeat whose live
list is complete (fewer than ``MAX_LIVE_IDS`` ids, so not a page) and lacks the receiver sends its own
heartbeat to that sender at once instead of at its next tick, at most once per interval per sender. A
restarted node's first heartbeats list only itself, so every peer answers within a round trip and the node
learns it has live peers without waiting up to a whole interval. Only accepted heartbeats are answered
(signed by a member, from its mesh IP, fresh, not replayed): nobody else can make a node send, and a peer
that keeps not hearing us at most doubles our heartbeats to it. The list stays advisory: it only decides
when to send, never who is live.

Start-up cadence (``send_delay``): until the node has heard any peer, and only within ``STARTUP_WINDOW``
seconds of binding its socket, it sends every ``interval / STARTUP_SPEEDUP`` instead of every interval. Its
first heartbeats can be lost while its carriers come up (through the gateway, the per-peer streams open
after the socket is bound); the next one then follows within a fraction of the interval and is answered
at once. At most ``STARTUP_SPEEDUP`` times the heartbeats, for a few seconds, after a start.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.core.ids import Bytes32, MemberId, SecretBytes
from sidecar.core.keys import ed25519_verifies

MAGIC = b"AMHB"
VERSION = 1
DOMAIN = b"attestmesh/heartbeat/v1\x00"
MAX_LIVE_IDS = 256
SIGNATURE_BYTES = 64
_HEADER = struct.Struct(">4sB32sQQH")
HEADER_BYTES = _HEADER.size  # 55
MIN_HEARTBEAT_BYTES = HEADER_BYTES + SIGNATURE_BYTES
MAX_HEARTBEAT_BYTES = HEADER_BYTES + 32 * MAX_LIVE_IDS + SIGNATURE_BYTES
DEFAULT_FRESHNESS_MS = 10_000
_U64 = 2**64

Reason = Literal["unknown_sender", "bad_signature", "wrong_source", "stale", "future", "replayed"]


class HeartbeatError(ValueError):
    """A heartbeat that cannot be encoded or decoded; the message is a short reason."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a heartbeat says: who sent it, when, its sequence number and whom the sender sees live."""

    sender: MemberId
    timestamp_ms: int
    seq: int
    live: tuple[MemberId, ...]


@dataclass(frozen=True, slots=True)
class SignedHeartbeat:
    """A decoded heartbeat with its signature and the exact bytes the signature covers."""

    heartbeat: Heartbeat
    signature: bytes = field(repr=False)
    signed: bytes = field(repr=False)  # the wire bytes before the signature


@dataclass(frozen=True, slots=True)
class Verdict:
    """The gate's answer; ``reason`` is empty when accepted."""

    accepted: bool
    reason: Reason | Literal[""] = ""


ACCEPTED = Verdict(True)


def next_seq(previous: int, now_ms: int) -> int:
    """Return the next sequence number: above ``previous`` and never below the wall clock (restart-safe)."""
    return max(previous + 1, now_ms)


#: How much faster a node sends right after start, while it has heard no peer (``send_delay``).
STARTUP_SPEEDUP = 4
#: Seconds after binding during which the start-up cadence may apply.
STARTUP_WINDOW = 6.0


def send_delay(interval: float, since_bind: float, heard_a_peer: bool) -> float:
    """Seconds until the next heartbeat: ``interval``, or a ``STARTUP_SPEEDUP``-th of it while a node that
    bound its socket less than ``STARTUP_WINDOW`` seconds ago has not heard any peer yet."""
    if heard_a_peer or since_bind >= STARTUP_WINDOW:
        return interval
    return interval / STARTUP_SPEEDUP


def should_answer(
    heartbeat: Heartbeat, me: MemberId, last_answered: float | None, now: float, interval: float
) -> bool:
    """Whether to answer an accepted ``heartbeat`` at once: its complete live list lacks ``me`` and the
    sender was not answered within the last ``interval`` seconds (``last_answered``: None when never)."""
    if heartbeat.sender == me or len(heartbeat.live) >= MAX_LIVE_IDS or me in heartbeat.live:
        return False
    return last_answered is None or now - last_answered >= interval


def live_page(
    live: Iterable[MemberId], me: MemberId, page: int, size: int = MAX_LIVE_IDS
) -> tuple[MemberId, ...]:
    """The live ids heartbeat number ``page`` carries: ``me`` first, then page ``page mod pages`` of the
    other live members sorted by id, ``size - 1`` per page (the last page may be shorter)."""
    if size < 2:
        raise ValueError("a page must hold the sender and at least one other id")
    others = sorted({m for m in live if m != me}, key=lambda m: m.raw)
    per = size - 1
    pages = max(1, -(-len(others) // per))
    start = (page % pages) * per
    return (me, *others[start : start + per])


def _body(hb: Heartbeat) -> bytes:
    if not 0 <= hb.timestamp_ms < _U64:
        raise HeartbeatError("timestamp out of range")
    if not 0 <= hb.seq < _U64:
        raise HeartbeatError("seq out of range")
    if len(hb.live) > MAX_LIVE_IDS:
        raise HeartbeatError("too many live ids")
    header = _HEADER.pack(MAGIC, VERSION, hb.sender.raw, hb.timestamp_ms, hb.seq, len(hb.live))
    return header + b"".join(m.raw for m in hb.live)


def encode(hb: Heartbeat, identity_key: SecretBytes) -> bytes:
    """Encode and sign a heartbeat with the sender's Ed25519 identity seed."""
    body = _body(hb)
    seed = identity_key.reveal()
    if len(seed) != 32:
        raise HeartbeatError("identity key must be a 32-byte Ed25519 seed")
    return body + Ed25519PrivateKey.from_private_bytes(seed).sign(DOMAIN + body)


def decode(data: bytes) -> SignedHeartbeat:
    """Parse a datagram (signature not yet checked); raise HeartbeatError on any malformed input."""
    if len(data) < MIN_HEARTBEAT_BYTES:
        raise HeartbeatError("too short")
    if len(data) > MAX_HEARTBEAT_BYTES:
        raise HeartbeatError("too long")
    magic, version, sender, timestamp_ms, seq, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise HeartbeatError("bad magic")
    if version != VERSION:
        raise HeartbeatError("unsupported version")
    if count > MAX_LIVE_IDS:
        raise HeartbeatError("too many live ids")
    end = HEADER_BYTES + 32 * count
    if len(data) < end + SIGNATURE_BYTES:
        raise HeartbeatError("truncated")
    if len(data) > end + SIGNATURE_BYTES:
        raise HeartbeatError("trailing bytes")
    live = tuple(MemberId(bytes(data[i : i + 32])) for i in range(HEADER_BYTES, end, 32))
    hb = Heartbeat(MemberId(bytes(sender)), timestamp_ms, seq, live)
    return SignedHeartbeat(hb, bytes(data[end:]), bytes(data[:end]))


def verify_signature(signed: SignedHeartbeat, identity_pub: Bytes32) -> bool:
    """Tell whether the heartbeat's signature verifies against the Ed25519 public key."""
    return ed25519_verifies(identity_pub, signed.signature, DOMAIN + signed.signed)


@dataclass(slots=True)
class HeartbeatGate:
    """Decides which decoded heartbeats are accepted; remembers the last accepted seq per sender."""

    freshness_ms: int = DEFAULT_FRESHNESS_MS
    _last_seq: dict[MemberId, int] = field(default_factory=dict, repr=False)

    def check(
        self,
        signed: SignedHeartbeat,
        src_ip: IPv4Address,
        members: Mapping[MemberId, tuple[Bytes32, IPv4Address]],
        now_ms: int,
    ) -> Verdict:
        """Judge one heartbeat; ``members`` maps member id to (identity public key, mesh IP) on chain."""
        reason = next(self._problems(signed, src_ip, members, now_ms), None)
        if reason is not None:
            return Verdict(False, reason)
        self._last_seq[signed.heartbeat.sender] = signed.heartbeat.seq
        return ACCEPTED

    def _problems(
        self,
        signed: SignedHeartbeat,
        src_ip: IPv4Address,
        members: Mapping[MemberId, tuple[Bytes32, IPv4Address]],
        now_ms: int,
    ) -> Iterator[Reason]:
        """Yield the rejection reasons in order, lazily (the signature is checked only when needed)."""
        hb = signed.heartbeat
        known = members.get(hb.sender)
        if known is None:
            yield "unknown_sender"
            return
        identity_pub, mesh_ip = known
        if src_ip != mesh_ip:
            yield "wrong_source"
        if not verify_signature(signed, identity_pub):
            yield "bad_signature"
        if now_ms - hb.timestamp_ms > self.freshness_ms:
            yield "stale"
        if hb.timestamp_ms - now_ms > self.freshness_ms:
            yield "future"
        last = self._last_seq.get(hb.sender)
        if last is not None and hb.seq <= last:
            yield "replayed"

    def last_seq(self, member: MemberId) -> int | None:
        """Return the last accepted seq from the member, or None."""
        return self._last_seq.get(member)

    def forget(self, member: MemberId) -> None:
        """Drop a removed member's replay state."""
        self._last_seq.pop(member, None)
