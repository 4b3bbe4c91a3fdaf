"""The node's GetKey paths and the pure public-key computations over the keys they yield.

Owns: the table of DESIGN §4 "Identity" (one ``KeyPath`` per derived key, with its purpose), the rule that
binds every path to its cluster (``attestmesh/<key>/v1/<chain id>/<cluster>``; the CSK's
``attestmesh/csk/v1/<chain id>/<cluster>/<epoch>``, ``csk_path``), so a node pointed at another cluster
derives unrelated keys, and small pure helpers that turn a 32-byte derived secret into the public value
a peer or the chain sees (secp256k1 address and public keys, Ed25519 public key, X25519 public key).

Must not: do I/O, talk to the guest agent, or let private material escape. Secrets arrive and leave as
``SecretBytes``; helpers return public values only, and no error message ever contains key bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coincurve import PrivateKey
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sidecar.core.hashing import keccak256
from sidecar.core.ids import Address, Bytes32, SecretBytes

# secp256k1 field prime and group order (SEC 2).
SECP256K1_P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

ETHEREUM_PURPOSE = "ethereum"


#: The first CSK epoch (a cluster's key before any rotation).
FIRST_CSK_EPOCH = 1
CSK_PURPOSE = ""


class KeyPath(enum.Enum):
    """A per-node GetKey request of DESIGN §4: its path segment and the ``.purpose`` the sidecar sends. The
    path itself is bound to a chain and a cluster: ``key_path`` (the CSK has its own, ``csk_path``)."""

    SIGNER = ("signer", ETHEREUM_PURPOSE)
    IDENTITY = ("identity", "")
    SEAL = ("seal", "")
    WIREGUARD = ("wireguard", "")
    STATE = ("state", "")

    @property
    def segment(self) -> str:
        return self.value[0]

    @property
    def purpose(self) -> str:
        return self.value[1]


def _scope(chain_id: int, cluster: Address) -> str:
    if chain_id < 1:
        raise ValueError(f"chain id must be at least 1, got {chain_id}")
    return f"{chain_id}/0x{cluster.hex}"


def key_path(key: KeyPath, chain_id: int, cluster: Address) -> str:
    """The GetKey path of ``key`` for a node of ``cluster`` on ``chain_id``:
    ``attestmesh/<key>/v1/<chain id decimal>/<cluster 0x-lowercase hex>``."""
    return f"attestmesh/{key.segment}/v1/{_scope(chain_id, cluster)}"


def csk_path(chain_id: int, cluster: Address, epoch: int) -> str:
    """The originator's GetKey path of the cluster shared key of ``epoch`` (≥ 1):
    ``attestmesh/csk/v1/<chain id>/<cluster>/<epoch decimal>``."""
    if epoch < FIRST_CSK_EPOCH:
        raise ValueError(f"CSK epoch must be at least {FIRST_CSK_EPOCH}, got {epoch}")
    return f"attestmesh/csk/v1/{_scope(chain_id, cluster)}/{epoch}"


@dataclass(frozen=True, slots=True)
class KeyScope:
    """The chain and cluster a node's keys are bound to (the measured ``ATTESTMESH_CHAIN_ID`` and
    ``ATTESTMESH_CLUSTER``)."""

    chain_id: int
    cluster: Address

    def path(self, key: KeyPath) -> str:
        return key_path(key, self.chain_id, self.cluster)

    def csk_path(self, epoch: int = FIRST_CSK_EPOCH) -> str:
        return csk_path(self.chain_id, self.cluster, epoch)


def _scalar(key: SecretBytes, what: str) -> bytes:
    raw = key.reveal()
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(raw)}")
    return raw


def _secp256k1_private(key: SecretBytes) -> PrivateKey:
    raw = _scalar(key, "secp256k1 key")
    if not 0 < int.from_bytes(raw, "big") < SECP256K1_N:
        raise ValueError("secp256k1 key is out of range (zero or not below the group order)")
    return PrivateKey(raw)  # coincurve (libsecp256k1)


def secp256k1_public_key(key: SecretBytes) -> bytes:
    """Return the 64-byte uncompressed public key (x ‖ y, no 0x04 prefix) of a secp256k1 scalar."""
    return bytes(_secp256k1_private(key).public_key.format(compressed=False)[1:])


def compress_secp256k1(pubkey: bytes) -> bytes:
    """Return the 33-byte SEC1 compressed form of a 64-byte uncompressed (x ‖ y) public key."""
    if len(pubkey) != 64:
        raise ValueError(f"uncompressed public key must be 64 bytes, got {len(pubkey)}")
    prefix = b"\x03" if pubkey[63] & 1 else b"\x02"
    return prefix + pubkey[:32]


def is_on_secp256k1(pubkey: bytes) -> bool:
    """Tell whether 64 bytes (x ‖ y) are the coordinates of a point on secp256k1."""
    if len(pubkey) != 64:
        return False
    x = int.from_bytes(pubkey[:32], "big")
    y = int.from_bytes(pubkey[32:], "big")
    if x >= SECP256K1_P or y >= SECP256K1_P:
        return False
    return (y * y - (x * x * x + 7)) % SECP256K1_P == 0


def address_of_public_key(pubkey: bytes) -> Address:
    """Return the Ethereum address keccak256(x ‖ y)[12:] of a 64-byte uncompressed public key."""
    if len(pubkey) != 64:
        raise ValueError(f"uncompressed public key must be 64 bytes, got {len(pubkey)}")
    return Address(keccak256(pubkey)[12:])


def secp256k1_address(key: SecretBytes) -> Address:
    """Return the Ethereum address of a 32-byte secp256k1 private key."""
    return address_of_public_key(secp256k1_public_key(key))


def ed25519_public_key(seed: SecretBytes) -> bytes:
    """Return the 32-byte Ed25519 public key for a 32-byte seed (RFC 8032)."""
    private = Ed25519PrivateKey.from_private_bytes(_scalar(seed, "Ed25519 seed"))
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def ed25519_verifies(public_key: Bytes32, signature: bytes, message: bytes) -> bool:
    """Tell whether ``signature`` over ``message`` verifies against the Ed25519 ``public_key`` (a malformed
    key or signature does not verify)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key.raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def x25519_public_key(scalar: SecretBytes) -> bytes:
    """Return the 32-byte X25519 public key for a 32-byte scalar (clamped as RFC 7748 says)."""
    private = X25519PrivateKey.from_private_bytes(_scalar(scalar, "X25519 scalar"))
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
