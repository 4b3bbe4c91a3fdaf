"""One consistent read, at one block, of what the chain says about a cluster.

Owns ``read_chain_status`` (members with mesh IPs and endpoints, CSK commitment, owner, mesh CIDR,
``IndexerRegistry.current()`` and whether given compose hashes are allowlisted) and its JSON form.
Must not: write to the chain or hold a key, retry, print (the CLI renders these values), or talk to
anything but the connection it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ops.owner import require_contract
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import IndexerRecord, MemberRecord, MeshCidr


@dataclass(frozen=True, slots=True)
class ComposeHashCheck:
    """Whether one compose hash is on the cluster's allowlist."""

    compose_hash: Bytes32
    allowlisted: bool


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """What the chain says about one cluster, every value read at block ``block``."""

    chain_id: int
    block: int
    block_timestamp: int
    cluster: Address
    owner: Address
    mesh_cidr: MeshCidr
    member_count: int
    members: tuple[MemberRecord, ...]  # registration order; index 0 is the CSK originator
    originator: MemberId | None
    csk_commitment: Bytes32 | None  # the current epoch's
    registry: Address | None
    indexer: IndexerRecord | None  # None when no registry was given
    compose_hashes: tuple[ComposeHashCheck, ...]
    csk_epoch: int = 1
    rotate_csk_on_remove: bool = False

    def to_json(self) -> dict[str, object]:
        """Full values, machine-readable (addresses EIP-55, 32-byte values ``0x`` hex, times unix seconds)."""
        indexer: dict[str, object] | None = None
        if self.registry is not None and self.indexer is not None:
            i = self.indexer
            indexer = {
                "address": str(self.registry),
                "registered": i.registered,
                "endpoint": i.endpoint or None,
                "code_id": str(i.code_id) if i.registered else None,
                "pub_key": str(i.pub_key) if i.registered else None,
                "updated_at": i.updated_at if i.registered else None,
            }
        return {
            "chain_id": self.chain_id,
            "block": self.block,
            "block_timestamp": self.block_timestamp,
            "cluster": {
                "address": str(self.cluster),
                "owner": str(self.owner),
                "mesh_cidr": str(self.mesh_cidr),
                "member_count": self.member_count,
                "originator": None if self.originator is None else str(self.originator),
                "csk_epoch": self.csk_epoch,
                "csk_commitment": None if self.csk_commitment is None else str(self.csk_commitment),
                "rotate_csk_on_remove": self.rotate_csk_on_remove,
            },
            "members": [member_json(m) for m in self.members],
            "indexer_registry": indexer,
            "compose_hashes": [
                {"compose_hash": str(c.compose_hash), "allowlisted": c.allowlisted}
                for c in self.compose_hashes
            ],
        }


def member_json(member: MemberRecord) -> dict[str, object]:
    return {
        "member_id": str(member.member_id),
        "app_id": str(member.app_id),
        "signer": str(member.signer),
        "mesh_ip": str(member.mesh_ip),
        "endpoint": member.endpoint,
        "wg_pub": str(member.wg_pub),
        "seal_pub": str(member.seal_pub),
        "identity_pub": str(member.identity_pub),
        "registered_at": member.registered_at,
    }


def utc_time(timestamp: int) -> str:
    """A block timestamp as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def read_chain_status(
    conn: ChainConnection,
    cluster: Address,
    *,
    registry: Address | None = None,
    compose_hashes: Sequence[Bytes32] = (),
) -> ChainStatus:
    """Read the cluster (and the registry, when given) at the current head, all at that one block.

    Raises ``OperatorError`` when an address holds no contract, ``ChainError`` when a read fails.
    """
    head = await conn.block_header("latest")
    await require_contract(conn, cluster, "cluster")
    if registry is not None:
        await require_contract(conn, registry, "indexer registry")
    at = head.number
    client = ClusterClient(conn, cluster)
    members = await client.members(block=at)
    checks = [
        ComposeHashCheck(h, await client.allowed_compose_hash(h, block=at))
        for h in dict.fromkeys(compose_hashes)  # each once, in the order given
    ]
    indexer = await IndexerRegistryClient(conn, registry).current(block=at) if registry is not None else None
    return ChainStatus(
        chain_id=await conn.chain_id(),
        block=at,
        block_timestamp=head.timestamp,
        cluster=cluster,
        owner=await client.owner(block=at),
        mesh_cidr=await client.mesh_cidr(block=at),
        member_count=await client.member_count(block=at),
        members=tuple(members),
        originator=await client.originator(block=at),
        csk_commitment=await client.csk_commitment(block=at),
        registry=registry,
        indexer=indexer,
        compose_hashes=tuple(checks),
        csk_epoch=await client.csk_epoch(block=at),
        rotate_csk_on_remove=await client.rotate_csk_on_remove(block=at),
    )
