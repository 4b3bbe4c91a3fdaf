"""Deploying the AttestMesh contract stack on a devnet chain.

Owns: ``deploy_stack`` (ClusterFactory, IndexerRegistry and ClusterMemberAppFactory from the committed
artifacts, then one Cluster through ``ClusterFactory.deployCluster``, owned by the submitter's account),
``Deployment`` (the resulting addresses and the factory's block) and ``deploy_member_app``.

Must not: sign or send on its own (everything goes through the given ``TxSubmitter``), or be imported by the
sidecar. Deploying twice deploys twice: idempotence is the caller's (the devnet state file's) business.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils.crypto import keccak

from sidecar.chain.contracts import ClusterFactoryClient, MemberAppFactoryClient
from sidecar.chain.deploy import deploy_contract
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import ClusterConfig, MeshCidr

DEFAULT_MESH_CIDR = "10.13.0.0/16"
DEFAULT_CLUSTER_SALT = Bytes32(keccak(b"attestmesh/devnet/cluster/v1"))


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the stack lives on chain."""

    cluster: Address
    indexer_registry: Address
    cluster_factory: Address
    member_app_factory: Address
    factory_block: int


async def deploy_stack(
    conn: ChainConnection,
    submitter: TxSubmitter,
    *,
    kms_roots: Iterable[Address],
    compose_hashes: Iterable[Bytes32],
    device_ids: Iterable[Bytes32] = (),
    allow_any_device: bool = True,
    require_tcb_up_to_date: bool = False,
    mesh_cidr: str | MeshCidr = DEFAULT_MESH_CIDR,
    salt: Bytes32 = DEFAULT_CLUSTER_SALT,
) -> Deployment:
    """Deploy the factories, the indexer registry and one cluster owned by ``submitter``'s account (its
    member apps are the member-app factory's: approve each with ``deploy_member_app`` first)."""
    owner = submitter.address
    cluster_factory, factory_receipt = await deploy_contract(conn, submitter, "ClusterFactory")
    indexer_registry, _ = await deploy_contract(conn, submitter, "IndexerRegistry", owner.checksum)
    member_app_factory, _ = await deploy_contract(conn, submitter, "ClusterMemberAppFactory")
    config = ClusterConfig(
        owner=owner,
        mesh_cidr=mesh_cidr if isinstance(mesh_cidr, MeshCidr) else MeshCidr.parse(mesh_cidr),
        member_app_factory=member_app_factory,
        kms_roots=tuple(kms_roots),
        compose_hashes=tuple(compose_hashes),
        device_ids=tuple(device_ids),
        allow_any_device=allow_any_device,
        require_tcb_up_to_date=require_tcb_up_to_date,
    )
    cluster, _ = await ClusterFactoryClient(conn, cluster_factory, submitter).deploy_cluster(config, salt)
    return Deployment(
        cluster=cluster,
        indexer_registry=indexer_registry,
        cluster_factory=cluster_factory,
        member_app_factory=member_app_factory,
        factory_block=factory_receipt.block_number,
    )


async def deploy_member_app(
    conn: ChainConnection, submitter: TxSubmitter, factory: Address, cluster: Address, name: str
) -> Address:
    """Deploy (or find) the member app of node ``name`` in ``cluster``; its address is the node's app id."""
    return await MemberAppFactoryClient(conn, factory, submitter).deploy(cluster, name)
