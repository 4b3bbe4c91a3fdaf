"""TEST-ONLY: write a contract's storage directly on anvil (``anvil_setStorageAt``), by its compiled layout.

Owns ``StorageLayout`` (solc's ``storageLayout`` of a compiled artifact: where a state variable, a mapping
entry or a struct member lives), ``string_words`` (how Solidity stores a ``string``: up to 31 bytes in the
slot itself with ``2·len`` in the lowest byte, longer ones as ``2·len + 1`` in the slot and the bytes from
``keccak256(slot)`` on), ``poke_member_endpoint`` (a member's ``endpoint`` in the Cluster contract,
written as is) and ``bump_membership_version`` (what every contract write of a member record also does,
so a node's version-gated read sees the poke at its next resync). Slots are derived from the layout the
contracts build writes into each artifact (``contracts/build.py``), never hard-coded, so a reordered
contract still gets the right slot.

Why it exists: the contract refuses malformed endpoints, yet the sidecar must survive a record it cannot
use (issue 12, "a bad member record never takes others down"); tests plant one this way. It works only on a
chain that accepts ``anvil_setStorageAt`` (anvil, hardhat): a real chain refuses the method.
Must not: be used by the sidecar or the indexer (they never write storage), or touch a chain other than
the devnet's anvil.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.crypto import keccak

from sidecar.chain.artifacts import load_artifact
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, MemberId

WORD = 32


class LayoutError(LookupError):
    """The layout has no such variable or member, or the type is not one this helper can address."""


def _word(value: int) -> bytes:
    return value.to_bytes(WORD, "big")


@dataclass(frozen=True, slots=True)
class Location:
    """A storage position: the slot, the byte offset inside it (from the low end) and the solc type id."""

    slot: int
    offset: int
    type_id: str


@dataclass(frozen=True, slots=True)
class StorageLayout:
    """One contract's compiled storage layout (solc ``storageLayout``)."""

    storage: Sequence[Mapping[str, Any]]
    types: Mapping[str, Mapping[str, Any]]

    @classmethod
    def of(cls, contract: str) -> StorageLayout:
        """The layout of a compiled contract of ``contracts/artifacts`` (by contract name)."""
        layout = load_artifact(contract).storage_layout
        if not layout.get("storage") and not layout.get("types"):
            raise LayoutError(f"the {contract} artifact has no storageLayout: rebuild with make contracts")
        return cls(layout.get("storage", ()), layout.get("types") or {})

    def variable(self, label: str) -> Location:
        """Where the state variable ``label`` starts."""
        for entry in self.storage:
            if entry["label"] == label:
                return Location(int(entry["slot"]), int(entry["offset"]), str(entry["type"]))
        raise LayoutError(f"no state variable {label!r} in the layout")

    def mapping_entry(self, mapping: Location, key: bytes) -> Location:
        """Where ``mapping[key]`` lives: ``keccak256(pad32(key) ‖ slot)`` for a value-type key."""
        kind = self.types[mapping.type_id]
        if kind.get("encoding") != "mapping":
            raise LayoutError(f"{mapping.type_id} is not a mapping")
        key_type = str(kind["key"])
        if not key_type.startswith(("t_bytes32", "t_address", "t_uint", "t_bytes")) or len(key) > WORD:
            raise LayoutError(f"keys of type {key_type} are not supported")
        padded = (
            key.rjust(WORD, b"\0") if key_type.startswith(("t_address", "t_uint")) else key.ljust(WORD, b"\0")
        )
        slot = int.from_bytes(keccak(padded + _word(mapping.slot)), "big")
        return Location(slot, 0, str(kind["value"]))

    def member(self, struct: Location, label: str) -> Location:
        """Where member ``label`` of the struct stored at ``struct`` lives."""
        kind = self.types[struct.type_id]
        for entry in kind.get("members", ()):
            if entry["label"] == label:
                return Location(struct.slot + int(entry["slot"]), int(entry["offset"]), str(entry["type"]))
        raise LayoutError(f"{struct.type_id} has no member {label!r}")

    def encoding(self, location: Location) -> str:
        return str(self.types[location.type_id].get("encoding", ""))


def string_words(slot: int, data: bytes) -> list[tuple[int, bytes]]:
    """The (slot, 32-byte word) writes that store ``data`` as a Solidity ``string``/``bytes`` at ``slot``."""
    if len(data) < WORD:
        return [(slot, data.ljust(WORD - 1, b"\0") + bytes([2 * len(data)]))]
    start = int.from_bytes(keccak(_word(slot)), "big")
    words = [(slot, _word(2 * len(data) + 1))]
    for i in range(0, len(data), WORD):
        words.append((start + i // WORD, data[i : i + WORD].ljust(WORD, b"\0")))
    return words


def member_endpoint_location(layout: StorageLayout, member_id: MemberId) -> Location:
    """Where the Cluster contract keeps ``_members[member_id].endpoint``."""
    entry = layout.mapping_entry(layout.variable("_members"), member_id.raw)
    location = layout.member(entry, "endpoint")
    if layout.encoding(location) != "bytes":
        raise LayoutError(f"Member.endpoint is {location.type_id}, not a string")
    return location


async def set_storage(conn: ChainConnection, contract: Address, slot: int, word: bytes) -> None:
    """``anvil_setStorageAt`` one 32-byte word (raises ``RuntimeError`` when the node refuses)."""
    try:
        await conn.request("anvil_setStorageAt", [str(contract), "0x" + _word(slot).hex(), "0x" + word.hex()])
    except ChainError as exc:
        raise RuntimeError(f"anvil_setStorageAt refused: {exc}") from exc


async def poke_member_endpoint(
    conn: ChainConnection, cluster: Address, member_id: MemberId, endpoint: str | bytes
) -> None:
    """TEST-ONLY: make member ``member_id``'s on-chain endpoint exactly ``endpoint`` (bypassing the
    contract's validation and its ``EndpointUpdated`` event: a node sees it on its next resync)."""
    data = endpoint.encode() if isinstance(endpoint, str) else endpoint
    layout = StorageLayout.of("Cluster")
    location = member_endpoint_location(layout, member_id)
    for slot, word in string_words(location.slot, data):
        await set_storage(conn, cluster, slot, word)
    await bump_membership_version(conn, cluster, layout)


async def bump_membership_version(
    conn: ChainConnection, cluster: Address, layout: StorageLayout | None = None
) -> int:
    """TEST-ONLY: add one to the Cluster's ``membershipVersion`` (a ``uint64`` packed with other variables:
    only its 8 bytes of the slot change), as ``register``, ``setEndpoint`` and ``removeMember`` do; return
    the new version."""
    layout = layout or StorageLayout.of("Cluster")
    location = layout.variable("membershipVersion")
    if location.type_id != "t_uint64":
        raise LayoutError(f"membershipVersion is {location.type_id}, not a uint64")
    raw = await conn.request("eth_getStorageAt", [str(cluster), hex(location.slot), "latest"])
    word = int(str(raw), 16)
    shift, mask = 8 * location.offset, (1 << 64) - 1
    version = ((word >> shift) & mask) + 1
    word = (word & ~(mask << shift)) | ((version & mask) << shift)
    await set_storage(conn, cluster, location.slot, _word(word))
    return version
