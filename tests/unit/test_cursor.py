"""Chain-log cursor maths of sidecar.core.cursor: ranges, dedup, reorg rewind, JSON."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.cursor import (
    BEFORE_BLOCK,
    WHOLE_BLOCK,
    Cursor,
    CursorError,
    is_after,
    next_range,
    rewind_on_reorg,
)
from sidecar.core.ids import ZERO32, Bytes32

H1 = Bytes32(b"\x11" * 32)
H2 = Bytes32(b"\x22" * 32)


def test_start_and_through() -> None:
    start = Cursor.start(100)
    assert (start.block, start.log_index, start.block_hash) == (100, BEFORE_BLOCK, ZERO32)
    assert start.next_block == 100
    done = Cursor.through(150, H1)
    assert done.next_block == 151
    assert done.log_index == WHOLE_BLOCK
    assert Cursor(150, 3, H1).next_block == 150  # a partly handled block is scanned again


def test_next_range_examples() -> None:
    assert next_range(100, head=110, confirmations=2, max_range=1000) == (100, 108)
    assert next_range(100, head=110, confirmations=2, max_range=5) == (100, 104)
    assert next_range(109, head=110, confirmations=2, max_range=5) is None
    assert next_range(108, head=110, confirmations=2, max_range=5) == (108, 108)
    assert next_range(0, head=0, confirmations=0, max_range=1) == (0, 0)
    assert next_range(0, head=3, confirmations=5, max_range=10) is None


@pytest.mark.parametrize(
    ("args", "match"),
    [((-1, 10, 0, 5), "non-negative"), ((0, 10, -1, 5), "non-negative"), ((0, 10, 0, 0), "max_range")],
)
def test_next_range_validates(args: tuple[int, int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        next_range(*args)


@given(
    start=st.integers(0, 1000),
    heads=st.lists(st.integers(0, 3000), min_size=1, max_size=20),
    confirmations=st.integers(0, 20),
    max_range=st.integers(1, 300),
)
def test_successive_ranges_are_bounded_confirmed_and_contiguous(
    start: int, heads: list[int], confirmations: int, max_range: int
) -> None:
    cursor = Cursor.start(start)
    covered: list[int] = []
    head_seen = 0
    for head in heads:
        head_seen = max(head_seen, head)  # the chain head never goes back for this property
        while (span := next_range(cursor.next_block, head_seen, confirmations, max_range)) is not None:
            lo, hi = span
            assert lo == cursor.next_block
            assert lo <= hi <= head_seen - confirmations
            assert hi - lo + 1 <= max_range
            covered.extend(range(lo, hi + 1))
            cursor = Cursor.through(hi, H1)
    assert covered == list(range(start, start + len(covered)))
    if covered:
        assert covered[-1] == head_seen - confirmations


def test_dedup() -> None:
    cursor = Cursor(100, 3, H1)
    assert not is_after(100, 3, cursor)
    assert not is_after(100, 2, cursor)
    assert not is_after(99, 50, cursor)
    assert is_after(100, 4, cursor)
    assert is_after(101, 0, cursor)
    assert is_after(100, 0, Cursor.start(100))
    assert not is_after(100, 10**6, Cursor.through(100, H1))
    assert is_after(101, 0, Cursor.through(100, H1))


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5)), max_size=40))
def test_replayed_logs_are_handled_once(logs: list[tuple[int, int]]) -> None:
    ordered = sorted(set(logs))
    cursor = Cursor.start(0)
    handled = []
    for _ in range(2):  # a second delivery (poll after push, reconnect) changes nothing
        for block, index in ordered:
            if is_after(block, index, cursor):
                handled.append((block, index))
                cursor = cursor.advance(block, index, H1)
    assert handled == ordered


def test_advance_never_moves_back() -> None:
    cursor = Cursor(100, 3, H1)
    assert cursor.advance(100, 2, H2) is cursor
    assert cursor.advance(100, 4, H2) == Cursor(100, 4, H2)


def test_rewind_on_reorg() -> None:
    cursor = Cursor.through(100, H1)
    assert rewind_on_reorg(cursor, H1, 12) is cursor
    assert rewind_on_reorg(cursor, H2, 12) == Cursor.start(88)
    assert rewind_on_reorg(cursor, None, 12) == Cursor.start(88)
    assert rewind_on_reorg(Cursor.through(5, H1), H2, 12) == Cursor.start(0)
    assert rewind_on_reorg(cursor, H2, 12, floor=95) == Cursor.start(95)
    start = Cursor.start(50)
    assert rewind_on_reorg(start, H2, 12) is start  # no stored hash, nothing to compare
    with pytest.raises(ValueError, match="depth"):
        rewind_on_reorg(cursor, H2, 0)


def test_rewound_cursor_rehandles_the_rewound_range() -> None:
    cursor = rewind_on_reorg(Cursor(100, 7, H1), H2, 10)
    assert cursor.next_block == 90
    assert is_after(90, 0, cursor)


@given(
    block=st.integers(0, 2**62),
    log_index=st.integers(BEFORE_BLOCK, WHOLE_BLOCK),
    raw=st.binary(min_size=32, max_size=32),
)
def test_json_round_trip(block: int, log_index: int, raw: bytes) -> None:
    cursor = Cursor(block, log_index, Bytes32(raw))
    assert Cursor.from_json(cursor.to_json()) == cursor
    assert Cursor.from_json(cursor.to_json().encode()) == cursor


GOOD = {"version": 1, "block": 5, "log_index": 2, "block_hash": "0x" + "ab" * 32}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        json.dumps({**GOOD, "version": 2}),
        json.dumps({**GOOD, "version": True}),
        json.dumps({**GOOD, "block": -1}),
        json.dumps({**GOOD, "block": 1.5}),
        json.dumps({**GOOD, "block": True}),
        json.dumps({**GOOD, "block": "5"}),
        json.dumps({**GOOD, "log_index": -2}),
        json.dumps({**GOOD, "log_index": 2**63}),
        json.dumps({**GOOD, "block_hash": "ab" * 32}),
        json.dumps({**GOOD, "block_hash": "0x" + "ab" * 31}),
        json.dumps({**GOOD, "block_hash": "0x" + "zz" * 32}),
        json.dumps({**GOOD, "block_hash": 5}),
        json.dumps({**GOOD, "extra": 1}),
        json.dumps({k: v for k, v in GOOD.items() if k != "block"}),
        " " * 2000,
        "[" * 1000,
        b"\xff\xfe",
    ],
)
def test_from_json_rejects(text: str | bytes) -> None:
    with pytest.raises(CursorError):
        Cursor.from_json(text)


def test_from_json_accepts_the_documented_form() -> None:
    assert Cursor.from_json(json.dumps(GOOD)) == Cursor(5, 2, Bytes32(b"\xab" * 32))


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_from_json_only_raises_cursor_error(text: str | bytes) -> None:
    with contextlib.suppress(CursorError):
        Cursor.from_json(text)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(sorted(GOOD)), c, max_size=4),
    )
)
def test_from_json_only_raises_cursor_error_on_json_values(value: object) -> None:
    with contextlib.suppress(CursorError):
        Cursor.from_json(json.dumps(value))
