"""The devnet KMS: a deterministic stand-in for the dstack KMS key release and the agent's GetKey.

Owns: the devnet KMS root key (derived from a *public* seed), the per-app root keys it "releases", the
KMS signature over each app key, and ``get_key``, which returns exactly what the dstack guest agent's
``GetKey`` returns (dstack.md §2.4 to §2.5). Derivations:

- root key    = HKDF-SHA256(salt=b"RATLS", ikm=seed, info=b"attestmesh-devnet-kms-root-k256", L=32)
- app key     = HKDF-SHA256(salt=b"RATLS", ikm=root key, info=app_id (20 B) ‖ b"app-key", L=32)
  (dstack's KMS derives it with context [app_id, "app-key"]; so it depends only on root and app_id)
- app key sig = root signs keccak256(b"dstack-kms-issued:" ‖ app_id ‖ compressed app pubkey (33 B))
- derived key = HKDF-SHA256(salt=b"RATLS", ikm=app key, info=utf8(path), L=32) — purpose and algorithm
  do not change the bytes, as on dstack
- chain[0]    = app key signs keccak256(utf8(purpose ":" lowercase-hex(derived pubkey)))
  (derived pubkey: 33-byte compressed secp256k1, or the 32-byte Ed25519 public key)

Signatures are recoverable ECDSA 65 B ``r ‖ s ‖ v`` with v 0/1 and low s.

``DEVNET_KMS_SEED`` is a published constant, like anvil's dev accounts: every devnet derives the same keys
from it, so it protects nothing. It is for development only and must never back a real deployment.

Must not: do I/O, log, or put key material in reprs or error messages.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_keys.datatypes import PrivateKey
from eth_utils.crypto import keccak

from sidecar.core.ids import Address, SecretBytes
from sidecar.core.keys import (
    SECP256K1_N,
    address_of_public_key,
    compress_secp256k1,
    ed25519_public_key,
    secp256k1_public_key,
)
from sidecar.core.sigchain import derived_key_message, kms_issued_message

DEVNET_KMS_SEED: bytes = b"AttestMesh devnet KMS seed v1 -- PUBLIC, DEVELOPMENT ONLY"
"""The public devnet KMS seed (hex for ``ATTESTMESH_DEVNET_KMS_SEED``: ``DEVNET_KMS_SEED.hex()``)."""

RATLS_SALT = b"RATLS"
ROOT_INFO = b"attestmesh-devnet-kms-root-k256"
APP_KEY_INFO = b"app-key"
SECP256K1_ALGORITHMS = frozenset({"secp256k1", "k256"})
ED25519_ALGORITHM = "ed25519"
MIN_SEED_BYTES = 16


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=RATLS_SALT, info=info).derive(ikm)


def _valid_scalar(raw: bytes, what: str) -> bytes:
    # An HKDF output outside [1, n) has probability ~2^-128; fail loudly rather than reduce silently.
    if not 0 < int.from_bytes(raw, "big") < SECP256K1_N:
        raise ValueError(f"{what} is not a valid secp256k1 scalar")
    return raw


def _sign(key: bytes, message: bytes) -> bytes:
    return bytes(PrivateKey(key).sign_msg_hash(keccak(message)).to_bytes())


class DevnetKms:
    """The devnet KMS root: releases per-app keys and signs them, deterministically from a seed."""

    __slots__ = ("_issued", "_root", "_root_public")

    def __init__(self, seed: bytes = DEVNET_KMS_SEED) -> None:
        if len(seed) < MIN_SEED_BYTES:
            raise ValueError(f"KMS seed must be at least {MIN_SEED_BYTES} bytes, got {len(seed)}")
        self._root = SecretBytes(_valid_scalar(_hkdf(seed, ROOT_INFO), "KMS root key"))
        self._root_public = secp256k1_public_key(self._root)
        # app_id -> (app key, KMS signature): ECDSA in pure Python costs milliseconds, so issue once.
        self._issued: dict[Address, tuple[SecretBytes, bytes]] = {}

    def __repr__(self) -> str:
        return f"DevnetKms(root={self.root_address})"

    @property
    def root_address(self) -> Address:
        """The address of the KMS root k256 key: what a cluster trusts as ``kmsRoot``."""
        return address_of_public_key(self._root_public)

    @property
    def root_public_key(self) -> bytes:
        """The 33-byte compressed KMS root public key (dstack publishes it as ``k256Pubkey``)."""
        return compress_secp256k1(self._root_public)

    def _issue(self, app_id: Address) -> tuple[SecretBytes, bytes]:
        issued = self._issued.get(app_id)
        if issued is None:
            key = SecretBytes(_valid_scalar(_hkdf(self._root.reveal(), app_id.raw + APP_KEY_INFO), "app key"))
            app_pub = compress_secp256k1(secp256k1_public_key(key))
            issued = (key, _sign(self._root.reveal(), kms_issued_message(app_id, app_pub)))
            self._issued[app_id] = issued
        return issued

    def app_key(self, app_id: Address) -> SecretBytes:
        """Return the 32-byte secp256k1 app root key the KMS releases to CVMs of ``app_id``."""
        return self._issue(app_id)[0]

    def app_key_signature(self, app_id: Address) -> bytes:
        """Return the KMS root's 65-byte signature over the app key of ``app_id`` (``k256_signature``)."""
        return self._issue(app_id)[1]


def derive_key(app_key: SecretBytes, path: str) -> SecretBytes:
    """Derive the GetKey key for ``path``: HKDF-SHA256(salt "RATLS", ikm app key, info utf8(path))."""
    return SecretBytes(_hkdf(app_key.reveal(), path.encode()))


def derived_public_key(key: SecretBytes, algorithm: str) -> bytes:
    """Return the public key the chain signs: compressed secp256k1 (33 B) or Ed25519 (32 B)."""
    if algorithm in SECP256K1_ALGORITHMS:
        return compress_secp256k1(secp256k1_public_key(key))
    if algorithm == ED25519_ALGORITHM:
        return ed25519_public_key(key)
    raise ValueError(f"unsupported algorithm {algorithm!r} (expected secp256k1, k256 or ed25519)")


def get_key(
    kms: DevnetKms,
    app_id: Address,
    path: str,
    purpose: str,
    algorithm: str = "secp256k1",
) -> tuple[SecretBytes, tuple[bytes, bytes]]:
    """Return what GetKey returns: the derived key and [app-key signature, KMS signature]."""
    if algorithm not in SECP256K1_ALGORITHMS and algorithm != ED25519_ALGORITHM:
        raise ValueError(f"unsupported algorithm {algorithm!r} (expected secp256k1, k256 or ed25519)")
    app_key, kms_sig = kms._issue(app_id)
    key = derive_key(app_key, path)
    pub = derived_public_key(key, algorithm)
    app_sig = _sign(app_key.reveal(), derived_key_message(purpose, pub))
    return key, (app_sig, kms_sig)
