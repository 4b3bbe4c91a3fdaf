"""Value objects for what the chain says: members, boot policy answers, the indexer record, receipts.

Owns: the typed, immutable shapes that the chain adapter returns and accepts (``MemberRecord``,
``MemberKeys``, ``MeshCidr``, ``BootInfo``, ``BootVerdict``, ``IndexerRecord``, ``ClusterConfig``,
``SyncState``, ``TxReceipt``, ``ChainLog``) and ``member_id_for``, the pure mirror of the contract's
``computeMemberId``.

Must not: do I/O, import a chain library or any adapter, or hold private key material. Values are built
from plain Python types (``bytes``, ``int``, ``str``, ``ipaddress``); conversion from JSON-RPC and ABI
values happens in ``sidecar.chain``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from sidecar.core.hashing import keccak256
from sidecar.core.ids import Address, Bytes32, MemberId

MESH_PREFIX_MIN = 8
MESH_PREFIX_MAX = 30


def member_id_for(cluster: Address, app_id: Address) -> MemberId:
    """Compute ``keccak256(abi.encode(cluster, appId))``, the member id the cluster contract assigns."""
    return MemberId(keccak256(bytes(12) + cluster.raw + bytes(12) + app_id.raw))


@dataclass(frozen=True, slots=True)
class MemberKeys:
    """The public keys a member publishes at registration (``ICluster.MemberKeys``)."""

    seal_pub: Bytes32
    wg_pub: Bytes32
    identity_pub: Bytes32


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One registered member as the cluster contract stores it (``ICluster.Member``)."""

    member_id: MemberId
    app_id: Address
    signer: Address
    seal_pub: Bytes32
    wg_pub: Bytes32
    identity_pub: Bytes32
    endpoint: str
    mesh_ip: IPv4Address
    registered_at: int

    @property
    def keys(self) -> MemberKeys:
        return MemberKeys(seal_pub=self.seal_pub, wg_pub=self.wg_pub, identity_pub=self.identity_pub)


@dataclass(frozen=True, slots=True)
class MeshCidr:
    """The cluster's mesh network; the contract allocates member IPs from its hosts."""

    network: IPv4Network

    def __post_init__(self) -> None:
        if not MESH_PREFIX_MIN <= self.network.prefixlen <= MESH_PREFIX_MAX:
            raise ValueError(
                f"mesh prefix length must be {MESH_PREFIX_MIN}..{MESH_PREFIX_MAX}, "
                f"got {self.network.prefixlen}"
            )

    @classmethod
    def parse(cls, text: str) -> MeshCidr:
        """Parse ``"a.b.c.d/n"``; host bits must be zero."""
        return cls(IPv4Network(text, strict=True))

    @classmethod
    def from_chain(cls, base: int, prefix_length: int) -> MeshCidr:
        """Build from the contract's ``(uint32 base, uint8 prefixLength)``."""
        return cls(IPv4Network((base, prefix_length), strict=True))

    @property
    def base(self) -> int:
        """The network address as the contract's uint32."""
        return int(self.network.network_address)

    @property
    def prefix_length(self) -> int:
        return self.network.prefixlen

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4Address) and ip in self.network

    def __str__(self) -> str:
        return str(self.network)


@dataclass(frozen=True, slots=True)
class BootInfo:
    """What the dstack KMS knows about a booting CVM (``AppBootInfo``, same field order)."""

    app_id: Address
    compose_hash: Bytes32
    instance_id: Address
    device_id: Bytes32
    mr_aggregated: Bytes32
    mr_system: Bytes32
    os_image_hash: Bytes32
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BootVerdict:
    """The boot policy's answer: ``reason`` is the contract's human string (empty when allowed)."""

    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class SyncState:
    """``Cluster.syncState()``: what tells a node, in one call, whether anything it holds changed.

    ``membership_version`` moves with every change to the member records (register, setEndpoint,
    removeMember), ``policy_version`` with every change to the boot policy, app ids, KMS roots or
    rotate-on-remove; ``csk_commitment`` is the current epoch's (None until its originator commits it)."""

    membership_version: int
    policy_version: int
    csk_epoch: int
    csk_commitment: Bytes32 | None
    member_count: int


@dataclass(frozen=True, slots=True)
class IndexerRecord:
    """``IndexerRegistry.current()``: the shared indexer's endpoint, code id and Ed25519 public key."""

    endpoint: str
    code_id: Bytes32
    pub_key: Bytes32
    updated_at: int

    @property
    def registered(self) -> bool:
        return self.endpoint != ""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A new cluster's initial configuration (``IClusterFactory.ClusterConfig``). ``member_app_factory`` is
    the ClusterMemberAppFactory whose apps for this cluster may be approved (fixed for the cluster's life).
    Nodes' app ids are not in it: a member app's address depends on its cluster's, so they are approved
    (``addAllowedAppId``) once the cluster exists."""

    owner: Address
    mesh_cidr: MeshCidr
    member_app_factory: Address
    kms_roots: tuple[Address, ...] = ()
    compose_hashes: tuple[Bytes32, ...] = ()
    device_ids: tuple[Bytes32, ...] = ()
    allow_any_device: bool = False
    require_tcb_up_to_date: bool = False


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """What a reorg check needs of a block: its number, hash, parent hash and timestamp."""

    number: int
    hash: Bytes32
    parent_hash: Bytes32
    timestamp: int


@dataclass(frozen=True, slots=True)
class ChainLog:
    """One event log as the chain returned it (topics and data still ABI-encoded)."""

    address: Address
    topics: tuple[Bytes32, ...]
    data: bytes
    block_number: int
    block_hash: Bytes32
    tx_hash: Bytes32
    log_index: int


@dataclass(frozen=True, slots=True)
class TxReceipt:
    """A mined transaction: what callers need to report, plus its logs for event decoding."""

    tx_hash: Bytes32
    block_number: int
    gas_used: int
    succeeded: bool
    contract_address: Address | None = None
    logs: tuple[ChainLog, ...] = field(default=(), repr=False)
