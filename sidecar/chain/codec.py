"""ABI values to our value types, and event logs to decoded events.

Owns: converting JSON-RPC receipts, logs and blocks (hex quantities and data) into our value objects;
``python_value`` (one decoded ABI value → ``Address`` / ``Bytes32`` / ``bytes`` / ``int`` / ``str`` /
tuple); ``ContractEvent`` and ``EventCodec`` (topic0 → event ABI, decoding ``ChainLog``s of one contract).

Must not: talk to a node or return raw JSON-RPC shapes. Pure functions over ABIs taken from the artifacts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from sidecar.chain.abi import canonical_type, event_topic
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import BlockHeader, ChainLog, TxReceipt

_DYNAMIC_BASES = ("string", "bytes")

#: ``bytes32`` parameters (of events and errors) that hold a member id: decoded as ``MemberId``.
MEMBER_ID_PARAMS = frozenset({"memberId", "originator", "holder"})


def hex_bytes(value: Any) -> bytes:
    """Bytes from a JSON-RPC data value (a 0x-hex string) or bytes."""
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x"))
    return bytes(value)


def quantity(value: Any) -> int:
    """An integer from a JSON-RPC quantity (a 0x-hex string) or an int."""
    if isinstance(value, str):
        return int(value, 16)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not a quantity: {value!r}")
    return value


def receipt_from_rpc(raw: Mapping[str, Any]) -> TxReceipt:
    """Convert an ``eth_getTransactionReceipt`` result into our ``TxReceipt``."""
    contract_address = raw.get("contractAddress")
    logs = tuple(log_from_rpc(entry) for entry in raw.get("logs", ()))
    return TxReceipt(
        tx_hash=Bytes32(hex_bytes(raw["transactionHash"])),
        block_number=quantity(raw["blockNumber"]),
        gas_used=quantity(raw["gasUsed"]),
        succeeded=quantity(raw["status"]) == 1,
        contract_address=Address.from_hex(str(contract_address)) if contract_address else None,
        logs=logs,
    )


def log_from_rpc(raw: Mapping[str, Any]) -> ChainLog:
    """Convert one JSON-RPC log object into our ``ChainLog``."""
    return ChainLog(
        address=Address.from_hex(str(raw["address"])),
        topics=tuple(Bytes32(hex_bytes(t)) for t in raw["topics"]),
        data=hex_bytes(raw["data"]),
        block_number=quantity(raw["blockNumber"]),
        block_hash=Bytes32(hex_bytes(raw["blockHash"])),
        tx_hash=Bytes32(hex_bytes(raw["transactionHash"])),
        log_index=quantity(raw["logIndex"]),
    )


def block_header_from_rpc(raw: Mapping[str, Any]) -> BlockHeader:
    """Convert an ``eth_getBlockByNumber`` result into our ``BlockHeader``."""
    return BlockHeader(
        number=quantity(raw["number"]),
        hash=Bytes32(hex_bytes(raw["hash"])),
        parent_hash=Bytes32(hex_bytes(raw["parentHash"])),
        timestamp=quantity(raw["timestamp"]),
    )


def python_value(abi_type: str, value: Any, name: str = "") -> Any:  # noqa: PLR0911 - one per ABI kind
    """Convert one decoded ABI value (eth_abi's form) of parameter ``name`` into our types."""
    if abi_type == "bytes32" and name in MEMBER_ID_PARAMS:
        return MemberId(bytes(value))
    if abi_type.endswith("]"):
        inner = abi_type[: abi_type.rindex("[")]
        return tuple(python_value(inner, v) for v in value)
    if abi_type == "address":
        return Address.from_hex(value) if isinstance(value, str) else Address(bytes(value))
    if abi_type == "bytes32":
        return Bytes32(bytes(value))
    if abi_type.startswith("bytes"):
        return bytes(value)
    if abi_type.startswith("(") or abi_type == "tuple":
        return tuple(value)
    if abi_type == "bool":
        return bool(value)
    if abi_type.startswith(("uint", "int")):
        return int(value)
    return value


def _is_dynamic(abi_type: str) -> bool:
    return abi_type in _DYNAMIC_BASES or abi_type.endswith("]") or abi_type.startswith("(")


@dataclass(frozen=True, slots=True)
class ContractEvent:
    """One decoded event: its Solidity name, arguments by name (our types) and the log it came from.

    An indexed dynamic argument (string, bytes, array) is only present as its keccak256 (a ``Bytes32``).
    """

    name: str
    args: Mapping[str, Any]
    log: ChainLog = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


@dataclass(frozen=True, slots=True)
class _EventSpec:
    name: str
    indexed: tuple[tuple[str, str], ...]  # (name, type)
    data: tuple[tuple[str, str], ...]
    order: tuple[str, ...]


class EventCodec:
    """Decode logs against one contract ABI (non-anonymous events, matched by topic0)."""

    def __init__(self, abi: Iterable[Mapping[str, Any]]) -> None:
        self._by_topic: dict[bytes, _EventSpec] = {}
        for entry in abi:
            if entry.get("type") != "event" or entry.get("anonymous"):
                continue
            inputs: Sequence[Mapping[str, Any]] = entry.get("inputs", ())
            spec = _EventSpec(
                name=str(entry["name"]),
                indexed=tuple((str(i["name"]), canonical_type(i)) for i in inputs if i.get("indexed")),
                data=tuple((str(i["name"]), canonical_type(i)) for i in inputs if not i.get("indexed")),
                order=tuple(str(i["name"]) for i in inputs),
            )
            self._by_topic[event_topic(entry)] = spec

    def topic_of(self, name: str) -> Bytes32:
        """Return topic0 of event ``name`` (for log filters)."""
        for topic, spec in self._by_topic.items():
            if spec.name == name:
                return Bytes32(topic)
        raise KeyError(name)

    def decode(self, log: ChainLog) -> ContractEvent | None:
        """Decode ``log``; None when it is not one of this ABI's events (or does not decode)."""
        if not log.topics:
            return None
        spec = self._by_topic.get(log.topics[0].raw)
        if spec is None or len(log.topics) - 1 != len(spec.indexed):
            return None
        values: dict[str, Any] = {}
        try:
            for (name, abi_type), topic in zip(spec.indexed, log.topics[1:], strict=True):
                if _is_dynamic(abi_type):
                    values[name] = topic
                else:
                    values[name] = python_value(abi_type, abi_decode([abi_type], topic.raw)[0], name)
            decoded = abi_decode([t for _, t in spec.data], log.data)
        except (DecodingError, ValueError, OverflowError):
            return None
        for (name, abi_type), value in zip(spec.data, decoded, strict=True):
            values[name] = python_value(abi_type, value, name)
        ordered = {name: values[name] for name in spec.order}
        return ContractEvent(name=spec.name, args=MappingProxyType(ordered), log=log)

    def decode_all(
        self, logs: TxReceipt | Iterable[ChainLog], *, address: Address | None = None, name: str | None = None
    ) -> list[ContractEvent]:
        """Decode every matching log (of ``address`` and named ``name`` when given), in log order."""
        entries = logs.logs if isinstance(logs, TxReceipt) else logs
        events = []
        for log in entries:
            if address is not None and log.address != address:
                continue
            event = self.decode(log)
            if event is not None and (name is None or event.name == name):
                events.append(event)
        return events
