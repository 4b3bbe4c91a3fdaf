"""The indexer's shared signed frames and the index's chain positions (protocol v2: signed per cluster)."""

from __future__ import annotations

import hashlib

from indexer.broadcast import SignedFrames
from indexer.chainindex import ChainIndex
from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.indexerwire import Checkpoint, Event, PushVerifier, Verified, decode, sign_welcome
from sidecar.core.keys import ed25519_public_key
from sidecar.core.model import ChainLog

SEED = SecretBytes(bytes(range(32)))
PUB = Bytes32(ed25519_public_key(SEED))
CLUSTER = Address(b"\x22" * 20)
NONCE = b"\x01" * 16


def bhash(block: int, fork: bytes = b"") -> Bytes32:
    return Bytes32(hashlib.sha256(b"block" + fork + block.to_bytes(8, "big")).digest())


def entry(block: int, index: int, fork: bytes = b"") -> ChainLog:
    return ChainLog(
        CLUSTER, (Bytes32(b"\x44" * 32),), b"", block, bhash(block, fork), Bytes32(b"\x55" * 32), index
    )


def test_a_frame_is_signed_once_and_the_same_text_serves_every_session() -> None:
    frames = SignedFrames(SEED)
    log = entry(105, 3)
    texts = {frames.event(CLUSTER, Cursor.start(100), log) for _ in range(200)}
    assert len(texts) == 1 and frames.signed == 1
    cps = {frames.checkpoint(CLUSTER, log_cursor(log), 110, bhash(110)) for _ in range(200)}
    assert len(cps) == 1 and frames.signed == 2
    # another fork's block at the same height is another frame, never the cached one
    other = frames.event(CLUSTER, Cursor.start(100), entry(105, 3, fork=b"b"))
    assert other not in texts and frames.signed == 3


def test_the_cache_is_bounded() -> None:
    frames = SignedFrames(SEED, limit=4)
    for block in range(10):
        frames.event(CLUSTER, Cursor.start(0), entry(block + 1, 0))
    assert len(frames) == 4


def log_cursor(log: ChainLog) -> Cursor:
    return Cursor(log.block_number, log.log_index, log.block_hash)


def test_the_index_chains_each_log_to_the_previous_one_and_to_its_floor() -> None:
    index = ChainIndex(100, [CLUSTER], retain_logs=3)
    logs = [entry(101, 0), entry(101, 4), entry(103, 1), entry(104, 0)]
    index.commit(105, bhash(105), logs)
    floor = Cursor(101, 0, bhash(101))  # the one dropped log (retain 3)
    assert index.clusters[CLUSTER].retained_from == floor
    assert index.next_with_prev(CLUSTER, Cursor.start(100)) == (logs[1], floor)  # not servable anyway
    assert index.next_with_prev(CLUSTER, floor) == (logs[1], floor)
    assert index.next_with_prev(CLUSTER, log_cursor(logs[1])) == (logs[2], log_cursor(logs[1]))
    assert index.next_with_prev(CLUSTER, Cursor.through(104, bhash(104))) is None
    assert index.last_through(CLUSTER, 102) == log_cursor(logs[1])
    assert index.last_through(CLUSTER, 105) == log_cursor(logs[3])
    assert index.last_through(CLUSTER, 100) == floor
    assert index.last_through(Address(b"\x99" * 20), 105) is None


def test_a_stream_built_from_the_index_verifies_from_any_servable_start() -> None:
    """What a session sends — each log with the index's prev, then a checkpoint — passes the verifier."""
    index = ChainIndex(100, [CLUSTER])
    logs = [entry(101, 0), entry(101, 4), entry(103, 1)]
    index.commit(105, bhash(105), logs)
    frames = SignedFrames(SEED)
    for start in (Cursor.start(100), Cursor(101, 0, bhash(101)), Cursor.through(102, bhash(102))):
        verifier = PushVerifier(CLUSTER, PUB, start, NONCE)
        welcome = sign_welcome(
            nonce=NONCE,
            session=b"\x02" * 16,
            indexer=PUB,
            head=105,
            protocol=2,
            start=start,
            indexer_key=SEED,
        )
        assert verifier.welcome(welcome) is None
        position = start
        while (found := index.next_with_prev(CLUSTER, position)) is not None:
            log, prev = found
            msg = decode(frames.event(CLUSTER, prev, log))
            assert isinstance(msg, Event)
            checked = verifier.check(msg)
            assert isinstance(checked, Verified), (start, checked)
            position = verifier.accept(checked)
        last = index.last_through(CLUSTER, 105)
        assert last is not None
        cp = decode(frames.checkpoint(CLUSTER, last, 105, bhash(105)))
        assert isinstance(cp, Checkpoint)
        checked = verifier.check(cp)
        assert isinstance(checked, Verified), (start, checked)
        assert verifier.accept(checked) == Cursor.through(105, bhash(105))
