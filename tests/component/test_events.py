"""The chain-log poller against anvil: wake-ups, a persisted cursor, bounded ranges, confirmations, reorgs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from devnet.anvil import DEVNET_DEPLOYER_KEY
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.cursor import Cursor
from sidecar.core.ids import Bytes32
from sidecar.drivers.events import (
    AHEAD_TOLERANCE,
    CURSOR_FILE,
    POLL_CURSOR_FILE,
    ChainLogPoller,
    HandledLog,
    SharedCursor,
)
from sidecar.drivers.store import StateStore
from sidecar.observability import Metrics
from tests.component.conftest import CHAIN_ID
from tests.component.toolkit import Chain

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]


async def rpc(conn: ChainConnection, method: str, *params: Any) -> Any:
    response = await conn.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    return response.get("result")


def poller(
    conn: ChainConnection, cluster: ClusterClient, state: Path, wakes: list[str], **kw: int
) -> ChainLogPoller:
    return ChainLogPoller(
        connection=lambda: conn,
        cluster=cluster.address,
        store=StateStore(state),
        wake=wakes.append,
        metrics=Metrics(),
        interval=1,
        confirmations=kw.get("confirmations", 0),
        max_range=kw.get("max_range", 2000),
    )


async def emit(cluster: ClusterClient, n: int = 1) -> None:
    for _ in range(n):
        await cluster.add_compose_hash(Bytes32(os.urandom(32)))  # one ComposeHashAdded log, one block


async def test_each_new_log_wakes_once_and_the_cursor_survives_a_restart(
    conn: ChainConnection, cluster: ClusterClient, tmp_path: Path
) -> None:
    wakes: list[str] = []
    first = poller(conn, cluster, tmp_path, wakes)
    assert await first.poll_once(conn) == 0  # a fresh cursor starts at the head: events are only wake-ups
    await emit(cluster, 2)
    assert await first.poll_once(conn) == 2
    assert wakes == ["chain events"]
    assert await first.poll_once(conn) == 0  # nothing handled twice
    assert (tmp_path / CURSOR_FILE).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / POLL_CURSOR_FILE).stat().st_mode & 0o777 == 0o600

    restarted = poller(conn, cluster, tmp_path, wakes)
    restarted.cursor = restarted.load_cursor()
    assert restarted.cursor == first.cursor
    assert await restarted.poll_once(conn) == 0  # the persisted cursor: no event handled again
    await emit(cluster)
    assert await restarted.poll_once(conn) == 1


async def test_csk_epoch_events_wake_the_control_loop(
    conn: ChainConnection, cluster: ClusterClient, chain: Chain, tmp_path: Path
) -> None:
    """A commitment, a rotation and the rotate-on-remove switch each wake a pass (it re-reads the epoch)."""
    member = await chain.member()
    wakes: list[str] = []
    events = poller(conn, cluster, tmp_path, wakes)
    assert await events.poll_once(conn) == 0
    for write in (
        lambda: member.client(conn).set_csk_commitment(1, Bytes32(os.urandom(32))),
        cluster.rotate_csk,
        lambda: cluster.set_rotate_csk_on_remove(True),
    ):
        receipt = await write()
        (name,) = [e.name for e in cluster.events(receipt)]
        wakes.clear()
        assert await events.poll_once(conn) == 1, name
        assert wakes == ["chain events"], name


async def test_bounded_ranges_cover_every_block(
    conn: ChainConnection, cluster: ClusterClient, tmp_path: Path
) -> None:
    wakes: list[str] = []
    p = poller(conn, cluster, tmp_path, wakes, max_range=3)
    await p.poll_once(conn)
    await emit(cluster, 10)
    assert await p.poll_once(conn) == 10
    assert p.cursor is not None and p.cursor.block == await conn.block_number()


async def test_logs_wait_for_confirmations(
    conn: ChainConnection, cluster: ClusterClient, tmp_path: Path
) -> None:
    wakes: list[str] = []
    p = poller(conn, cluster, tmp_path, wakes, confirmations=3)
    await p.poll_once(conn)
    await rpc(conn, "anvil_mine", 3)
    await p.poll_once(conn)  # the deployment's own logs, now confirmed
    wakes.clear()
    await emit(cluster)
    assert await p.poll_once(conn) == 0
    await rpc(conn, "anvil_mine", 2)
    assert await p.poll_once(conn) == 0  # two confirmations are not three
    await rpc(conn, "anvil_mine", 1)
    assert await p.poll_once(conn) == 1
    assert wakes == ["chain events"]


async def test_a_reorg_under_the_cursor_rewinds_and_wakes(
    conn: ChainConnection, cluster: ClusterClient, tmp_path: Path
) -> None:
    wakes: list[str] = []
    p = poller(conn, cluster, tmp_path, wakes)
    await p.poll_once(conn)
    snapshot = await rpc(conn, "evm_snapshot")
    await emit(cluster, 2)
    assert await p.poll_once(conn) == 2
    handled_through = p.cursor
    assert handled_through is not None
    # Replace those blocks with a different history of the same height: the stored block hash no longer
    # matches the canonical one, so the poller rewinds and rescans.
    assert await rpc(conn, "evm_revert", snapshot) is True
    assert cluster.submitter is not None
    fresh = ClusterClient(conn, cluster.address, TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY)))
    await emit(fresh, 3)  # a fresh submitter: the old one's nonce belongs to the abandoned history
    wakes.clear()
    seen = await p.poll_once(conn)
    assert "reorg" in wakes
    assert seen >= 3
    assert p.cursor is not None and p.cursor.block_hash != handled_through.block_hash


async def test_an_idle_poll_costs_one_rpc_call(anvil: Any, cluster: ClusterClient, tmp_path: Path) -> None:
    """The steady-state RPC budget: while the chain does not move, a poll is one header read."""
    calls: list[str] = []
    async with await connect(anvil.rpc_url, expected_chain_id=CHAIN_ID, on_rpc=calls.append) as counted:
        wakes: list[str] = []
        p = poller(counted, cluster, tmp_path, wakes)
        await p.poll_once(counted)
        calls.clear()
        for _ in range(5):
            assert await p.poll_once(counted) == 0
        assert calls == ["eth_getBlockByNumber"] * 5
        await emit(cluster)
        calls.clear()
        assert await p.poll_once(counted) == 1
        assert "eth_getLogs" in calls and "eth_chainId" not in calls


async def test_a_capped_poll_leaves_later_blocks_for_the_next_poll(
    conn: ChainConnection, cluster: ClusterClient, tmp_path: Path
) -> None:
    """The router's safety poll while push is healthy scans only through the head the previous poll saw."""
    wakes: list[str] = []
    p = poller(conn, cluster, tmp_path, wakes)
    await p.poll_once(conn)
    seen = await conn.block_number()
    await emit(cluster)
    assert await p.poll_once(conn, through=seen) == 0  # the new block is left to push
    assert p.cursor is not None and p.cursor.block == seen
    assert await p.poll_once(conn, through=seen + 1) == 1  # the same head again: it still scans
    assert await p.poll_once(conn) == 0


async def test_a_cursor_beyond_the_chain_head_is_taken_back_and_nothing_is_skipped(
    conn: ChainConnection, cluster: ClusterClient, tmp_path: Path
) -> None:
    """A pushed event signed with a stolen key can carry any block: the poller never trusts a far-future
    cursor and rescans from the last position it read from the chain itself."""
    wakes: list[str] = []
    p = poller(conn, cluster, tmp_path, wakes)
    await p.poll_once(conn)
    verified = p.cursor
    assert verified is not None
    head = await conn.block_number()
    async with p.shared.lock:  # what a forged push would do: note a log far beyond the head
        assert p.shared.note(head + 1000, 0, Bytes32(os.urandom(32)), "push")
    await emit(cluster, 2)
    assert await p.poll_once(conn) == 2  # the two real logs are handled, not skipped
    assert "reorg" in wakes
    assert p.cursor is not None and p.cursor.block == await conn.block_number()
    assert p.shared.rewinds == 1


@pytest.mark.parametrize("beyond_head", [0, 10, 1000])
async def test_a_pushed_checkpoint_past_a_registration_never_makes_the_poller_skip_it(
    conn: ChainConnection, cluster: ClusterClient, chain: Chain, tmp_path: Path, beyond_head: int
) -> None:
    """Issue 12: a registered indexer could checkpoint through (or a little beyond) the real head without
    sending the logs before it, and the poller, sharing that cursor, never scanned the range. Now the poller
    scans from its own chain-verified cursor: the registration is still found, and push's miss is logged."""
    wakes: list[str] = []
    handled: list[HandledLog] = []
    shared = SharedCursor(StateStore(tmp_path), on_handled=handled.append)
    p = ChainLogPoller(
        connection=lambda: conn,
        cluster=cluster.address,
        store=StateStore(tmp_path),
        wake=wakes.append,
        metrics=Metrics(),
        interval=1,
        confirmations=0,
        max_range=2000,
        cursor=shared,
    )
    await p.poll_once(conn)
    member = await chain.member()  # a real registration: AppIdAllowed, then MemberRegistered
    head = await conn.block_number()
    forged = head + beyond_head
    async with shared.lock:  # what the indexer's checkpoint does to the shared cursor
        assert shared.advance(Cursor.through(forged, (await conn.block_header(head)).hash))
    with capture_logs() as logs:
        assert await p.poll_once(conn) == 2
    assert wakes[-1] == "chain events"
    assert member.block in {h.block for h in handled}  # the registration's block was scanned by polling
    missed = [e for e in logs if e["event"] == "events.push_missed"]
    if beyond_head <= AHEAD_TOLERANCE:  # push skipped two logs it had checkpointed past: named
        assert missed and missed[0]["logs"] == 2
    else:  # an impossible shared cursor is taken back to the poll cursor first
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["events.cursor_ahead_of_chain"]
    assert p.cursor is not None and p.cursor.block == head  # the poll cursor: only what the chain showed
    restarted = ChainLogPoller(
        connection=lambda: conn,
        cluster=cluster.address,
        store=StateStore(tmp_path),
        wake=wakes.append,
        metrics=Metrics(),
        interval=1,
        confirmations=0,
        max_range=2000,
    )
    assert restarted.load_cursor() == p.cursor  # persisted apart from the shared cursor
