"""The plumbing every contract binding shares: calls, writes through the submitter, event decoding.

Owns ``ContractClient`` (the web3 contract object of one artifact at one address: ``_call`` through
``translated()``; ``_read``, the lean read path that encodes and decodes with eth_abi directly from the
artifact's ABI types -- no web3 contract formatting, the large reads' cost; ``_send`` through the injected
``TxSubmitter``, calldata encoding, event decoding), ``AbiFunction`` (one function's selector and types),
``Ownable2StepClient`` (OpenZeppelin's two-step ownership, which several of our contracts inherit),
``BlockRef`` and the small converters from ABI values to our value objects. ``sidecar.chain.contracts``
builds one client per contract on top of it.

Must not: sign, choose nonces or fees (``tx``), retry, cache chain state, or let a web3 type (``HexBytes``,
``AttributeDict``, checksum strings) out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, ClassVar, Self, cast

from eth_abi.abi import encode as abi_encode
from eth_abi.codec import ABICodec
from eth_abi.decoding import AddressDecoder
from eth_abi.encoding import AddressEncoder
from eth_abi.registry import registry as default_registry
from eth_typing import HexStr
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types, get_abi_output_types

from sidecar.chain.artifacts import Artifact, load_artifact
from sidecar.chain.codec import ContractEvent, EventCodec
from sidecar.chain.errors import NoSubmitter, translated
from sidecar.chain.rpc import ChainConnection, checksum
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import ChainLog, TxReceipt

#: A block to read at: a number, a block hash (EIP-1898, the block must be canonical), or None for latest.
BlockRef = int | Bytes32 | None


def to_address(value: Any) -> Address:
    return Address.from_hex(value) if isinstance(value, str) else Address(bytes(value))


def optional_address(value: Any) -> Address | None:
    address = to_address(value)
    return None if address.is_zero else address


def to_bytes32(value: Any) -> Bytes32:
    return Bytes32(bytes(value))


def optional_member_id(value: Any) -> MemberId | None:
    raw = bytes(value)
    return None if raw == bytes(32) else MemberId(raw)


def mesh_ip(value: Any) -> IPv4Address | None:
    return None if int(value) == 0 else IPv4Address(int(value))


@dataclass(frozen=True, slots=True)
class AbiFunction:
    """One contract function as the lean read path needs it: selector and canonical ABI types."""

    name: str
    selector: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, artifact: Artifact, name: str) -> AbiFunction:
        """The function ``name`` of ``artifact`` (exactly one: overloads are not supported here)."""
        found = [entry for entry in artifact.entries("function") if entry.get("name") == name]
        if len(found) != 1:
            raise ValueError(f"{artifact.name} has {len(found)} functions named {name!r}, expected 1")
        abi = cast(Any, found[0])
        return cls(
            name=name,
            selector=bytes(function_abi_to_4byte_selector(abi)),
            inputs=tuple(get_abi_input_types(abi)),
            outputs=tuple(get_abi_output_types(abi)),
        )

    def encode(self, *args: Any) -> bytes:
        """Return the calldata of ``name(*args)`` (eth_abi values: tuples, ints, bytes, hex addresses)."""
        return self.selector + abi_encode(self.inputs, args)

    def decode(self, data: bytes) -> tuple[Any, ...]:
        """Decode the return data (addresses come back as their 20 raw bytes)."""
        return tuple(_CODEC.decode(self.outputs, data))


class RawAddressDecoder(AddressDecoder):
    """An ``address`` as its 20 raw bytes: eth_abi's own decoder hex-normalises every address (about a
    third of decoding a member list), and ``Address`` wants the bytes anyway."""

    decoder_fn = staticmethod(bytes)  # type: ignore[assignment]


def _lean_codec() -> ABICodec:
    registry = default_registry.copy()  # type: ignore[no-untyped-call]
    registry.unregister("address")
    registry.register("address", AddressEncoder, RawAddressDecoder, label="address")
    return ABICodec(registry)


#: eth_abi's codec (strict: malformed padding or pointers are refused) with raw-bytes addresses.
_CODEC = _lean_codec()

#: ``AbiFunction``s by (artifact name, source hash, function): built once per process.
_FUNCTIONS: dict[tuple[str, str, str], AbiFunction] = {}


def _pinned(block: BlockRef) -> Any:
    """The ``block_identifier`` of a read: latest, a number, or a hash pinned by EIP-1898 (canonical)."""
    if block is None:
        return "latest"
    if isinstance(block, Bytes32):
        return {"blockHash": str(block), "requireCanonical": True}
    return block


class ContractClient:
    """Shared plumbing: the web3 contract object, calls, writes through the submitter, event decoding."""

    CONTRACT: ClassVar[str]

    def __init__(self, conn: ChainConnection, address: Address, submitter: TxSubmitter | None = None) -> None:
        self._conn = conn
        self.address = address
        self._submitter = submitter
        artifact = load_artifact(self.CONTRACT)
        self._artifact = artifact
        self._to = checksum(address)
        self._contract = conn.w3.eth.contract(address=self._to, abi=artifact.abi_list())
        self._events = EventCodec(artifact.abi)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address})"

    @property
    def connection(self) -> ChainConnection:
        return self._conn

    def with_submitter(self, submitter: TxSubmitter) -> Self:
        """Return a client for the same contract that sends from ``submitter``'s account."""
        return type(self)(self._conn, self.address, submitter)

    @property
    def submitter(self) -> TxSubmitter | None:
        return self._submitter

    async def _call(self, function: str, *args: Any, block: BlockRef = None) -> Any:
        with translated():
            bound = getattr(self._contract.functions, function)(*args)
            if isinstance(block, Bytes32):
                return await self._call_at_hash(bound.abi, self.encode_call(function, *args), block)
            return await bound.call(block_identifier="latest" if block is None else block)

    def _function(self, name: str) -> AbiFunction:
        key = (self._artifact.name, self._artifact.source_hash, name)
        function = _FUNCTIONS.get(key)
        if function is None:
            function = _FUNCTIONS[key] = AbiFunction.of(self._artifact, name)
        return function

    async def _read(self, function: str, *args: Any, block: BlockRef = None) -> tuple[Any, ...]:
        """The lean ``eth_call``: calldata from the artifact's ABI types and the return data decoded by
        eth_abi directly (every output, as a tuple), bypassing web3's contract formatting layer; a block hash
        pins the read (EIP-1898, ``requireCanonical``). Arguments are eth_abi values (hex address strings)."""
        with translated():
            abi_function = self._function(function)
            calldata = abi_function.encode(*args)
            raw = await self._conn.w3.eth.call(
                {"to": self._to, "data": HexStr("0x" + calldata.hex())},
                block_identifier=_pinned(block),
            )
            return abi_function.decode(bytes(raw))

    async def _call_at_hash(self, abi: Any, calldata: bytes, block_hash: Bytes32) -> Any:
        """``eth_call`` pinned by block hash (EIP-1898, ``requireCanonical``): the node answers for exactly
        that block or errs, so reads of one snapshot cannot straddle a reorg. web3's ``ContractFunction.call``
        turns a hash into a block number first (losing the pin), so the call is encoded and decoded here;
        results have web3's shapes (one output unwrapped, addresses as hex strings)."""
        pinned = {"blockHash": str(block_hash), "requireCanonical": True}
        raw = await self._conn.w3.eth.call(
            {"to": checksum(self.address), "data": HexStr("0x" + calldata.hex())},
            block_identifier=cast(Any, pinned),
        )
        types = get_abi_output_types(abi)
        values = self._conn.w3.codec.decode(types, bytes(raw))
        return values[0] if len(values) == 1 else list(values)

    def encode_call(self, function: str, *args: Any) -> bytes:
        """Return the calldata of ``function(*args)`` (web3-encodable arguments), e.g. to send it raw."""
        with translated():
            encoded = self._contract.encode_abi(function, args=list(args))
        return bytes.fromhex(encoded.removeprefix("0x"))

    async def _send(self, function: str, *args: Any) -> TxReceipt:
        if self._submitter is None:
            raise NoSubmitter(f"{self!r} was built without a TxSubmitter; cannot send {function}()")
        return await self._submitter.send(self.address, self.encode_call(function, *args))

    def events(self, logs: TxReceipt | Iterable[ChainLog], name: str | None = None) -> list[ContractEvent]:
        """Decode this contract's events in ``logs`` (a receipt or logs), optionally only ``name``."""
        return self._events.decode_all(logs, address=self.address, name=name)

    def event_topic(self, name: str) -> Bytes32:
        """Return topic0 of this contract's event ``name``."""
        return self._events.topic_of(name)


class Ownable2StepClient(ContractClient):
    """OpenZeppelin ``Ownable2Step``: owner, pending owner, two-step transfer."""

    async def owner(self, *, block: BlockRef = None) -> Address:
        return to_address(await self._call("owner", block=block))

    async def pending_owner(self, *, block: BlockRef = None) -> Address | None:
        return optional_address(await self._call("pendingOwner", block=block))

    async def transfer_ownership(self, new_owner: Address) -> TxReceipt:
        """Start a two-step transfer; ``new_owner`` must call ``accept_ownership``."""
        return await self._send("transferOwnership", new_owner.checksum)

    async def accept_ownership(self) -> TxReceipt:
        return await self._send("acceptOwnership")
