"""Keccak-256 and EIP-55, from pycryptodome's native keccak.

Owns ``keccak256`` (Ethereum's Keccak-256, not SHA3-256) and ``checksum_address`` (EIP-55). They are here
rather than taken from ``eth_utils`` because importing ``eth_utils`` costs ~0.15 s and pulls pydantic: the
sidecar's start-up path needs neither. pycryptodome is declared as ``eth-hash[pycryptodome]`` (pyproject): the
keccak backend of eth-hash, which eth-keys and eth-account hash through, is this same library.

Must not: do I/O, or hash anything but what it is given.
"""

from __future__ import annotations

from Crypto.Hash import keccak as _keccak


def keccak256(data: bytes) -> bytes:
    """Return the 32-byte Keccak-256 digest of ``data``."""
    return bytes(_keccak.new(data=bytes(data), digest_bits=256).digest())


def checksum_address(raw: bytes) -> str:
    """Return the EIP-55 mixed-case ``0x…`` form of a 20-byte address."""
    if len(raw) != 20:
        raise ValueError(f"address must be 20 bytes, got {len(raw)}")
    lower = raw.hex()
    nibbles = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if int(n, 16) >= 8 else c for c, n in zip(lower, nibbles[:40], strict=True)
    )
