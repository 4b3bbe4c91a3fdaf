"""CSK epochs on one node (issue 12, item 7), with the small honest fakes of ``tests/unit/passkit.py``.

Acquisition: a member acquires the key of the snapshot's epoch, checked against that epoch's commitment,
naming the epoch in its request; healthy requires the current epoch's key. Serving: only an epoch the node
holds verified (the current one, or the previous one within its grace period), only to a member of its
snapshot (``not_member`` once evicted). Grace: the previous key is kept in memory for
``ATTESTMESH_CSK_GRACE`` seconds by the fake clock, then forgotten. Restart: the epoch is kept (cache or
re-derivation), the previous key is not.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from structlog.testing import capture_logs

from sidecar.core import csk as cskcore
from sidecar.core.cskepochs import GraceKeys
from sidecar.core.ids import Bytes32, SecretBytes
from sidecar.core.model import MemberRecord
from sidecar.drivers.clock import wall_ms
from sidecar.drivers.identity import derive_csk_key
from sidecar.observability import Metrics
from tests.unit.passkit import FakeChain, World, other_member, world
from tests.unit.proofkit import derived_member

CSK1 = SecretBytes(b"\x41" * 32)
CSK2 = SecretBytes(b"\x42" * 32)
GRACE = 3600.0  # the default ATTESTMESH_CSK_GRACE


def refused(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("attestmesh_csk_requests_refused_total", {"reason": reason})
    return value or 0.0


# --- GraceKeys (pure) ------------------------------------------------------------------------------------


def test_the_replaced_key_of_an_earlier_epoch_is_kept_until_the_grace_period_ends() -> None:
    grace = GraceKeys(100.0)
    kept = grace.replaced(1, CSK1, cskcore.commitment(CSK1), new_epoch=2, now=10.0)
    assert kept is not None and (kept.epoch, kept.until) == (1, 110.0)
    assert grace.for_epoch(1, 109.9) == kept and grace.for_epoch(2, 50.0) is None
    assert grace.previous(110.0) is None  # over: forgotten for good
    assert grace.for_epoch(1, 50.0) is None
    assert "4141" not in repr(kept) and "4141" not in repr(grace)


def test_only_an_earlier_epoch_is_kept_and_never_without_a_grace_period() -> None:
    grace = GraceKeys(100.0)
    assert grace.replaced(2, CSK2, cskcore.commitment(CSK2), new_epoch=2, now=0.0) is None  # same epoch
    grace.replaced(1, CSK1, cskcore.commitment(CSK1), new_epoch=2, now=0.0)
    assert grace.replaced(2, CSK2, cskcore.commitment(CSK2), new_epoch=1, now=1.0) is None  # went back
    assert grace.previous(1.0) is None  # epoch 1 is current again: no "previous" epoch 1
    none = GraceKeys(0.0)
    assert none.replaced(1, CSK1, cskcore.commitment(CSK1), new_epoch=2, now=0.0) is None
    assert none.previous(0.0) is None
    grace.replaced(1, CSK1, cskcore.commitment(CSK1), new_epoch=2, now=0.0)
    grace.clear()
    assert grace.previous(0.0) is None


# --- a member through a rotation ---------------------------------------------------------------------------


async def member_at_epoch_1(tmp_path: Path) -> tuple[World, MemberRecord]:
    """A non-originator member, healthy with epoch 1's key pulled from the originator."""
    chain = FakeChain()
    peer = other_member(1, chain.mesh)
    chain.members.append(peer)
    chain.commitment = cskcore.commitment(CSK1)
    w = world(tmp_path, chain)
    w.peers.by_epoch = {1: CSK1, 2: CSK2}
    w.hear(peer)
    await w.pass_once()
    assert await w.pass_once() == ("healthy", "")
    assert w.node.csk.held.epoch == 1 and w.node.controller.status.csk_epoch == 1
    return w, peer


def rotate(w: World, *, committed: bool = True) -> None:
    w.chain.epoch += 1
    w.chain.head += 1
    w.chain.commitment = cskcore.commitment(CSK2) if committed else None


async def test_a_rotation_moves_members_to_the_new_epoch_and_keeps_the_old_key_for_the_grace(
    tmp_path: Path,
) -> None:
    w, peer = await member_at_epoch_1(tmp_path)
    rotate(w, committed=False)
    phase, reason = await w.pass_once()
    # healthy requires the current epoch's key; the old one is not served to apps as current
    assert (phase, reason) == (
        "csk_acquire",
        "waiting for the cluster shared key: waiting for the originator to commit the cluster shared key of "
        "epoch 2",
    )
    assert w.node.controller.csk_value() is None and w.node.controller.csk_previous() is None
    w.chain.commitment = cskcore.commitment(CSK2)
    w.hear(peer)
    with capture_logs() as logs:
        assert await w.pass_once() == ("healthy", "")
    assert w.peers.requests[-1].epoch == 2  # the request names the epoch wanted
    events = [e["event"] for e in logs]
    assert "csk.cache_rejected" not in events  # the cache held epoch 1's key, as memory did: not read
    (changed,) = [e for e in logs if e["event"] == "csk.epoch_changed"]
    assert (changed["from_epoch"], changed["to_epoch"], changed["previous_kept_s"]) == (1, 2, GRACE)
    current = w.node.controller.csk_value()
    assert current is not None and current.reveal() == CSK2.reveal()
    previous = w.node.controller.csk_previous()
    assert previous is not None and previous.epoch == 1 and previous.value.reveal() == CSK1.reveal()
    assert previous.commitment == cskcore.commitment(CSK1)
    assert previous.until_unix == int(w.clock.wall() + GRACE)
    status = w.node.controller.status
    assert (status.csk_epoch, status.csk_previous_epoch) == (2, 1)

    w.clock.advance(GRACE - 1)
    w.hear(peer)
    await w.pass_once()
    assert w.node.controller.status.csk_previous_epoch == 1
    w.clock.advance(1)  # the grace period is over: forgotten
    w.hear(peer)
    assert await w.pass_once() == ("healthy", "")
    assert w.node.controller.csk_previous() is None
    assert w.node.controller.status.csk_previous_epoch is None


async def test_a_key_that_is_not_the_new_epochs_is_never_adopted(tmp_path: Path) -> None:
    w, peer = await member_at_epoch_1(tmp_path)
    w.peers.by_epoch = {2: CSK1}  # a peer answering epoch 2 with epoch 1's key
    rotate(w)
    w.hear(peer)
    phase, reason = await w.pass_once()
    assert phase == "csk_acquire" and reason.endswith(f"({str(peer.member_id)[:10]}: invalid)")
    assert w.node.csk.held.epoch == 1 and w.node.controller.csk_value() is None


# --- serving ---------------------------------------------------------------------------------------------


def request_from(w: World, peer: MemberRecord, epoch: int) -> dict[str, object]:
    proof, identity, _ = derived_member(peer.app_id)
    me = w.node.state.member_id
    assert me is not None
    w.clock.advance(0.01)  # a fresh timestamp: never a replay
    return cskcore.sign_request(
        cskcore.CskRequest(w.chain.cluster, peer.member_id, me, wall_ms(w.clock), epoch), identity, proof
    )


def ask(w: World, peer: MemberRecord, epoch: int) -> tuple[int, str]:
    answer = w.node.csk.respond(request_from(w, peer, epoch), IPv4Address("10.77.0.11"))
    return answer.status, str(answer.body.get("reason", ""))


def opened(w: World, peer: MemberRecord, epoch: int, commitment: Bytes32) -> bytes:
    _, _, seal = derived_member(peer.app_id)
    body = request_from(w, peer, epoch)
    req = cskcore.parse_request(body)
    answer = w.node.csk.respond(body, IPv4Address("10.77.0.11"))
    assert answer.status == 200, answer.body
    sealed = cskcore.check_response(req.request, answer.body, w.node.csk.anchors)  # type: ignore[arg-type]
    return cskcore.open_sealed(sealed, seal, commitment).reveal()


async def test_a_node_serves_the_epochs_it_holds_verified_and_only_to_members(tmp_path: Path) -> None:
    w, peer = await member_at_epoch_1(tmp_path)
    rotate(w)
    w.hear(peer)
    assert await w.pass_once() == ("healthy", "")
    w.clock.advance(0.01)
    assert opened(w, peer, 2, cskcore.commitment(CSK2)) == CSK2.reveal()
    assert opened(w, peer, 1, cskcore.commitment(CSK1)) == CSK1.reveal()  # the previous, in its grace
    assert ask(w, peer, 3) == (503, "epoch_not_held")
    assert refused(w.metrics, "epoch_not_held") == 1

    # Evicted: gone from the chain's member list, so from the confirmed snapshot: refused the new epoch.
    w.chain.members.remove(peer)
    w.chain.head += 1
    await w.pass_once()
    assert ask(w, peer, 2) == (403, "not_member")
    assert ask(w, peer, 1) == (403, "not_member")
    assert refused(w.metrics, "not_member") == 2


async def test_the_previous_epoch_is_not_served_after_its_grace(tmp_path: Path) -> None:
    w, peer = await member_at_epoch_1(tmp_path)
    rotate(w)
    w.hear(peer)
    await w.pass_once()
    w.clock.advance(GRACE)
    w.hear(peer)
    assert ask(w, peer, 1) == (503, "epoch_not_held")
    assert ask(w, peer, 2) == (200, "")


# --- restarts keep the epoch ------------------------------------------------------------------------------


async def test_a_restarted_member_keeps_the_epoch_from_its_cache_but_not_the_previous_key(
    tmp_path: Path,
) -> None:
    w, peer = await member_at_epoch_1(tmp_path)
    rotate(w)
    w.hear(peer)
    await w.pass_once()
    w.node.csk.drop()  # a restart: nothing in memory
    w.peers.by_epoch = {}  # and no peer would serve it: the cache must
    w.peers.key = None
    assert await w.pass_once() == ("healthy", "")
    assert (w.node.csk.held.source, w.node.csk.held.epoch) == ("cache", 2)
    assert w.node.controller.csk_previous() is None


async def test_a_restarted_originator_rederives_the_current_epochs_key(tmp_path: Path) -> None:
    chain = FakeChain()
    w = world(tmp_path, chain)
    await w.pass_once()  # registers: the originator
    await w.pass_once()  # derives and commits epoch 1
    chain.epoch, chain.commitment, chain.head = 2, None, chain.head + 1
    await w.pass_once()  # commits epoch 2
    assert chain.committed_epochs == [1, 2]
    expected = cskcore.csk_from_key(await derive_csk_key(w.agent, w.node.state.identity.scope, 2))  # type: ignore[union-attr]
    assert chain.commitment == cskcore.commitment(expected)
    (tmp_path / "csk.cache").unlink()  # no cache: the originator re-derives
    w.node.csk.drop()
    await w.pass_once()
    assert (w.node.csk.held.source, w.node.csk.held.epoch) == ("derived", 2)
    assert w.node.controller.csk_value() is not None
