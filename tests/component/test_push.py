"""Push mode and its polling floor against real parts: anvil with our contracts, the guest-agent simulator,
the real indexer service in-process (registered on chain with ``IndexerRegistry.setIndexer``), and the real
``PushSubscriber`` / ``EventRouter`` with small honest sinks: a list of wake reasons and a list of handled
log positions. A rogue indexer is a small aiohttp WebSocket server speaking the protocol with
``indexerwire.PushSigner``.

Everything runs on 127.0.0.1; every server and task started here is stopped here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import structlog

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment
from devnet.kms import DevnetKms, get_key
from devnet.simulator import SimulatorConfig, serve_unix
from indexer.follower import MEMBER_REGISTERED
from indexer.service import KEY_PATH, IndexerService
from indexer.settings import load_settings
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import TxSubmitter
from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.keys import ed25519_public_key
from sidecar.core.model import ChainLog
from sidecar.drivers.events import CURSOR_FILE, ChainLogPoller, HandledLog, SharedCursor
from sidecar.drivers.push import Credentials, PushSubscriber
from sidecar.drivers.router import EventRouter
from sidecar.drivers.store import StateStore
from sidecar.dstack import GuestAgent
from sidecar.observability import Metrics
from sidecar.settings import HostPort
from tests.component.toolkit import INDEXER_APP, Chain, Member
from tests.rogue import RogueIndexer, Script, fake_member, forge_next_event, other_cluster, replayed, tampered

pytestmark = [pytest.mark.component, pytest.mark.timeout(180)]

ROTATED_APP = Address.from_hex("0x1de7e40000000000000000000000000000000002")
CODE_ID = Bytes32(b"\x0c" * 32)
DEADLINE = 30.0
WAKE_REASONS = {"chain events", "pushed event", "poll failed", "reorg"}


# --- fixtures ----------------------------------------------------------------------------------------------


async def bounded(closing: Awaitable[None], what: str) -> None:
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=15)
    if not done:
        for other in asyncio.all_tasks():
            print("TASK", other.get_name())
            other.print_stack()
    assert done, f"{what} did not stop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agents:
    """Guest-agent simulators for indexers, one per app id (each app id derives another signing key)."""

    def __init__(self, kms: DevnetKms) -> None:
        self.kms = kms
        self.root = Path(tempfile.mkdtemp(prefix="am-push-", dir="/tmp"))  # sun_path is short
        self.running: list[object] = []

    async def serve(self, app_id: Address) -> str:
        compose = self.root / f"{app_id.hex}.json"
        compose.write_bytes(b'{"name": "attestmesh-indexer"}\n')
        path = self.root / f"{len(self.running)}.sock"
        config = SimulatorConfig(app_id=app_id, instance_id=bytes(19) + b"\x01", app_compose_path=compose)
        self.running.append(await serve_unix(path, config, kms=self.kms))
        return str(path)

    def seed(self, app_id: Address) -> SecretBytes:
        return get_key(self.kms, app_id, KEY_PATH, "")[0]

    def public_key(self, app_id: Address) -> Bytes32:
        return Bytes32(ed25519_public_key(self.seed(app_id)))

    async def close(self) -> None:
        for running in self.running:
            await running.close()  # type: ignore[attr-defined]
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
async def agents(kms: DevnetKms) -> AsyncIterator[Agents]:
    made = Agents(kms)
    yield made
    await bounded(made.close(), "the simulators")


class Indexers:
    """Real indexer services on a fixed loopback port, so a restart comes back at the registered endpoint."""

    def __init__(self, anvil: AnvilProcess, stack: Deployment) -> None:
        self.anvil, self.stack = anvil, stack
        self.port = free_port()
        self.running: list[IndexerService] = []

    @property
    def endpoint(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/subscribe"

    async def start(self, agent_socket: str) -> IndexerService:
        env = {
            "RPC_URL": self.anvil.rpc_url,
            "CHAIN_ID": "31337",
            "CLUSTER_FACTORY": str(self.stack.cluster_factory),
            "START_BLOCK": str(self.stack.factory_block),
            "REGISTRY": str(self.stack.indexer_registry),
            "PUBLIC_URL": self.endpoint,
            "LISTEN_ADDR": "127.0.0.1:8080",
            "POLL_INTERVAL": "0.1",
            "CONFIRMATIONS": "0",
            "ACK_TIMEOUT": "5",
            "SHUTDOWN_TIMEOUT": "4",
        }
        settings = load_settings({f"ATTESTMESH_INDEXER_{k}": v for k, v in env.items()})
        settings = dataclasses.replace(settings, listen_addr=HostPort("127.0.0.1", self.port))
        service = IndexerService(settings, agent=GuestAgent(agent_socket))
        await service.start()
        self.running.append(service)
        return service

    async def stop(self, service: IndexerService) -> None:
        await service.shutdown()
        self.running.remove(service)

    async def close(self) -> None:
        for service in list(self.running):
            await self.stop(service)


@pytest.fixture
async def indexers(anvil: AnvilProcess, stack: Deployment) -> AsyncIterator[Indexers]:
    made = Indexers(anvil, stack)
    yield made
    await bounded(made.close(), "the indexers")


async def register_indexer(
    conn: ChainConnection, stack: Deployment, owner: TxSubmitter, endpoint: str, pub: Bytes32
) -> None:
    await IndexerRegistryClient(conn, stack.indexer_registry, owner).set_indexer(endpoint, CODE_ID, pub)


@dataclasses.dataclass
class Node:
    """The sidecar's event source for one member, with honest sinks for wakes and handled positions."""

    router: EventRouter
    push: PushSubscriber
    shared: SharedCursor
    state: Path
    wakes: list[str]
    handled: list[HandledLog]
    task: asyncio.Task[None] | None = None

    def positions(self, source: str | None = None) -> list[tuple[int, int]]:
        return [(h.block, h.log_index) for h in self.handled if source is None or h.source == source]


def make_node(
    conn: ChainConnection, stack: Deployment, member: Member, state: Path, *, crosscheck: float = 0.0
) -> Node:
    wakes: list[str] = []
    handled: list[HandledLog] = []
    metrics = Metrics()
    store = StateStore(state)
    shared = SharedCursor(store, on_handled=handled.append)
    poller = ChainLogPoller(
        connection=lambda: conn,
        cluster=member.cluster,
        store=store,
        wake=wakes.append,
        metrics=metrics,
        interval=0.2,
        confirmations=0,
        max_range=2000,
        cursor=shared,
    )
    push = PushSubscriber(
        connection=lambda: conn,
        registry=stack.indexer_registry,
        cluster=member.cluster,
        credentials=lambda: Credentials(member.member_id, member.identity),
        cursor=shared,
        wake=wakes.append,
        metrics=metrics,
        registry_refresh=0.5,
        backoff_min=0.05,
        backoff_max=0.3,
        crosscheck=crosscheck,
        ready_interval=0.1,
        on_change=lambda: router.push_changed(),  # noqa: PLW0108 - the router is built next
    )
    router = EventRouter(poller=poller, push=push, poll_interval=0.2, safety_interval=60.0, metrics=metrics)
    return Node(router, push, shared, state, wakes, handled)


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[[Node], Awaitable[Node]]]:
    started: list[Node] = []

    async def start(node: Node) -> Node:
        node.task = asyncio.create_task(node.router.run())
        started.append(node)
        return node

    yield start
    for node in started:
        assert node.task is not None
        node.task.cancel()
        await bounded(asyncio.gather(node.task, return_exceptions=True), "the event source")


async def until(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    ends = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < ends, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def registered_at(member: Member) -> Callable[[ChainLog], bool]:
    return lambda entry: entry.topics[0] == MEMBER_REGISTERED and entry.topics[1].raw == member.member_id.raw


async def registration_position(conn: ChainConnection, member: Member) -> tuple[int, int]:
    logs = await conn.get_logs([member.cluster], member.block, member.block)
    entry = next(e for e in logs if registered_at(member)(e))
    return entry.block_number, entry.log_index


async def chain_positions(conn: ChainConnection, cluster: Address, after: Cursor) -> list[tuple[int, int]]:
    head = await conn.block_number()
    logs = await conn.get_logs([cluster], after.next_block, head)
    return [
        (e.block_number, e.log_index)
        for e in logs
        if (e.block_number, e.log_index) > (after.block, after.log_index)
    ]


def log_events(captured: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [entry for entry in captured if entry.get("event") == name]


# --- 1. push mode -----------------------------------------------------------------------------------------


async def test_a_registration_reaches_the_subscriber_by_push_and_the_cursor_is_persisted(
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    chain: Chain,
    agents: Agents,
    indexers: Indexers,
    nodes: Callable[[Node], Awaitable[Node]],
    tmp_path: Path,
) -> None:
    me = await chain.member()
    await register_indexer(conn, stack, deployer, indexers.endpoint, agents.public_key(INDEXER_APP))
    await indexers.start(await agents.serve(INDEXER_APP))
    node = await nodes(make_node(conn, stack, me, tmp_path, crosscheck=1.0))  # every genuine push checked
    await until(lambda: node.router.mode == "push", "push mode")
    assert node.router.indexer_connected
    newcomer = await chain.member()
    wanted = await registration_position(conn, newcomer)
    await until(lambda: wanted in node.positions("push"), "the newcomer's registration pushed")
    assert "pushed event" in node.wakes
    assert node.positions("poll") == []  # the safety poll is slow: everything came by push
    cursor = node.shared.value
    assert cursor is not None and (cursor.block, cursor.log_index) >= wanted
    await until(lambda: StateStore(tmp_path).read(CURSOR_FILE) is not None, "cursor persisted")
    persisted = Cursor.from_json(StateStore(tmp_path).read(CURSOR_FILE) or b"")
    assert (persisted.block, persisted.log_index) >= wanted
    assert node.router.cursor_block == node.shared.block and node.router.head_block is not None
    assert node.router.rejected_pushes == 0


# --- 2. fallback ----------------------------------------------------------------------------------------


async def test_indexer_outage_falls_back_to_polling_and_resubscribes_from_the_shared_cursor(
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    chain: Chain,
    agents: Agents,
    indexers: Indexers,
    nodes: Callable[[Node], Awaitable[Node]],
    tmp_path: Path,
) -> None:
    me = await chain.member()
    await register_indexer(conn, stack, deployer, indexers.endpoint, agents.public_key(INDEXER_APP))
    agent = await agents.serve(INDEXER_APP)
    service = await indexers.start(agent)
    await until(lambda: service.health()[0], "the indexer caught up")
    node = make_node(conn, stack, me, tmp_path)
    with structlog.testing.capture_logs() as captured:
        await nodes(node)
        await until(lambda: node.router.mode == "push", "push mode")
        start = node.shared.value
        assert start is not None
        before = await chain.member()
        await until(lambda: node.handled != [] and node.positions()[-1] >= (before.block, 0), "first push")

        await indexers.stop(service)
        await until(lambda: node.router.mode == "poll", "poll mode after the indexer stopped")
        during = await chain.member()
        during_at = await registration_position(conn, during)
        await until(lambda: during_at in node.positions("poll"), "the outage's newcomer seen by polling")
        outage_logs = len(log_events(captured, "events.push_unavailable"))

        await indexers.start(agent)
        await until(lambda: node.router.mode == "push", "push mode again", deadline=60.0)
        after = await chain.member()
        after_at = await registration_position(conn, after)
        await until(lambda: after_at in node.positions("push"), "the next newcomer pushed")

    expected = await chain_positions(conn, me.cluster, start)
    assert node.positions() == expected  # every log exactly once, in chain order, push → poll → push
    assert len(set(node.positions())) == len(node.positions())
    assert outage_logs == 1 and len(log_events(captured, "events.push_unavailable")) == 1
    assert len(log_events(captured, "events.push_recovered")) == 1
    modes = [(e["from_mode"], e["to_mode"]) for e in log_events(captured, "events.mode_changed")]
    assert modes == [("poll", "push"), ("push", "poll"), ("poll", "push")]
    assert node.router.rejected_pushes == 0
    assert set(node.wakes) <= WAKE_REASONS


# --- 3. key rotation --------------------------------------------------------------------------------------


async def test_a_rotated_key_is_accepted_without_a_restart_and_the_old_key_is_rejected(
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    chain: Chain,
    agents: Agents,
    indexers: Indexers,
    nodes: Callable[[Node], Awaitable[Node]],
    tmp_path: Path,
) -> None:
    me = await chain.member()
    old_pub, new_pub = agents.public_key(INDEXER_APP), agents.public_key(ROTATED_APP)
    assert old_pub != new_pub
    await register_indexer(conn, stack, deployer, indexers.endpoint, old_pub)
    service = await indexers.start(await agents.serve(INDEXER_APP))
    node = await nodes(make_node(conn, stack, me, tmp_path))
    await until(lambda: node.router.mode == "push", "push mode with the first key")
    first_sessions = node.push.sessions

    # the operator registers the new key, then restarts the indexer with it
    await register_indexer(conn, stack, deployer, indexers.endpoint, new_pub)
    await indexers.stop(service)
    await indexers.start(await agents.serve(ROTATED_APP))
    await until(
        lambda: (
            node.router.mode == "push"
            and node.push.record is not None
            and node.push.record.pub_key == new_pub
        ),
        "push mode with the rotated key",
        deadline=60.0,
    )
    assert node.push.sessions > first_sessions
    newcomer = await chain.member()
    wanted = await registration_position(conn, newcomer)
    await until(lambda: wanted in node.positions("push"), "a push signed with the rotated key")
    assert node.router.rejected_pushes == 0

    # something still signing with the old key is rejected (bad_signature) and counted
    async with RogueIndexer(agents.seed(INDEXER_APP)) as rogue:
        rogue.script = forge_next_event
        handled_before = len(node.handled)
        await register_indexer(conn, stack, deployer, rogue.endpoint, new_pub)
        await until(lambda: node.push.rejected.get("bad_signature", 0) >= 1, "old-key push rejected")
        assert set(node.push.rejected) == {"bad_signature"}
        assert [h for h in node.handled[handled_before:] if h.source == "push"] == []


# --- 4. a rogue indexer -----------------------------------------------------------------------------------


def rejected_more(node: Node, reason: str, seen: int) -> Callable[[], bool]:
    return lambda: node.push.rejected.get(reason, 0) > seen


async def test_an_unsigned_or_forged_welcome_drops_the_stream_before_anything_is_trusted(
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    chain: Chain,
    nodes: Callable[[Node], Awaitable[Node]],
    tmp_path: Path,
) -> None:
    """Issue 12: the welcome was unsigned, so whoever answered the hello set the session the signed events
    were checked against. Now it is signed by the registry's key over this hello's nonce: an unsigned one, one
    signed by another key, or one recorded for another hello drops the stream, counted, before any event."""
    me = await chain.member()
    node = await nodes(make_node(conn, stack, me, tmp_path))
    async with RogueIndexer(SecretBytes(os.urandom(32))) as rogue:
        rogue.script = forge_next_event  # events correctly signed by the registered key
        await register_indexer(conn, stack, deployer, rogue.endpoint, rogue.public_key)
        for mode, reason in (
            ("unsigned", "malformed"),
            ("forged", "bad_signature"),
            ("other_nonce", "bad_signature"),
        ):
            rogue.welcome_mode = mode  # type: ignore[assignment]
            seen, sessions = node.push.rejected.get(reason, 0), node.push.sessions
            await until(rejected_more(node, reason, seen), f"a {reason} rejection of a {mode} welcome")
            assert node.push.sessions == sessions  # never counted as a session
            assert node.positions("push") == [] and "pushed event" not in node.wakes
        rogue.welcome_mode = "signed"  # the same indexer, welcoming properly: its events are taken
        await until(lambda: "pushed event" in node.wakes, "a pushed event after a signed welcome")


async def test_a_rogue_indexer_is_rejected_and_counted_and_never_gives_membership(
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    chain: Chain,
    nodes: Callable[[Node], Awaitable[Node]],
    tmp_path: Path,
) -> None:
    me = await chain.member()
    other = await chain.cluster()
    members_before = await ClusterClient(conn, me.cluster).list_members()
    node = await nodes(make_node(conn, stack, me, tmp_path))
    # the only way from the event source to the control loop is a reason string: no data can ride along
    for source in (PushSubscriber, ChainLogPoller):
        assert inspect.signature(source).parameters["wake"].annotation == "Callable[[str], None]"

    async with RogueIndexer(SecretBytes(os.urandom(32))) as rogue:
        rogue.cluster = other
        cases: list[tuple[str, Script, Bytes32]] = [
            ("bad_signature", forge_next_event, Bytes32(ed25519_public_key(SecretBytes(os.urandom(32))))),
            ("bad_signature", tampered, rogue.public_key),
            ("wrong_cluster", other_cluster, rogue.public_key),
            ("replay", replayed, rogue.public_key),
        ]
        for reason, script, registered_key in cases:
            rogue.script = script
            seen = node.push.rejected.get(reason, 0)
            await register_indexer(conn, stack, deployer, rogue.endpoint, registered_key)
            await until(rejected_more(node, reason, seen), f"a {reason} rejection")
        assert set(node.push.rejected) == {"bad_signature", "wrong_cluster", "replay"}
        assert node.positions("push") == [] and "pushed event" not in node.wakes

        # a MemberRegistered for a member that does not exist, correctly signed: the cross-check catches it
        ghost = Bytes32(os.urandom(32))
        head = await conn.block_header("latest")
        node.push.crosscheck = 1.0
        rogue.script = fake_member(ghost, head.number + 1, Bytes32(os.urandom(32)))
        await until(lambda: node.push.rejected.get("crosscheck", 0) >= 1, "a crosscheck rejection")
        assert node.positions("push") == [] and "pushed event" not in node.wakes
        total = node.router.rejected_pushes
        assert total == sum(node.push.rejected.values()) >= 5
        metric = node.router.metrics.registry.get_sample_value(
            "attestmesh_push_rejected_total", {"reason": "crosscheck"}
        )
        assert metric is not None and metric >= 1

        # without the cross-check the forged event is taken — as a wake-up only: chain reads decide
        node.push.crosscheck = 0.0
        await until(lambda: "pushed event" in node.wakes, "the forged event woke the control loop")
        assert all(isinstance(reason, str) and reason in WAKE_REASONS for reason in node.wakes)
        cluster = ClusterClient(conn, me.cluster)
        assert await cluster.member_by_id(ghost) is None
        assert await cluster.list_members() == members_before
