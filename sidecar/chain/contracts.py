"""Typed async bindings: Cluster, ClusterMemberApp(+Factory), ClusterFactory, IndexerRegistry.

Owns: one client class per contract with a method per read and write the sidecar, the indexer and the
devnet need. Arguments and results are our value objects (``Address``, ``Bytes32``, ``MemberId``,
``MemberRecord``, ``BootVerdict``, ``TxReceipt``...); "absent" on chain (a zero id, a zero address, a zero
commitment) is ``None`` here. Writes go through the injected ``TxSubmitter``; every read and write goes
through ``translated()``, so callers only ever see ``ChainError``s.

Must not: sign, choose nonces or fees (``tx``), retry, cache chain state, or let a web3 type (``HexBytes``,
``AttributeDict``, checksum strings) out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address
from typing import Any, ClassVar, Self, cast

from eth_typing import HexStr
from eth_utils.abi import get_abi_output_types

from sidecar.chain.artifacts import load_artifact
from sidecar.chain.codec import ContractEvent, EventCodec
from sidecar.chain.errors import NoSubmitter, UnexpectedChainError, translated
from sidecar.chain.rpc import ChainConnection, checksum
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import (
    BootInfo,
    BootVerdict,
    ChainLog,
    ClusterConfig,
    IndexerRecord,
    MemberKeys,
    MemberRecord,
    MeshCidr,
    TxReceipt,
    member_id_for,
)
from sidecar.core.sigchain import SigChainProof

#: A block to read at: a number, a block hash (EIP-1898, the block must be canonical), or None for latest.
BlockRef = int | Bytes32 | None


def _address(value: Any) -> Address:
    return Address.from_hex(value) if isinstance(value, str) else Address(bytes(value))


def _optional_address(value: Any) -> Address | None:
    address = _address(value)
    return None if address.is_zero else address


def _bytes32(value: Any) -> Bytes32:
    return Bytes32(bytes(value))


def _optional_member_id(value: Any) -> MemberId | None:
    raw = bytes(value)
    return None if raw == bytes(32) else MemberId(raw)


def _mesh_ip(value: Any) -> IPv4Address | None:
    return None if int(value) == 0 else IPv4Address(int(value))


def _member_record(raw: Sequence[Any]) -> MemberRecord | None:
    member_id, app_id, signer, seal_pub, wg_pub, identity_pub, endpoint, mesh_ip, registered_at = raw
    if bytes(member_id) == bytes(32):
        return None
    return MemberRecord(
        member_id=MemberId(bytes(member_id)),
        app_id=_address(app_id),
        signer=_address(signer),
        seal_pub=_bytes32(seal_pub),
        wg_pub=_bytes32(wg_pub),
        identity_pub=_bytes32(identity_pub),
        endpoint=str(endpoint),
        mesh_ip=IPv4Address(int(mesh_ip)),
        registered_at=int(registered_at),
    )


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


class ContractClient:
    """Shared plumbing: the web3 contract object, calls, writes through the submitter, event decoding."""

    CONTRACT: ClassVar[str]

    def __init__(self, conn: ChainConnection, address: Address, submitter: TxSubmitter | None = None) -> None:
        self._conn = conn
        self.address = address
        self._submitter = submitter
        artifact = load_artifact(self.CONTRACT)
        self._contract = conn.w3.eth.contract(address=checksum(address), abi=artifact.abi_list())
        self._events = EventCodec(artifact.abi)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address})"

    @property
    def connection(self) -> ChainConnection:
        return self._conn

    def with_submitter(self, submitter: TxSubmitter) -> Self:
        """Return a client for the same contract that sends from ``submitter``'s account."""
        return type(self)(self._conn, self.address, submitter)

    @property
    def submitter(self) -> TxSubmitter | None:
        return self._submitter

    async def _call(self, function: str, *args: Any, block: BlockRef = None) -> Any:
        with translated():
            bound = getattr(self._contract.functions, function)(*args)
            if isinstance(block, Bytes32):
                return await self._call_at_hash(bound.abi, self.encode_call(function, *args), block)
            return await bound.call(block_identifier="latest" if block is None else block)

    async def _call_at_hash(self, abi: Any, calldata: bytes, block_hash: Bytes32) -> Any:
        """``eth_call`` pinned by block hash (EIP-1898, ``requireCanonical``): the node answers for exactly
        that block or errs, so reads of one snapshot cannot straddle a reorg. web3's ``ContractFunction.call``
        turns a hash into a block number first (losing the pin), so the call is encoded and decoded here;
        results have web3's shapes (one output unwrapped, addresses as hex strings)."""
        pinned = {"blockHash": str(block_hash), "requireCanonical": True}
        raw = await self._conn.w3.eth.call(
            {"to": checksum(self.address), "data": HexStr("0x" + calldata.hex())},
            block_identifier=cast(Any, pinned),
        )
        types = get_abi_output_types(abi)
        values = self._conn.w3.codec.decode(types, bytes(raw))
        return values[0] if len(values) == 1 else list(values)

    def encode_call(self, function: str, *args: Any) -> bytes:
        """Return the calldata of ``function(*args)`` (web3-encodable arguments), e.g. to send it raw."""
        with translated():
            encoded = self._contract.encode_abi(function, args=list(args))
        return bytes.fromhex(encoded.removeprefix("0x"))

    async def _send(self, function: str, *args: Any) -> TxReceipt:
        if self._submitter is None:
            raise NoSubmitter(f"{self!r} was built without a TxSubmitter; cannot send {function}()")
        return await self._submitter.send(self.address, self.encode_call(function, *args))

    def events(self, logs: TxReceipt | Iterable[ChainLog], name: str | None = None) -> list[ContractEvent]:
        """Decode this contract's events in ``logs`` (a receipt or logs), optionally only ``name``."""
        return self._events.decode_all(logs, address=self.address, name=name)

    def event_topic(self, name: str) -> Bytes32:
        """Return topic0 of this contract's event ``name``."""
        return self._events.topic_of(name)


class _Ownable2Step(ContractClient):
    """OpenZeppelin ``Ownable2Step``: owner, pending owner, two-step transfer."""

    async def owner(self, *, block: BlockRef = None) -> Address:
        return _address(await self._call("owner", block=block))

    async def pending_owner(self, *, block: BlockRef = None) -> Address | None:
        return _optional_address(await self._call("pendingOwner", block=block))

    async def transfer_ownership(self, new_owner: Address) -> TxReceipt:
        """Start a two-step transfer; ``new_owner`` must call ``accept_ownership``."""
        return await self._send("transferOwnership", new_owner.checksum)

    async def accept_ownership(self) -> TxReceipt:
        return await self._send("acceptOwnership")


class ClusterClient(_Ownable2Step):
    """One AttestMesh cluster: boot policy, KMS roots, membership, mesh IPs, CSK commitment."""

    CONTRACT = "Cluster"

    # --- membership reads ---------------------------------------------------------------------------------

    async def member_count(self, *, block: BlockRef = None) -> int:
        return int(await self._call("memberCount", block=block))

    async def member_id_of(self, app_id: Address, *, block: BlockRef = None) -> MemberId | None:
        return _optional_member_id(await self._call("memberIdOf", app_id.checksum, block=block))

    async def member_id_of_signer(self, signer: Address, *, block: BlockRef = None) -> MemberId | None:
        return _optional_member_id(await self._call("memberIdOfSigner", signer.checksum, block=block))

    async def compute_member_id(self, app_id: Address) -> MemberId:
        return MemberId(bytes(await self._call("computeMemberId", app_id.checksum)))

    async def list_members(self, *, block: BlockRef = None) -> list[MemberId]:
        """Return member ids in registration order; index 0 is the CSK originator."""
        return [MemberId(bytes(raw)) for raw in await self._call("listMembers", block=block)]

    async def originator(self, *, block: BlockRef = None) -> MemberId | None:
        return _optional_member_id(await self._call("originator", block=block))

    async def member_by_id(self, member_id: Bytes32, *, block: BlockRef = None) -> MemberRecord | None:
        return _member_record(await self._call("memberById", member_id.raw, block=block))

    async def members(self, *, block: BlockRef = None) -> list[MemberRecord]:
        """Return every member record, registration order, in one call."""
        records = [_member_record(raw) for raw in await self._call("members", block=block)]
        if any(record is None for record in records):
            raise UnexpectedChainError("members() returned a record with a zero id")
        return [record for record in records if record is not None]

    async def mesh_cidr(self, *, block: BlockRef = None) -> MeshCidr:
        base, prefix_length = await self._call("meshCidr", block=block)
        return MeshCidr.from_chain(int(base), int(prefix_length))

    async def mesh_ip_of(self, member_id: Bytes32, *, block: BlockRef = None) -> IPv4Address | None:
        return _mesh_ip(await self._call("meshIpOf", member_id.raw, block=block))

    async def csk_commitment(self, *, block: BlockRef = None) -> Bytes32 | None:
        raw = _bytes32(await self._call("cskCommitment", block=block))
        return None if raw.is_zero else raw

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

    async def set_csk_commitment(self, commitment: Bytes32) -> TxReceipt:
        """Commit keccak256(CSK) once (originator only)."""
        return await self._send("setCskCommitment", commitment.raw)

    # --- owner writes -------------------------------------------------------------------------------------

    async def remove_member(self, member_id: Bytes32) -> TxReceipt:
        return await self._send("removeMember", member_id.raw)

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
        return _address(await self._call("cluster", block=block))

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
        return _address(await self._call("predict", cluster.checksum, name, block=block))

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
                config.mesh_cidr.base,
                config.mesh_cidr.prefix_length,
                [a.checksum for a in config.kms_roots],
                [h.raw for h in config.compose_hashes],
                [d.raw for d in config.device_ids],
                [a.checksum for a in config.allowed_app_ids],
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


class IndexerRegistryClient(_Ownable2Step):
    """The per-chain registry naming the shared indexer."""

    CONTRACT = "IndexerRegistry"

    async def current(self, *, block: BlockRef = None) -> IndexerRecord:
        endpoint, code_id, pub_key, updated_at = await self._call("current", block=block)
        return IndexerRecord(
            endpoint=str(endpoint),
            code_id=_bytes32(code_id),
            pub_key=_bytes32(pub_key),
            updated_at=int(updated_at),
        )

    async def set_indexer(self, endpoint: str, code_id: Bytes32, pub_key: Bytes32) -> TxReceipt:
        return await self._send("setIndexer", endpoint, code_id.raw, pub_key.raw)
