"""The component toolkit: what several component tests share beyond the conftest fixtures.

Holds the chain helpers that make clusters and members through our own adapter (``Chain``, ``Member``;
``NodeFactory``, ``Node``: would-be members, not yet registered), the indexer app id of the in-process
indexer and the JSON reads of its HTTP surface, and the operator CLI's runners (``run_cli`` as a
subprocess, ``usage_error`` in process) with their argument helpers.
Must not: import another test module, start anything it does not stop, or use anything but loopback.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment, deploy_member_app
from devnet.kms import DevnetKms, get_key
from indexer.service import IndexerService
from ops import cli
from sidecar.chain.contracts import ClusterClient, ClusterFactoryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, ed25519_public_key, key_path
from sidecar.core.model import ClusterConfig, MemberKeys, MeshCidr
from sidecar.core.sigchain import SigChainProof, build_proof
from sidecar.http import Runner

REPO = Path(__file__).resolve().parents[2]
CHAIN_ID = 31337  # the component anvil's
COMPOSE_HASH = Bytes32(b"\xc0" * 32)  # the compose hash every test stack allowlists
HOST = "127.0.0.1"
INDEXER_APP = Address.from_hex("0x1de7e40000000000000000000000000000000001")
FUNDING_WEI = 10**18
DEADLINE = 20.0

#: ``serve``: start an aiohttp application on 127.0.0.1 (a free port); the fixture closes it after the test.
Serve = Callable[[web.Application], Awaitable[Runner]]

#: ``make_indexer``: start an in-process indexer with these ``ATTESTMESH_INDEXER_*`` overrides.
Factory = Callable[..., Awaitable[IndexerService]]


@dataclass(frozen=True)
class Member:
    cluster: Address
    member_id: MemberId
    identity: SecretBytes
    block: int
    submitter: TxSubmitter  # sends as the member's signer

    def client(self, conn: ChainConnection) -> ClusterClient:
        """The member's cluster, written to as the member."""
        return ClusterClient(conn, self.cluster, self.submitter)


class Chain:
    """Members, clusters and raw anvil controls, all through our own adapter."""

    def __init__(self, conn: ChainConnection, deployer: TxSubmitter, stack: Deployment, kms: DevnetKms):
        self.conn, self.deployer, self.stack, self.kms = conn, deployer, stack, kms
        self.count = 0

    async def rpc(self, method: str, *params: Any) -> Any:
        return await self.conn.request(method, params)

    async def mine(self, blocks: int) -> None:
        await self.rpc("anvil_mine", hex(blocks))

    async def cluster(self) -> Address:
        config = ClusterConfig(
            owner=self.deployer.address,
            mesh_cidr=MeshCidr.parse("10.77.0.0/24"),
            member_app_factory=self.stack.member_app_factory,
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
        key, chain = get_key(
            self.kms, app_id, key_path(KeyPath.SIGNER, CHAIN_ID, cluster), KeyPath.SIGNER.purpose
        )
        proof = build_proof(app_id, key, chain)
        submitter = TxSubmitter(self.conn, LocalSigner(key), receipt_timeout=20.0, poll_interval=0.05)
        await self.deployer.send(proof.signer, b"", value=FUNDING_WEI)
        identity, _ = get_key(self.kms, app_id, key_path(KeyPath.IDENTITY, CHAIN_ID, cluster), "")
        n = self.count % 250
        keys = MemberKeys(
            seal_pub=Bytes32(bytes([0x5E, n]) * 16),
            wg_pub=Bytes32(bytes([0x36, n]) * 16),
            identity_pub=Bytes32(ed25519_public_key(identity)),
        )
        receipt, member_id = await ClusterClient(self.conn, cluster, submitter).register(
            proof, keys, f"127.0.0.1:{52000 + n}"
        )
        return Member(cluster, member_id, identity, receipt.block_number, submitter)


@dataclass(frozen=True)
class Node:
    """A would-be member: its app contract, derived signer (as a submitter), proof and published keys."""

    name: str
    app_id: Address
    proof: SigChainProof
    submitter: TxSubmitter
    keys: MemberKeys
    endpoint: str

    def client(self, cluster: ClusterClient) -> ClusterClient:
        return cluster.with_submitter(self.submitter)


class NodeFactory:
    """Builds nodes as the sidecar would: member app via the factory, signer key and chain from the KMS."""

    def __init__(
        self, conn: ChainConnection, deployer: TxSubmitter, stack: Deployment, kms: DevnetKms
    ) -> None:
        self.conn = conn
        self.deployer = deployer
        self.stack = stack
        self.kms = kms
        self.count = 0

    async def app(self, name: str, cluster: Address | None = None) -> Address:
        """The member app of ``name`` in ``cluster`` (default: the stack's), from the stack's factory."""
        return await deploy_member_app(
            self.conn, self.deployer, self.stack.member_app_factory, cluster or self.stack.cluster, name
        )

    async def node(
        self,
        name: str,
        *,
        approve: bool = True,
        kms: DevnetKms | None = None,
        keys: MemberKeys | None = None,
        cluster: Address | None = None,
    ) -> Node:
        """A would-be member of ``cluster`` (the stack's by default) with distinct keys unless ``keys``."""
        self.count += 1
        cluster = cluster or self.stack.cluster
        app_id = await self.app(name, cluster)
        if approve:
            await ClusterClient(self.conn, cluster, self.deployer).add_allowed_app_id(app_id)
        path = key_path(KeyPath.SIGNER, CHAIN_ID, cluster)
        key, chain = get_key(kms or self.kms, app_id, path, KeyPath.SIGNER.purpose)
        proof = build_proof(app_id, key, chain)
        submitter = TxSubmitter(self.conn, LocalSigner(key), receipt_timeout=20.0, poll_interval=0.05)
        assert submitter.address == proof.signer
        await self.deployer.send(proof.signer, b"", value=FUNDING_WEI)
        n = self.count
        return Node(
            name=name,
            app_id=app_id,
            proof=proof,
            submitter=submitter,
            keys=keys
            or MemberKeys(
                seal_pub=Bytes32(bytes([0x5E, n]) * 16),
                wg_pub=Bytes32(bytes([0x36, n]) * 16),
                identity_pub=Bytes32(bytes([0x1D, n]) * 16),
            ),
            endpoint=f"127.0.0.1:{51820 + n}",
        )


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


async def commit_csk(
    conn: ChainConnection, kms: DevnetKms, cluster: ClusterClient, commitment: Bytes32
) -> None:
    """The originator (member 0, whose signer key the devnet KMS re-derives) commits the epoch-1 CSK."""
    originator = (await cluster.members())[0]
    key, _ = get_key(kms, originator.app_id, key_path(KeyPath.SIGNER, CHAIN_ID, cluster.address), "ethereum")
    submitter = TxSubmitter(conn, LocalSigner(key), receipt_timeout=20.0, poll_interval=0.05)
    await cluster.with_submitter(submitter).set_csk_commitment(1, commitment)


# --- the operator CLI ---------------------------------------------------------------------------------


async def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTMESH_")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ops", *args],
        env={**clean, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def closed_port() -> int:
    """A loopback port that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def usage_error(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> str:
    """Run the CLI's entry point in process on malformed arguments; return its message (exit status 2)."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as env, pytest.raises(SystemExit) as exited:
        for name in [n for n in os.environ if n.startswith("ATTESTMESH_")]:
            env.delenv(name)
        cli.main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and "secret" not in err
    return err


def bad_checksum(address: str) -> str:
    """``address`` (EIP-55) with the case of one letter flipped: a typo the checksum catches."""
    i = next(i for i, c in enumerate(address) if i > 1 and c.isalpha())
    return address[:i] + address[i].swapcase() + address[i + 1 :]


def chain_args(anvil: AnvilProcess, stack: Deployment) -> tuple[str, ...]:
    return ("--rpc-url", anvil.rpc_url, "--chain-id", str(CHAIN_ID), "--cluster", str(stack.cluster))
