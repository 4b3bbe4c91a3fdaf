"""The push protocol of sidecar.core.indexerwire (messages, codec, signing, session) through its public API.

The test vectors in docs/protocol.md are rendered by ``render_test_vectors`` and compared here, so the
document cannot drift from the code (``python -m tests.unit.test_indexerwire`` prints the block).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core import indexerwire as wire
from sidecar.core.cursor import BEFORE_BLOCK, WHOLE_BLOCK, Cursor
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.indexerwire import (
    DOMAIN_CHECKPOINT,
    DOMAIN_EVENT,
    DOMAIN_HELLO,
    DOMAIN_WELCOME,
    MAX_DATA_BYTES,
    MAX_FRAME_BYTES,
    MAX_INT,
    MAX_TOPICS,
    Ack,
    Checkpoint,
    Close,
    Event,
    Hello,
    HelloNonces,
    Message,
    PushSigner,
    PushVerifier,
    Rejection,
    Verified,
    Welcome,
    WireError,
    decode,
    encode,
    sign_checkpoint,
    sign_event,
    sign_hello,
    sign_welcome,
    signed_bytes,
    verify_hello,
    verify_signature,
    verify_welcome,
    welcome_bytes,
)
from sidecar.core.keys import ed25519_public_key
from sidecar.core.model import ChainLog

DOCS = Path(__file__).resolve().parents[2] / "docs"

INDEXER_SEED = SecretBytes(bytes(range(32)))
IDENTITY_SEED = SecretBytes(bytes(range(32, 64)))
OTHER_SEED = SecretBytes(b"\x77" * 32)
SEEDS = [INDEXER_SEED, IDENTITY_SEED, OTHER_SEED]
INDEXER_PUB = Bytes32(ed25519_public_key(INDEXER_SEED))
IDENTITY_PUB = Bytes32(ed25519_public_key(IDENTITY_SEED))
OTHER_PUB = Bytes32(ed25519_public_key(OTHER_SEED))
CLUSTER = Address(bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))
OTHER_CLUSTER = Address(b"\xc2" * 20)
MEMBER = MemberId(bytes.fromhex("9a1e0c77d2b64f0e8f1d3c5b7a9e2d4f6b8a0c1e3d5f7a9b2c4e6f8a0b1c3d5e"))
SESSION = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
OTHER_SESSION = b"\x99" * 16
NONCE = bytes.fromhex("00112233445566778899aabbccddeeff")
NOW = 1_700_000_000_000
TOPIC0 = Bytes32(bytes.fromhex("4e1f2b2c5cd2a0f1e9d3e3b1e6e6dc6a7c33f0c2c3a6f7b1d5e2a9c8b7f6e5d4"))


def block_hash(block: int) -> Bytes32:
    """A deterministic, never-zero 'canonical' hash per block number."""
    return Bytes32(hashlib.sha256(b"block" + block.to_bytes(8, "big")).digest())


def chain_log(
    block: int, index: int, *, address: Address = CLUSTER, bhash: Bytes32 | None = None
) -> ChainLog:
    return ChainLog(
        address=address,
        topics=(TOPIC0, Bytes32(MEMBER.raw)),
        data=bytes.fromhex("0a580002"),
        block_number=block,
        block_hash=block_hash(block) if bhash is None else bhash,
        tx_hash=Bytes32(hashlib.sha256(b"tx" + block.to_bytes(8, "big") + index.to_bytes(8, "big")).digest()),
        log_index=index,
    )


def welcome(
    start: Cursor,
    *,
    session: bytes = SESSION,
    indexer: Bytes32 = INDEXER_PUB,
    nonce: bytes = NONCE,
    key: SecretBytes = INDEXER_SEED,
) -> Welcome:
    """A welcome answering the hello with ``nonce``, signed with ``key``."""
    return sign_welcome(
        nonce=nonce, session=session, indexer=indexer, head=1_000, protocol=2, start=start, indexer_key=key
    )


START = Cursor.start(100)
HELLO_CURSOR = Cursor(123, 4, block_hash(123))


def started(start: Cursor = START) -> tuple[PushSigner, PushVerifier]:
    signer = PushSigner(CLUSTER, start, INDEXER_SEED)
    verifier = PushVerifier(CLUSTER, INDEXER_PUB, start, NONCE)
    assert verifier.welcome(welcome(start)) is None
    return signer, verifier


def accept(verifier: PushVerifier, msg: Message) -> Cursor:
    result = verifier.check(msg)
    assert isinstance(result, Verified), result
    return verifier.accept(result)


# --- strategies ------------------------------------------------------------------------------------------

wire_ints = st.integers(0, MAX_INT)
b32 = st.binary(min_size=32, max_size=32).map(Bytes32)
nonzero_b32 = st.binary(min_size=32, max_size=32).filter(any).map(Bytes32)
addresses = st.binary(min_size=20, max_size=20).map(Address)
cursors = st.builds(Cursor, wire_ints, st.integers(BEFORE_BLOCK, WHOLE_BLOCK), b32)
logs = st.builds(
    ChainLog,
    address=addresses,
    topics=st.lists(b32, max_size=MAX_TOPICS).map(tuple),
    data=st.binary(max_size=512),
    block_number=wire_ints,
    block_hash=nonzero_b32,
    tx_hash=b32,
    log_index=st.integers(0, WHOLE_BLOCK - 1),
)
signatures = st.binary(min_size=64, max_size=64)
sessions = st.binary(min_size=16, max_size=16)
seqs = st.integers(1, MAX_INT)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        addresses,
        st.binary(min_size=32, max_size=32).map(MemberId),
        b32,
        st.none() | cursors,
        wire_ints,
        st.binary(min_size=16, max_size=16),
        signatures,
    ),
    st.builds(Welcome, sessions, b32, wire_ints, st.just(2), cursors, signatures),
    logs.flatmap(
        lambda log: st.builds(
            Event,
            addresses,
            st.builds(
                Cursor,
                st.integers(0, log.block_number),
                st.integers(BEFORE_BLOCK, WHOLE_BLOCK),
                b32,
            ).filter(lambda c: (c.block, c.log_index) < (log.block_number, log.log_index)),
            st.just(log),
            signatures,
        )
    ),
    wire_ints.flatmap(
        lambda block: st.builds(
            Checkpoint,
            addresses,
            st.builds(Cursor, st.integers(0, block), st.integers(BEFORE_BLOCK, WHOLE_BLOCK), b32),
            st.just(block),
            nonzero_b32,
            signatures,
        )
    ),
    st.builds(Ack, seqs, cursors),
    st.builds(
        Close,
        st.sampled_from(sorted(wire.CLOSE_REASONS)),
        st.text(max_size=wire.MAX_DETAIL_CHARS),
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)


# --- JSON form -------------------------------------------------------------------------------------------


@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    text = encode(msg)
    assert decode(text) == msg
    assert decode(text.encode()) == msg
    assert encode(decode(text)) == text
    obj = json.loads(text)
    assert obj["v"] == 2
    assert isinstance(obj["type"], str)


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_decode_of_random_input_only_raises_wire_error(data: str | bytes) -> None:
    with contextlib.suppress(WireError):
        decode(data)


@given(json_values)
def test_decode_of_random_json_only_raises_wire_error(value: object) -> None:
    with contextlib.suppress(WireError):
        decode(json.dumps(value))


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, (*prefix, i))
    return out


@given(messages, st.data())
def test_decode_of_mutated_messages_only_raises_wire_error(msg: Message, data: st.DataObject) -> None:
    obj = json.loads(encode(msg))
    path = data.draw(st.sampled_from(_paths(obj)))
    parent = obj
    for step in path[:-1]:
        parent = parent[step]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = data.draw(json_values)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(json_values)
    else:
        parent.append(data.draw(json_values))
    try:
        decoded = decode(json.dumps(obj))
    except WireError:
        return
    assert encode(decoded) == json.dumps(obj, separators=(",", ":"))  # only a still-valid mutation decodes


def _event_obj() -> dict[str, Any]:
    signer, _ = started()
    result: dict[str, Any] = json.loads(encode(signer.event(chain_log(105, 3))))
    return result


def _checkpoint_mutated(path: tuple[Any, ...], value: Any) -> str:
    signer, _ = started()
    signer.event(chain_log(100, 0))
    checkpoint = signer.checkpoint(110, block_hash(110))
    assert checkpoint is not None
    obj = json.loads(encode(checkpoint))
    decode(json.dumps(obj))  # the unmutated frame is valid
    return _set(obj, path, value)


def _set(obj: dict[str, Any], path: tuple[Any, ...], value: Any) -> str:
    parent = obj
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return json.dumps(obj)


def _mutate(path: tuple[Any, ...], value: Any) -> str:
    obj = _event_obj()
    parent = obj
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return json.dumps(obj)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("[]", id="not-an-object"),
        pytest.param('{"v":2}', id="no-type"),
        pytest.param('{"type":"ack"}', id="no-version"),
        pytest.param(_mutate(("v",), 1), id="version-1"),
        pytest.param(_mutate(("v",), 3), id="version-3"),
        pytest.param(_mutate(("v",), True), id="version-true"),
        pytest.param(_mutate(("v",), 1.0), id="version-float"),
        pytest.param(_mutate(("type",), "push"), id="unknown-type"),
        pytest.param(_mutate(("cluster",), "0x" + "C1" * 20), id="uppercase-hex"),
        pytest.param(_mutate(("cluster",), "c1" * 20), id="no-0x"),
        pytest.param(_mutate(("cluster",), "0x" + "c1" * 19), id="short-address"),
        pytest.param(_mutate(("signature",), "0x" + "zz" * 64), id="not-hex"),
        pytest.param(_mutate(("session",), "0x" + "00" * 16), id="v1-session-field"),
        pytest.param(_mutate(("seq",), 1), id="v1-seq-field"),
        pytest.param(
            _mutate(("prev",), {"block": 105, "log_index": 3, "block_hash": "0x" + "11" * 32}),
            id="prev-at-the-log",
        ),
        pytest.param(_mutate(("prev", "block"), 106), id="prev-after-the-log"),
        pytest.param(_checkpoint_mutated(("prev", "block"), 111), id="checkpoint-prev-after-through"),
        pytest.param(_checkpoint_mutated(("through", "block"), 99), id="checkpoint-through-before-prev"),
        pytest.param(_checkpoint_mutated(("seq",), 1), id="checkpoint-v1-seq-field"),
        pytest.param(_mutate(("type",), "checkpoint"), id="event-fields-as-checkpoint"),
        pytest.param(_mutate(("prev", "log_index"), -2), id="cursor-below-sentinel"),
        pytest.param(_mutate(("prev", "block"), -1), id="cursor-negative-block"),
        pytest.param(_mutate(("prev", "extra"), 1), id="cursor-extra-field"),
        pytest.param(_mutate(("log", "log_index"), WHOLE_BLOCK), id="log-index-sentinel"),
        pytest.param(_mutate(("log", "topics"), ["0x" + "00" * 32] * 5), id="five-topics"),
        pytest.param(_mutate(("log", "topics"), "0x" + "00" * 32), id="topics-not-list"),
        pytest.param(_mutate(("log", "data"), "0x" + "00" * (MAX_DATA_BYTES + 1)), id="oversized-data"),
        pytest.param(_mutate(("log", "data"), "0x0"), id="odd-data"),
        pytest.param(_mutate(("log", "block_hash"), "0x" + "00" * 32), id="zero-block-hash"),
        pytest.param(_mutate(("extra",), None), id="extra-field"),
        pytest.param(_mutate(("prev",), None), id="null-prev"),
        pytest.param(json.dumps({k: v for k, v in _event_obj().items() if k != "log"}), id="missing-field"),
        pytest.param('{"v":2,"v":2,"type":"close","reason":"shutdown","detail":""}', id="duplicate-key"),
        pytest.param('{"v":2,"type":"ack","seq":NaN,"cursor":null}', id="nan"),
        pytest.param('{"v":2,"type":"close","reason":"bye","detail":""}', id="unknown-close-reason"),
        pytest.param(
            json.dumps({"v": 2, "type": "close", "reason": "shutdown", "detail": "x" * 257}), id="detail"
        ),
        pytest.param("[" * 100_000, id="too-large"),
        pytest.param("[" * 20_000 + "]" * 20_000, id="deep-nesting"),
        pytest.param(
            _mutate(("prev", "block"), 0).replace('"block": 0', '"block": ' + "9" * 5000), id="huge-int"
        ),
    ],
)
def test_malformed_frames_are_refused(text: str) -> None:
    with pytest.raises(WireError):
        decode(text)


def test_non_utf8_and_surrogates_are_refused() -> None:
    with pytest.raises(WireError):
        decode(b'{"v":2,"type":"close","reason":"shutdown","detail":"\xff"}')
    with pytest.raises(WireError):
        decode('{"v":2,"type":"close","reason":"shutdown","detail":"\ud800"}')


def test_checkpoint_with_zero_through_hash_is_refused() -> None:
    signer, _ = started()
    checkpoint = signer.checkpoint(110, block_hash(110))
    assert checkpoint is not None
    obj = json.loads(encode(checkpoint))
    obj["through"]["block_hash"] = "0x" + "00" * 32
    with pytest.raises(WireError):
        decode(json.dumps(obj))


def test_the_largest_event_fits_a_frame() -> None:
    log = replace(chain_log(105, 3), topics=(TOPIC0,) * MAX_TOPICS, data=b"\xff" * MAX_DATA_BYTES)
    start = Cursor(MAX_INT, WHOLE_BLOCK - 2, block_hash(1))
    event = sign_event(
        cluster=CLUSTER,
        prev=start,
        log=replace(log, block_number=MAX_INT, log_index=WHOLE_BLOCK - 1),
        indexer_key=INDEXER_SEED,
    )
    text = encode(event)
    assert len(text) < MAX_FRAME_BYTES
    assert decode(text) == event


def test_values_refuse_what_the_wire_cannot_carry() -> None:
    with pytest.raises(WireError):
        Ack(1, Cursor(2**63, 0, block_hash(1)))
    with pytest.raises(WireError):
        replace(_any_event(), log=replace(chain_log(105, 3), topics=(TOPIC0,) * 5))
    with pytest.raises(WireError):
        replace(_any_event(), log=replace(chain_log(105, 3), data=bytes(MAX_DATA_BYTES + 1)))
    with pytest.raises(WireError):
        replace(_any_event(), prev=Cursor(105, 3, block_hash(105)))  # prev must lie before the log
    with pytest.raises(WireError):
        Checkpoint(CLUSTER, Cursor(111, 0, block_hash(111)), 110, block_hash(110), bytes(64))
    with pytest.raises(WireError):
        Welcome(SESSION, INDEXER_PUB, 1, 1, Cursor.start(1), bytes(64))  # protocol 1 is not spoken
    with pytest.raises(WireError):
        Close("bye", "")  # type: ignore[arg-type]


def _any_event() -> Event:
    signer, _ = started()
    return signer.event(chain_log(105, 3))


# --- signed bytes ----------------------------------------------------------------------------------------


def _hello(cursor: Cursor | None = HELLO_CURSOR, ts: int = NOW) -> Hello:
    return sign_hello(
        cluster=CLUSTER,
        member_id=MEMBER,
        indexer=INDEXER_PUB,
        cursor=cursor,
        timestamp_ms=ts,
        nonce=NONCE,
        identity_key=IDENTITY_SEED,
    )


def test_hello_signed_bytes_layout() -> None:
    hello = _hello()
    data = signed_bytes(hello)
    body = data[len(DOMAIN_HELLO) :]
    assert data.startswith(DOMAIN_HELLO)
    assert len(body) == 20 + 32 + 32 + 1 + 48 + 8 + 16 == 157
    assert body[0:20] == CLUSTER.raw
    assert body[20:52] == MEMBER.raw
    assert body[52:84] == INDEXER_PUB.raw
    assert body[84] == 1
    assert struct.unpack(">qq", body[85:101]) == (123, 4)
    assert body[101:133] == block_hash(123).raw
    assert struct.unpack(">q", body[133:141]) == (NOW,)
    assert body[141:157] == NONCE
    null = signed_bytes(_hello(cursor=None))[len(DOMAIN_HELLO) :]
    assert len(null) == 157
    assert null[84:133] == bytes(49)


def test_cursor_sentinels_are_signed_as_signed_64_bit_integers() -> None:
    before = signed_bytes(_hello(cursor=Cursor.start(7)))[len(DOMAIN_HELLO) :]
    assert before[93:101] == b"\xff" * 8  # log index -1
    through = signed_bytes(_hello(cursor=Cursor.through(7, block_hash(7))))[len(DOMAIN_HELLO) :]
    assert through[93:101] == b"\x7f" + b"\xff" * 7  # log index 2**63 - 1


def test_event_signed_bytes_layout() -> None:
    prev = Cursor(105, 2, block_hash(105))
    log = chain_log(105, 3)
    event = sign_event(cluster=CLUSTER, prev=prev, log=log, indexer_key=INDEXER_SEED)
    data = signed_bytes(event)
    assert data.startswith(DOMAIN_EVENT)
    body = data[len(DOMAIN_EVENT) :]
    assert len(body) == 20 + 48 + 8 + 32 + 8 + 32 + 20 + 1 + 32 * 2 + 4 + 4
    assert body[0:20] == CLUSTER.raw
    assert struct.unpack(">qq", body[20:36]) == (105, 2)
    assert body[36:68] == prev.block_hash.raw
    assert struct.unpack(">q", body[68:76]) == (105,)
    assert body[76:108] == log.block_hash.raw
    assert struct.unpack(">q", body[108:116]) == (3,)
    assert body[116:148] == log.tx_hash.raw
    assert body[148:168] == log.address.raw
    assert body[168] == 2
    assert body[169:233] == log.topics[0].raw + log.topics[1].raw
    assert struct.unpack(">I", body[233:237]) == (4,)
    assert body[237:] == log.data


def test_checkpoint_signed_bytes_layout() -> None:
    prev = Cursor(105, 3, block_hash(105))
    cp = sign_checkpoint(
        cluster=CLUSTER, prev=prev, block=110, block_hash=block_hash(110), indexer_key=INDEXER_SEED
    )
    data = signed_bytes(cp)
    assert data.startswith(DOMAIN_CHECKPOINT)
    body = data[len(DOMAIN_CHECKPOINT) :]
    assert len(body) == 20 + 48 + 8 + 32 == 108
    assert body[0:20] == CLUSTER.raw
    assert struct.unpack(">qq", body[20:36]) == (105, 3)
    assert struct.unpack(">q", body[68:76]) == (110,)
    assert body[76:108] == block_hash(110).raw


def test_domains_are_distinct_and_prefix_free() -> None:
    domains = [DOMAIN_HELLO, DOMAIN_EVENT, DOMAIN_CHECKPOINT, DOMAIN_WELCOME]
    for a in domains:
        assert a.endswith(b"/v2\x00")  # a v1 signature never verifies as v2
        assert a.endswith(b"\x00")
        assert a.count(b"\x00") == 1
        for b in domains:
            assert a == b or not b.startswith(a)


def test_every_signed_field_is_bound() -> None:
    event = _any_event()
    cp = sign_checkpoint(
        cluster=CLUSTER, prev=event.cursor, block=110, block_hash=block_hash(110), indexer_key=INDEXER_SEED
    )
    assert verify_signature(event, INDEXER_PUB)
    assert verify_signature(cp, INDEXER_PUB)
    other_cursor = Cursor(100, 0, block_hash(100))
    tampered: list[Event | Checkpoint] = [
        replace(event, cluster=OTHER_CLUSTER),
        replace(event, prev=other_cursor),
        replace(event, log=replace(event.log, block_number=106)),
        replace(event, log=replace(event.log, block_hash=block_hash(999))),
        replace(event, log=replace(event.log, log_index=4)),
        replace(event, log=replace(event.log, tx_hash=block_hash(998))),
        replace(event, log=replace(event.log, address=OTHER_CLUSTER)),
        replace(event, log=replace(event.log, topics=event.log.topics[:1])),
        replace(event, log=replace(event.log, data=event.log.data + b"\x00")),
        replace(cp, cluster=OTHER_CLUSTER),
        replace(cp, prev=other_cursor),
        replace(cp, block=111),
        replace(cp, block_hash=block_hash(111)),
    ]
    for msg in tampered:
        assert not verify_signature(msg, INDEXER_PUB)
    assert not verify_signature(event, OTHER_PUB)
    hello = _hello()
    for bad in [
        replace(hello, cluster=OTHER_CLUSTER),
        replace(hello, member_id=MemberId(b"\x01" * 32)),
        replace(hello, indexer=OTHER_PUB),
        replace(hello, cursor=None),
        replace(hello, cursor=Cursor(123, 5, block_hash(123))),
        replace(hello, timestamp_ms=NOW + 1),
        replace(hello, nonce=b"\x00" * 16),
    ]:
        assert not verify_signature(bad, IDENTITY_PUB)


def test_topics_and_data_are_length_delimited() -> None:
    """Moving bytes between the topic list and the data changes the signed bytes."""
    event = _any_event()
    moved = replace(
        event,
        log=replace(event.log, topics=event.log.topics[:1], data=event.log.topics[1].raw + event.log.data),
    )
    assert signed_bytes(moved) != signed_bytes(event)


# --- hello -----------------------------------------------------------------------------------------------


def test_verify_hello_accepts_a_fresh_hello_from_the_member() -> None:
    assert verify_hello(_hello(), IDENTITY_PUB, NOW, 30_000, indexer_pub=INDEXER_PUB) is None
    assert verify_hello(_hello(cursor=None), IDENTITY_PUB, NOW, 30_000, indexer_pub=INDEXER_PUB) is None


@pytest.mark.parametrize(
    ("hello", "identity", "now", "indexer", "reason"),
    [
        (_hello(), IDENTITY_PUB, NOW, OTHER_PUB, "wrong_indexer"),
        (_hello(), OTHER_PUB, NOW, INDEXER_PUB, "bad_signature"),
        (replace(_hello(), cursor=None), IDENTITY_PUB, NOW, INDEXER_PUB, "bad_signature"),
        (_hello(), IDENTITY_PUB, NOW + 30_001, INDEXER_PUB, "stale"),
        (_hello(), IDENTITY_PUB, NOW - 30_001, INDEXER_PUB, "future"),
    ],
)
def test_verify_hello_refusals(
    hello: Hello, identity: Bytes32, now: int, indexer: Bytes32, reason: str
) -> None:
    assert verify_hello(hello, identity, now, 30_000, indexer_pub=indexer) == reason


def test_verify_hello_freshness_is_inclusive() -> None:
    for now in (NOW - 30_000, NOW + 30_000):
        assert verify_hello(_hello(), IDENTITY_PUB, now, 30_000, indexer_pub=INDEXER_PUB) is None


# --- the verifier ----------------------------------------------------------------------------------------


def test_a_clean_stream_is_accepted_and_the_cursor_follows_cursor_semantics() -> None:
    signer, verifier = started(Cursor.start(100))
    e1 = signer.event(chain_log(100, 0))
    e2 = signer.event(chain_log(100, 5))
    cp = signer.checkpoint(104, block_hash(104))
    e3 = signer.event(chain_log(105, 0))
    assert cp is not None
    assert verifier.ack() is None
    assert accept(verifier, e1) == Cursor(100, 0, block_hash(100))
    assert accept(verifier, e2) == Cursor(100, 5, block_hash(100))
    assert accept(verifier, cp) == Cursor.through(104, block_hash(104))
    assert accept(verifier, e3) == Cursor(105, 0, block_hash(105))
    assert verifier.ack() == Ack(4, Cursor(105, 0, block_hash(105)))
    assert verifier.cursor == signer.cursor


def test_check_does_not_advance_until_accept() -> None:
    signer, verifier = started()
    event = signer.event(chain_log(105, 3))
    result = verifier.check(event)
    assert isinstance(result, Verified)
    assert verifier.cursor == Cursor.start(100)
    assert verifier.seq == 0
    assert verifier.check(event) == result  # checking again is harmless before accept
    verifier.accept(verifier.check(event))  # type: ignore[arg-type]
    assert verifier.seq == 1


def test_accept_takes_only_the_latest_check() -> None:
    signer, verifier = started()
    e1 = signer.event(chain_log(105, 3))
    stale = verifier.check(e1)
    assert isinstance(stale, Verified)
    verifier.check(e1)
    with pytest.raises(ValueError, match="accept"):
        verifier.accept(stale)
    verifier.accept(verifier.check(e1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="accept"):
        verifier.accept(stale)


def _reject(verifier: PushVerifier, msg: Message, reason: str) -> None:
    assert verifier.check(msg) == Rejection(reason)  # type: ignore[arg-type]


def test_rejects_bad_signature() -> None:
    _, verifier = started()
    rogue = PushSigner(CLUSTER, Cursor.start(100), OTHER_SEED)
    _reject(verifier, rogue.event(chain_log(105, 3)), "bad_signature")


def test_rejects_a_tampered_payload() -> None:
    signer, verifier = started()
    event = signer.event(chain_log(105, 3))
    _reject(verifier, replace(event, log=replace(event.log, data=b"evil")), "bad_signature")


def test_rejects_another_cluster() -> None:
    _, verifier = started()
    other = PushSigner(OTHER_CLUSTER, Cursor.start(100), INDEXER_SEED)
    _reject(verifier, other.event(chain_log(105, 3, address=OTHER_CLUSTER)), "wrong_cluster")


def test_rejects_a_log_emitted_by_another_contract() -> None:
    signer, verifier = started()
    _reject(verifier, signer.event(chain_log(105, 3, address=OTHER_CLUSTER)), "wrong_cluster")


def test_rejects_an_event_after_a_skipped_log() -> None:
    signer, verifier = started()
    signer.event(chain_log(105, 3))  # lost in transit
    _reject(verifier, signer.event(chain_log(105, 4)), "gap")


def test_rejects_a_checkpoint_after_a_skipped_log() -> None:
    signer, verifier = started()
    signer.event(chain_log(105, 3))  # lost in transit
    cp = signer.checkpoint(110, block_hash(110))
    assert cp is not None
    _reject(verifier, cp, "gap")


def test_rejects_a_prev_ahead_of_the_cursor() -> None:
    _, verifier = started()
    skipping = PushSigner(CLUSTER, Cursor(103, 0, block_hash(103)), INDEXER_SEED)
    _reject(verifier, skipping.event(chain_log(105, 3)), "gap")


def test_rejects_a_replayed_message() -> None:
    signer, verifier = started()
    event = signer.event(chain_log(105, 3))
    accept(verifier, event)
    _reject(verifier, event, "replay")


def test_rejects_a_message_the_client_already_passed_even_from_a_new_session() -> None:
    """v2 binds no session into an event: a replay is caught by its position."""
    signer, _ = started()
    old = signer.event(chain_log(105, 3))
    verifier = PushVerifier(CLUSTER, INDEXER_PUB, Cursor.through(106, block_hash(106)), NONCE)
    assert verifier.welcome(welcome(Cursor.through(106, block_hash(106)), session=OTHER_SESSION)) is None
    _reject(verifier, old, "replay")


def test_rejects_a_chain_that_does_not_continue_from_the_log_we_reached() -> None:
    signer, verifier = started()
    accept(verifier, signer.event(chain_log(105, 3)))
    forgetful = PushSigner(CLUSTER, Cursor.start(100), INDEXER_SEED)  # claims no log between 100 and 106
    _reject(verifier, forgetful.event(chain_log(106, 0)), "out_of_order")


def test_rejects_a_checkpoint_that_does_not_advance() -> None:
    start = Cursor.through(105, block_hash(105))
    _, verifier = started(start)
    cp = sign_checkpoint(
        cluster=CLUSTER,
        prev=Cursor.start(100),
        block=105,
        block_hash=block_hash(105),
        indexer_key=INDEXER_SEED,
    )
    _reject(verifier, cp, "replay")


def test_rejects_another_hash_for_the_cursor_block() -> None:
    start = Cursor(105, 3, block_hash(105))
    signer, verifier = started(start)
    _reject(verifier, signer.event(chain_log(105, 4, bhash=block_hash(999))), "reorg")


def test_rejects_a_prev_at_our_position_on_another_fork() -> None:
    start = Cursor(105, 3, block_hash(105))
    _, verifier = started(start)
    fork = PushSigner(CLUSTER, Cursor(105, 3, block_hash(999)), INDEXER_SEED)
    _reject(verifier, fork.event(chain_log(106, 0)), "reorg")


def test_rejects_a_checkpoint_contradicting_the_cursor_block() -> None:
    start = Cursor(105, 3, block_hash(105))
    signer, verifier = started(start)
    cp = signer.checkpoint(105, block_hash(999))
    assert cp is not None
    _reject(verifier, cp, "reorg")


def test_a_start_cursor_without_hash_accepts_any_hash_of_its_block() -> None:
    signer, verifier = started(Cursor.start(105))
    accept(verifier, signer.event(chain_log(105, 0)))


def test_rejects_messages_before_the_welcome_and_out_of_place() -> None:
    signer = PushSigner(CLUSTER, Cursor.start(100), INDEXER_SEED)
    verifier = PushVerifier(CLUSTER, INDEXER_PUB, Cursor.start(100), NONCE)
    _reject(verifier, signer.event(chain_log(105, 3)), "malformed")
    _, verifier = started()
    assert verifier.welcome(welcome(Cursor.start(100))) == Rejection("malformed")
    _, verifier = started()
    _reject(verifier, _hello(), "malformed")
    _, verifier = started()
    _reject(verifier, welcome(Cursor.start(100)), "malformed")
    verifier = PushVerifier(CLUSTER, INDEXER_PUB, Cursor.start(100), NONCE)
    assert verifier.welcome(Close("shutdown")) == Rejection("malformed")


def test_welcome_must_come_from_the_registry_key_and_start_at_our_cursor() -> None:
    verifier = PushVerifier(CLUSTER, INDEXER_PUB, Cursor(105, 3, block_hash(105)), NONCE)
    assert verifier.welcome(welcome(Cursor(105, 3, block_hash(105)), indexer=OTHER_PUB)) == Rejection(
        "wrong_indexer"
    )
    for start, reason in [
        (Cursor(106, 0, block_hash(106)), "gap"),
        (Cursor.start(100), "replay"),
        (Cursor(105, 3, block_hash(999)), "reorg"),
    ]:
        verifier = PushVerifier(CLUSTER, INDEXER_PUB, Cursor(105, 3, block_hash(105)), NONCE)
        assert verifier.welcome(welcome(start)) == Rejection(reason)  # type: ignore[arg-type]


def test_a_rejection_is_final() -> None:
    signer, verifier = started()
    good = signer.event(chain_log(105, 3))
    rogue = PushSigner(CLUSTER, Cursor.start(100), OTHER_SEED).event(chain_log(105, 3))
    _reject(verifier, rogue, "bad_signature")
    _reject(verifier, good, "bad_signature")
    assert verifier.welcome(welcome(Cursor.start(100))) == Rejection("bad_signature")
    assert verifier.cursor == Cursor.start(100)
    assert verifier.failed == Rejection("bad_signature")


def test_signer_refuses_to_go_backwards() -> None:
    signer, _ = started(Cursor(105, 3, block_hash(105)))
    with pytest.raises(WireError):
        signer.event(chain_log(105, 3))
    assert signer.checkpoint(104, block_hash(104)) is None
    assert signer.cursor == Cursor(105, 3, block_hash(105))


# --- continuity over random streams ----------------------------------------------------------------------

steps = st.lists(
    st.tuples(st.sampled_from(["event", "checkpoint"]), st.integers(0, 3), st.integers(0, 3)),
    min_size=1,
    max_size=30,
)


def _stream(start: Cursor, plan: list[tuple[str, int, int]]) -> tuple[PushSigner, list[Event | Checkpoint]]:
    signer = PushSigner(CLUSTER, start, INDEXER_SEED)
    out: list[Event | Checkpoint] = []
    for kind, block_step, index_step in plan:
        here = signer.cursor
        block = here.next_block + block_step
        if kind == "checkpoint":
            cp = signer.checkpoint(block, block_hash(block))
            if cp is not None:
                out.append(cp)
            continue
        same_block = block == here.block
        index = (here.log_index + 1 + index_step) if same_block else index_step
        out.append(signer.event(chain_log(block, index)))
    return signer, out


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), steps)
def test_any_stream_is_accepted_in_order_and_ends_where_the_poller_would(
    start_block: int, plan: list[tuple[str, int, int]]
) -> None:
    start = Cursor.start(start_block)
    signer, stream = _stream(start, plan)
    verifier = PushVerifier(CLUSTER, INDEXER_PUB, start, NONCE)
    assert verifier.welcome(welcome(start)) is None
    polled = start  # the poller's view: Cursor.advance per log, Cursor.through per scanned range end
    for msg in stream:
        received = decode(encode(msg))
        cursor = accept(verifier, received)
        if isinstance(msg, Event):
            polled = polled.advance(msg.log.block_number, msg.log.log_index, msg.log.block_hash)
            assert cursor == Cursor(msg.log.block_number, msg.log.log_index, msg.log.block_hash)
        else:
            polled = polled.advance(msg.block, WHOLE_BLOCK, msg.block_hash)
            assert cursor == Cursor.through(msg.block, msg.block_hash)
        assert cursor == polled
    assert verifier.cursor == signer.cursor
    assert verifier.seq == len(stream)


@settings(max_examples=60, deadline=None)
@given(steps.filter(lambda p: len(p) >= 2), st.data())
def test_a_dropped_duplicated_or_swapped_message_is_rejected(
    plan: list[tuple[str, int, int]], data: st.DataObject
) -> None:
    start = Cursor.start(100)
    _, stream = _stream(start, plan)
    if len(stream) < 2:
        return
    i = data.draw(st.integers(0, len(stream) - 2))
    damage = data.draw(st.sampled_from(["drop", "duplicate", "swap"]))
    damaged = list(stream)
    if damage == "drop":
        del damaged[i]
    elif damage == "duplicate":
        damaged.insert(i + 1, damaged[i])
    else:
        damaged[i], damaged[i + 1] = damaged[i + 1], damaged[i]
    verifier = PushVerifier(CLUSTER, INDEXER_PUB, start, NONCE)
    assert verifier.welcome(welcome(start)) is None
    rejected: Rejection | None = None
    for msg in damaged:
        result = verifier.check(msg)
        if isinstance(result, Rejection):
            rejected = result
            break
        verifier.accept(result)
    if damage == "drop" and isinstance(stream[i], Checkpoint):
        # A lost checkpoint loses no log: the next message still proves the chain continues.
        assert rejected is None
        assert verifier.cursor == stream[-1].cursor
        return
    assert rejected is not None
    assert rejected.reason in {"gap", "replay"}


def test_resuming_from_the_acked_cursor_continues_without_loss_or_repeat() -> None:
    signer, verifier = started(Cursor.start(100))
    accept(verifier, signer.event(chain_log(100, 0)))
    handled = signer.event(chain_log(101, 2))
    accept(verifier, handled)
    ack = verifier.ack()
    assert ack is not None
    persisted = Cursor.from_json(ack.cursor.to_json())  # the shared cursor file
    lost = signer.event(chain_log(102, 0))  # sent, never handled: the connection dropped
    resumed_signer = PushSigner(CLUSTER, persisted, INDEXER_SEED)
    resumed = PushVerifier(CLUSTER, INDEXER_PUB, persisted, NONCE)
    assert resumed.welcome(welcome(persisted, session=OTHER_SESSION)) is None
    again = resumed_signer.event(chain_log(102, 0))
    assert encode(again) == encode(lost)  # signed per cluster: the same frame for every session
    _reject(PushVerifier(CLUSTER, INDEXER_PUB, persisted, NONCE), handled, "malformed")  # no welcome yet
    stale = PushVerifier(CLUSTER, INDEXER_PUB, persisted, NONCE)
    assert stale.welcome(welcome(persisted, session=OTHER_SESSION)) is None
    _reject(stale, handled, "replay")  # what was handled before the drop is not handled twice
    assert accept(resumed, again) == Cursor(102, 0, block_hash(102))


# --- secrets ---------------------------------------------------------------------------------------------


def test_reprs_and_errors_never_show_key_material() -> None:
    signer, verifier = started()
    event = signer.event(chain_log(105, 3))
    texts = [
        repr(signer),
        str(signer),
        repr(verifier),
        repr(event),
        repr(_hello()),
        repr(verifier.check(event)),
    ]
    for bad_seed in (SecretBytes(INDEXER_SEED.reveal()[:31]), SecretBytes(INDEXER_SEED.reveal() + b"\x00")):
        with pytest.raises(WireError) as info:
            sign_event(cluster=CLUSTER, prev=Cursor.start(1), log=chain_log(1, 0), indexer_key=bad_seed)
        texts.append(str(info.value))
        with pytest.raises(WireError) as info:
            PushSigner(CLUSTER, Cursor.start(1), bad_seed).event(chain_log(1, 0))
        texts.append(str(info.value))
    for text in texts:
        for seed in SEEDS:
            assert seed.reveal().hex() not in text
            assert seed.reveal().hex()[:16] not in text
            assert repr(seed.reveal()) not in text


# --- test vectors (docs/protocol.md) ---------------------------------------------------------------------


def vector_messages() -> list[tuple[str, Hello | Welcome | Event | Checkpoint]]:
    """The messages of the test vectors: a hello with a cursor, one without, the welcome answering the first,
    an event (the cluster's previous log at 4198/2, so the client at 4200 misses nothing) and a checkpoint
    (its prev: that event's log)."""
    prev = Cursor.through(4_200, block_hash(4_200))
    log = chain_log(4_201, 7)
    event = sign_event(
        cluster=CLUSTER, prev=Cursor(4_198, 2, block_hash(4_198)), log=log, indexer_key=INDEXER_SEED
    )
    checkpoint = sign_checkpoint(
        cluster=CLUSTER,
        prev=event.cursor,
        block=4_210,
        block_hash=block_hash(4_210),
        indexer_key=INDEXER_SEED,
    )
    answer = sign_welcome(
        nonce=NONCE, session=SESSION, indexer=INDEXER_PUB, head=4_230, protocol=2, start=prev,
        indexer_key=INDEXER_SEED,
    )  # fmt: skip
    return [
        ("hello (with a cursor)", _hello(cursor=prev)),
        ("hello (no cursor: replay from the registration block)", _hello(cursor=None)),
        ("welcome (answering the first hello: signed over its nonce)", answer),
        ("event", event),
        ("checkpoint", checkpoint),
    ]


CURSOR_LAYOUT = [("block", 8), ("log_index", 8), ("block_hash", 32)]


def _signed(msg: Hello | Welcome | Event | Checkpoint) -> bytes:
    """A message's signed bytes (a welcome's cover the vectors' hello nonce)."""
    return welcome_bytes(msg, NONCE) if isinstance(msg, Welcome) else signed_bytes(msg)


def _layout(msg: Hello | Welcome | Event | Checkpoint) -> list[tuple[str, int]]:
    """The signed-bytes fields and sizes, written out independently of the code under test."""
    if isinstance(msg, Welcome):
        return [
            ("domain", len(DOMAIN_WELCOME)),
            ("hello nonce", 16),
            ("session", 16),
            ("indexer", 32),
            ("head", 8),
            ("protocol", 8),
            *[(f"start {name}", size) for name, size in CURSOR_LAYOUT],
        ]
    if isinstance(msg, Hello):
        return [
            ("domain", len(DOMAIN_HELLO)),
            ("cluster", 20),
            ("member_id", 32),
            ("indexer", 32),
            ("cursor present", 1),
            *[(f"cursor {name}", size) for name, size in CURSOR_LAYOUT],
            ("timestamp_ms", 8),
            ("nonce", 16),
        ]
    head = [
        ("domain", len(DOMAIN_EVENT if isinstance(msg, Event) else DOMAIN_CHECKPOINT)),
        ("cluster", 20),
        *[(f"prev {name}", size) for name, size in CURSOR_LAYOUT],
    ]
    if isinstance(msg, Checkpoint):
        return [*head, ("through block", 8), ("through block_hash", 32)]
    log = msg.log
    return [
        *head,
        ("log block_number", 8),
        ("log block_hash", 32),
        ("log log_index", 8),
        ("log tx_hash", 32),
        ("log address", 20),
        ("log topic count", 1),
        *[(f"log topic {i}", 32) for i in range(len(log.topics))],
        ("log data length", 4),
        ("log data", len(log.data)),
    ]


def _wrap(hex_text: str, width: int = 64) -> list[str]:
    return [hex_text[i : i + width] for i in range(0, len(hex_text), width)] or [""]


def render_test_vectors() -> str:
    """Render the test-vector section of docs/protocol.md from the code."""
    lines = [
        f"Indexer key seed `0x{INDEXER_SEED.reveal().hex()}`, public key `{INDEXER_PUB}`.",
        "",
        f"Member identity key seed `0x{IDENTITY_SEED.reveal().hex()}`, public key `{IDENTITY_PUB}`.",
        "",
    ]
    for title, msg in vector_messages():
        data = _signed(msg)
        table = ["offset  size  field                hex"]
        offset = 0
        for name, size in _layout(msg):
            chunks = _wrap(data[offset : offset + size].hex())
            table.append(f"{offset:>6}  {size:>4}  {name:<19}  {chunks[0]}")
            table += [" " * 35 + chunk for chunk in chunks[1:]]
            offset += size
        assert offset == len(data)
        lines += [
            f"#### {title}",
            "",
            "```json",
            json.dumps(json.loads(encode(msg)), indent=2),
            "```",
            "",
            f"Signed bytes ({len(data)} bytes), field by field:",
            "",
            "```text",
            *table,
            "```",
            "",
            "Signature:",
            "",
            "```text",
            *_wrap(msg.signature.hex()),
            "```",
            "",
        ]
    return "\n".join(lines)


def test_vectors_verify() -> None:
    for _, msg in vector_messages():
        if isinstance(msg, Welcome):
            assert verify_welcome(msg, NONCE, INDEXER_PUB)
        else:
            assert verify_signature(msg, IDENTITY_PUB if isinstance(msg, Hello) else INDEXER_PUB)
        assert decode(encode(msg)) == msg


def test_the_test_vectors_in_the_docs_are_what_the_code_produces() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    start = text.index("<!-- test-vectors:start -->\n") + len("<!-- test-vectors:start -->\n")
    end = text.index("<!-- test-vectors:end -->")
    assert text[start:end] == render_test_vectors()


if __name__ == "__main__":
    print(render_test_vectors(), end="")


# --- issue 12: the welcome is signed over the hello's nonce; the indexer remembers nonces -----------------


def test_a_welcome_must_be_signed_by_the_registry_key_over_our_hellos_nonce() -> None:
    for forged in (
        welcome(START, key=OTHER_SEED),  # another key
        welcome(START, nonce=b"\x01" * 16),  # recorded for another hello
        replace(welcome(START), head=999_999),  # a field changed after signing
    ):
        verifier = PushVerifier(CLUSTER, INDEXER_PUB, START, NONCE)
        assert verifier.welcome(forged) == Rejection("bad_signature")
        assert verifier.session is None
    good = welcome(START)
    assert verify_welcome(good, NONCE, INDEXER_PUB)
    assert not verify_welcome(good, NONCE[:8], INDEXER_PUB)
    assert welcome_bytes(good, NONCE).startswith(DOMAIN_WELCOME + NONCE + SESSION)
    with pytest.raises(WireError):
        decode(encode(good).replace(',"signature":"0x' + good.signature.hex() + '"', ""))  # unsigned


def test_hello_nonces_refuse_a_replay_within_the_window_and_stay_bounded() -> None:
    nonces = HelloNonces(freshness_ms=30_000, limit=3)
    hello = _hello()
    assert nonces.admit(hello, NOW) == "ok"
    assert nonces.admit(hello, NOW + 59_999) == "replayed"
    assert nonces.admit(replace(hello, nonce=b"\x02" * 16), NOW) == "ok"
    assert nonces.admit(replace(hello, member_id=MemberId(b"\x03" * 32)), NOW) == "ok"
    assert nonces.admit(replace(hello, nonce=b"\x04" * 16), NOW) == "busy"  # full: never forget early
    assert len(nonces) == 3
    assert nonces.admit(hello, NOW + 60_000) == "ok"  # no hello with it could still be fresh: forgotten
    assert len(nonces) == 1
