"""The member proof: a node shows a peer, with nothing read from the chain, that it is a TEE of this cluster.

Owns ``MemberProof`` (its JSON form, ``proof_json`` / ``parse_proof``), ``make_member_proof`` (made once
at boot from what the node's TEE derived) and ``verify_member_proof``, the peer's pure check against the
measured anchors (``ProofAnchors``: chain id, cluster, member-app factory, the member app's init code hash
and the trusted KMS roots). Must not: do I/O (the caller loads the member app's creation code and passes
its hash in), read a clock, or keep the signer's private key (``make_member_proof`` uses it once).

A proof is:

- the dstack signature chain of the node's signer key (``SigChainProof``: app id, KMS root, derived and
  app public keys, the app key's and the KMS root's signatures; purpose ``ethereum``);
- ``salt``: the CREATE2 salt the member app was deployed with (``ClusterMemberAppFactory.saltOf``; merely
  read once at boot: the verifier recomputes the address, so a wrong salt only fails the proof);
- ``identity_pub`` (Ed25519) and ``seal_pub`` (X25519), the keys a peer will trust;
- ``binding_signature``: the signer key's recoverable secp256k1 signature (65 B ``r ‖ s ‖ v``, v 0/1,
  low s) over ``keccak256(BINDING_DOMAIN ‖ chain id (u256 BE) ‖ cluster (20) ‖ app id (20) ‖
  identity_pub (32) ‖ seal_pub (32))`` (163 bytes before hashing).

``verify_member_proof`` checks, in order: every link of the signature chain (``bad_proof``); the KMS root
is one of the measured roots (``untrusted_root``); the app id is
``CREATE2(factory, salt, keccak256(ClusterMemberApp creation code ‖ abi.encode(cluster)))``, this cluster's
member app (``foreign_app``); the binding signature recovers to the proven signer (``bad_proof``). It
returns the ``ProvenMember``: member id ``keccak256(abi.encode(cluster, app id))`` and the two keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from coincurve import PrivateKey

from sidecar.core.hashing import keccak256
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import address_of_public_key, secp256k1_public_key
from sidecar.core.model import member_id_for
from sidecar.core.sigchain import SigChainError, SigChainProof, recover_address, verify_proof

BINDING_DOMAIN = b"attestmesh/member-proof/v1\x00"
PROOF_FIELDS: dict[str, int] = {  # JSON key → byte length of its 0x-hex value
    "app_id": 20,
    "kms_root": 20,
    "derived_pubkey": 64,
    "app_pubkey": 64,
    "app_signature": 65,
    "kms_signature": 65,
    "salt": 32,
    "identity_pub": 32,
    "seal_pub": 32,
    "binding_signature": 65,
}
_U256 = 2**256

ProofReason = Literal["bad_proof", "untrusted_root", "foreign_app"]


class ProofRejected(Exception):
    """A member proof that does not prove a TEE of this cluster; ``reason`` is the refusal's label and the
    message a short detail safe to log (public values only)."""

    def __init__(self, reason: ProofReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: ProofReason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ProofAnchors:
    """What a proof is checked against: measured values only (never anything an RPC said)."""

    chain_id: int
    cluster: Address
    member_app_factory: Address
    member_app_code_hash: Bytes32  # keccak256(creation code ‖ abi.encode(cluster))
    kms_roots: frozenset[Address]


@dataclass(frozen=True, slots=True)
class MemberProof:
    """A node's proof that its identity and seal keys belong to a TEE running this cluster's member app."""

    chain: SigChainProof
    salt: Bytes32
    identity_pub: Bytes32
    seal_pub: Bytes32
    binding_signature: bytes  # 65 B r ‖ s ‖ v

    @property
    def app_id(self) -> Address:
        return self.chain.app_id


@dataclass(frozen=True, slots=True)
class ProvenMember:
    """What a verified proof establishes."""

    member_id: MemberId
    app_id: Address
    identity_pub: Bytes32
    seal_pub: Bytes32


def member_app_code_hash(creation_code: bytes, cluster: Address) -> Bytes32:
    """keccak256(creation code ‖ abi.encode(cluster)): the init code hash of ``cluster``'s member apps."""
    if not creation_code:
        raise ValueError("the member app's creation code is empty")
    return Bytes32(keccak256(creation_code + bytes(12) + cluster.raw))


def create2_address(factory: Address, salt: Bytes32, init_code_hash: Bytes32) -> Address:
    """The address CREATE2 gives: keccak256(0xff ‖ factory ‖ salt ‖ init code hash)[12:]."""
    return Address(keccak256(b"\xff" + factory.raw + salt.raw + init_code_hash.raw)[12:])


def binding_message(
    chain_id: int, cluster: Address, app_id: Address, identity_pub: Bytes32, seal_pub: Bytes32
) -> bytes:
    """The bytes whose keccak256 the signer key signs to bind the identity and seal keys."""
    if not 0 < chain_id < _U256:
        raise ValueError("chain id out of range")
    return (
        BINDING_DOMAIN
        + chain_id.to_bytes(32, "big")
        + cluster.raw
        + app_id.raw
        + identity_pub.raw
        + seal_pub.raw
    )


def make_member_proof(
    chain: SigChainProof,
    signer_key: SecretBytes,
    *,
    salt: Bytes32,
    chain_id: int,
    cluster: Address,
    identity_pub: Bytes32,
    seal_pub: Bytes32,
) -> MemberProof:
    """Sign the binding with the signer key (the derived key of ``chain``) and assemble the proof."""
    message = binding_message(chain_id, cluster, chain.app_id, identity_pub, seal_pub)
    if address_of_public_key(secp256k1_public_key(signer_key)) != chain.signer:  # also checks the scalar
        raise ValueError("the signer key is not the signature chain's derived key")
    # libsecp256k1: RFC 6979 nonces and low s, r ‖ s ‖ v with v 0/1 (the form eth_keys produced).
    signature = PrivateKey(signer_key.reveal()).sign_recoverable(keccak256(message), hasher=None)
    return MemberProof(chain, salt, identity_pub, seal_pub, bytes(signature))


def verify_member_proof(proof: MemberProof, anchors: ProofAnchors) -> ProvenMember:
    """Check ``proof`` against the measured anchors; return what it proves or raise ``ProofRejected``."""
    chain = proof.chain
    try:  # every link, with the root the proof names: trust in that root is judged next, by name
        verify_proof(chain, (chain.kms_root,))
    except SigChainError as exc:
        raise ProofRejected("bad_proof", f"signature chain: {exc}") from None
    if chain.kms_root not in anchors.kms_roots:
        raise ProofRejected("untrusted_root", f"KMS root {chain.kms_root} is not a measured root")
    expected = create2_address(anchors.member_app_factory, proof.salt, anchors.member_app_code_hash)
    if chain.app_id != expected:
        raise ProofRejected(
            "foreign_app", f"app id {chain.app_id} is not this cluster's member app for its salt"
        )
    message = binding_message(
        anchors.chain_id, anchors.cluster, chain.app_id, proof.identity_pub, proof.seal_pub
    )
    try:
        bound = recover_address(proof.binding_signature, message, "binding signature")
    except SigChainError as exc:
        raise ProofRejected("bad_proof", str(exc)) from None
    if bound != chain.signer:
        raise ProofRejected("bad_proof", "binding signature is not by the proven signer key")
    return ProvenMember(
        member_id_for(anchors.cluster, chain.app_id), chain.app_id, proof.identity_pub, proof.seal_pub
    )


# --- JSON form -------------------------------------------------------------------------------------------


def proof_json(proof: MemberProof) -> dict[str, str]:
    """The proof's JSON object (every value 0x-prefixed lowercase hex)."""
    c = proof.chain
    raw = {
        "app_id": c.app_id.raw,
        "kms_root": c.kms_root.raw,
        "derived_pubkey": c.derived_pubkey,
        "app_pubkey": c.app_pubkey,
        "app_signature": c.app_signature,
        "kms_signature": c.kms_signature,
        "salt": proof.salt.raw,
        "identity_pub": proof.identity_pub.raw,
        "seal_pub": proof.seal_pub.raw,
        "binding_signature": proof.binding_signature,
    }
    return {key: "0x" + value.hex() for key, value in raw.items()}


def _field(obj: Mapping[object, object], key: str) -> bytes:
    length = PROOF_FIELDS[key]
    value = obj[key]
    if not isinstance(value, str) or len(value) != 2 + 2 * length or value[:2] not in ("0x", "0X"):
        raise ProofRejected("bad_proof", f"proof.{key} must be 0x-prefixed hex of {length} bytes")
    body = value[2:]
    if not all(c in "0123456789abcdefABCDEF" for c in body):
        raise ProofRejected("bad_proof", f"proof.{key} is not hexadecimal")
    return bytes.fromhex(body)


def parse_proof(obj: object) -> MemberProof:
    """Validate an untrusted JSON value as a proof's form (not its truth); raise ``ProofRejected``."""
    if not isinstance(obj, dict):
        raise ProofRejected("bad_proof", "proof must be a JSON object")
    if set(obj) != set(PROOF_FIELDS):
        raise ProofRejected("bad_proof", "proof must have exactly: " + ", ".join(sorted(PROOF_FIELDS)))
    f = {key: _field(obj, key) for key in PROOF_FIELDS}
    chain = SigChainProof(
        app_id=Address(f["app_id"]),
        kms_root=Address(f["kms_root"]),
        derived_pubkey=f["derived_pubkey"],
        app_pubkey=f["app_pubkey"],
        app_signature=f["app_signature"],
        kms_signature=f["kms_signature"],
    )
    return MemberProof(
        chain, Bytes32(f["salt"]), Bytes32(f["identity_pub"]), Bytes32(f["seal_pub"]), f["binding_signature"]
    )
