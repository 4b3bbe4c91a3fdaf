"""The lean read path's codec (``sidecar.chain.binding.AbiFunction``): selectors and types from the
artifact, eth_abi round trips with addresses as raw bytes, and hostile return data refused."""

from __future__ import annotations

import pytest
from eth_abi.exceptions import DecodingError
from eth_utils.crypto import keccak

from sidecar.chain.artifacts import load_artifact
from sidecar.chain.binding import AbiFunction

CLUSTER = load_artifact("Cluster")
MEMBER = ("bytes32", "address", "address", "bytes32", "bytes32", "bytes32", "string", "uint32", "uint64")


def test_selectors_and_types_come_from_the_artifact() -> None:
    page = AbiFunction.of(CLUSTER, "membersPage")
    assert page.selector == keccak(b"membersPage(uint256,uint256)")[:4]
    assert page.inputs == ("uint256", "uint256")
    assert page.outputs == (f"({','.join(MEMBER)})[]", "uint256")
    sync = AbiFunction.of(CLUSTER, "syncState")
    assert sync.outputs == ("uint64", "uint64", "uint64", "bytes32", "uint256")
    assert page.encode(3, 250) == page.selector + (3).to_bytes(32, "big") + (250).to_bytes(32, "big")


def test_a_page_round_trips_with_raw_addresses() -> None:
    page = AbiFunction.of(CLUSTER, "membersPage")
    record = (b"\x11" * 32, "0x" + "22" * 20, "0x" + "33" * 20, b"\x44" * 32, b"\x55" * 32, b"\x66" * 32,
              "udp://10.0.0.1:51820", 167772161, 7)  # fmt: skip
    from eth_abi.abi import encode  # noqa: PLC0415 - the reference encoder, test only

    records, total = page.decode(encode(list(page.outputs), [[record, record], 9]))
    assert total == 9 and len(records) == 2
    assert records[0][1] == b"\x22" * 20 and records[0][2] == b"\x33" * 20  # raw bytes, not hex strings
    assert records[0][6] == "udp://10.0.0.1:51820" and records[0][7:] == (167772161, 7)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no code at the address
        bytes(31),  # truncated
        (64).to_bytes(32, "big") + (10**6).to_bytes(32, "big"),  # a count the data cannot hold
        (2**64).to_bytes(32, "big") + bytes(32),  # a pointer far past the end
    ],
)
def test_hostile_return_data_is_refused(data: bytes) -> None:
    with pytest.raises(DecodingError):
        AbiFunction.of(CLUSTER, "membersPage").decode(data)


def test_unknown_or_overloaded_functions_are_refused() -> None:
    with pytest.raises(ValueError, match="0 functions named 'nope'"):
        AbiFunction.of(CLUSTER, "nope")
