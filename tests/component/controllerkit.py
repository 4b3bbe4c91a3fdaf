"""The controller tests' lab, shared by the component modules that drive a real node: one stack deployed on
the module's anvil, nodes under test built with the real adapters (the guest-agent simulator through the
official dstack-sdk, web3 to anvil), peers as small honest CSK responders, and the process helpers.

Owns the fixtures ``lab`` and ``short_root``, ``Lab``, ``NodeUnderTest``, ``Peer``, ``SealingPeer`` and the
small helpers. Only 127.0.0.0/8 and unix sockets are used; everything started here is stopped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from devnet.anvil import AnvilProcess
from devnet.compose import NodeAnchors, node_compose_bytes
from devnet.deployment import Deployment, deploy_member_app, deploy_stack
from devnet.kms import DevnetKms, get_key
from devnet.simulator import SimulatorConfig, serve_unix
from sidecar.chain.artifacts import load_artifact
from sidecar.chain.contracts import ClusterClient, MemberAppFactoryClient
from sidecar.chain.rpc import ChainConnection, checksum
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core import csk as cskcore
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, KeyScope, ed25519_public_key, secp256k1_address, x25519_public_key
from sidecar.core.liveness import Liveness
from sidecar.core.memberproof import (
    MemberProof,
    ProofAnchors,
    ProofRejected,
    make_member_proof,
    member_app_code_hash,
    parse_proof,
    verify_member_proof,
)
from sidecar.core.model import MemberKeys, MemberRecord
from sidecar.core.phases import Facts
from sidecar.core.sigchain import build_proof
from sidecar.core.snapshot import Snapshot
from sidecar.core.status import NodeStatus
from sidecar.drivers.csk import CskHeld
from sidecar.drivers.identity import NodeIdentity
from sidecar.drivers.node import Node, build_node
from sidecar.dstack.agent import GuestAgent, GuestAgentUnavailable
from sidecar.http.peerapi import CskAnswer, peer_api
from sidecar.http.server import Runner, start_tcp
from sidecar.observability import Metrics
from sidecar.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
CHAIN_ID = 31337  # the conftest's anvil
MESH_CIDR = "127.0.0.0/8"
COMPOSE = b'{"name": "attestmesh-node", "runner": "docker-compose"}\n'
COMPOSE_HASH = Bytes32(hashlib.sha256(COMPOSE).digest())
OTHER_KMS_SEED = b"a second devnet KMS seed -- PUBLIC, controller tests only"
DEVNET_ROOT = DevnetKms().root_address
FACTORY = Address(b"\xfa" * 20)  # the member-app factory the subprocess tests' composes measure
FUNDING_WEI = 10**18
READY_DEADLINE = 15.0
SUBPROCESS_START_DEADLINE = 30.0
SHUTDOWN_TIMEOUT = 3.0

HEALTHZ_KEYS = {
    "phase", "healthy", "reason", "node", "peers", "csk", "events", "chain", "membership_digest", "version",
    "build",
}  # fmt: skip
NODE_KEYS = {"app_id", "instance_id", "compose_hash", "member_id", "mesh_ip", "signer"}


# --- small helpers --------------------------------------------------------------------------------------


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"metric {name}{labels} is not exported"
    return value


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry.get("event") == name]


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")


def free_tcp_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for a subprocess that must bind it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections: bound (so nobody else takes it) but never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


def measured_compose(cluster: Address) -> bytes:
    """A node app-compose.json measuring ``cluster`` (and ``node_env``'s other anchors) as literals."""
    return node_compose_bytes(NodeAnchors(CHAIN_ID, cluster, FACTORY, (DEVNET_ROOT,)))


def write_node_config(directory: Path, app_id: Address, instance: int, compose: bytes = COMPOSE) -> Path:
    """A simulator config for ``app_id`` (compose file next to it) and return the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app-compose.json").write_bytes(compose)
    config = directory / "node.json"
    config.write_text(
        json.dumps(
            {
                "app_id": "0x" + app_id.hex,
                "instance_id": f"{instance:040x}",
                "app_compose_path": "app-compose.json",
            }
        )
    )
    return config


def node_env(*, rpc_url: str, cluster: Address, root: Path, **overrides: str) -> dict[str, str]:
    """A complete, valid sidecar environment whose files all live under ``root``."""
    env = {
        "ATTESTMESH_RPC_URL": rpc_url,
        "ATTESTMESH_RPC_ALLOW_HTTP": "true",
        "ATTESTMESH_CONFIRMATIONS": "0",  # these tests are not about confirmations (see test_quorum.py)
        "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
        "ATTESTMESH_CLUSTER": str(cluster),
        "ATTESTMESH_MEMBER_APP_FACTORY": str(FACTORY),
        "ATTESTMESH_KMS_ROOTS": str(DEVNET_ROOT),
        "ATTESTMESH_ENDPOINT": "127.0.0.1:51820",
        "ATTESTMESH_WG_BACKEND": "userspace",
        "ATTESTMESH_WG_UAPI_DIR": str(root / "wg"),  # empty: no device, the mesh step fails cleanly
        "ATTESTMESH_APP_SOCKET": str(root / "app.sock"),
        "ATTESTMESH_STATE_DIR": str(root / "state"),
        "ATTESTMESH_HEALTH_ADDR": "127.0.0.1:9090",
        "ATTESTMESH_RPC_TIMEOUT": "2",
        "ATTESTMESH_RECEIPT_TIMEOUT": "20",
        "ATTESTMESH_CSK_TIMEOUT": "2",
    }
    env.update({f"ATTESTMESH_{k}": v for k, v in overrides.items()})
    return env


async def wait_for_agent(agent: GuestAgent, proc: asyncio.subprocess.Process | None, log: Path) -> None:
    deadline = time.monotonic() + READY_DEADLINE
    while True:
        if proc is not None and proc.returncode is not None:
            pytest.fail(f"simulator exited with {proc.returncode}: {read_log(log)}")
        with contextlib.suppress(GuestAgentUnavailable):
            await agent.version()
            return
        if time.monotonic() > deadline:
            pytest.fail(f"simulator not ready after {READY_DEADLINE}s")
        await asyncio.sleep(0.05)


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM the process we started, then SIGKILL it if it does not exit in time."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=grace)
    except TimeoutError:
        proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def subprocess_simulator(config: Path, sock: Path, seed: bytes | None) -> AsyncIterator[Path]:
    """``python -m devnet.simulator`` serving ``config`` on ``sock``, its KMS seed from the environment."""
    log = sock.parent / "simulator.log"
    env = {k: v for k, v in os.environ.items() if k != "ATTESTMESH_DEVNET_KMS_SEED"}
    if seed is not None:
        env["ATTESTMESH_DEVNET_KMS_SEED"] = seed.hex()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "devnet.simulator", "--config", str(config), "--socket", str(sock),
            cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        probe = GuestAgent(str(sock))
        try:
            await wait_for_agent(probe, proc, log)
        finally:
            await probe.close()
        yield sock
    finally:
        await stop_process(proc)


# --- the lab: one stack on the module's anvil, nodes, controllers -----------------------------------------


@dataclass
class Peer:
    """A member registered directly through the chain adapter (not run by a controller)."""

    app_id: Address
    member_id: MemberId
    client: ClusterClient  # writes as the member's derived signer
    identity_key: SecretBytes = field(repr=False)
    seal_key: SecretBytes = field(repr=False)
    keys: MemberKeys
    proof: MemberProof  # its member proof, as its sidecar would make it


class NodeUnderTest:
    """One node built by the daemon's ``build_node``, with the reads these tests make of it."""

    def __init__(self, settings: Settings, agent: GuestAgent, metrics: Metrics, liveness: Liveness) -> None:
        self.settings = settings
        self.node: Node = build_node(settings, agent=agent, metrics=metrics, liveness=liveness)
        self.controller = self.node.controller
        self.metrics = metrics
        self.liveness = liveness

    async def pass_once(self) -> None:
        await self.controller.pass_once()

    async def close(self) -> None:
        await self.node.close()

    @property
    def status(self) -> NodeStatus:
        return self.controller.status

    @property
    def facts(self) -> Facts:
        return self.controller.facts

    @property
    def identity(self) -> NodeIdentity | None:
        return self.node.state.identity

    @property
    def snapshot(self) -> Snapshot | None:
        return self.node.state.snapshot

    @property
    def member_id(self) -> MemberId | None:
        return self.node.state.member_id

    @property
    def csk(self) -> CskHeld:
        return self.node.csk.held

    def clock(self) -> float:
        return self.controller.clock.monotonic()

    def csk_value(self) -> SecretBytes | None:
        return self.controller.csk_value()

    async def pull_csk(self, snapshot: Snapshot, mine: MemberRecord, commitment: Bytes32) -> None:
        assert self.identity is not None
        await self.node.csk.pull(self.identity, snapshot, mine, commitment)

    async def acquire_csk(self, snapshot: Snapshot, mine: MemberRecord) -> None:
        assert self.identity is not None
        await self.node.csk.acquire(self.identity, snapshot, mine)

    def hold(self, key: SecretBytes, commitment: Bytes32, source: str) -> None:
        assert self.identity is not None and self.member_id is not None
        self.node.csk.hold(self.identity, self.member_id, key, commitment, source, epoch=1)


class Lab:
    """A freshly deployed cluster (mesh 127.0.0.0/8) and helpers to add members, nodes and controllers."""

    def __init__(
        self,
        anvil: AnvilProcess,
        conn: ChainConnection,
        deployer: TxSubmitter,
        stack: Deployment,
        kms: DevnetKms,
        root: Path,
        exits: contextlib.AsyncExitStack,
    ) -> None:
        self.anvil = anvil
        self.conn = conn
        self.deployer = deployer
        self.stack = stack
        self.kms = kms
        self.root = root
        self.exits = exits
        self.owner = ClusterClient(conn, stack.cluster, deployer)
        self.scope = KeyScope(CHAIN_ID, stack.cluster)
        self._count = 0

    async def app(self, name: str, *, approve: bool = True) -> Address:
        app_id = await deploy_member_app(
            self.conn, self.deployer, self.stack.member_app_factory, self.stack.cluster, name
        )
        if approve:
            await self.owner.add_allowed_app_id(app_id)
        return app_id

    def signer_of(self, app_id: Address, kms: DevnetKms | None = None) -> Address:
        key, _ = get_key(kms or self.kms, app_id, self.scope.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
        return secp256k1_address(key)

    async def set_balance(self, address: Address, wei: int) -> None:
        await self.conn.w3.provider.make_request("anvil_setBalance", [address.checksum, hex(wei)])

    async def nonce(self, address: Address) -> int:
        return int(await self.conn.w3.eth.get_transaction_count(checksum(address)))

    async def member(self, name: str) -> Peer:
        """Deploy, approve, fund and register a member with real Ed25519/X25519 keys we hold."""
        app_id = await self.app(name)
        key, chain = get_key(self.kms, app_id, self.scope.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
        proof = build_proof(app_id, key, chain)
        submitter = TxSubmitter(self.conn, LocalSigner(key), receipt_timeout=20.0, poll_interval=0.05)
        await self.set_balance(proof.signer, FUNDING_WEI)
        identity_key, seal_key = SecretBytes(os.urandom(32)), SecretBytes(os.urandom(32))
        keys = MemberKeys(
            seal_pub=Bytes32(x25519_public_key(seal_key)),
            wg_pub=Bytes32(os.urandom(32)),
            identity_pub=Bytes32(ed25519_public_key(identity_key)),
        )
        client = self.owner.with_submitter(submitter)
        _, member_id = await client.register(proof, keys, "127.0.0.1:51820")
        salt = await self.factory.salt_of(app_id)
        member_proof = make_member_proof(
            proof, key, salt=salt, chain_id=CHAIN_ID, cluster=self.stack.cluster,
            identity_pub=keys.identity_pub, seal_pub=keys.seal_pub,
        )  # fmt: skip
        return Peer(app_id, member_id, client, identity_key, seal_key, keys, member_proof)

    @property
    def factory(self) -> MemberAppFactoryClient:
        return MemberAppFactoryClient(self.conn, self.stack.member_app_factory, self.deployer)

    @property
    def anchors(self) -> ProofAnchors:
        """What this cluster's nodes check member proofs against (measured: never read from the chain)."""
        code_hash = member_app_code_hash(load_artifact("ClusterMemberApp").bytecode, self.stack.cluster)
        roots = frozenset({self.kms.root_address})
        return ProofAnchors(CHAIN_ID, self.stack.cluster, self.stack.member_app_factory, code_hash, roots)

    def node_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def simulator(self, name: str, app_id: Address, kms: DevnetKms | None = None) -> Path:
        """An in-process simulator for ``app_id``; returns its socket path."""
        self._count += 1
        directory = self.node_dir(name)
        config = SimulatorConfig.load(write_node_config(directory, app_id, self._count))
        running = await serve_unix(directory / "agent.sock", config, kms=kms or self.kms)
        self.exits.push_async_callback(running.close)
        return running.socket_path

    def settings(self, name: str, **overrides: str) -> Settings:
        anchors = {
            "MEMBER_APP_FACTORY": str(self.stack.member_app_factory),
            "KMS_ROOTS": str(self.kms.root_address),
        }
        env = node_env(
            rpc_url=self.anvil.rpc_url, cluster=self.stack.cluster, root=self.node_dir(name),
            **{**anchors, **overrides},
        )  # fmt: skip
        return load_settings({k: v for k, v in env.items() if v})  # an override "" leaves a variable unset

    async def controller(
        self,
        name: str,
        app_id: Address,
        *,
        agent: GuestAgent | None = None,
        kms: DevnetKms | None = None,
        **overrides: str,
    ) -> NodeUnderTest:
        """A controller for node ``name`` (an in-process simulator unless ``agent`` is given)."""
        if agent is None:
            agent = GuestAgent(str(await self.simulator(name, app_id, kms)))
        self.exits.push_async_callback(agent.close)
        controller = NodeUnderTest(
            self.settings(name, **overrides), agent, Metrics(CollectorRegistry()), Liveness(window=60.0)
        )
        self.exits.push_async_callback(controller.close)
        return controller


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A short directory under /tmp: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="am-ctl-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def lab(
    anvil: AnvilProcess, conn: ChainConnection, deployer: TxSubmitter, kms: DevnetKms, short_root: Path
) -> AsyncIterator[Lab]:
    stack = await deploy_stack(
        conn,
        deployer,
        kms_roots=(kms.root_address,),
        compose_hashes=(COMPOSE_HASH,),
        mesh_cidr=MESH_CIDR,
        salt=Bytes32(os.urandom(32)),
    )
    async with contextlib.AsyncExitStack() as exits:
        yield Lab(anvil, conn, deployer, stack, kms, short_root, exits)


class SealingPeer:
    """A ``CskResponder`` as an honest peer would be, except for the key it seals and the proof it shows: it
    checks the request (well-formed, addressed to it, from a member, the requester's member proof, the
    signature against the proven identity key) and then seals ``key`` to the proven seal key, answering
    with ``proof`` (its own unless given). Given a wrong key, it is a peer serving a wrong CSK; given a
    proof that is not its own, a peer that cannot prove itself."""

    def __init__(
        self,
        peer: Peer,
        key: SecretBytes,
        directory: Mapping[MemberId, MemberRecord],
        anchors: ProofAnchors,
        proof: MemberProof | None = None,
    ) -> None:
        self.peer = peer
        self.key = key
        self.directory = directory  # filled once the requester is on chain
        self.anchors = anchors
        self.proof = proof or peer.proof
        self.served = 0

    def respond(self, body: object, remote_ip: IPv4Address) -> CskAnswer:
        try:
            signed = cskcore.parse_request(body)
        except cskcore.CskWireError as exc:
            return CskAnswer(400, {"error": str(exc)})
        request = signed.request
        if request.responder != self.peer.member_id or request.requester not in self.directory:
            return CskAnswer(403, {"error": "not for me or not a member"})
        try:
            proven = verify_member_proof(parse_proof(signed.proof), self.anchors)
        except ProofRejected as exc:
            return CskAnswer(403, {"error": str(exc)})
        if proven.member_id != request.requester:
            return CskAnswer(403, {"error": "another member's proof"})
        if not cskcore.verify_request(request, signed.signature, proven.identity_pub):
            return CskAnswer(403, {"error": "bad signature"})
        self.served += 1
        sealed = cskcore.seal(self.key, proven.seal_pub)
        return CskAnswer(200, cskcore.sign_response(request, sealed, self.peer.identity_key, self.proof))


async def serve_on_same_port(
    apps: list[tuple[str, SealingPeer]], metrics: Metrics, exits: contextlib.AsyncExitStack
) -> int:
    """Bind one peer API per (mesh IP, responder) on a single port free on all of them; return the port."""
    for _ in range(10):
        runners: list[Runner] = []
        try:
            first_ip, first = apps[0]
            runners.append(await start_tcp(peer_api(first, metrics), first_ip, 0, name="peer"))
            port = runners[0].port
            for ip, responder in apps[1:]:
                runners.append(await start_tcp(peer_api(responder, metrics), ip, port, name="peer"))
        except OSError:
            for runner in runners:
                await runner.close()
            continue
        for runner in runners:
            exits.push_async_callback(runner.close)
        return port
    pytest.fail("no port free on every peer mesh IP")
