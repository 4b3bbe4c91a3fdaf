"""The node's identity: every key the sidecar uses, derived from the dstack guest agent at start-up.

Owns ``KeySource`` (the port to the guest agent), ``NodeIdentity`` (the ``Info`` facts plus the derived
keys of DESIGN §4 "Identity") and ``derive``, which asks the guest agent for each GetKey path of the node's
``KeyScope`` (its chain and cluster). ``GetKey`` is deterministic per app id and path, so a restarted or
updated node derives the same identity, and one pointed at another cluster an unrelated one. Must not
log, repr or persist any private key: keys stay in ``SecretBytes`` and only public values leave this
module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sidecar.chain.tx import LocalSigner
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.keys import (
    CSK_PURPOSE,
    FIRST_CSK_EPOCH,
    KeyPath,
    KeyScope,
    ed25519_public_key,
    secp256k1_address,
    x25519_public_key,
)
from sidecar.core.model import BootInfo, MemberKeys, MemberRecord
from sidecar.core.sigchain import SigChainProof, build_proof
from sidecar.dstack.agent import DerivedKey, NodeInfo

#: The KMS judged the TCB at boot; the sidecar cannot observe it (``Info`` has no TCB status), so its own
#: re-check of the boot policy covers compose hash, device and app id, and passes this value for the TCB.
ASSUMED_TCB_STATUS = "UpToDate"


class KeySource(Protocol):
    """What identity derivation asks of the guest agent (``GuestAgent``; a fake in unit tests)."""

    async def info(self) -> NodeInfo: ...

    async def get_key(self, path: str, purpose: str = "", algorithm: str = "secp256k1") -> DerivedKey: ...


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    info: NodeInfo
    scope: KeyScope  # the chain and cluster every key below is bound to
    proof: SigChainProof
    signer_key: SecretBytes = field(repr=False)
    identity_key: SecretBytes = field(repr=False)  # Ed25519 seed
    seal_key: SecretBytes = field(repr=False)  # X25519 scalar
    wg_key: SecretBytes = field(repr=False)  # X25519 scalar
    state_key: SecretBytes = field(repr=False)  # key of the encrypted local state cache
    keys: MemberKeys  # the public halves, as registered on chain

    @property
    def app_id(self) -> Address:
        return self.info.app_id

    @property
    def signer(self) -> Address:
        return self.proof.signer

    def local_signer(self) -> LocalSigner:
        return LocalSigner(self.signer_key)

    def boot_info(self) -> BootInfo:
        info = self.info
        return BootInfo(
            app_id=info.app_id,
            compose_hash=info.compose_hash,
            instance_id=Address(info.instance_id) if len(info.instance_id) == 20 else Address(bytes(20)),
            device_id=info.device_id,
            mr_aggregated=info.mr_aggregated,
            mr_system=Bytes32(bytes(32)),
            os_image_hash=info.os_image_hash,
            tcb_status=ASSUMED_TCB_STATUS,
        )

    def matches(self, record: MemberRecord) -> list[str]:
        """Names of the on-chain keys that differ from the derived ones (empty: same identity)."""
        diffs = []
        if record.signer != self.signer:
            diffs.append("signer")
        if record.seal_pub != self.keys.seal_pub:
            diffs.append("seal key")
        if record.wg_pub != self.keys.wg_pub:
            diffs.append("wireguard key")
        if record.identity_pub != self.keys.identity_pub:
            diffs.append("identity key")
        return diffs


async def derive(agent: KeySource, scope: KeyScope) -> NodeIdentity:
    """Read ``Info`` and derive every key (raises the agent's errors; the caller retries transient ones)."""
    return await derive_keys(agent, await agent.info(), scope)


async def derive_keys(agent: KeySource, info: NodeInfo, scope: KeyScope) -> NodeIdentity:
    """Derive every key of ``scope`` for the CVM ``info`` describes."""
    signer = await agent.get_key(scope.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
    identity = await agent.get_key(scope.path(KeyPath.IDENTITY), KeyPath.IDENTITY.purpose)
    seal = await agent.get_key(scope.path(KeyPath.SEAL), KeyPath.SEAL.purpose)
    wg = await agent.get_key(scope.path(KeyPath.WIREGUARD), KeyPath.WIREGUARD.purpose)
    state = await agent.get_key(scope.path(KeyPath.STATE), KeyPath.STATE.purpose)
    proof = build_proof(info.app_id, signer.key, signer.signature_chain)
    assert proof.signer == secp256k1_address(signer.key)
    keys = MemberKeys(
        seal_pub=Bytes32(x25519_public_key(seal.key)),
        wg_pub=Bytes32(x25519_public_key(wg.key)),
        identity_pub=Bytes32(ed25519_public_key(identity.key)),
    )
    return NodeIdentity(
        info=info,
        scope=scope,
        proof=proof,
        signer_key=signer.key,
        identity_key=identity.key,
        seal_key=seal.key,
        wg_key=wg.key,
        state_key=state.key,
        keys=keys,
    )


async def derive_csk_key(agent: KeySource, scope: KeyScope, epoch: int = FIRST_CSK_EPOCH) -> SecretBytes:
    """The originator's CSK of ``epoch``: GetKey(attestmesh/csk/v1/<chain id>/<cluster>/<epoch>),
    deterministic, so re-derivable after restarts, and unrelated to any other cluster's."""
    return (await agent.get_key(scope.csk_path(epoch), CSK_PURPOSE)).key
