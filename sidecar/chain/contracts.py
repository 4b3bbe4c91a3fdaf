"""Typed async bindings: Cluster, ClusterMemberApp(+Factory), ClusterFactory, IndexerRegistry.

Owns: one client class per contract with a method per read and write the sidecar, the indexer and the
devnet need (their shared plumbing, ``ContractClient``, is ``sidecar.chain.binding``'s). Arguments and
results are our value objects (``Address``, ``Bytes32``, ``MemberId``, ``MemberRecord``, ``BootVerdict``,
``TxReceipt``...); "absent" on chain (a zero id, a zero address, a zero commitment) is ``None`` here. Writes
go through the injected ``TxSubmitter``; every read and write goes through ``translated()``, so callers only
ever see ``ChainError``s.

Must not: sign, choose nonces or fees (``tx``), retry, cache chain state, or let a web3 type (``HexBytes``,
``AttributeDict``, checksum strings) out.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

from sidecar.chain.binding import (
    BlockRef,
    ContractClient,
    Ownable2StepClient,
    mesh_ip,
    optional_member_id,
    to_address,
    to_bytes32,
)
from sidecar.chain.errors import TransientChainError, UnexpectedChainError
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import (
    BootInfo,
    BootVerdict,
    ClusterConfig,
    IndexerRecord,
    MemberKeys,
    MemberRecord,
    MeshCidr,
    SyncState,
    TxReceipt,
    member_id_for,
)
from sidecar.core.sigchain import SigChainProof

# Re-exported: callers name the shared plumbing through this module.
__all__ = [
    "BlockRef",
    "ClusterClient",
    "ClusterFactoryClient",
    "ContractClient",
    "IndexerRegistryClient",
    "MemberAppClient",
    "MemberAppFactoryClient",
    "MembershipMoved",
]

#: Members per ``membersPage`` call of ``members_paged``. A page of 10-character endpoints costs about
#: 27,000 gas per member plus the ABI encoding's memory (``python -m bench --only scale`` measures it; 250
#: members ~ 7 M gas), well under the 50 M cap common hosted endpoints put on ``eth_call`` and under a 10 M
#: per-call budget even with 64-byte endpoints; a 10,000-member cluster reads in 40 calls.
MEMBERS_PAGE_SIZE = 250

#: More members than any mesh can address (a /8 has 2**24 - 2 hosts): a larger ``total`` is a lying node.
MAX_MEMBERS = 2**24


class MembershipMoved(TransientChainError):
    """An unpinned paged read saw the membership change between its pages; read again (pinned reads
    cannot move)."""


def _member_record(raw: Sequence[Any]) -> MemberRecord | None:
    member_id, app_id, signer, seal_pub, wg_pub, identity_pub, endpoint, ip, registered_at = raw
    if bytes(member_id) == bytes(32):
        return None
    return MemberRecord(
        member_id=MemberId(bytes(member_id)),
        app_id=to_address(app_id),
        signer=to_address(signer),
        seal_pub=to_bytes32(seal_pub),
        wg_pub=to_bytes32(wg_pub),
        identity_pub=to_bytes32(identity_pub),
        endpoint=str(endpoint),
        mesh_ip=IPv4Address(int(ip)),
        registered_at=int(registered_at),
    )


def _member_records(raw: Sequence[Sequence[Any]], what: str) -> list[MemberRecord]:
    records = [_member_record(entry) for entry in raw]
    if any(record is None for record in records):
        raise UnexpectedChainError(f"{what} returned a record with a zero id")
    return [record for record in records if record is not None]


def _boot_info_arg(info: BootInfo) -> tuple[Any, ...]:
    return (
        info.app_id.checksum,
        info.compose_hash.raw,
        info.instance_id.checksum,
        info.device_id.raw,
        info.mr_aggregated.raw,
        info.mr_system.raw,
        info.os_image_hash.raw,
        info.tcb_status,
        list(info.advisory_ids),
    )


def _verdict(raw: Sequence[Any]) -> BootVerdict:
    allowed, reason = raw
    return BootVerdict(allowed=bool(allowed), reason=str(reason))


class ClusterClient(Ownable2StepClient):
    """One AttestMesh cluster: boot policy, KMS roots, membership, mesh IPs, CSK commitment."""

    CONTRACT = "Cluster"

    # --- membership reads ---------------------------------------------------------------------------------

    async def member_count(self, *, block: BlockRef = None) -> int:
        return int(await self._call("memberCount", block=block))

    async def member_id_of(self, app_id: Address, *, block: BlockRef = None) -> MemberId | None:
        return optional_member_id(await self._call("memberIdOf", app_id.checksum, block=block))

    async def member_id_of_signer(self, signer: Address, *, block: BlockRef = None) -> MemberId | None:
        return optional_member_id(await self._call("memberIdOfSigner", signer.checksum, block=block))

    async def compute_member_id(self, app_id: Address) -> MemberId:
        return MemberId(bytes(await self._call("computeMemberId", app_id.checksum)))

    async def list_members(self, *, block: BlockRef = None) -> list[MemberId]:
        """Return member ids in registration order; index 0 is the CSK originator."""
        return [MemberId(bytes(raw)) for raw in await self._call("listMembers", block=block)]

    async def originator(self, *, block: BlockRef = None) -> MemberId | None:
        return optional_member_id(await self._call("originator", block=block))

    async def member_by_id(self, member_id: Bytes32, *, block: BlockRef = None) -> MemberRecord | None:
        return _member_record(await self._call("memberById", member_id.raw, block=block))

    async def members(self, *, block: BlockRef = None) -> list[MemberRecord]:
        """Return every member record, registration order, in one call (large clusters: ``members_paged``,
        whose calls each stay under a gas budget)."""
        (raw,) = await self._read("members", block=block)
        return _member_records(raw, "members()")

    async def members_page(
        self, offset: int, limit: int, *, block: BlockRef = None
    ) -> tuple[list[MemberRecord], int]:
        """Return members ``[offset, offset + limit)`` in registration order and the member count (an
        offset at or past the end: no records)."""
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be non-negative, got {offset}, {limit}")
        raw, total = await self._read("membersPage", offset, limit, block=block)
        records = _member_records(raw, "membersPage()")
        expected = max(0, min(limit, int(total) - offset))
        if int(total) > MAX_MEMBERS or len(records) != expected:
            raise UnexpectedChainError(
                f"membersPage({offset}, {limit}) returned {len(records)} records of {total}"
            )
        return records, int(total)

    async def members_paged(
        self, *, block: BlockRef = None, page_size: int = MEMBERS_PAGE_SIZE
    ) -> list[MemberRecord]:
        """Return every member record, registration order, one ``membersPage`` call per ``page_size``
        members. At ``block=None`` the pages are bracketed by ``syncState`` reads and ``MembershipMoved``
        is raised if the membership changed in between; pin a block for one consistent read."""
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        before = await self.sync_state() if block is None else None
        records, total = await self.members_page(0, page_size, block=block)
        while len(records) < total:
            page, now = await self.members_page(len(records), page_size, block=block)
            if now != total:
                raise MembershipMoved(f"the member count moved from {total} to {now} between pages")
            records.extend(page)
        if before is not None:
            after = await self.sync_state()
            if after.membership_version != before.membership_version:
                raise MembershipMoved(
                    f"membership version moved from {before.membership_version} to "
                    f"{after.membership_version} during the read"
                )
        return records

    async def sync_state(self, *, block: BlockRef = None) -> SyncState:
        """Return the versions, CSK epoch and commitment and member count in one call."""
        membership, policy, epoch, commitment, count = await self._read("syncState", block=block)
        raw = to_bytes32(commitment)
        return SyncState(
            membership_version=int(membership),
            policy_version=int(policy),
            csk_epoch=int(epoch),
            csk_commitment=None if raw.is_zero else raw,
            member_count=int(count),
        )

    async def membership_version(self, *, block: BlockRef = None) -> int:
        return int((await self._read("membershipVersion", block=block))[0])

    async def policy_version(self, *, block: BlockRef = None) -> int:
        return int((await self._read("policyVersion", block=block))[0])

    async def mesh_cidr(self, *, block: BlockRef = None) -> MeshCidr:
        base, prefix_length = await self._call("meshCidr", block=block)
        return MeshCidr.from_chain(int(base), int(prefix_length))

    async def mesh_ip_of(self, member_id: Bytes32, *, block: BlockRef = None) -> IPv4Address | None:
        return mesh_ip(await self._call("meshIpOf", member_id.raw, block=block))

    async def csk_commitment(self, *, block: BlockRef = None) -> Bytes32 | None:
        """The current CSK epoch's commitment (None until its originator commits it)."""
        raw = to_bytes32(await self._call("cskCommitment", block=block))
        return None if raw.is_zero else raw

    async def csk_epoch(self, *, block: BlockRef = None) -> int:
        """The current CSK epoch (1 until the first rotation)."""
        return int(await self._call("cskEpoch", block=block))

    async def csk_commitment_of(self, epoch: int, *, block: BlockRef = None) -> Bytes32 | None:
        raw = to_bytes32(await self._call("cskCommitmentOf", epoch, block=block))
        return None if raw.is_zero else raw

    async def rotate_csk_on_remove(self, *, block: BlockRef = None) -> bool:
        return bool(await self._call("rotateCskOnRemove", block=block))

    # --- boot policy reads --------------------------------------------------------------------------------

    async def is_app_allowed(self, info: BootInfo, *, block: BlockRef = None) -> BootVerdict:
        return _verdict(await self._call("isAppAllowed", _boot_info_arg(info), block=block))

    async def allowed_compose_hash(self, compose_hash: Bytes32, *, block: BlockRef = None) -> bool:
        return bool(await self._call("allowedComposeHashes", compose_hash.raw, block=block))

    async def allowed_device(self, device_id: Bytes32, *, block: BlockRef = None) -> bool:
        return bool(await self._call("allowedDeviceIds", device_id.raw, block=block))

    async def allow_any_device(self, *, block: BlockRef = None) -> bool:
        return bool(await self._call("allowAnyDevice", block=block))

    async def require_tcb_up_to_date(self, *, block: BlockRef = None) -> bool:
        return bool(await self._call("requireTcbUpToDate", block=block))

    async def allowed_app_id(self, app_id: Address, *, block: BlockRef = None) -> bool:
        return bool(await self._call("allowedAppIds", app_id.checksum, block=block))

    async def allowed_kms_root(self, kms_root: Address, *, block: BlockRef = None) -> bool:
        return bool(await self._call("allowedKmsRoots", kms_root.checksum, block=block))

    async def member_app_factory(self, *, block: BlockRef = None) -> Address:
        """The ClusterMemberAppFactory whose apps for this cluster may be approved (fixed at deployment)."""
        return to_address(await self._call("memberAppFactory", block=block))

    # --- member writes ------------------------------------------------------------------------------------

    async def register(
        self, proof: SigChainProof, keys: MemberKeys, endpoint: str
    ) -> tuple[TxReceipt, MemberId]:
        """Register the submitter's node (the submitter must be the proof's derived key)."""
        receipt = await self._send(
            "register",
            (
                proof.app_id.checksum,
                proof.kms_root.checksum,
                proof.derived_pubkey,
                proof.app_pubkey,
                proof.app_signature,
                proof.kms_signature,
            ),
            (keys.seal_pub.raw, keys.wg_pub.raw, keys.identity_pub.raw),
            endpoint,
        )
        registered = self.events(receipt, "MemberRegistered")
        if registered:
            return receipt, MemberId(registered[0]["memberId"].raw)
        return receipt, member_id_for(self.address, proof.app_id)

    async def set_endpoint(self, endpoint: str) -> TxReceipt:
        return await self._send("setEndpoint", endpoint)

    async def set_csk_commitment(self, epoch: int, commitment: Bytes32) -> TxReceipt:
        """Commit keccak256(CSK) of ``epoch`` (the current one); once per epoch, originator only."""
        return await self._send("setCskCommitment", epoch, commitment.raw)

    # --- owner writes -------------------------------------------------------------------------------------

    async def remove_member(self, member_id: Bytes32) -> TxReceipt:
        return await self._send("removeMember", member_id.raw)

    async def rotate_csk(self) -> TxReceipt:
        """Start the next CSK epoch (its originator then commits the new key)."""
        return await self._send("rotateCsk")

    async def set_rotate_csk_on_remove(self, rotate: bool) -> TxReceipt:
        return await self._send("setRotateCskOnRemove", rotate)

    async def add_compose_hash(self, compose_hash: Bytes32) -> TxReceipt:
        return await self._send("addComposeHash", compose_hash.raw)

    async def remove_compose_hash(self, compose_hash: Bytes32) -> TxReceipt:
        return await self._send("removeComposeHash", compose_hash.raw)

    async def add_device(self, device_id: Bytes32) -> TxReceipt:
        return await self._send("addDevice", device_id.raw)

    async def remove_device(self, device_id: Bytes32) -> TxReceipt:
        return await self._send("removeDevice", device_id.raw)

    async def set_allow_any_device(self, allow: bool) -> TxReceipt:
        return await self._send("setAllowAnyDevice", allow)

    async def set_require_tcb_up_to_date(self, require: bool) -> TxReceipt:
        return await self._send("setRequireTcbUpToDate", require)

    async def add_allowed_app_id(self, app_id: Address) -> TxReceipt:
        return await self._send("addAllowedAppId", app_id.checksum)

    async def remove_allowed_app_id(self, app_id: Address) -> TxReceipt:
        return await self._send("removeAllowedAppId", app_id.checksum)

    async def add_kms_root(self, kms_root: Address) -> TxReceipt:
        return await self._send("addKmsRoot", kms_root.checksum)

    async def remove_kms_root(self, kms_root: Address) -> TxReceipt:
        return await self._send("removeKmsRoot", kms_root.checksum)


class MemberAppClient(ContractClient):
    """A node's dstack app contract: its boot policy forwards to the cluster."""

    CONTRACT = "ClusterMemberApp"

    async def cluster(self, *, block: BlockRef = None) -> Address:
        return to_address(await self._call("cluster", block=block))

    async def is_app_allowed(self, info: BootInfo, *, block: BlockRef = None) -> BootVerdict:
        return _verdict(await self._call("isAppAllowed", _boot_info_arg(info), block=block))

    async def supports_interface(self, interface_id: bytes) -> bool:
        if len(interface_id) != 4:
            raise ValueError("an interface id is 4 bytes")
        return bool(await self._call("supportsInterface", interface_id))


class MemberAppFactoryClient(ContractClient):
    """CREATE2 factory of member apps (one per cluster and node name)."""

    CONTRACT = "ClusterMemberAppFactory"

    async def predict(self, cluster: Address, name: str, *, block: BlockRef = None) -> Address:
        return to_address(await self._call("predict", cluster.checksum, name, block=block))

    async def is_our_app(self, app: Address, *, block: BlockRef = None) -> bool:
        return bool(await self._call("isOurApp", app.checksum, block=block))

    async def salt_of(self, app: Address, *, block: BlockRef = None) -> Bytes32:
        """The CREATE2 salt ``app`` was deployed with (zero when this factory did not deploy it)."""
        return Bytes32(bytes(await self._call("saltOf", app.checksum, block=block)))

    async def deploy(self, cluster: Address, name: str) -> Address:
        """Deploy (or find, if already deployed) the member app of ``(cluster, name)``; return its address."""
        return (await self.ensure_deployed(cluster, name))[0]

    async def ensure_deployed(self, cluster: Address, name: str) -> tuple[Address, TxReceipt | None]:
        """The member app of ``(cluster, name)`` and the deploy receipt; no transaction when it exists."""
        expected = await self.predict(cluster, name)
        if await self.is_our_app(expected):
            return expected, None
        receipt = await self._send("deploy", cluster.checksum, name)
        if not await self.is_our_app(expected):
            raise UnexpectedChainError(f"member app factory did not deploy {name!r} at {expected}")
        return expected, receipt


class ClusterFactoryClient(ContractClient):
    """The per-chain cluster factory."""

    CONTRACT = "ClusterFactory"

    async def deploy_cluster(self, config: ClusterConfig, salt: Bytes32) -> tuple[Address, TxReceipt]:
        """CREATE2-deploy a cluster; the address comes from the ``ClusterDeployed`` event."""
        receipt = await self._send(
            "deployCluster",
            (
                config.owner.checksum,
                config.member_app_factory.checksum,
                config.mesh_cidr.base,
                config.mesh_cidr.prefix_length,
                [a.checksum for a in config.kms_roots],
                [h.raw for h in config.compose_hashes],
                [d.raw for d in config.device_ids],
                config.allow_any_device,
                config.require_tcb_up_to_date,
            ),
            salt.raw,
        )
        deployed = self.events(receipt, "ClusterDeployed")
        if len(deployed) != 1:
            raise UnexpectedChainError(
                f"deployCluster emitted {len(deployed)} ClusterDeployed events, expected 1"
            )
        cluster = deployed[0]["cluster"]
        assert isinstance(cluster, Address)
        return cluster, receipt

    async def is_deployed_cluster(self, cluster: Address, *, block: BlockRef = None) -> bool:
        return bool(await self._call("isDeployedCluster", cluster.checksum, block=block))

    async def cluster_count(self, *, block: BlockRef = None) -> int:
        return int(await self._call("clusterCount", block=block))

    async def deployment_block(self) -> int:
        """Return the factory's deployment block: the indexer's catch-up floor."""
        return int(await self._call("deploymentBlock"))


class IndexerRegistryClient(Ownable2StepClient):
    """The per-chain registry naming the shared indexer."""

    CONTRACT = "IndexerRegistry"

    async def current(self, *, block: BlockRef = None) -> IndexerRecord:
        endpoint, code_id, pub_key, updated_at = await self._call("current", block=block)
        return IndexerRecord(
            endpoint=str(endpoint),
            code_id=to_bytes32(code_id),
            pub_key=to_bytes32(pub_key),
            updated_at=int(updated_at),
        )

    async def set_indexer(self, endpoint: str, code_id: Bytes32, pub_key: Bytes32) -> TxReceipt:
        return await self._send("setIndexer", endpoint, code_id.raw, pub_key.raw)
