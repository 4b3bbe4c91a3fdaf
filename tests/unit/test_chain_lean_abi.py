"""The lean read path's codec (``sidecar.chain.abi``): selectors and types from the artifact, eth_abi round
trips of the paged member read, and hostile return data refused."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode
from eth_abi.exceptions import DecodingError

from sidecar.chain.abi import contract_abi
from sidecar.chain.errors import UnexpectedChainError
from sidecar.core.hashing import keccak256

CLUSTER = contract_abi("Cluster")
MEMBER = ("bytes32", "address", "address", "bytes32", "bytes32", "bytes32", "string", "uint32", "uint64")


def test_selectors_and_types_come_from_the_artifact() -> None:
    page = CLUSTER.function("membersPage")
    assert page.selector == keccak256(b"membersPage(uint256,uint256)")[:4]
    assert page.input_types == ("uint256", "uint256")
    assert page.output_types == (f"({','.join(MEMBER)})[]", "uint256")
    sync = CLUSTER.function("syncState")
    assert sync.output_types == ("uint64", "uint64", "uint64", "bytes32", "uint256")
    assert page.encode((3, 250)) == page.selector + (3).to_bytes(32, "big") + (250).to_bytes(32, "big")


def test_a_page_round_trips() -> None:
    page = CLUSTER.function("membersPage")
    record = (b"\x11" * 32, "0x" + "22" * 20, "0x" + "33" * 20, b"\x44" * 32, b"\x55" * 32, b"\x66" * 32,
              "udp://10.0.0.1:51820", 167772161, 7)  # fmt: skip
    records, total = page.decode_all(encode(list(page.output_types), [[record, record], 9]))
    assert total == 9 and len(records) == 2
    assert records[0][1] == b"\x22" * 20 and records[0][2] == b"\x33" * 20  # raw bytes, not hex strings
    assert records[0][6] == "udp://10.0.0.1:51820" and records[0][7:] == (167772161, 7)


def test_no_return_data_names_the_function() -> None:
    with pytest.raises(UnexpectedChainError, match=r"membersPage\(\) returned no data"):
        CLUSTER.function("membersPage").decode_all(b"")


@pytest.mark.parametrize(
    "data",
    [
        bytes(31),  # truncated
        (64).to_bytes(32, "big") + (10**6).to_bytes(32, "big"),  # a count the data cannot hold
        (2**64).to_bytes(32, "big") + bytes(32),  # a pointer far past the end
    ],
)
def test_hostile_return_data_is_refused(data: bytes) -> None:
    with pytest.raises(DecodingError):
        CLUSTER.function("membersPage").decode_all(data)


def test_unknown_functions_and_wrong_arities_are_refused() -> None:
    with pytest.raises(UnexpectedChainError, match=r"no function nope\(\)"):
        CLUSTER.function("nope")
    with pytest.raises(UnexpectedChainError, match="takes 2 arguments, 1 given"):
        CLUSTER.function("membersPage").encode((1,))
