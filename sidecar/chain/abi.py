"""Contract ABIs as the adapter uses them: canonical types, selectors, call encoding and result decoding.

Owns: ``canonical_type`` (an ABI parameter to its canonical type string, tuples as ``(…)``),
``signature``/``selector``/``event_topic`` (keccak256 over the canonical signature), and ``ContractAbi``
(one artifact's functions by name: calldata = selector ‖ ``eth_abi.encode``; results decoded with
``eth_abi``'s strict decoder, one output unwrapped, several as a list, as the contract clients expect;
``address`` results as their 20 raw bytes: eth_abi's own address decoder checksums every one, about a
third of decoding a member list, and ``Address`` wants the bytes anyway; the constructor's argument
encoding for deployments).

Must not: talk to a node, or convert values to our types (``sidecar.chain.binding``'s converters and
``codec.python_value`` do). Arguments are what ``eth_abi`` encodes: ints, bools, ``str``, ``bytes``,
checksummed address strings, tuples/lists.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi.abi import encode
from eth_abi.codec import ABICodec
from eth_abi.decoding import AddressDecoder
from eth_abi.encoding import AddressEncoder
from eth_abi.registry import registry as default_registry

from sidecar.chain.artifacts import artifacts_dir, load_artifact
from sidecar.chain.failures import UnexpectedChainError
from sidecar.core.hashing import keccak256


class _RawAddressDecoder(AddressDecoder):
    """An ``address`` as its 20 raw bytes (the padding is still checked: strict, like eth_abi's own)."""

    decoder_fn = staticmethod(bytes)  # type: ignore[assignment]


def _result_codec() -> ABICodec:
    registry = default_registry.copy()  # type: ignore[no-untyped-call]
    registry.unregister("address")
    registry.register("address", AddressEncoder, _RawAddressDecoder, label="address")
    return ABICodec(registry)


#: Decodes call results: eth_abi's strict decoder (malformed padding or pointers refused), raw addresses.
_RESULTS = _result_codec()


def canonical_type(param: Mapping[str, Any]) -> str:
    """The canonical type of one ABI parameter: ``uint256``, ``bytes32[]``, ``(address,bytes)[]``…"""
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(canonical_type(component) for component in param.get("components", ()))
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def signature(entry: Mapping[str, Any]) -> str:
    """``name(type,…)`` of a function, event or error ABI entry."""
    return f"{entry['name']}({','.join(canonical_type(p) for p in entry.get('inputs', ()))})"


def selector(text: str) -> bytes:
    """The 4-byte selector of a function or error signature."""
    return keccak256(text.encode("ascii"))[:4]


def event_topic(entry: Mapping[str, Any]) -> bytes:
    """topic0 of an event ABI entry: keccak256 of its signature."""
    return keccak256(signature(entry).encode("ascii"))


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One contract function: its name, selector and canonical input and output types."""

    name: str
    selector: bytes
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]

    def encode(self, args: Sequence[Any]) -> bytes:
        """Calldata for ``args``: selector ‖ ABI-encoded arguments."""
        if len(args) != len(self.input_types):
            raise UnexpectedChainError(
                f"{self.name}() takes {len(self.input_types)} arguments, {len(args)} given"
            )
        return self.selector + encode(list(self.input_types), list(args))

    def decode(self, data: bytes) -> Any:
        """The call's result: one output unwrapped, several as a list (none: an empty list)."""
        values = self.decode_all(data)
        return values[0] if len(values) == 1 else list(values)

    def decode_all(self, data: bytes) -> tuple[Any, ...]:
        """Every output of the call's result, as a tuple."""
        if not data and self.output_types:
            raise UnexpectedChainError(f"{self.name}() returned no data (no contract at the address?)")
        return tuple(_RESULTS.decode(list(self.output_types), data))


class ContractAbi:
    """The functions and constructor of one contract ABI."""

    def __init__(self, name: str, abi: Iterable[Mapping[str, Any]]) -> None:
        self.name = name
        self._functions: dict[str, FunctionSpec] = {}
        self.constructor_types: tuple[str, ...] = ()
        for entry in abi:
            if entry.get("type") == "constructor":
                self.constructor_types = tuple(canonical_type(p) for p in entry.get("inputs", ()))
            if entry.get("type") != "function":
                continue
            spec = FunctionSpec(
                name=str(entry["name"]),
                selector=selector(signature(entry)),
                input_types=tuple(canonical_type(p) for p in entry.get("inputs", ())),
                output_types=tuple(canonical_type(p) for p in entry.get("outputs", ())),
            )
            if spec.name in self._functions:  # our contracts overload nothing; refuse to guess
                raise UnexpectedChainError(f"{name} overloads {spec.name}(): call it by selector")
            self._functions[spec.name] = spec

    def function(self, name: str) -> FunctionSpec:
        try:
            return self._functions[name]
        except KeyError:
            raise UnexpectedChainError(f"{self.name} has no function {name}()") from None

    def encode_constructor(self, args: Sequence[Any]) -> bytes:
        if len(args) != len(self.constructor_types):
            raise UnexpectedChainError(
                f"{self.name}'s constructor takes {len(self.constructor_types)} arguments, {len(args)} given"
            )
        return encode(list(self.constructor_types), list(args)) if args else b""


@functools.lru_cache(maxsize=64)
def _contract_abi(directory: Path, name: str) -> ContractAbi:
    return ContractAbi(name, load_artifact(name).abi)


def contract_abi(name: str) -> ContractAbi:
    """The ``ContractAbi`` of artifact ``name`` (built once per artifacts directory)."""
    return _contract_abi(artifacts_dir(), name)
