"""Where a pass reads the chain (push mode's RPC budget): the pure rule ``sidecar.core.readpin`` and the
chain step that follows it, with the in-memory ``FakeChain`` and a small honest planner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.chain.errors import ChainUnavailable
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import BootInfo, BootVerdict, MemberRecord, MeshCidr, SyncState
from sidecar.core.readpin import HeadMark, HeadRead, Position, PushedPositions, ReadPin, choose_pin
from sidecar.drivers.syncread import SyncedReads
from tests.unit.passkit import world

H = Bytes32(b"\x11" * 32)
MESH = MeshCidr.parse("10.77.0.0/24")
P = Bytes32(b"\x22" * 32)


def pushed_at(block: int, *, head: int | None) -> PushedPositions:
    """Positions with ``block`` the newest pushed, measured against ``head`` (None: not measured yet)."""
    positions = PushedPositions()
    positions.note(block, H)
    if head is not None:
        positions.observe_head(head, positions.mark())
    return positions


def test_push_down_or_no_stream_reads_the_head() -> None:
    deep = pushed_at(100, head=110)
    assert choose_pin(push_healthy=False, pushed=deep, polled=None, handled=100, confirmations=2) == HeadRead(
        "push down"
    )
    assert isinstance(
        choose_pin(push_healthy=True, pushed=None, polled=None, handled=None, confirmations=2), HeadRead
    )


def test_a_pushed_position_deep_enough_is_the_pin() -> None:
    plan = choose_pin(
        push_healthy=True, pushed=pushed_at(100, head=102), polled=None, handled=100, confirmations=2
    )
    assert plan == ReadPin(Position(100, H), "push")


@pytest.mark.parametrize(
    ("head", "reason"),
    [(None, "no confirmed pin yet"), (101, "indexer shallower than confirmations")],
)
def test_an_unmeasured_or_shallow_stream_gives_no_pin(head: int | None, reason: str) -> None:
    plan = choose_pin(
        push_healthy=True, pushed=pushed_at(100, head=head), polled=None, handled=100, confirmations=2
    )
    assert plan == HeadRead(reason)


def test_the_shallowest_depth_of_the_session_counts_and_a_new_session_measures_afresh() -> None:
    positions = pushed_at(100, head=105)
    positions.note(104, H)
    positions.observe_head(105, positions.mark())  # once at depth 1: the indexer checkpoints too shallow
    positions.note(106, H)
    positions.observe_head(120, positions.mark())
    assert positions.depth == 1
    positions.clear()
    assert (positions.newest, positions.depth) == (None, None)


def test_a_mark_from_another_session_or_before_any_push_measures_nothing() -> None:
    positions = PushedPositions()
    empty = positions.mark()
    positions.note(100, H)
    positions.observe_head(101, empty)
    assert positions.depth is None
    old = positions.mark()
    positions.clear()
    positions.note(100, H)
    positions.observe_head(101, old)
    assert positions.depth is None
    assert positions.mark() == HeadMark(1, Position(100, H))


def test_the_poller_cursor_is_a_pin_and_the_newer_one_wins() -> None:
    shallow = pushed_at(100, head=100)
    plan = choose_pin(push_healthy=True, pushed=shallow, polled=Position(98, P), handled=98, confirmations=2)
    assert plan == ReadPin(Position(98, P), "poll")
    deep = pushed_at(100, head=103)
    assert choose_pin(
        push_healthy=True, pushed=deep, polled=Position(98, P), handled=100, confirmations=2
    ) == ReadPin(Position(100, H), "push")
    assert choose_pin(
        push_healthy=True, pushed=deep, polled=Position(101, P), handled=100, confirmations=2
    ) == ReadPin(Position(101, P), "poll")
    zero = Position(101, Bytes32(bytes(32)))  # a cursor without a hash is no pin
    assert choose_pin(
        push_healthy=True, pushed=shallow, polled=zero, handled=None, confirmations=2
    ) == HeadRead("indexer shallower than confirmations")


def test_a_handled_log_beyond_every_pin_reads_the_head() -> None:
    plan = choose_pin(
        push_healthy=True, pushed=pushed_at(100, head=103), polled=None, handled=101, confirmations=2
    )
    assert plan == HeadRead("a handled log lies beyond the pin")


def test_a_distrusted_stream_reads_the_head_until_the_next_session() -> None:
    positions = pushed_at(100, head=103)
    positions.distrust()
    assert choose_pin(
        push_healthy=True, pushed=positions, polled=None, handled=100, confirmations=2
    ) == HeadRead("push distrusted")
    positions.clear()
    assert not positions.distrusted


# --- the chain step follows the plan -----------------------------------------------------------------------


@dataclass
class Planner:
    """A ``ReadPlanner`` that returns ``plan`` and records what the step told it."""

    plan_: ReadPin | HeadRead
    positions: PushedPositions = field(default_factory=PushedPositions)
    heads: list[int] = field(default_factory=list)
    refusals: list[ReadPin] = field(default_factory=list)

    def plan(self) -> ReadPin | HeadRead:
        return self.plan_

    def mark(self) -> HeadMark:
        return self.positions.mark()

    def observed_head(self, head: int, mark: HeadMark) -> None:
        self.heads.append(head)

    def refused(self, pin: ReadPin, error: str) -> None:
        self.refusals.append(pin)


async def test_a_pinned_plan_reads_at_the_pin_and_no_head(tmp_path: Path) -> None:
    w = world(tmp_path)
    planner = Planner(ReadPin(Position(7, H), "push"))
    w.node.controller.steps.chain.planner = planner
    await w.pass_once()
    assert w.chain.reads_at == [7]
    assert (planner.heads, w.node.controller.steps.chain.read_at) == ([], "push")
    assert w.node.state.snapshot is not None and w.node.state.snapshot.block == 7


async def test_a_head_plan_reads_the_head_and_reports_it(tmp_path: Path) -> None:
    w = world(tmp_path)
    planner = Planner(HeadRead("push down"))
    w.node.controller.steps.chain.planner = planner
    await w.pass_once()
    assert (w.chain.reads_at, planner.heads, w.node.controller.steps.chain.read_at) == ([None], [10], "head")


async def test_a_refused_pin_is_read_again_at_the_head_in_the_same_pass_and_reported(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.chain.refuse_pins = ChainUnavailable("block hash not canonical")
    pin = ReadPin(Position(7, H), "push")
    planner = Planner(pin)
    w.node.controller.steps.chain.planner = planner
    await w.pass_once()
    assert w.chain.reads_at == [None]  # the pinned read raised before it was recorded; the head read worked
    assert (planner.refusals, planner.heads) == ([pin], [10])
    assert w.node.controller.facts.chain_ok


class Events:
    """The event source's mode, as the controller reads it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.indexer_connected = mode == "push"
        self.cursor_block = self.head_block = None
        self.rejected_pushes = 0
        self.rejected_by_reason: dict[str, int] = {}


def test_the_resync_timer_is_slow_only_while_push_is_healthy(tmp_path: Path) -> None:
    controller = world(tmp_path).node.controller
    assert (controller.resync_interval, controller.resync_interval_pushed) == (30.0, 600.0)
    assert controller.resync_delay() == 30.0  # no event source: poll mode
    controller.events = Events("push")  # type: ignore[assignment]
    assert controller.resync_delay() == 600.0
    controller.events = Events("poll")  # type: ignore[assignment]
    assert controller.resync_delay() == 30.0


async def test_every_pass_counts_its_own_rpc_calls(tmp_path: Path) -> None:
    w = world(tmp_path)
    await w.pass_once()
    count = w.metrics.registry.get_sample_value("attestmesh_reconcile_pass_rpc_calls_count")
    assert count == 1  # FakeChain sends no JSON-RPC: the pass is recorded with 0 calls
    assert w.metrics.registry.get_sample_value("attestmesh_reconcile_pass_rpc_calls_sum") == 0


# --- the synced read skips what syncState() says did not change --------------------------------------------


@dataclass
class Cluster:
    """The four reads ``SyncedReads`` makes, in memory, counting each."""

    sync: SyncState
    members: list[MemberRecord] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)

    async def sync_state(self, *, block: Bytes32) -> SyncState:
        self.reads.append("syncState")
        return self.sync

    async def members_paged(self, *, block: Bytes32) -> list[MemberRecord]:
        self.reads.append("membersPage")
        return list(self.members)

    async def is_app_allowed(self, boot: BootInfo, *, block: Bytes32) -> BootVerdict:
        self.reads.append("isAppAllowed")
        return BootVerdict(True, "")

    async def mesh_cidr(self, *, block: Bytes32) -> MeshCidr:
        self.reads.append("meshCidr")
        return MeshCidr.parse("10.77.0.0/24")


async def test_a_synced_read_skips_what_did_not_change_and_rereads_after_going_back() -> None:
    reads = SyncedReads(providers=1)
    cluster = Cluster(SyncState(1, 1, 1, None, 0))
    zero = Bytes32(bytes(32))
    boot = BootInfo(Address(b"\x01" * 20), zero, Address(b"\x03" * 20), zero, zero, zero, zero, "UpToDate")

    async def at(block: int, mesh: MeshCidr | None = MESH) -> list[str]:
        cluster.reads.clear()
        await reads.read(0, cluster, block=block, pin=H, boot=boot, mesh=mesh)  # type: ignore[arg-type]
        return cluster.reads

    assert await at(10, mesh=None) == ["syncState", "membersPage", "isAppAllowed", "meshCidr"]
    assert await at(11) == ["syncState"]
    cluster.sync = SyncState(2, 1, 1, None, 1)  # a member registered
    assert await at(12) == ["syncState", "membersPage"]
    cluster.sync = SyncState(2, 2, 1, None, 1)  # the policy moved
    assert await at(13) == ["syncState", "isAppAllowed"]
    assert await at(12) == ["syncState", "membersPage", "isAppAllowed"]  # an older block: read it all
    reads.forget(0)
    assert await at(14) == ["syncState", "membersPage", "isAppAllowed"]
