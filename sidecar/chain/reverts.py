"""Revert data decoded into the ``ContractRevert`` subclasses: the selector table built from our ABIs.

Owns ``ErrorTable`` (selector → custom error spec, from the committed artifacts or any ABIs), the
``Error(string)`` and ``Panic(uint256)`` selectors with the panic codes' meanings, and ``decode_revert``,
which picks the registered ``CustomError`` class of the error's name (``CUSTOM_ERRORS``).

Must not: classify transport or RPC exceptions (``sidecar.chain.errors`` does), or quote anything but the
public revert data in a message. Callers import these names from ``sidecar.chain.errors``, which also
defines (and so registers) the custom error classes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from sidecar.chain.abi import canonical_type, selector, signature
from sidecar.chain.artifacts import ArtifactError, available_artifacts
from sidecar.chain.codec import python_value
from sidecar.chain.failures import CUSTOM_ERRORS, ContractRevert, Panic, RevertWithReason, UnknownRevert
from sidecar.core.ids import Bytes32

ERROR_STRING_SELECTOR = selector("Error(string)")
PANIC_SELECTOR = selector("Panic(uint256)")

PANIC_CODES: Mapping[int, str] = {
    0x00: "generic compiler panic",
    0x01: "assert failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "invalid enum value",
    0x22: "corrupt storage byte array",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to a zero-initialised function",
}


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One custom error of an ABI: name, parameter names and types, selector."""

    name: str
    selector: bytes
    input_names: tuple[str, ...]
    input_types: tuple[str, ...]


class ErrorTable:
    """Selector → custom error, built from ABIs."""

    def __init__(self, specs: Iterable[ErrorSpec]) -> None:
        self._by_selector: dict[bytes, ErrorSpec] = {}
        for spec in specs:
            self._by_selector.setdefault(spec.selector, spec)

    @classmethod
    def from_abis(cls, abis: Iterable[Sequence[Mapping[str, Any]]]) -> ErrorTable:
        specs = []
        for abi in abis:
            for entry in abi:
                if entry.get("type") != "error":
                    continue
                inputs: Sequence[Mapping[str, Any]] = entry.get("inputs", ())
                specs.append(
                    ErrorSpec(
                        name=str(entry["name"]),
                        selector=selector(signature(entry)),
                        input_names=tuple(str(i.get("name") or "") for i in inputs),
                        input_types=tuple(canonical_type(i) for i in inputs),
                    )
                )
        return cls(specs)

    def __iter__(self) -> Iterator[ErrorSpec]:
        return iter(self._by_selector.values())

    def lookup(self, selector: bytes) -> ErrorSpec | None:
        return self._by_selector.get(selector)


@functools.lru_cache(maxsize=1)
def _artifact_table() -> ErrorTable:
    return ErrorTable.from_abis(artifact.abi for artifact in available_artifacts())


def default_error_table() -> ErrorTable:
    """Return the table of every custom error in the committed artifacts (built once)."""
    return _artifact_table()


def decode_revert(
    data: bytes, *, table: ErrorTable | None = None, tx_hash: Bytes32 | None = None
) -> ContractRevert:
    """Decode revert data into the matching ``ContractRevert`` subclass (``UnknownRevert`` when none)."""
    selector, body = data[:4], data[4:]
    try:
        if selector == ERROR_STRING_SELECTOR:
            (reason,) = abi_decode(["string"], body)
            return RevertWithReason(
                (reason,), data=data, names=("reason",), message=f"reverted: {reason}", tx_hash=tx_hash
            )
        if selector == PANIC_SELECTOR:
            (code,) = abi_decode(["uint256"], body)
            meaning = PANIC_CODES.get(code, "unknown panic code")
            return Panic(
                (code,),
                data=data,
                names=("code",),
                message=f"Panic(0x{code:02x}): {meaning}",
                tx_hash=tx_hash,
            )
        if table is None:
            table = default_error_table()
        spec = table.lookup(selector) if len(selector) == 4 else None
        if spec is None:
            return UnknownRevert(
                (data,),
                data=data,
                names=("data",),
                message=f"reverted with unrecognised data 0x{data.hex()}"
                if data
                else "reverted without data",
                tx_hash=tx_hash,
            )
        decoded = abi_decode(list(spec.input_types), body)
    except (DecodingError, ArtifactError, ValueError, OverflowError) as exc:
        return UnknownRevert(
            (data,),
            data=data,
            names=("data",),
            message=f"reverted with undecodable data 0x{data.hex()} ({exc})",
            tx_hash=tx_hash,
        )
    values = tuple(
        python_value(t, v, n) for t, v, n in zip(spec.input_types, decoded, spec.input_names, strict=True)
    )
    cls = CUSTOM_ERRORS.get(spec.name, ContractRevert)
    return cls(values, data=data, names=spec.input_names, error_name=spec.name, tx_hash=tx_hash)
