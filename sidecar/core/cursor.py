"""The chain-log cursor: where event handling stands, which range to scan next, and reorg rewinds.

Owns ``Cursor`` (the position of the last handled log), ``next_range`` (the bounded, confirmed block
range to scan), ``is_after`` (dedup), ``rewind_on_reorg`` and the cursor's JSON form. Must not do I/O:
the driver reads logs and block hashes and persists ``to_json()`` atomically.

A cursor is ``(block, log_index, block_hash)`` meaning "every log at or before (block, log_index) has been
handled", with two sentinel log indexes:

* ``BEFORE_BLOCK`` (-1): nothing in ``block`` handled yet — ``Cursor.start(block)`` (hash unknown, zero);
* ``WHOLE_BLOCK`` (2**63 - 1): all of ``block`` handled — ``Cursor.through(block, hash)``, what the poller
  stores after scanning a range to its end, so an empty range still advances the cursor.

``next_block`` is where the next scan starts: ``block + 1`` after a whole block, otherwise ``block`` itself
(more logs of a partly handled block may follow; ``is_after`` skips the handled ones). The block hash lets
the driver detect a reorg under the cursor: when the canonical hash of ``cursor.block`` differs (or the
block is gone), ``rewind_on_reorg`` moves the cursor back ``depth`` blocks; events are only wake-ups and
membership is always re-read from the chain, so handling a rewound range again is harmless.

JSON form (version 1): ``{"version": 1, "block": int, "log_index": int, "block_hash": "0x…64 hex"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Self

from sidecar.core.ids import ZERO32, Bytes32

BEFORE_BLOCK = -1
WHOLE_BLOCK = 2**63 - 1
JSON_VERSION = 1
MAX_JSON_BYTES = 1024


class CursorError(ValueError):
    """A persisted cursor that cannot be used; the message is a short reason."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position of the last handled log (see the module docstring for the sentinels)."""

    block: int
    log_index: int
    block_hash: Bytes32

    def __post_init__(self) -> None:
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 0:
            raise CursorError("block must be a non-negative integer")
        if (
            isinstance(self.log_index, bool)
            or not isinstance(self.log_index, int)
            or not BEFORE_BLOCK <= self.log_index <= WHOLE_BLOCK
        ):
            raise CursorError("log index out of range")
        if not isinstance(self.block_hash, Bytes32):
            raise CursorError("block hash must be 32 bytes")

    @classmethod
    def start(cls, block: int) -> Self:
        """Nothing handled yet; start scanning at ``block``."""
        return cls(block, BEFORE_BLOCK, ZERO32)

    @classmethod
    def through(cls, block: int, block_hash: Bytes32) -> Self:
        """Every log up to and including ``block`` handled."""
        return cls(block, WHOLE_BLOCK, block_hash)

    @property
    def next_block(self) -> int:
        """The first block the next scan must cover."""
        return self.block + 1 if self.log_index == WHOLE_BLOCK else self.block

    def advance(self, block: int, log_index: int, block_hash: Bytes32) -> Cursor:
        """Return the cursor after handling a log; never moves backwards."""
        if not is_after(block, log_index, self):
            return self
        return Cursor(block, log_index, block_hash)

    def to_json(self) -> str:
        """Serialise for persistence."""
        return json.dumps(
            {
                "version": JSON_VERSION,
                "block": self.block,
                "log_index": self.log_index,
                "block_hash": str(self.block_hash),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Cursor:
        """Parse a persisted cursor; raise CursorError on anything unexpected."""
        if len(text) > MAX_JSON_BYTES:
            raise CursorError("cursor file too large")
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise CursorError("cursor is not JSON") from None
        if not isinstance(obj, dict) or set(obj) != {"version", "block", "log_index", "block_hash"}:
            raise CursorError("cursor has unexpected fields")
        if obj["version"] != JSON_VERSION or isinstance(obj["version"], bool):
            raise CursorError("unsupported cursor version")
        block_hash = obj["block_hash"]
        if not isinstance(block_hash, str) or not block_hash.startswith("0x"):
            raise CursorError("block hash must be 0x-prefixed hex")
        try:
            parsed_hash = Bytes32.from_hex(block_hash)
        except ValueError:
            raise CursorError("block hash must be 32 bytes of hex") from None
        return Cursor(obj["block"], obj["log_index"], parsed_hash)


def next_range(
    cursor_next_block: int, head: int, confirmations: int, max_range: int
) -> tuple[int, int] | None:
    """Return the inclusive (from, to) block range to scan, or None when no new block is confirmed.

    A block is confirmed once ``confirmations`` blocks sit on top of it, i.e. up to ``head - confirmations``;
    the range never exceeds ``max_range`` blocks.
    """
    if cursor_next_block < 0 or head < 0 or confirmations < 0:
        raise ValueError("blocks and confirmations must be non-negative")
    if max_range < 1:
        raise ValueError("max_range must be at least 1")
    confirmed = head - confirmations
    if confirmed < cursor_next_block:
        return None
    return cursor_next_block, min(confirmed, cursor_next_block + max_range - 1)


def is_after(log_block: int, log_index: int, cursor: Cursor) -> bool:
    """Tell whether a log lies after the cursor (logs at or before it are never handled twice)."""
    return (log_block, log_index) > (cursor.block, cursor.log_index)


def rewind_on_reorg(
    cursor: Cursor, canonical_hash_at_cursor_block: Bytes32 | None, depth: int, *, floor: int = 0
) -> Cursor:
    """Return the cursor, or one rewound ``depth`` blocks (not below ``floor``) if its block was reorged.

    ``canonical_hash_at_cursor_block`` is the chain's current hash of ``cursor.block`` (None when the chain
    no longer has that block). A cursor without a stored hash (``Cursor.start``) has nothing to compare.
    """
    if depth < 1:
        raise ValueError("rewind depth must be at least 1")
    if cursor.block_hash.is_zero or canonical_hash_at_cursor_block == cursor.block_hash:
        return cursor
    return Cursor.start(max(floor, cursor.block - depth, 0))
