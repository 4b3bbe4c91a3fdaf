"""The membership digest: one hash of a member set, equal on every node that sees the same members.

Owns ``membership_digest``: keccak256 of the concatenation of the distinct member ids (32 raw bytes each),
sorted ascending as unsigned big-endian integers (byte-wise). The order the ids arrive in and duplicates do
not matter; the empty set hashes to keccak256(b""). ``/healthz`` shows it so operators can compare nodes at
a glance. Must not do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.core.hashing import keccak256
from sidecar.core.ids import Bytes32, MemberId


def membership_digest(member_ids: Iterable[MemberId]) -> Bytes32:
    """Return keccak256(sorted distinct ids concatenated)."""
    return Bytes32(keccak256(b"".join(sorted({m.raw for m in member_ids}))))
