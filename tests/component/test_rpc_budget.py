"""The RPC budget (issue 13, item 1) against real parts: anvil with our contracts, the guest-agent simulator,
the real indexer service in-process (registered on chain), and the sidecar's own composition root
(``sidecar.daemon.Daemon``: ChainLink, the event router with the push subscriber and the poller, the read
planner, the controller) with the production defaults of every interval.

Calls are counted by the chain connection's counting middleware (the ``on_rpc`` hook behind
``attestmesh_rpc_calls_total`` and ``attestmesh_rpc_calls_by_source_total``), never timed. The controller's
passes are driven one by one (``pass_once``) and the periodic reads — the timer pass, the safety poll, the
registry refresh — are each run and counted once: a minute of push mode costs, by count, the calls per
activity times how often the defaults run it. The budget fails if a pass, a poll or the stream makes more
calls, or if a default interval gets shorter.

Everything runs on 127.0.0.1 and unix sockets; every server and task started here is stopped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from devnet.anvil import AnvilProcess
from devnet.compose import NodeAnchors, node_compose_bytes
from devnet.deployment import Deployment, deploy_member_app
from devnet.kms import DevnetKms, get_key
from devnet.simulator import SimulatorConfig, serve_unix
from indexer.service import IndexerService
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address, Bytes32
from sidecar.core.keys import KeyPath, KeyScope, secp256k1_address
from sidecar.core.status import healthz_body
from sidecar.daemon import Daemon
from sidecar.observability import Metrics
from sidecar.rpctally import rpc_tally
from sidecar.settings import load_settings
from tests.component import controllerkit
from tests.component.controllerkit import CHAIN_ID, FUNDING_WEI, node_env, write_node_config
from tests.component.toolkit import Chain, Factory

short_root = controllerkit.short_root

pytestmark = [pytest.mark.component, pytest.mark.timeout(180)]

BUDGET_PER_MINUTE = 2.0
CODE_ID = Bytes32(b"\x0c" * 32)
DEADLINE = 30.0
HEAD_READS = ("eth_blockNumber", "eth_getBlockByNumber")


# --- helpers ---------------------------------------------------------------------------------------------


async def until(check: Callable[[], bool], what: str) -> None:
    ends = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < ends, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def calls(metrics: Metrics, label: str = "method") -> dict[str, float]:
    """Every JSON-RPC call counted so far, by method (or by ``source``)."""
    name = "attestmesh_rpc_calls_total" if label == "method" else "attestmesh_rpc_calls_by_source_total"
    return {
        sample.labels[label]: sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


async def mine(conn: ChainConnection, blocks: int = 1) -> int:
    await conn.w3.provider.make_request("anvil_mine", [hex(blocks)])
    return await conn.block_number()


@dataclass
class Parts:
    """What a sidecar under test is made of: the chain, the stack, the KMS, a short root for sockets."""

    anvil: AnvilProcess
    conn: ChainConnection
    deployer: TxSubmitter
    stack: Deployment
    kms: DevnetKms
    root: Path
    monkeypatch: pytest.MonkeyPatch


@pytest.fixture
def parts(
    anvil: AnvilProcess,
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    kms: DevnetKms,
    short_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Parts:
    return Parts(anvil, conn, deployer, stack, kms, short_root, monkeypatch)


@contextlib.asynccontextmanager
async def sidecar(parts: Parts, *, registry: Address | None) -> AsyncIterator[Daemon]:
    """The sidecar's composition root for a new, approved, funded member app (its compose measures the
    cluster's anchors and is allowlisted), registered by its own passes; production intervals."""
    anvil, conn, deployer, stack, kms = parts.anvil, parts.conn, parts.deployer, parts.stack, parts.kms
    root, monkeypatch = parts.root, parts.monkeypatch
    owner = ClusterClient(conn, stack.cluster, deployer)
    app_id = await deploy_member_app(conn, deployer, stack.member_app_factory, stack.cluster, "budget")
    await owner.add_allowed_app_id(app_id)
    anchors = NodeAnchors(CHAIN_ID, stack.cluster, stack.member_app_factory, (kms.root_address,), registry)
    compose = node_compose_bytes(anchors)
    await owner.add_compose_hash(Bytes32(hashlib.sha256(compose).digest()))
    scope = KeyScope(CHAIN_ID, stack.cluster)
    signer_key, _ = get_key(kms, app_id, scope.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
    signer = secp256k1_address(signer_key)
    await conn.w3.provider.make_request("anvil_setBalance", [signer.checksum, hex(FUNDING_WEI)])
    config = SimulatorConfig.load(write_node_config(root / "agent", app_id, 1, compose))
    running = await serve_unix(root / "agent.sock", config, kms=kms)
    monkeypatch.setenv("DSTACK_SIMULATOR_ENDPOINT", str(root / "agent.sock"))
    env = node_env(
        rpc_url=anvil.rpc_url,
        cluster=stack.cluster,
        root=root,
        MEMBER_APP_FACTORY=str(stack.member_app_factory),
        KMS_ROOTS=str(kms.root_address),
        INDEXER_REGISTRY="" if registry is None else str(registry),
    )
    env = {k: v for k, v in env.items() if v}
    daemon = Daemon(load_settings(env), env=env)
    try:
        for _ in range(3):  # register, then see itself on chain (confirmations 0; no device: phase mesh)
            await daemon.controller.pass_once()
        assert daemon.state.member_id is not None, daemon.controller.status
        yield daemon
    finally:
        await daemon.node.close()
        await daemon.chain.close()
        await daemon.agent.close()
        await running.close()


@contextlib.asynccontextmanager
async def events_running(daemon: Daemon) -> AsyncIterator[None]:
    task = asyncio.create_task(daemon.events.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def pushed_through(daemon: Daemon, block: int) -> None:
    push = daemon.push
    assert push is not None
    await until(
        lambda: push.positions.newest is not None and push.positions.newest.block >= block,
        f"a pushed position at block {block}",
    )


async def counted_pass(daemon: Daemon) -> dict[str, float]:
    """One reconcile pass; the calls it made, by method."""
    before = calls(daemon.metrics)
    await daemon.controller.pass_once()
    return delta(before, calls(daemon.metrics))


# --- push mode -------------------------------------------------------------------------------------------


async def register_indexer(parts: Parts, make_indexer: Factory, indexer_pub: Bytes32) -> IndexerService:
    """Start the real indexer in-process and record it in the on-chain registry, as its operator does."""
    service: IndexerService = await make_indexer()
    await IndexerRegistryClient(parts.conn, parts.stack.indexer_registry, parts.deployer).set_indexer(
        f"ws://127.0.0.1:{service.port}/v1/subscribe", CODE_ID, indexer_pub
    )
    return service


async def test_push_mode_stays_within_two_rpc_calls_a_minute_and_reads_each_change_once(
    parts: Parts, chain: Chain, make_indexer: Factory, indexer_pub: Bytes32
) -> None:
    conn, stack = parts.conn, parts.stack
    await register_indexer(parts, make_indexer, indexer_pub)
    async with (
        sidecar(parts, registry=stack.indexer_registry) as d,
        events_running(d),
    ):
        push, metrics, ev = d.push, d.metrics, d.settings.events
        assert push is not None
        await until(lambda: d.events.mode == "push", "push mode")
        await pushed_through(d, await mine(conn))
        await d.controller.pass_once()  # the first pass in push mode reads the head once: the stream's depth
        assert push.positions.depth is not None and push.positions.depth >= d.settings.chain.confirmations

        # The stream itself costs nothing: checkpoints flow, no call is made (no refresh or poll is due).
        quiet = calls(metrics, "source")
        for _ in range(5):
            await pushed_through(d, await mine(conn))
        assert delta(quiet, calls(metrics, "source")) == {}

        # A pass reads at the pushed block: no head, no header, and one call when nothing changed.
        per_pass = []
        for _ in range(3):
            await pushed_through(d, await mine(conn))
            made = await counted_pass(d)
            assert d.controller.steps.chain.read_at == "push"
            assert not set(made) & set(HEAD_READS), made
            assert d.state.snapshot is not None and d.state.snapshot.block == push.positions.newest.block  # type: ignore[union-attr]
            per_pass.append(sum(made.values()))
        assert per_pass == [1, 1, 1], per_pass  # syncState() only: nothing changed

        # The safety poll and the registry refresh, each once, as the router and the subscriber run them.
        await mine(conn, 3)
        before = calls(metrics, "source")
        with rpc_tally("poll"):
            assert await d.poller.poll_guarded(through=d.poller.head)
        per_poll = delta(before, calls(metrics, "source"))["poll"]
        connection = d.chain.connection()
        assert connection is not None
        before = calls(metrics, "source")
        with rpc_tally("push"):
            await IndexerRegistryClient(connection, stack.indexer_registry).current()
        per_refresh = delta(before, calls(metrics, "source"))["push"]
        # The balance watch's read of the signer (its gauge for the low-balance alert), once.
        before = calls(metrics, "source")
        assert await d.balance.check()
        per_balance = sum(delta(before, calls(metrics, "source")).values())
        assert per_balance == 1
        assert (metrics.registry.get_sample_value("attestmesh_signer_balance_ether") or 0) > 0

        # A minute of push mode at the defaults, by count.
        minute = (
            per_pass[0] * 60 / ev.resync_interval_pushed
            + per_poll * 60 / ev.poll_interval_pushed
            + per_refresh * 60 / ev.registry_refresh
            + per_balance * 60 / d.balance.interval
        )
        assert minute <= BUDGET_PER_MINUTE, (per_pass, per_poll, per_refresh, per_balance, ev)

        # A registration reaches the node by push and one pass reads it, at the pushed block.
        newcomer = await chain.member()
        await pushed_through(d, newcomer.block)
        made = await counted_pass(d)
        assert d.state.snapshot is not None
        assert newcomer.member_id in {m.member_id for m in d.state.snapshot.members}
        assert d.controller.steps.chain.read_at == "push"
        # syncState, the members (one page) and the boot verdict (approving the newcomer's app moved the
        # policy version): one read of what changed, at the pushed block
        assert made == {"eth_call": 3}, made
        assert d.controller.resync_delay() == ev.resync_interval_pushed
        body = healthz_body(d.controller.status)
        assert body["events"]["mode"] == "push" and body["chain"]["read_at"] == "push"  # type: ignore[index]
        assert body["chain"]["reachable"] is True  # type: ignore[index]


async def test_a_pushed_hash_the_chain_does_not_hold_is_refused_and_the_pass_reads_the_head(
    parts: Parts, make_indexer: Factory, indexer_pub: Bytes32
) -> None:
    conn, stack = parts.conn, parts.stack
    await register_indexer(parts, make_indexer, indexer_pub)
    async with (
        sidecar(parts, registry=stack.indexer_registry) as d,
        events_running(d),
    ):
        push = d.push
        assert push is not None
        await until(lambda: d.events.mode == "push", "push mode")
        await pushed_through(d, await mine(conn))
        await d.controller.pass_once()
        before = d.state.snapshot
        # What a lying indexer (a stolen key) could name: a block number with a hash the chain never had.
        head = await mine(conn, 2)
        push.positions.note(head, Bytes32(os.urandom(32)))
        with capture_logs() as logs:
            made = await counted_pass(d)
        assert [e for e in logs if e.get("event") == "chain.pin_refused"]
        assert push.positions.distrusted and d.controller.steps.chain.read_at == "head"
        assert made.get("eth_blockNumber") == 1, made  # re-read at its own head in the same pass
        assert d.controller.facts.chain_ok and d.state.snapshot is not None and before is not None
        assert d.state.snapshot.members == before.members  # nothing forged: the state is the chain's
        await d.controller.pass_once()
        assert d.controller.steps.chain.read_at == "head"  # distrusted for the rest of the session


# --- poll-only mode --------------------------------------------------------------------------------------


async def test_poll_only_mode_reads_its_own_head_every_pass_and_converges_after_a_registration(
    parts: Parts, chain: Chain
) -> None:
    async with sidecar(parts, registry=None) as d:
        assert d.push is None and d.events.mode == "poll"
        assert d.controller.resync_delay() == d.settings.chain.resync_interval
        for _ in range(2):
            made = await counted_pass(d)
            assert d.controller.steps.chain.read_at == "head"
            assert made.get("eth_blockNumber") == 1, made
        newcomer = await chain.member()
        await d.controller.pass_once()
        assert d.state.snapshot is not None
        assert newcomer.member_id in {m.member_id for m in d.state.snapshot.members}
        assert d.state.head is not None and d.state.head >= newcomer.block
        body = healthz_body(d.controller.status)
        assert body["events"]["mode"] == "poll" and body["chain"]["read_at"] == "head"  # type: ignore[index]
