"""Heartbeat wire format v1 and the receive gate of sidecar.core.heartbeat."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sidecar.core.heartbeat import (
    DOMAIN,
    MAX_HEARTBEAT_BYTES,
    MAX_LIVE_IDS,
    MIN_HEARTBEAT_BYTES,
    STARTUP_SPEEDUP,
    STARTUP_WINDOW,
    Heartbeat,
    HeartbeatError,
    HeartbeatGate,
    SignedHeartbeat,
    decode,
    encode,
    live_page,
    next_seq,
    send_delay,
    should_answer,
    verify_signature,
)
from sidecar.core.ids import Bytes32, MemberId, SecretBytes
from sidecar.core.keys import ed25519_public_key
from sidecar.core.liveness import Liveness
from sidecar.drivers.heartbeats import HeartbeatService
from sidecar.observability import Metrics

SEED_A = SecretBytes(b"\xa1" * 32)
SEED_B = SecretBytes(b"\xb2" * 32)
A = MemberId(b"\x0a" * 32)
B = MemberId(b"\x0b" * 32)
IP_A = IPv4Address("10.88.0.2")
IP_B = IPv4Address("10.88.0.3")
MEMBERS = {
    A: (Bytes32(ed25519_public_key(SEED_A)), IP_A),
    B: (Bytes32(ed25519_public_key(SEED_B)), IP_B),
}
NOW = 1_700_000_000_000

member_ids = st.binary(min_size=32, max_size=32).map(MemberId)
u64 = st.integers(0, 2**64 - 1)
heartbeats = st.builds(Heartbeat, member_ids, u64, u64, st.lists(member_ids, max_size=20).map(tuple))


def hb(seq: int = 1, ts: int = NOW, sender: MemberId = A, live: tuple[MemberId, ...] = (A, B)) -> Heartbeat:
    return Heartbeat(sender, ts, seq, live)


def signed(h: Heartbeat, seed: SecretBytes = SEED_A) -> SignedHeartbeat:
    return decode(encode(h, seed))


def test_exact_layout() -> None:
    data = encode(hb(seq=7, live=(A,)), SEED_A)
    assert len(data) == 4 + 1 + 32 + 8 + 8 + 2 + 32 + 64
    assert data[:4] == b"AMHB"
    assert data[4] == 1
    assert data[5:37] == A.raw
    assert struct.unpack(">QQH", data[37:55]) == (NOW, 7, 1)
    assert data[55:87] == A.raw
    body, signature = data[:-64], data[-64:]
    Ed25519PublicKey.from_public_bytes(ed25519_public_key(SEED_A)).verify(signature, DOMAIN + body)


def test_size_limits() -> None:
    assert MIN_HEARTBEAT_BYTES == 119
    assert MAX_HEARTBEAT_BYTES == 119 + 32 * 256
    full = encode(hb(live=tuple(MemberId(i.to_bytes(32, "big")) for i in range(MAX_LIVE_IDS))), SEED_A)
    assert len(full) == MAX_HEARTBEAT_BYTES
    assert len(decode(full).heartbeat.live) == MAX_LIVE_IDS


@given(heartbeats)
def test_round_trip(h: Heartbeat) -> None:
    s = decode(encode(h, SEED_B))
    assert s.heartbeat == h
    assert verify_signature(s, Bytes32(ed25519_public_key(SEED_B)))
    assert not verify_signature(s, Bytes32(ed25519_public_key(SEED_A)))


@pytest.mark.parametrize(
    ("h", "match"),
    [
        (hb(seq=2**64), "seq"),
        (hb(seq=-1), "seq"),
        (hb(ts=2**64), "timestamp"),
        (hb(live=(A,) * (MAX_LIVE_IDS + 1)), "too many"),
    ],
)
def test_encode_rejects_out_of_range(h: Heartbeat, match: str) -> None:
    with pytest.raises(HeartbeatError, match=match):
        encode(h, SEED_A)


def test_encode_rejects_a_short_seed_without_showing_it() -> None:
    with pytest.raises(HeartbeatError) as info:
        encode(hb(), SecretBytes(b"\xa1" * 31))
    assert "a1a1" not in str(info.value)


VALID = encode(hb(), SEED_A)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (VALID[: MIN_HEARTBEAT_BYTES - 1], "too short"),
        (VALID + b"\x00" * MAX_HEARTBEAT_BYTES, "too long"),
        (b"XXXX" + VALID[4:], "bad magic"),
        (VALID[:4] + b"\x02" + VALID[5:], "unsupported version"),
        (VALID[:53] + struct.pack(">H", 257) + VALID[55:], "too many"),
        (VALID[:53] + struct.pack(">H", 3) + VALID[55:], "truncated"),
        (VALID + b"\x00", "trailing bytes"),
        (VALID[:53] + struct.pack(">H", 0) + VALID[55:], "trailing bytes"),
        (VALID[:-1], "truncated"),
    ],
)
def test_decode_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(HeartbeatError, match=reason):
        decode(data)


@given(st.binary(max_size=MAX_HEARTBEAT_BYTES + 10))
def test_decode_only_raises_heartbeat_error(data: bytes) -> None:
    with contextlib.suppress(HeartbeatError):
        decode(data)


@given(st.binary(min_size=55, max_size=400), st.integers(0, 8))
def test_decode_only_raises_heartbeat_error_with_a_good_header(tail: bytes, count: int) -> None:
    data = b"AMHB\x01" + tail[:48] + struct.pack(">H", count) + tail[50:]
    with contextlib.suppress(HeartbeatError):
        decode(data)


def test_accepts_a_fresh_heartbeat_from_a_member() -> None:
    gate = HeartbeatGate()
    verdict = gate.check(signed(hb()), IP_A, MEMBERS, NOW)
    assert verdict.accepted
    assert verdict.reason == ""
    assert gate.last_seq(A) == 1


def test_unknown_sender() -> None:
    stranger = MemberId(b"\x0c" * 32)
    verdict = HeartbeatGate().check(signed(hb(sender=stranger)), IP_A, MEMBERS, NOW)
    assert (verdict.accepted, verdict.reason) == (False, "unknown_sender")


def test_bad_signature() -> None:
    forged = signed(hb(), SEED_B)  # claims A, signed by B's key
    assert HeartbeatGate().check(forged, IP_A, MEMBERS, NOW).reason == "bad_signature"
    s = signed(hb())
    flipped = SignedHeartbeat(s.heartbeat, bytes([s.signature[0] ^ 1]) + s.signature[1:], s.signed)
    assert HeartbeatGate().check(flipped, IP_A, MEMBERS, NOW).reason == "bad_signature"
    tampered = bytearray(encode(hb(), SEED_A))
    tampered[60] ^= 1  # a live id
    assert HeartbeatGate().check(decode(bytes(tampered)), IP_A, MEMBERS, NOW).reason == "bad_signature"


def test_an_invalid_on_chain_identity_key_is_a_bad_signature() -> None:
    members = {A: (Bytes32(b"\xff" * 32), IP_A)}
    assert HeartbeatGate().check(signed(hb()), IP_A, members, NOW).reason == "bad_signature"


def test_wrong_source() -> None:
    assert HeartbeatGate().check(signed(hb()), IP_B, MEMBERS, NOW).reason == "wrong_source"


def test_freshness_window_is_inclusive() -> None:
    gate = HeartbeatGate(freshness_ms=10_000)
    assert gate.check(signed(hb(seq=1, ts=NOW - 10_000)), IP_A, MEMBERS, NOW).accepted
    assert gate.check(signed(hb(seq=2, ts=NOW + 10_000)), IP_A, MEMBERS, NOW).accepted
    assert gate.check(signed(hb(seq=3, ts=NOW - 10_001)), IP_A, MEMBERS, NOW).reason == "stale"
    assert gate.check(signed(hb(seq=4, ts=NOW + 10_001)), IP_A, MEMBERS, NOW).reason == "future"
    assert gate.last_seq(A) == 2


def test_replay_and_sequence_rules() -> None:
    gate = HeartbeatGate()
    first = signed(hb(seq=5))
    assert gate.check(first, IP_A, MEMBERS, NOW).accepted
    assert gate.check(first, IP_A, MEMBERS, NOW + 1).reason == "replayed"
    assert gate.check(signed(hb(seq=4)), IP_A, MEMBERS, NOW).reason == "replayed"
    assert gate.check(signed(hb(seq=6)), IP_A, MEMBERS, NOW).accepted
    # Sequences are per sender.
    assert gate.check(signed(hb(seq=1, sender=B), SEED_B), IP_B, MEMBERS, NOW).accepted


def test_state_changes_only_on_acceptance() -> None:
    gate = HeartbeatGate()
    assert gate.check(signed(hb(seq=100), SEED_B), IP_A, MEMBERS, NOW).reason == "bad_signature"
    assert gate.check(signed(hb(seq=100)), IP_B, MEMBERS, NOW).reason == "wrong_source"
    assert gate.check(signed(hb(seq=100, ts=NOW - 60_000)), IP_A, MEMBERS, NOW).reason == "stale"
    assert gate.last_seq(A) is None
    assert gate.check(signed(hb(seq=1)), IP_A, MEMBERS, NOW).accepted


def test_forget_resets_a_member() -> None:
    gate = HeartbeatGate()
    assert gate.check(signed(hb(seq=9)), IP_A, MEMBERS, NOW).accepted
    gate.forget(A)
    assert gate.last_seq(A) is None
    assert gate.check(signed(hb(seq=1)), IP_A, MEMBERS, NOW).accepted


def test_next_seq_survives_a_sender_restart() -> None:
    assert next_seq(5, 3) == 6
    before_restart = next_seq(0, NOW)
    assert before_restart == NOW
    gate = HeartbeatGate()
    assert gate.check(signed(hb(seq=next_seq(before_restart, NOW))), IP_A, MEMBERS, NOW).accepted
    after_restart = next_seq(0, NOW + 2000)  # the restarted sender lost its counter
    assert gate.check(signed(hb(seq=after_restart, ts=NOW + 2000)), IP_A, MEMBERS, NOW + 2000).accepted


@given(st.lists(st.tuples(u64, st.integers(-20_000, 20_000)), max_size=30))
def test_accepted_seqs_strictly_increase(steps: list[tuple[int, int]]) -> None:
    gate = HeartbeatGate()
    accepted: list[int] = []
    for seq, skew in steps:
        if gate.check(signed(hb(seq=seq, ts=NOW + skew)), IP_A, MEMBERS, NOW).accepted:
            accepted.append(seq)
    assert accepted == sorted(set(accepted))


def test_reprs_show_no_key_material() -> None:
    s = signed(hb())
    assert s.signature.hex() not in repr(s)
    assert SEED_A.reveal().hex() not in repr(s)


# --- the live list: paged so any cluster size encodes (issue 12, item 8) ----------------------------------


def ids(n: int) -> list[MemberId]:
    return [MemberId((i + 1).to_bytes(32, "big")) for i in range(n)]


@pytest.mark.parametrize("live", [300, 10_000])
def test_a_large_live_set_encodes_within_the_limit_and_verifies(live: int) -> None:
    members = ids(live)
    data = encode(hb(live=live_page(members, A, 0)), SEED_A)
    assert MIN_HEARTBEAT_BYTES < len(data) <= MAX_HEARTBEAT_BYTES < 65_507  # one UDP datagram
    decoded = decode(data)
    assert verify_signature(decoded, MEMBERS[A][0])
    assert decoded.heartbeat.live[0] == A and len(decoded.heartbeat.live) == MAX_LIVE_IDS


def test_pages_cycle_through_every_live_member_sender_first() -> None:
    members = ids(300)
    pages = [live_page([*members, A], A, k) for k in range(4)]
    assert all(p[0] == A and A not in p[1:] for p in pages)
    assert [len(p) for p in pages] == [256, 46, 256, 46]  # 300 others: 255 + 45, then again
    assert set(pages[0][1:]) | set(pages[1][1:]) == set(members)
    assert pages[2] == pages[0] and pages[3] == pages[1]
    assert list(pages[0][1:]) == sorted(pages[0][1:], key=lambda m: m.raw)


def test_a_small_live_set_is_one_whole_page() -> None:
    assert live_page([B, A], A, 0) == live_page([B], A, 7) == (A, B)
    assert live_page([], A, 3) == (A,)
    with pytest.raises(ValueError, match="at least one other"):
        live_page([B], A, 0, size=1)


class _Wire:
    """The datagram transport the heartbeat service sends through: records (data, address)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


def test_the_service_sends_every_tick_with_300_live_members_and_covers_them_all() -> None:
    """Before paging, every tick raised "too many live ids" above 256 live members."""
    members = ids(300)
    liveness = Liveness(window=30.0)
    for member in members:
        liveness.heard(member, 100.0)
    table = {m: (Bytes32(b"\x01" * 32), IPv4Address("10.88.1.1")) for m in members[:2]}
    service = HeartbeatService(
        me=A, identity_key=SEED_A, members=lambda: table, liveness=liveness,
        metrics=Metrics(CollectorRegistry()), port=51821, interval=2.0, on_transition=lambda t: None,
        clock=lambda: 101.0, wall_ms=lambda: NOW,
    )  # fmt: skip
    wire = _Wire()
    service._transport = wire  # type: ignore[assignment]  # bound without a socket: the fake records sends
    seen: set[MemberId] = set()
    for _ in range(2):
        service.tick()
    assert len(wire.sent) == 4  # two peers, two ticks
    for data, _addr in wire.sent:
        decoded = decode(data)
        assert verify_signature(decoded, MEMBERS[A][0])
        seen |= set(decoded.heartbeat.live)
    assert seen == {A, *members}


def test_should_answer_a_complete_list_that_lacks_me_once_per_interval() -> None:
    restarted = hb(sender=B, live=(B,))  # a restarted node's first heartbeat lists only itself
    assert should_answer(restarted, A, None, 10.0, 2.0)
    assert not should_answer(restarted, A, 9.0, 10.0, 2.0)  # answered 1 s ago: wait for the interval
    assert should_answer(restarted, A, 8.0, 10.0, 2.0)
    assert not should_answer(hb(sender=B, live=(B, A)), A, None, 10.0, 2.0)  # it sees us: nothing to do
    assert not should_answer(hb(sender=A, live=(A,)), A, None, 10.0, 2.0)  # never our own
    page = (B, *ids(MAX_LIVE_IDS - 1))  # a full page may be one of several: absence means nothing
    assert not should_answer(hb(sender=B, live=page), A, None, 10.0, 2.0)


def _service(me: MemberId, seed: SecretBytes, clock: list[float], liveness: Liveness) -> HeartbeatService:
    return HeartbeatService(
        me=me, identity_key=seed, members=lambda: MEMBERS, liveness=liveness,
        metrics=Metrics(CollectorRegistry()), port=51821, interval=2.0, on_transition=lambda t: None,
        clock=lambda: clock[0], wall_ms=lambda: NOW + int(clock[0] * 1000),
    )  # fmt: skip


def test_a_restarted_peer_hears_us_within_a_round_trip_not_at_our_next_tick() -> None:
    clock = [100.0]
    live_a, live_b = Liveness(), Liveness()
    a, b = _service(A, SEED_A, clock, live_a), _service(B, SEED_B, clock, live_b)
    wire_a, wire_b = _Wire(), _Wire()
    a._transport, b._transport = wire_a, wire_b  # type: ignore[assignment]
    clock[0] = 100.5
    b.tick()  # B just restarted: its heartbeat lists only B
    ((data, addr),) = wire_b.sent
    assert addr == (str(IP_A), 51821)
    a.received(data, str(IP_B))
    assert [addr for _, addr in wire_a.sent] == [(str(IP_B), 51821)]  # A answered at once, to B only
    b.received(wire_a.sent[0][0], str(IP_A))
    assert A in live_b.live(100.5)  # B sees a live peer without waiting for A's next tick
    wire_a.sent.clear()
    b.tick()  # B's next heartbeat lists A: A does not answer again
    a.received(wire_b.sent[-1][0], str(IP_B))
    assert wire_a.sent == []
    clock[0] = 101.0
    a.received(encode(hb(seq=NOW + 10**6, ts=NOW + 101_000, sender=B, live=(B,)), SEED_B), str(IP_B))
    assert wire_a.sent == []  # a second "does not see us" within the interval: still one answer


def test_a_rejected_heartbeat_is_never_answered() -> None:
    clock = [100.0]
    a = _service(A, SEED_A, clock, Liveness())
    wire = _Wire()
    a._transport = wire  # type: ignore[assignment]
    forged = encode(hb(sender=B, ts=NOW + 100_000, live=(B,)), SEED_A)  # signed with the wrong key
    a.received(forged, str(IP_B))
    wrong_source = encode(hb(sender=B, ts=NOW + 100_000, live=(B,)), SEED_B)
    a.received(wrong_source, "10.88.9.9")
    assert wire.sent == []


def test_send_delay_is_faster_only_right_after_start_and_until_a_peer_is_heard() -> None:
    assert send_delay(2.0, 0.0, heard_a_peer=False) == 2.0 / STARTUP_SPEEDUP
    assert send_delay(2.0, STARTUP_WINDOW - 0.1, heard_a_peer=False) == 2.0 / STARTUP_SPEEDUP
    assert (
        send_delay(2.0, STARTUP_WINDOW, heard_a_peer=False) == 2.0
    )  # all peers down: no fast cadence forever
    assert send_delay(2.0, 0.5, heard_a_peer=True) == 2.0


def test_the_service_ticks_fast_after_binding_until_it_hears_a_peer() -> None:
    clock = [100.0]
    liveness = Liveness()
    a = _service(A, SEED_A, clock, liveness)
    assert a.next_delay() == 2.0  # not bound yet
    a._bound_at = 100.0  # as bind() records it
    assert a.next_delay() == 2.0 / STARTUP_SPEEDUP
    liveness.heard(A, 100.1)  # hearing only ourselves does not count
    assert a.next_delay() == 2.0 / STARTUP_SPEEDUP
    liveness.heard(B, 100.2)
    assert a.next_delay() == 2.0


def test_greet_sends_one_heartbeat_to_a_peer_whose_carrier_just_opened() -> None:
    """Through the gateway a restarted node's first heartbeats are lost until the streams open; greeting
    on the stream's opening gets one through then, not at the next start-up tick."""
    clock = [100.0]
    liveness = Liveness()
    a = _service(A, SEED_A, clock, liveness)
    a.greet(B)
    # not bound: nothing to send through, and nothing recorded (the greeting below is not rate-limited)
    wire = _Wire()
    a._transport = wire  # type: ignore[assignment]
    a.greet(B)
    ((data, addr),) = wire.sent
    assert addr == (str(IP_B), 51821)
    assert decode(data).heartbeat.sender == A and verify_signature(decode(data), MEMBERS[A][0])
    a.greet(B)  # a second stream at once (reconnect storm): still one greeting per start-up tick
    assert len(wire.sent) == 1
    clock[0] += 2.0 / STARTUP_SPEEDUP
    a.greet(B)
    assert len(wire.sent) == 2
    liveness.heard(B, clock[0])
    clock[0] += 5.0
    a.greet(B)  # B is live already: its carrier reopening needs no greeting
    a.greet(A)  # never ourselves
    a.greet(MemberId(b"\x77" * 32))  # not a member: nowhere to send
    assert len(wire.sent) == 2
