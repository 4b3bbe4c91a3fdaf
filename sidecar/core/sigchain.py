"""The dstack KMS signature chain: build a registration proof from GetKey output and check it off chain.

Owns: the two signed messages of the chain (dstack.md §2.5), ``SigChainProof`` (the value the on-chain
``Cluster.register`` receives) and ``verify_proof``, the off-chain mirror of the contract's check:

1. the app key signed ``keccak256(purpose ":" lowercase-hex(compressed derived pubkey))``;
2. the KMS root signed ``keccak256("dstack-kms-issued:" ‖ app_id (20 B) ‖ compressed app pubkey)``;
3. the recovered KMS root is trusted.

(The contract additionally requires ``msg.sender == proof.signer``; that is the transaction's business.)

Must not: do I/O or keep the derived private key: ``build_proof`` reads it once to compute the public key
and the proof holds public values only. Signatures are 65 bytes ``r ‖ s ‖ v`` with v 0/1 (dstack's form);
27/28 are accepted too, and high-s signatures are rejected as OpenZeppelin's ``ECDSA.recover`` would.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from coincurve import PublicKey

from sidecar.core.hashing import keccak256
from sidecar.core.ids import Address, SecretBytes
from sidecar.core.keys import (
    ETHEREUM_PURPOSE,
    SECP256K1_N,
    address_of_public_key,
    compress_secp256k1,
    is_on_secp256k1,
    secp256k1_public_key,
)

KMS_ISSUED_PREFIX = b"dstack-kms-issued:"


class SigChainError(ValueError):
    """A signature chain is malformed or does not verify; the message names the failing link."""


def derived_key_message(purpose: str, derived_pubkey_compressed: bytes) -> bytes:
    """Return the message the app key signs for a derived key: utf8(purpose ":" hex(pubkey))."""
    return f"{purpose}:{derived_pubkey_compressed.hex()}".encode()


def kms_issued_message(app_id: Address, app_pubkey_compressed: bytes) -> bytes:
    """Return the message the KMS root signs for an app key: "dstack-kms-issued:" ‖ app_id ‖ pubkey."""
    return KMS_ISSUED_PREFIX + app_id.raw + app_pubkey_compressed


def _signature(sig: bytes, what: str) -> bytes:
    """``sig`` checked and normalised to libsecp256k1's recoverable form r ‖ s ‖ recovery id (0/1)."""
    if len(sig) != 65:
        raise SigChainError(f"{what} must be 65 bytes (r ‖ s ‖ v), got {len(sig)}")
    v = sig[64]
    if v in (27, 28):
        v -= 27
    if v not in (0, 1):
        raise SigChainError(f"{what} has recovery id {sig[64]}, expected 0/1 or 27/28")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise SigChainError(f"{what} has r or s out of range")
    if s > SECP256K1_N // 2:
        raise SigChainError(f"{what} has a high s value (malleable; ECDSA.recover rejects it)")
    return sig[:64] + bytes([v])


def _recover(sig: bytes, message: bytes, what: str) -> bytes:
    try:
        recoverable = _signature(sig, what)
        public = PublicKey.from_signature_and_message(recoverable, keccak256(message), hasher=None)
    except ValueError as exc:
        if isinstance(exc, SigChainError):
            raise
        raise SigChainError(f"{what} does not recover to a public key") from None
    return bytes(public.format(compressed=False)[1:])


def recover_address(sig: bytes, message: bytes, what: str) -> Address:
    """The address whose key made ``sig`` (65 B, low s) over keccak256(``message``); ``SigChainError``
    names ``what`` when it is malformed or recovers to nothing."""
    return address_of_public_key(_recover(sig, message, what))


@dataclass(frozen=True, slots=True)
class SigChainProof:
    """Public evidence that the holder of ``derived_pubkey`` got its key from ``kms_root`` for ``app_id``."""

    app_id: Address
    kms_root: Address
    derived_pubkey: bytes  # 64 B uncompressed x ‖ y
    app_pubkey: bytes  # 64 B uncompressed x ‖ y
    app_signature: bytes  # 65 B r ‖ s ‖ v over derived_key_message
    kms_signature: bytes  # 65 B r ‖ s ‖ v over kms_issued_message

    @property
    def signer(self) -> Address:
        """The address of the derived key: the account that must send the registration."""
        return address_of_public_key(self.derived_pubkey)

    @property
    def app_address(self) -> Address:
        return address_of_public_key(self.app_pubkey)


def build_proof(
    app_id: Address,
    derived_key: SecretBytes,
    signature_chain: Sequence[bytes],
    purpose: str = ETHEREUM_PURPOSE,
) -> SigChainProof:
    """Assemble a proof from a secp256k1 GetKey result, recovering the app key and the KMS root."""
    if len(signature_chain) != 2:
        raise SigChainError(f"signature chain must have 2 signatures, got {len(signature_chain)}")
    try:
        derived_pub = secp256k1_public_key(derived_key)
    except ValueError:
        raise SigChainError("derived key is not a valid 32-byte secp256k1 private key") from None
    app_sig, kms_sig = (bytes(s) for s in signature_chain)
    app_pub = _recover(
        app_sig, derived_key_message(purpose, compress_secp256k1(derived_pub)), "app signature"
    )
    kms_pub = _recover(kms_sig, kms_issued_message(app_id, compress_secp256k1(app_pub)), "KMS signature")
    return SigChainProof(
        app_id=app_id,
        kms_root=address_of_public_key(kms_pub),
        derived_pubkey=derived_pub,
        app_pubkey=app_pub,
        app_signature=app_sig,
        kms_signature=kms_sig,
    )


def verify_proof(
    proof: SigChainProof,
    trusted_roots: Collection[Address],
    purpose: str = ETHEREUM_PURPOSE,
) -> None:
    """Check every link of ``proof`` as ``Cluster.register`` does; raise ``SigChainError`` on failure."""
    for pub, what in ((proof.derived_pubkey, "derived public key"), (proof.app_pubkey, "app public key")):
        if len(pub) != 64:
            raise SigChainError(f"{what} must be 64 bytes (uncompressed x ‖ y), got {len(pub)}")
        if not is_on_secp256k1(pub):
            raise SigChainError(f"{what} is not a point on secp256k1")
    app_recovered = _recover(
        proof.app_signature,
        derived_key_message(purpose, compress_secp256k1(proof.derived_pubkey)),
        "app signature",
    )
    if app_recovered != proof.app_pubkey:
        raise SigChainError(
            f"app signature does not match: recovered {address_of_public_key(app_recovered)}, "
            f"proof names {address_of_public_key(proof.app_pubkey)} (wrong purpose or derived key?)"
        )
    kms_recovered = address_of_public_key(
        _recover(
            proof.kms_signature,
            kms_issued_message(proof.app_id, compress_secp256k1(proof.app_pubkey)),
            "KMS signature",
        )
    )
    if kms_recovered != proof.kms_root:
        raise SigChainError(
            f"KMS signature recovers to {kms_recovered}, proof names {proof.kms_root} (wrong app id?)"
        )
    if proof.kms_root not in trusted_roots:
        raise SigChainError(f"KMS root {proof.kms_root} is not trusted")
