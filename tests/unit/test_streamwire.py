"""The gateway transport's stream protocol (``sidecar.core.streamwire``): frames cut from any chunking of the
stream, protocol errors named by reason before a large frame is buffered, the hello's signature, and the
acceptor's gate (every refusal in its order, replay protection over the freshness window).

The test vectors in docs/protocol.md (section "The gateway transport stream") are rendered by
``render_stream_vectors`` and compared here (``python -m tests.unit.test_streamwire`` prints the block).
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import ed25519_public_key
from sidecar.core.streamwire import (
    DOMAIN_HELLO,
    FRAME_CLOSE,
    FRAME_DATA,
    FRAME_HEADER_BYTES,
    FRAME_HELLO,
    FRAME_KEEPALIVE,
    HELLO_BYTES,
    HELLO_REFUSALS,
    MAX_DATAGRAM_BYTES,
    Frame,
    FrameError,
    FrameReader,
    Hello,
    HelloGate,
    close_frame,
    close_reason,
    data_frame,
    decode_hello,
    encode_frame,
    encode_hello,
    keepalive_frame,
    verify_hello_signature,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
CLUSTER = Address(bytes.fromhex("c1" * 20))
LOW_SEED = SecretBytes(bytes(range(64, 96)))
HIGH_SEED = SecretBytes(bytes(range(96, 128)))
LOW = MemberId(b"\x11" * 32)  # the dialer: the lower member id of the pair
HIGH = MemberId(b"\x22" * 32)  # the acceptor
MEMBERS = {LOW: Bytes32(ed25519_public_key(LOW_SEED)), HIGH: Bytes32(ed25519_public_key(HIGH_SEED))}
NOW_MS = 1_790_000_000_000
NONCE = bytes(range(16))


def hello(**changes: object) -> Hello:
    fields: dict[str, object] = {
        "cluster": CLUSTER, "dialer": LOW, "acceptor": HIGH, "timestamp_ms": NOW_MS, "nonce": NONCE,
    }  # fmt: skip
    fields.update(changes)
    return Hello(**fields)  # type: ignore[arg-type]


def read_one(data: bytes) -> Frame:
    frames = FrameReader().feed(data)
    assert len(frames) == 1
    return frames[0]


# --- frames ---------------------------------------------------------------------------------------------


def test_each_frame_type_round_trips() -> None:
    assert read_one(data_frame(b"\x01wg")) == Frame(FRAME_DATA, b"\x01wg")
    assert read_one(keepalive_frame()) == Frame(FRAME_KEEPALIVE, b"")
    assert close_reason(read_one(close_frame("refused"))) == "refused"
    assert read_one(data_frame(b"x" * MAX_DATAGRAM_BYTES)).payload == b"x" * MAX_DATAGRAM_BYTES
    assert close_reason(Frame(FRAME_CLOSE, b"\xff")) is None  # an unknown code still means close


frames_strategy = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=MAX_DATAGRAM_BYTES).map(data_frame),
        st.just(keepalive_frame()),
        st.sampled_from(["shutdown", "refused", "protocol", "idle"]).map(close_frame),
    ),
    max_size=20,
)


@given(frames_strategy, st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_frames_are_cut_the_same_from_any_chunking_of_the_stream(
    frames: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(frames)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    reader = FrameReader()
    got: list[Frame] = []
    for a, b in itertools.pairwise(points):
        got += reader.feed(stream[a:b])
    assert [encode_frame(f.kind, f.payload) for f in got] == frames
    assert reader.buffered == 0


def test_an_oversized_frame_is_refused_from_its_header_before_its_payload_is_buffered() -> None:
    reader = FrameReader()
    with pytest.raises(FrameError) as refused:
        reader.feed(struct.pack(">BH", FRAME_DATA, MAX_DATAGRAM_BYTES + 1))
    assert refused.value.reason == "oversized"
    with pytest.raises(FrameError) as refused:
        FrameReader().feed(struct.pack(">BH", FRAME_KEEPALIVE, 1) + b"x")  # a keepalive carries nothing
    assert refused.value.reason == "oversized"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (struct.pack(">BH", 9, 0), "unknown_type"),
        (struct.pack(">BH", 0, 0), "unknown_type"),
        (struct.pack(">BH", FRAME_DATA, 0), "malformed"),
        (struct.pack(">BH", FRAME_HELLO, 5) + b"hello", "malformed"),
        (struct.pack(">BH", FRAME_CLOSE, 0), "malformed"),
    ],
)
def test_protocol_errors_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as refused:
        FrameReader().feed(data)
    assert refused.value.reason == reason


def test_encoding_refuses_what_the_reader_would_refuse() -> None:
    for kind, payload, reason in [
        (FRAME_DATA, b"", "malformed"),
        (FRAME_DATA, b"x" * (MAX_DATAGRAM_BYTES + 1), "oversized"),
        (FRAME_KEEPALIVE, b"x", "oversized"),
        (7, b"", "unknown_type"),
    ]:
        with pytest.raises(FrameError) as refused:
            encode_frame(kind, payload)  # type: ignore[arg-type]
        assert refused.value.reason == reason


@given(st.binary(max_size=5000))
def test_garbage_yields_frames_or_a_named_error_and_never_buffers_more_than_a_frame(garbage: bytes) -> None:
    reader = FrameReader()
    try:
        frames = reader.feed(garbage)
    except FrameError as exc:
        assert exc.reason in ("oversized", "unknown_type", "malformed")
        return
    assert all(f.kind in (FRAME_HELLO, FRAME_DATA, FRAME_KEEPALIVE, FRAME_CLOSE) for f in frames)
    assert reader.buffered < FRAME_HEADER_BYTES + MAX_DATAGRAM_BYTES


# --- the hello ------------------------------------------------------------------------------------------


def test_a_hello_is_one_frame_of_fixed_size_whose_signature_verifies_only_for_the_dialer() -> None:
    wire = encode_hello(hello(), LOW_SEED)
    assert len(wire) == FRAME_HEADER_BYTES + HELLO_BYTES
    signed = decode_hello(read_one(wire))
    assert signed.hello == hello()
    assert verify_hello_signature(signed, MEMBERS[LOW])
    assert not verify_hello_signature(signed, MEMBERS[HIGH])
    tampered = bytearray(wire)
    tampered[FRAME_HEADER_BYTES + 30] ^= 1  # inside the dialer's member id
    assert not verify_hello_signature(decode_hello(read_one(bytes(tampered))), MEMBERS[LOW])
    assert "nonce" not in repr(signed.hello) and NONCE.hex() not in repr(signed)


def test_decode_hello_refuses_another_frame_or_version() -> None:
    with pytest.raises(FrameError):
        decode_hello(read_one(keepalive_frame()))
    wire = bytearray(encode_hello(hello(), LOW_SEED))
    wire[FRAME_HEADER_BYTES] = 2  # the version byte
    with pytest.raises(FrameError):
        decode_hello(read_one(bytes(wire)))


def check(
    gate: HelloGate, h: Hello, seed: SecretBytes = LOW_SEED, *, me: MemberId = HIGH, now: int = NOW_MS
) -> str:
    signed = decode_hello(read_one(encode_hello(h, seed)))
    return gate.check(signed, me=me, cluster=CLUSTER, members=MEMBERS, now_ms=now) or "accepted"


def test_the_gate_accepts_a_fresh_hello_from_the_lower_member_once() -> None:
    gate = HelloGate(freshness_ms=30_000)
    assert check(gate, hello()) == "accepted"
    assert check(gate, hello()) == "replayed"  # the same bytes again
    assert check(gate, hello(nonce=b"\x01" * 16, timestamp_ms=NOW_MS + 5)) == "accepted"  # a reconnect
    assert gate.remembered == 2


@pytest.mark.parametrize(
    ("changes", "seed", "me", "reason"),
    [
        ({"cluster": Address(b"\xc2" * 20)}, LOW_SEED, HIGH, "wrong_cluster"),
        ({"acceptor": MemberId(b"\x33" * 32)}, LOW_SEED, HIGH, "wrong_acceptor"),
        ({"dialer": MemberId(b"\x01" * 32)}, LOW_SEED, HIGH, "not_member"),
        ({"dialer": HIGH, "acceptor": LOW}, HIGH_SEED, LOW, "wrong_direction"),
        ({}, HIGH_SEED, HIGH, "bad_signature"),
        ({"timestamp_ms": NOW_MS - 30_001}, LOW_SEED, HIGH, "stale"),
        ({"timestamp_ms": NOW_MS + 30_001}, LOW_SEED, HIGH, "future"),
    ],
)
def test_every_refusal_is_named(
    changes: dict[str, object], seed: SecretBytes, me: MemberId, reason: str
) -> None:
    gate = HelloGate(freshness_ms=30_000)
    assert check(gate, hello(**changes), seed, me=me) == reason
    assert gate.remembered == 0  # a refusal changes nothing


def test_every_refusal_reason_is_listed() -> None:
    assert HELLO_REFUSALS == (
        "wrong_cluster", "wrong_acceptor", "not_member", "wrong_direction", "bad_signature", "stale",
        "future", "replayed",
    )  # fmt: skip


def test_accepted_nonces_are_forgotten_once_a_replay_would_be_stale_anyway() -> None:
    gate = HelloGate(freshness_ms=1_000)
    assert check(gate, hello()) == "accepted"
    assert check(gate, hello(), now=NOW_MS + 1_000) == "replayed"
    assert check(gate, hello(), now=NOW_MS + 2_001) == "stale"
    assert gate.remembered == 0


# --- test vectors (docs/protocol.md) --------------------------------------------------------------------


HELLO_LAYOUT = [
    ("frame header", FRAME_HEADER_BYTES), ("version", 1), ("cluster", 20), ("dialer", 32), ("acceptor", 32),
    ("timestamp_ms", 8), ("nonce", 16), ("signature", 64),
]  # fmt: skip


def render_stream_vectors() -> str:
    """Render the gateway-stream test vectors of docs/protocol.md from the code."""
    wire = encode_hello(hello(), LOW_SEED)
    table = ["offset  size  field         hex"]
    offset = 0
    for name, size in HELLO_LAYOUT:
        chunk = wire[offset : offset + size].hex()
        rows = [chunk[i : i + 64] for i in range(0, len(chunk), 64)]
        table.append(f"{offset:>6}  {size:>4}  {name:<12}  {rows[0]}")
        table += [" " * 28 + row for row in rows[1:]]
        offset += size
    assert offset == len(wire)
    datagram = bytes.fromhex("0400000000112233")
    return "\n".join(
        [
            f"Dialer identity key seed `0x{LOW_SEED.reveal().hex()}`, public key `{MEMBERS[LOW]}`.",
            "",
            f"#### hello (cluster `{CLUSTER}`, timestamp_ms {NOW_MS})",
            "",
            "```text",
            *table,
            "```",
            "",
            f"The signature covers `{DOMAIN_HELLO.decode('ascii')[:-1]}\\x00` followed by offsets 3 to 111.",
            "",
            "#### data, keepalive, close",
            "",
            "```text",
            f"data (8-byte datagram)  {data_frame(datagram).hex()}",
            f"keepalive               {keepalive_frame().hex()}",
            f"close shutdown          {close_frame('shutdown').hex()}",
            f"close refused           {close_frame('refused').hex()}",
            "```",
            "",
        ]
    )


def test_the_stream_vectors_in_the_docs_are_what_the_code_produces() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    start = text.index("<!-- stream-vectors:start -->\n") + len("<!-- stream-vectors:start -->\n")
    end = text.index("<!-- stream-vectors:end -->")
    assert text[start:end] == render_stream_vectors()


if __name__ == "__main__":
    print(render_stream_vectors(), end="")
