"""Member proofs for unit tests: a cluster whose member apps are real CREATE2 addresses (compiled
``ClusterMemberApp``, a made-up factory address) and signer keys issued by the pure devnet KMS, so every
proof is made and checked exactly as between two nodes."""

from __future__ import annotations

from eth_utils.crypto import keccak

from devnet.kms import DevnetKms, get_key
from sidecar.chain.artifacts import load_artifact
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, ed25519_public_key, x25519_public_key
from sidecar.core.memberproof import (
    MemberProof,
    ProofAnchors,
    create2_address,
    make_member_proof,
    member_app_code_hash,
)
from sidecar.core.model import member_id_for
from sidecar.core.sigchain import build_proof

CLUSTER = Address(b"\xcd" * 20)
CHAIN_ID = 31337
FACTORY = Address(b"\xfa" * 20)
CODE_HASH = member_app_code_hash(load_artifact("ClusterMemberApp").bytecode, CLUSTER)
KMS = DevnetKms()
KMS_ROOT = KMS.root_address
ROGUE_KMS = DevnetKms(b"a rogue KMS root that nobody measured")
ANCHORS = ProofAnchors(CHAIN_ID, CLUSTER, FACTORY, CODE_HASH, frozenset({KMS_ROOT}))
NAMES = ("node", "requester", "responder", *(f"peer-{i}" for i in range(8)))


def salt_for(name: str) -> Bytes32:
    return Bytes32(keccak(name.encode()))


def member_app(name: str) -> Address:
    """The app id the factory gives the member app ``name`` of ``CLUSTER``."""
    return create2_address(FACTORY, salt_for(name), CODE_HASH)


def member_id(name: str) -> MemberId:
    return member_id_for(CLUSTER, member_app(name))


def salt_of(app_id: Address) -> Bytes32:
    """What ``ClusterMemberAppFactory.saltOf`` answers: the salt, or zero for an app it did not deploy."""
    return next((salt_for(n) for n in NAMES if member_app(n) == app_id), Bytes32(bytes(32)))


def prove(
    app_id: Address,
    identity_pub: Bytes32,
    seal_pub: Bytes32,
    *,
    kms: DevnetKms = KMS,
    salt: Bytes32 | None = None,
    chain_id: int = CHAIN_ID,
    cluster: Address = CLUSTER,
) -> MemberProof:
    """The member proof a TEE running ``app_id`` makes for these keys (each part can be made wrong)."""
    signer, chain = get_key(kms, app_id, KeyPath.SIGNER.path, KeyPath.SIGNER.purpose)
    return make_member_proof(
        build_proof(app_id, signer, chain), signer, salt=salt_of(app_id) if salt is None else salt,
        chain_id=chain_id, cluster=cluster, identity_pub=identity_pub, seal_pub=seal_pub,
    )  # fmt: skip


def derived_member(app_id: Address, kms: DevnetKms = KMS) -> tuple[MemberProof, SecretBytes, SecretBytes]:
    """A member whose keys its TEE derived: its proof, Ed25519 identity seed and X25519 seal key."""
    identity, _ = get_key(kms, app_id, KeyPath.IDENTITY.path, KeyPath.IDENTITY.purpose)
    seal, _ = get_key(kms, app_id, KeyPath.SEAL.path, KeyPath.SEAL.purpose)
    proof = prove(app_id, Bytes32(ed25519_public_key(identity)), Bytes32(x25519_public_key(seal)), kms=kms)
    return proof, identity, seal
