"""The plumbing every contract binding shares: calls, writes through the submitter, event decoding.

Owns ``ContractClient`` (one artifact's ABI at one address: ``_call`` encodes with ``eth_abi``, sends
``eth_call`` through the connection and decodes the result, all inside ``translated()``; ``_read``, the
same returning every output as a tuple (the large reads); ``_send`` goes through the injected
``TxSubmitter``; calldata encoding; event decoding),
``Ownable2StepClient`` (OpenZeppelin's two-step ownership, which several of our contracts inherit),
``BlockRef`` and the small converters from ABI values to our value objects. ``sidecar.chain.contracts``
builds one client per contract on top of it.

Must not: sign, choose nonces or fees (``tx``), retry, cache chain state, or let a raw ABI value (address
strings, bare bytes for ids) out of the contract clients: the converters here turn them into our types.
It imports neither web3 nor the signer: a read-only client (the sidecar's steady state) never loads them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from sidecar.chain.abi import FunctionSpec, contract_abi
from sidecar.chain.artifacts import artifacts_dir, load_artifact
from sidecar.chain.codec import ContractEvent, EventCodec
from sidecar.chain.errors import NoSubmitter, translated
from sidecar.chain.rpc import ChainConnection, tx_params
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import ChainLog, TxReceipt

if TYPE_CHECKING:
    from sidecar.chain.tx import TxSubmitter  # eth_account loads only where a submitter is built

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


class ContractClient:
    """Shared plumbing: the contract's ABI, calls, writes through the submitter, event decoding."""

    CONTRACT: ClassVar[str]

    def __init__(self, conn: ChainConnection, address: Address, submitter: TxSubmitter | None = None) -> None:
        self._conn = conn
        self.address = address
        self._submitter = submitter
        self._abi = contract_abi(self.CONTRACT)
        self._events = _event_codec(artifacts_dir(), self.CONTRACT)

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
            spec = self._abi.function(function)
            calldata = spec.encode(args)
            if isinstance(block, Bytes32):
                return await self._call_at_hash(spec, calldata, block)
            return spec.decode(await self._conn.call(tx_params(to=self.address, data=calldata), block))

    async def _call_at_hash(self, abi: FunctionSpec, calldata: bytes, block_hash: Bytes32) -> Any:
        """``eth_call`` pinned by block hash (EIP-1898, ``requireCanonical``): the node answers for exactly
        that block or errs, so reads of one snapshot cannot straddle a reorg."""
        with translated():
            return abi.decode(await self._conn.call(tx_params(to=self.address, data=calldata), block_hash))

    async def _read(self, function: str, *args: Any, block: BlockRef = None) -> tuple[Any, ...]:
        """Like ``_call``, but every output as a tuple (one output too); a block hash pins the read (EIP-1898,
        ``requireCanonical``). Arguments are eth_abi values (hex address strings); addresses come back as
        lowercase hex strings."""
        with translated():
            spec = self._abi.function(function)
            raw = await self._conn.call(tx_params(to=self.address, data=spec.encode(args)), block)
            return spec.decode_all(raw)

    def encode_call(self, function: str, *args: Any) -> bytes:
        """Return the calldata of ``function(*args)`` (``eth_abi``-encodable arguments), e.g. to send raw."""
        with translated():
            return self._abi.function(function).encode(args)

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


@functools.lru_cache(maxsize=16)
def _event_codec(directory: Path, name: str) -> EventCodec:  # one per artifact, not one per client
    return EventCodec(load_artifact(name).abi)


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
