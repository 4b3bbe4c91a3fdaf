"""Small honest fakes for a whole reconcile pass without anvil or WireGuard (unit-tier toolkit).

Each fake implements the Protocol the steps depend on: ``KeySource`` (the guest agent, keys issued by the
pure devnet KMS so the signature chain is real), ``ClusterChain`` (members, verdict, commitment in memory;
a registration lands in the next block), ``WgDevice`` (peers in a dict), ``CskFetcher`` (peers that check
the request's member proof and seal the key of the epoch it names to the requester's proven seal key,
answering with their own proof) and ``Clock`` (set by hand). Every app id is a real CREATE2 member app
address of ``FACTORY`` and ``CLUSTER`` (with the compiled ``ClusterMemberApp``), so member proofs verify as
on a real cluster.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from prometheus_client import CollectorRegistry

from devnet.kms import DevnetKms, get_key
from sidecar.chain.errors import ChainError
from sidecar.core import csk as cskcore
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import x25519_public_key
from sidecar.core.liveness import Liveness
from sidecar.core.memberproof import MemberProof, ProofRejected, parse_proof, verify_member_proof
from sidecar.core.model import BootVerdict, MemberRecord, MeshCidr, member_id_for
from sidecar.core.peerplan import ActualPeer, PeerPlan, WgKey
from sidecar.core.quorum import RpcView
from sidecar.core.readpin import Position
from sidecar.core.snapshot import Snapshot
from sidecar.drivers.chainlink import Registered
from sidecar.drivers.identity import NodeIdentity
from sidecar.drivers.node import Node, build_node
from sidecar.drivers.store import StateStore
from sidecar.dstack.agent import DerivedKey, GuestAgentUnavailable, NodeInfo
from sidecar.http.peerapi import CskFetchError
from sidecar.observability import Metrics
from sidecar.settings import load_settings
from sidecar.wg.device import InterfaceConfig, WgError, checked_plan, raise_problems
from tests.unit.proofkit import (
    ANCHORS,
    CHAIN_ID,
    CLUSTER,
    FACTORY,
    KMS_ROOT,
    derived_member,
    member_app,
    salt_of,
)

APP_ID = member_app("node")
ENDPOINT = "10.88.0.2:51820"
ZERO32 = Bytes32(bytes(32))


@dataclass
class FakeClock:
    now: float = 1000.0
    wall_now: float = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds


class FakeAgent:
    """The guest agent: ``Info`` and GetKey from the pure devnet KMS; ``down`` makes every call fail."""

    def __init__(self, app_id: Address = APP_ID) -> None:
        self.kms = DevnetKms()
        self.app_id = app_id
        self.down = False

    async def info(self) -> NodeInfo:
        if self.down:
            raise GuestAgentUnavailable("guest agent socket refused the connection")
        return NodeInfo(
            app_id=self.app_id,
            instance_id=b"\x01" * 20,
            compose_hash=Bytes32(b"\x02" * 32),
            app_compose="{}",
            app_name="node",
            device_id=ZERO32,
            mr_aggregated=ZERO32,
            os_image_hash=ZERO32,
            key_provider="kms",
            tcb_info={},
        )

    async def get_key(self, path: str, purpose: str = "", algorithm: str = "secp256k1") -> DerivedKey:
        key, chain = get_key(self.kms, self.app_id, path, purpose, algorithm)
        return DerivedKey(key, chain)


def other_member(index: int, mesh: MeshCidr) -> MemberRecord:
    app_id = member_app(f"peer-{index}")
    return MemberRecord(
        member_id=member_id_for(CLUSTER, app_id),
        app_id=app_id,
        signer=Address(os.urandom(20)),
        seal_pub=Bytes32(os.urandom(32)),  # the chain's keys: never what a peer seals to or trusts
        wg_pub=Bytes32(os.urandom(32)),
        identity_pub=Bytes32(os.urandom(32)),
        endpoint=f"10.88.0.{10 + index}:51820",
        mesh_ip=mesh.network.network_address + 10 + index,
        registered_at=index,
    )


@dataclass
class FakeChain:
    """``ClusterChain`` in memory. ``fail`` is raised by every read; ``register_fail`` by registration."""

    members: list[MemberRecord] = field(default_factory=list)
    verdict: BootVerdict = field(default_factory=lambda: BootVerdict(True, ""))
    commitment: Bytes32 | None = None  # the current epoch's
    epoch: int = 1
    committed_epochs: list[int] = field(default_factory=list)
    mesh: MeshCidr = field(default_factory=lambda: MeshCidr.parse("10.77.0.0/24"))
    head: int = 10
    fail: ChainError | None = None
    code: bool = True
    register_fail: ChainError | None = None
    endpoint_fail: ChainError | None = None
    registrations: int = 0
    commits: int = 0
    endpoint_updates: int = 0
    held: str | None = None
    reads_at: list[int | None] = field(default_factory=list)  # each read's pinned block (None: a head read)
    refuse_pins: ChainError | None = None  # raised by every pinned read (a hash the provider refuses)

    @property
    def cluster(self) -> Address:
        return CLUSTER

    @property
    def write_held(self) -> str | None:
        return self.held

    async def read(self, identity: NodeIdentity, at: Position | None = None) -> tuple[int, Snapshot]:
        if self.fail is not None:
            raise self.fail
        if at is not None and self.refuse_pins is not None:
            raise self.refuse_pins
        self.reads_at.append(None if at is None else at.block)
        block = self.head if at is None else at.block
        return block, Snapshot(
            block, self.verdict, tuple(self.members), self.commitment, self.mesh, self.epoch
        )

    async def has_contract(self) -> bool:
        return self.code

    async def register(self, identity: NodeIdentity, endpoint: str) -> Registered:
        if self.register_fail is not None:
            raise self.register_fail
        self.registrations += 1
        self.head += 1
        member_id = member_id_for(CLUSTER, identity.app_id)
        keys = identity.keys
        self.members.append(
            MemberRecord(member_id, identity.app_id, identity.signer, keys.seal_pub, keys.wg_pub,
                         keys.identity_pub, endpoint, self.mesh.network.network_address + 1, self.head)
        )  # fmt: skip
        return Registered(self.head, 21_000, member_id)

    async def set_endpoint(self, identity: NodeIdentity, endpoint: str) -> None:
        if self.endpoint_fail is not None:
            raise self.endpoint_fail
        self.endpoint_updates += 1
        mine = member_id_for(CLUSTER, identity.app_id)
        self.members = [
            MemberRecord(m.member_id, m.app_id, m.signer, m.seal_pub, m.wg_pub, m.identity_pub, endpoint,
                         m.mesh_ip, m.registered_at) if m.member_id == mine else m
            for m in self.members
        ]  # fmt: skip

    async def commit_csk(self, identity: NodeIdentity, epoch: int, commitment: Bytes32) -> int:
        self.commits += 1
        self.committed_epochs.append(epoch)
        self.commitment = commitment
        return self.head

    @property
    def rpc(self) -> RpcView:
        return RpcView()

    async def member_app_salt(self, app_id: Address) -> Bytes32:
        if self.fail is not None:
            raise self.fail
        return salt_of(app_id)

    async def reset(self) -> None:
        pass

    def record(self, member_id: MemberId) -> MemberRecord | None:
        return next((m for m in self.members if m.member_id == member_id), None)


@dataclass
class FakeDevice:
    """``WgDevice`` in memory; ``fail`` is raised by ``ensure_up``; ``sticky=False`` drops applied peers."""

    peers: dict[WgKey, ActualPeer] = field(default_factory=dict)
    fail: WgError | None = None
    sticky: bool = True
    config: InterfaceConfig | None = None

    async def ensure_up(self, config: InterfaceConfig) -> None:
        if self.fail is not None:
            raise self.fail
        self.config = config

    async def read_peers(self) -> list[ActualPeer]:
        return sorted(self.peers.values(), key=lambda p: p.public_key.raw)

    async def apply(self, plan: PeerPlan) -> None:
        """Like the real backends: the part ``checked_plan`` passes is applied, the rest raised; a peer with
        the device's own key is ignored silently, as Linux and wireguard-go do."""
        valid, problems = checked_plan(plan)
        if not self.sticky:
            return
        own = None if self.config is None else WgKey(x25519_public_key(self.config.private_key))
        for key in valid.remove:
            self.peers.pop(key, None)
        for peer in (*valid.add, *valid.update):
            if peer.public_key != own:
                self.peers[peer.public_key] = ActualPeer(
                    peer.public_key, peer.endpoint, peer.allowed_ips, peer.keepalive
                )
        raise_problems(problems)

    async def public_key(self) -> WgKey | None:
        return None

    async def close(self) -> None:
        pass


@dataclass
class FakePeers:
    """``CskFetcher``: every peer checks the request (a member per the chain, its member proof, its
    signature against the proven identity key) and seals ``key`` to the proven seal key, answering with its
    own proof (``proof_of`` overrides a peer's: a peer that cannot prove itself)."""

    chain: FakeChain
    key: SecretBytes | None = None
    by_epoch: dict[int, SecretBytes] = field(default_factory=dict)  # the key served for an epoch, if not key
    requests: list[cskcore.CskRequest] = field(default_factory=list)
    proof_of: dict[MemberId, MemberProof] = field(default_factory=dict)

    async def fetch(self, host: str, request: Mapping[str, object]) -> dict[str, object]:
        signed = cskcore.parse_request(dict(request))
        parsed = signed.request
        self.requests.append(parsed)
        responder = self.chain.record(parsed.responder)
        key = self.by_epoch.get(parsed.epoch, self.key)
        if key is None or responder is None or self.chain.record(parsed.requester) is None:
            raise CskFetchError("refused", "HTTP 503: not held")
        try:
            proven = verify_member_proof(parse_proof(signed.proof), ANCHORS)
        except ProofRejected as exc:
            raise CskFetchError("refused", f"HTTP 403: {exc.reason}") from None
        if proven.member_id != parsed.requester:
            raise CskFetchError("refused", "HTTP 403: bad_proof")
        if not cskcore.verify_request(parsed, signed.signature, proven.identity_pub):
            raise CskFetchError("refused", "HTTP 403: bad signature")
        proof, identity, _ = derived_member(responder.app_id)
        proof = self.proof_of.get(parsed.responder, proof)
        sealed = cskcore.seal(key, proven.seal_pub)
        return cskcore.sign_response(parsed, sealed, identity, proof)


@dataclass
class World:
    """One node under test with its fakes."""

    node: Node
    agent: FakeAgent
    chain: FakeChain
    device: FakeDevice
    peers: FakePeers
    clock: FakeClock
    liveness: Liveness
    metrics: Metrics

    async def pass_once(self) -> tuple[str, str]:
        await self.node.controller.pass_once()
        status = self.node.controller.status
        return status.phase, status.reason or ""

    def hear(self, member: MemberRecord) -> None:
        self.liveness.heard(member.member_id, self.clock.monotonic())


_ANCHOR_FIELDS = {"ATTESTMESH_MEMBER_APP_FACTORY": "member_app_factory", "ATTESTMESH_KMS_ROOTS": "kms_roots"}


def world(state_dir: Path, chain: FakeChain | None = None, *, unset: tuple[str, ...] = ()) -> World:
    """One node with its fakes; ``unset`` names trust anchors left out of its settings (the environment
    requires them, so they are cleared after parsing: a node built from settings made in code)."""
    env = {
        "ATTESTMESH_RPC_URL": "http://127.0.0.1:8545",
        "ATTESTMESH_RPC_ALLOW_HTTP": "true",
        "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
        "ATTESTMESH_CLUSTER": str(CLUSTER),
        "ATTESTMESH_MEMBER_APP_FACTORY": str(FACTORY),
        "ATTESTMESH_KMS_ROOTS": str(KMS_ROOT),
        "ATTESTMESH_ENDPOINT": ENDPOINT,
        "ATTESTMESH_STATE_DIR": str(state_dir),
    }
    settings = load_settings(env)
    if unset:
        cleared = {_ANCHOR_FIELDS[name]: None for name in unset}
        settings = dataclasses.replace(settings, chain=dataclasses.replace(settings.chain, **cleared))
    chain = chain or FakeChain()
    agent, device, clock = FakeAgent(), FakeDevice(), FakeClock()
    peers = FakePeers(chain)
    liveness, metrics = Liveness(window=30.0), Metrics(CollectorRegistry())
    node = build_node(
        settings,
        agent=agent,
        metrics=metrics,
        liveness=liveness,
        clock=clock,
        chain=chain,
        store=StateStore(state_dir),
        fetcher=peers,
        device=lambda: device,
    )
    return World(node, agent, chain, device, peers, clock, liveness, metrics)


def mesh_ip(world: World) -> IPv4Address | None:
    config = world.device.config
    return None if config is None else config.address.ip
