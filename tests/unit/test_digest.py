"""The membership digest of sidecar.core.digest."""

from __future__ import annotations

from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.digest import membership_digest
from sidecar.core.ids import Bytes32, MemberId

ids = st.binary(min_size=32, max_size=32).map(MemberId)


def test_definition() -> None:
    a, b = MemberId(b"\x02" * 32), MemberId(b"\x01" * 32)
    assert membership_digest([a, b]) == Bytes32(keccak(b"\x01" * 32 + b"\x02" * 32))
    assert membership_digest([]) == Bytes32(keccak(b""))


@given(st.lists(ids, max_size=20), st.randoms())
def test_order_and_duplicates_do_not_matter(members: list[MemberId], rnd: object) -> None:
    shuffled = list(members) + list(members[:3])
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert membership_digest(shuffled) == membership_digest(members)


@given(st.sets(ids, min_size=1, max_size=10), ids)
def test_a_different_set_gives_a_different_digest(members: set[MemberId], extra: MemberId) -> None:
    if extra not in members:
        assert membership_digest(members | {extra}) != membership_digest(members)
