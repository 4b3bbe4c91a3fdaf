"""Byte-exact identifiers and secret containers shared by every layer.

Owns: ``Address`` (20 bytes), ``Bytes32`` (32 bytes), ``MemberId`` and ``SecretBytes``. Must not do I/O or
know about web3 types; adapters convert at the edge. ``SecretBytes`` never shows its value in a repr or str.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self


def _parse_hex(text: str, length: int, what: str) -> bytes:
    body = text[2:] if text[:2] in ("0x", "0X") else text
    if len(body) != 2 * length:
        raise ValueError(f"{what} must be {length} bytes ({2 * length} hex digits), got {len(body)} digits")
    try:
        return bytes.fromhex(body)
    except ValueError:
        raise ValueError(f"{what} is not hexadecimal") from None


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A 20-byte account or contract address. ``str()`` is the EIP-55 checksum form."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 20:
            raise ValueError(f"address must be 20 bytes, got {len(self.raw)}")

    @classmethod
    def from_hex(cls, text: str) -> Self:
        return cls(_parse_hex(text, 20, "address"))

    @property
    def hex(self) -> str:
        """Lowercase hex without 0x (dstack's wire form)."""
        return self.raw.hex()

    @property
    def checksum(self) -> str:
        """EIP-55 mixed-case form."""
        # Imported here: ``hashing`` loads pycryptodome's keccak, which `attestmesh health` never needs.
        from sidecar.core.hashing import checksum_address  # noqa: PLC0415

        return checksum_address(self.raw)

    @property
    def is_zero(self) -> bool:
        return self.raw == bytes(20)

    def __str__(self) -> str:
        return self.checksum

    def __repr__(self) -> str:
        return f"Address({self.checksum})"


ZERO_ADDRESS = Address(bytes(20))


@dataclass(frozen=True, slots=True, order=True)
class Bytes32:
    """32 public bytes (hashes, public keys, ids). ``str()`` is 0x-prefixed lowercase hex."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError(f"value must be 32 bytes, got {len(self.raw)}")

    @classmethod
    def from_hex(cls, text: str) -> Self:
        return cls(_parse_hex(text, 32, "32-byte value"))

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def is_zero(self) -> bool:
        return self.raw == bytes(32)

    def __str__(self) -> str:
        return "0x" + self.raw.hex()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(0x{self.raw.hex()})"


ZERO32 = Bytes32(bytes(32))


class MemberId(Bytes32):
    """keccak256(abi.encode(cluster, appId)): a member's id in its cluster."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SecretBytes:
    """Private key material. The value is only reachable through ``reveal()``; repr and str hide it."""

    _value: bytes = field(repr=False)

    def reveal(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"SecretBytes(<{len(self._value)} bytes redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:  # pickling would copy the secret out of process memory
        raise TypeError("SecretBytes cannot be pickled")
