"""The component toolkit: what several component tests share beyond the conftest fixtures.

Holds the chain helper that makes clusters and registered members through our own adapter (``Chain``,
``Member``), the indexer app id of the in-process indexer and the JSON reads of its HTTP surface. Must not
import another test module, start anything it does not stop, or use anything but loopback.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from devnet.deployment import Deployment, deploy_member_app
from devnet.kms import DevnetKms, get_key
from indexer.service import IndexerService
from sidecar.chain.contracts import ClusterClient, ClusterFactoryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, ed25519_public_key
from sidecar.core.model import ClusterConfig, MemberKeys, MeshCidr
from sidecar.core.sigchain import build_proof

INDEXER_APP = Address.from_hex("0x1de7e40000000000000000000000000000000001")
FUNDING_WEI = 10**18
DEADLINE = 20.0

#: ``make_indexer``: start an in-process indexer with these ``ATTESTMESH_INDEXER_*`` overrides.
Factory = Callable[..., Awaitable[IndexerService]]


@dataclass(frozen=True)
class Member:
    cluster: Address
    member_id: MemberId
    identity: SecretBytes
    block: int


class Chain:
    """Members, clusters and raw anvil controls, all through our own adapter."""

    def __init__(self, conn: ChainConnection, deployer: TxSubmitter, stack: Deployment, kms: DevnetKms):
        self.conn, self.deployer, self.stack, self.kms = conn, deployer, stack, kms
        self.count = 0

    async def rpc(self, method: str, *params: Any) -> Any:
        response = await self.conn.w3.provider.make_request(method, list(params))
        assert "error" not in response, response
        return response["result"]

    async def mine(self, blocks: int) -> None:
        await self.rpc("anvil_mine", hex(blocks))

    async def cluster(self) -> Address:
        config = ClusterConfig(
            owner=self.deployer.address,
            mesh_cidr=MeshCidr.parse("10.77.0.0/24"),
            kms_roots=(self.kms.root_address,),
            allow_any_device=True,
        )
        factory = ClusterFactoryClient(self.conn, self.stack.cluster_factory, self.deployer)
        address, _ = await factory.deploy_cluster(config, Bytes32(os.urandom(32)))
        return address

    async def member(self, cluster: Address | None = None) -> Member:
        cluster = cluster or self.stack.cluster
        self.count += 1
        name = f"node-{self.count}-{os.urandom(4).hex()}"
        app_id = await deploy_member_app(
            self.conn, self.deployer, self.stack.member_app_factory, cluster, name
        )
        await ClusterClient(self.conn, cluster, self.deployer).add_allowed_app_id(app_id)
        key, chain = get_key(self.kms, app_id, KeyPath.SIGNER.path, KeyPath.SIGNER.purpose)
        proof = build_proof(app_id, key, chain)
        submitter = TxSubmitter(self.conn, LocalSigner(key), receipt_timeout=20.0, poll_interval=0.05)
        await self.deployer.send(proof.signer, b"", value=FUNDING_WEI)
        identity, _ = get_key(self.kms, app_id, KeyPath.IDENTITY.path, KeyPath.IDENTITY.purpose)
        n = self.count % 250
        keys = MemberKeys(
            seal_pub=Bytes32(bytes([0x5E, n]) * 16),
            wg_pub=Bytes32(bytes([0x36, n]) * 16),
            identity_pub=Bytes32(ed25519_public_key(identity)),
        )
        receipt, member_id = await ClusterClient(self.conn, cluster, submitter).register(
            proof, keys, f"127.0.0.1:{52000 + n}"
        )
        return Member(cluster, member_id, identity, receipt.block_number)


async def get_json(http: aiohttp.ClientSession, service: IndexerService, path: str) -> tuple[int, Any]:
    async with http.get(f"http://127.0.0.1:{service.port}{path}") as response:
        return response.status, await response.json()


async def wait_healthy(http: aiohttp.ClientSession, service: IndexerService) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        status, body = await get_json(http, service, "/healthz")
        if status == 200:
            return dict(body)
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
