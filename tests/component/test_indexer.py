"""The indexer service against a real anvil with our contracts, a real guest-agent simulator, and real
aiohttp WebSocket clients that sign hellos with members' identity keys and verify every push.

The service runs in-process on 127.0.0.1 (a free port); the simulator is served in-process on a short
/tmp socket path. Everything started here is stopped here; nothing but loopback is used.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import aiohttp
import pytest

from devnet.deployment import Deployment
from indexer.follower import CLUSTER_CODEC, MEMBER_REGISTERED, MEMBER_REMOVED
from indexer.service import IndexerService
from sidecar.buildinfo import build_info
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import TxSubmitter
from sidecar.core.cursor import Cursor
from sidecar.core.ids import Bytes32, MemberId, SecretBytes
from sidecar.core.indexerwire import (
    Checkpoint,
    Close,
    Event,
    Message,
    PushVerifier,
    Verified,
    Welcome,
    decode,
    encode,
    sign_hello,
)
from tests.component.toolkit import (
    DEADLINE,
    Chain,
    Factory,
    Member,
    get_json,
    wait_healthy,
)

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]


# --- the client ----------------------------------------------------------------------------------------


class Subscriber:
    """A WebSocket client that signs its hello with the member's identity key and verifies every push."""

    def __init__(self, http: aiohttp.ClientSession, service: IndexerService, member: Member, pub: Bytes32):
        self.http, self.service, self.member, self.pub = http, service, member, pub
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.verifier: PushVerifier | None = None
        self.cursor: Cursor | None = None
        self.events: list[Event] = []
        self.texts: list[str] = []  # every event frame as received (protocol v2: the same for everyone)
        self.sent = ""  # the hello frame last sent

    async def open(
        self,
        cursor: Cursor | None = None,
        *,
        key: SecretBytes | None = None,
        member_id: MemberId | None = None,
    ) -> Message | None:
        self.ws = await self.http.ws_connect(f"http://127.0.0.1:{self.service.port}/v1/subscribe")
        nonce = os.urandom(16)
        hello = sign_hello(
            cluster=self.member.cluster,
            member_id=member_id or self.member.member_id,
            indexer=self.pub,
            cursor=cursor,
            timestamp_ms=int(time.time() * 1000),
            nonce=nonce,
            identity_key=key or self.member.identity,
        )
        self.sent = encode(hello)
        await self.ws.send_str(self.sent)
        first = await self.recv()
        if isinstance(first, Welcome):
            self.verifier = PushVerifier(self.member.cluster, self.pub, cursor or first.start, nonce)
            assert self.verifier.welcome(first) is None
            self.cursor = first.start
        return first

    async def send_raw(self, frame: str) -> Message | None:
        """Connect and send ``frame`` as the first frame (a captured hello, replayed); return the answer."""
        self.ws = await self.http.ws_connect(f"http://127.0.0.1:{self.service.port}/v1/subscribe")
        await self.ws.send_str(frame)
        return await self.recv()

    async def recv(self, timeout: float = DEADLINE) -> Message | None:  # noqa: ASYNC109
        assert self.ws is not None
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            message = decode(msg.data)
            if isinstance(message, Event):
                self.texts.append(msg.data)
            return message
        return None  # the socket closed

    async def take(self, *, ack: bool = True) -> Message | None:
        message = await self.recv()
        if isinstance(message, Event | Checkpoint):
            assert self.verifier is not None and self.ws is not None
            verified = self.verifier.check(message)
            assert isinstance(verified, Verified), verified
            assert verified.message.cluster == self.member.cluster
            self.cursor = self.verifier.accept(verified)
            if isinstance(message, Event):
                assert message.log.address == self.member.cluster
                self.events.append(message)
            if ack:
                acknowledgement = self.verifier.ack()
                assert acknowledgement is not None
                await self.ws.send_str(encode(acknowledgement))
        return message

    async def until(self, done: Callable[[Message | None], bool]) -> Message | None:
        async with asyncio.timeout(DEADLINE):
            while True:
                message = await self.take()
                if done(message) or message is None or isinstance(message, Close):
                    return message

    async def close_reason(self) -> str | None:
        """Read (verifying) until the indexer's close frame; return its reason."""
        message = await self.until(lambda m: isinstance(m, Close))
        return message.reason if isinstance(message, Close) else None

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


def registers(member: Member) -> Callable[[Message | None], bool]:
    def check(message: Message | None) -> bool:
        return (
            isinstance(message, Event)
            and message.log.topics[0] == MEMBER_REGISTERED
            and message.log.topics[1].raw == member.member_id.raw
        )

    return check


def checkpoint_at_least(block: int) -> Callable[[Message | None], bool]:
    return lambda m: isinstance(m, Checkpoint) and m.block >= block


# --- tests -------------------------------------------------------------------------------------------------


async def test_health_answers_before_catch_up_and_status_shows_key_and_registry(
    http: aiohttp.ClientSession,
    make_indexer: Factory,
    chain: Chain,
    stack: Deployment,
    deployer: TxSubmitter,
    conn: ChainConnection,
    indexer_pub: Bytes32,
) -> None:
    code_id = Bytes32(b"\x0c" * 32)
    await IndexerRegistryClient(conn, stack.indexer_registry, deployer).set_indexer(
        "ws://127.0.0.1:1/v1/subscribe", code_id, indexer_pub
    )
    await chain.mine(2000)
    service = await make_indexer(MAX_LOG_RANGE="2", CODE_ID=str(code_id))
    status, body = await get_json(http, service, "/healthz")
    assert status == 503 and body["ready"] is False and body["healthy"] is False
    health = await wait_healthy(http, service)
    assert health["ready"] is True and health["lag_blocks"] == 0
    assert health["indexed_through"] == health["head_block"]
    status, info = await get_json(http, service, "/status")
    assert status == 200
    assert info["public_key"] == str(indexer_pub)
    assert str(stack.cluster) in [c["address"] for c in info["clusters"]]
    assert info["registry"]["matches"] is True and info["registry"]["code_id_match"] is True
    assert info["subscribers"] == 0
    async with http.get(f"http://127.0.0.1:{service.port}/metrics") as response:
        text = await response.text()
    assert "attestmesh_indexer_head_lag_blocks 0.0" in text
    # Which code runs (sidecar.buildinfo): this checkout, in /healthz and as attestmesh_build_info.
    build = build_info()
    assert health["version"] == build.version and health["build"] == build.to_json()
    assert build.source == "git" and len(build.commit) == 40
    assert f'commit="{build.commit}"' in text and 'source="git"' in text


async def test_registry_mismatch_is_shown_not_fatal(
    http: aiohttp.ClientSession, make_indexer: Factory
) -> None:
    service = await make_indexer()
    await wait_healthy(http, service)
    _, info = await get_json(http, service, "/status")
    assert info["registry"]["checked"] is True
    assert info["registry"]["registered"] is False and info["registry"]["matches"] is False


async def test_replay_then_live_acks_and_checkpoints(
    http: aiohttp.ClientSession, make_indexer: Factory, chain: Chain, indexer_pub: Bytes32
) -> None:
    first = await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    sub = Subscriber(http, service, first, indexer_pub)
    welcome = await sub.open(None)
    assert isinstance(welcome, Welcome) and welcome.start == Cursor.start(first.block)
    assert isinstance(await sub.until(registers(first)), Event)
    assert sub.events[0].log.block_number == first.block  # replay starts at the registration block
    delays = service.metrics.registry.get_sample_value("attestmesh_indexer_push_delay_seconds_count")
    assert delays == 0  # a replay is not a live delivery
    second = await chain.member()
    assert isinstance(await sub.until(registers(second)), Event)
    live = service.metrics.registry.get_sample_value("attestmesh_indexer_push_delay_seconds_count")
    assert live is not None and live >= 1  # the live event's delay from indexed to written was measured
    await chain.mine(3)
    head = await chain.conn.block_number()
    assert isinstance(await sub.until(checkpoint_at_least(head)), Checkpoint)
    assert sub.cursor is not None and sub.cursor.next_block == head + 1
    deadline = time.monotonic() + DEADLINE
    while service.hub.sessions and next(iter(service.hub.sessions)).acked_seq != sub.verifier.seq:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    # a resubscription from the persisted cursor gets nothing twice
    await sub.close()
    again = Subscriber(http, service, first, indexer_pub)
    assert isinstance(await again.open(sub.cursor), Welcome)
    await chain.mine(1)
    message = await again.take()
    # v2: the checkpoint's prev is the cluster's last log (the second registration), not our position
    assert isinstance(message, Checkpoint) and message.block > sub.cursor.block
    assert message.prev == sub.events[-1].cursor
    await again.close()


async def test_every_subscriber_gets_the_same_event_bytes_signed_once(
    http: aiohttp.ClientSession, make_indexer: Factory, chain: Chain, indexer_pub: Bytes32
) -> None:
    first, second = await chain.member(), await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    subs = [Subscriber(http, service, m, indexer_pub) for m in (first, second)]
    for sub in subs:
        assert isinstance(await sub.open(None), Welcome)
        assert isinstance(await sub.until(registers(second)), Event)
    frames = service.hub.frames()
    assert frames is not None
    third = await chain.member()
    for sub in subs:
        assert isinstance(await sub.until(registers(third)), Event)
    ours = [sub.texts[sub.texts.index(subs[1].texts[0]) :] for sub in subs]  # from the second's start on
    assert ours[0] == ours[1] and len(ours[0]) >= 2  # byte-identical frames, verified by both
    registered = [t for t in ours[0] if str(third.member_id).lower()[2:] in t]
    assert len(registered) == 1 and len(frames) >= len(set(ours[0]))


async def test_csk_epoch_events_reach_the_members(
    http: aiohttp.ClientSession, make_indexer: Factory, chain: Chain, indexer_pub: Bytes32
) -> None:
    """A commitment and a rotation are pushed like any cluster event: members re-read the epoch on them."""
    first = await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    sub = Subscriber(http, service, first, indexer_pub)
    assert isinstance(await sub.open(None), Welcome)
    owner = ClusterClient(chain.conn, first.cluster, chain.deployer)
    topics = {name: CLUSTER_CODEC.topic_of(name) for name in ("CskCommitmentSet", "CskRotated")}

    def pushed(name: str) -> Callable[[Message | None], bool]:
        return lambda m: isinstance(m, Event) and m.log.topics[0] == topics[name]

    await first.client(chain.conn).set_csk_commitment(1, Bytes32(os.urandom(32)))
    committed = await sub.until(pushed("CskCommitmentSet"))
    assert isinstance(committed, Event) and committed.log.topics[2] == Bytes32((1).to_bytes(32, "big"))
    receipt = await owner.rotate_csk()
    rotated = await sub.until(pushed("CskRotated"))
    assert isinstance(rotated, Event) and rotated.log.block_number == receipt.block_number
    assert owner.events([rotated.log])[0]["epoch"] == 2
    await sub.close()


async def test_non_member_and_wrong_key_are_unauthorized(
    http: aiohttp.ClientSession, make_indexer: Factory, chain: Chain, indexer_pub: Bytes32
) -> None:
    member = await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    stranger = Subscriber(http, service, member, indexer_pub)
    refused = await stranger.open(None, member_id=MemberId(os.urandom(32)))
    assert isinstance(refused, Close) and refused.reason == "unauthorized"
    assert await stranger.recv() is None
    forger = Subscriber(http, service, member, indexer_pub)
    refused = await forger.open(None, key=SecretBytes(os.urandom(32)))
    assert isinstance(refused, Close) and refused.reason == "unauthorized"
    wrong_audience = Subscriber(http, service, member, Bytes32(os.urandom(32)))
    refused = await wrong_audience.open(None)
    assert isinstance(refused, Close) and refused.reason == "unauthorized"
    assert "wrong_indexer" in refused.detail
    assert service.metrics.hellos.labels("not_member")._value.get() == 1


async def test_a_replayed_hello_is_refused_and_counted(
    http: aiohttp.ClientSession, make_indexer: Factory, chain: Chain, indexer_pub: Bytes32
) -> None:
    """Issue 12: a hello captured on the wire could be sent again within its freshness window and opened a
    session; now the indexer remembers every accepted nonce for the window and refuses the copy."""
    member = await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    first = Subscriber(http, service, member, indexer_pub)
    assert isinstance(await first.open(None), Welcome)  # the welcome verifies against this hello's nonce
    captured = first.sent
    await first.close()
    thief = Subscriber(http, service, member, indexer_pub)
    refused = await thief.send_raw(captured)
    assert isinstance(refused, Close) and (refused.reason, refused.detail) == ("unauthorized", "replayed")
    assert service.metrics.hellos.labels("replayed")._value.get() == 1
    assert service.metrics.hellos.labels("accepted")._value.get() == 1
    again = Subscriber(http, service, member, indexer_pub)
    assert isinstance(await again.open(None), Welcome)  # a fresh hello of the same member is welcome
    await again.close()


async def test_events_of_another_cluster_never_reach_a_member(
    http: aiohttp.ClientSession, make_indexer: Factory, chain: Chain, indexer_pub: Bytes32
) -> None:
    a1 = await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    cluster_b = await chain.cluster()
    b1 = await chain.member(cluster_b)
    sub_a = Subscriber(http, service, a1, indexer_pub)
    sub_b = Subscriber(http, service, b1, indexer_pub)
    assert isinstance(await sub_a.open(None), Welcome)
    deadline = time.monotonic() + DEADLINE
    while not isinstance(welcome := await sub_b.open(None), Welcome):  # B is followed once discovered
        assert isinstance(welcome, Close) and welcome.reason == "unavailable"
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    b2 = await chain.member(cluster_b)
    a2 = await chain.member()
    await sub_b.until(registers(b2))
    await sub_a.until(registers(a2))
    head = await chain.conn.block_number()
    await sub_a.until(checkpoint_at_least(head))
    assert all(e.log.address == a1.cluster for e in sub_a.events)  # also asserted on every take()
    assert b2.member_id.raw not in {e.log.topics[1].raw for e in sub_a.events if len(e.log.topics) > 1}
    assert all(e.log.address == cluster_b for e in sub_b.events)


async def test_a_removed_member_gets_its_removal_and_then_is_closed_unauthorized(
    http: aiohttp.ClientSession, make_indexer: Factory, chain: Chain, indexer_pub: Bytes32
) -> None:
    staying, leaving = await chain.member(), await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    sub_staying = Subscriber(http, service, staying, indexer_pub)
    sub_leaving = Subscriber(http, service, leaving, indexer_pub)
    for sub in (sub_staying, sub_leaving):
        assert isinstance(await sub.open(None), Welcome)
    await ClusterClient(chain.conn, staying.cluster, chain.deployer).remove_member(leaving.member_id)

    def removal(message: Message | None) -> bool:
        return isinstance(message, Event) and message.log.topics[0] == MEMBER_REMOVED

    assert await sub_leaving.close_reason() == "unauthorized"
    assert any(removal(e) for e in sub_leaving.events)  # served up to and including its own removal
    assert isinstance(await sub_staying.until(removal), Event)  # everyone else is still served
    deadline = time.monotonic() + DEADLINE
    while len(service.hub.sessions) != 1:  # the closing handshake ends the session
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    closed = service.metrics.registry.get_sample_value(
        "attestmesh_indexer_sessions_closed_total", {"reason": "unauthorized"}
    )
    assert closed == 1
    again = Subscriber(http, service, leaving, indexer_pub)  # and it cannot come back
    refused = await again.open(sub_leaving.cursor)
    assert isinstance(refused, Close) and refused.reason == "unauthorized"
    await sub_staying.close()


async def test_slow_subscriber_overflows_and_resumes_from_its_acked_cursor(
    http: aiohttp.ClientSession,
    make_indexer: Factory,
    chain: Chain,
    indexer_pub: Bytes32,
    conn: ChainConnection,
) -> None:
    first = await chain.member()
    for _ in range(4):
        await chain.member()
    service = await make_indexer(QUEUE_BOUND="3", ACK_TIMEOUT="1")
    await wait_healthy(http, service)
    slow = Subscriber(http, service, first, indexer_pub)
    assert isinstance(await slow.open(None), Welcome)
    acked = await slow.take(ack=True)
    assert isinstance(acked, Event)
    acked_cursor = slow.cursor
    taken = [acked]
    while True:  # read without acking: the window fills and the indexer closes with "overflow"
        message = await slow.take(ack=False)
        if isinstance(message, Close):
            assert message.reason == "overflow"
            break
        assert message is not None
        taken.append(message)  # type: ignore[arg-type]
    assert len(taken) == 1 + 3  # one acked, then exactly the queue bound unacked
    resumed = Subscriber(http, service, first, indexer_pub)
    assert isinstance(await resumed.open(acked_cursor), Welcome)
    head = await conn.block_number()
    await resumed.until(checkpoint_at_least(head))
    logs = await conn.get_logs([first.cluster], first.block, head)
    expected = [(entry.block_number, entry.log_index) for entry in logs]
    got = [(e.log.block_number, e.log.log_index) for e in [acked, *resumed.events]]
    assert got == expected  # nothing missed, nothing twice
    assert service.metrics.sessions_closed.labels("overflow")._value.get() == 1


async def test_malformed_frames_are_closed_and_others_keep_receiving(
    http: aiohttp.ClientSession, make_indexer: Factory, chain: Chain, indexer_pub: Bytes32
) -> None:
    member = await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    good = Subscriber(http, service, member, indexer_pub)
    assert isinstance(await good.open(None), Welcome)
    await good.until(registers(member))
    url = f"http://127.0.0.1:{service.port}/v1/subscribe"
    for frame in (
        "not json",
        '{"v":2,"type":"hello"}',
        '{"v":1,"type":"hello"}',
        "x" * 100_000,
        b"\x00binary",
    ):
        async with http.ws_connect(url) as ws:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            msg = await ws.receive(timeout=DEADLINE)
            assert msg.type == aiohttp.WSMsgType.TEXT
            close = decode(msg.data)
            assert isinstance(close, Close) and close.reason == "malformed", close
    # garbage after a valid welcome
    bad = Subscriber(http, service, member, indexer_pub)
    assert isinstance(await bad.open(None), Welcome)
    assert bad.ws is not None
    await bad.ws.send_str('{"v":2,"type":"ack","seq":"1"}')
    assert await bad.close_reason() == "malformed"
    newcomer = await chain.member()
    assert isinstance(await good.until(registers(newcomer)), Event)


async def test_reorg_closes_subscribers_and_never_delivers_a_stale_log(
    http: aiohttp.ClientSession,
    make_indexer: Factory,
    chain: Chain,
    indexer_pub: Bytes32,
    conn: ChainConnection,
) -> None:
    member = await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    sub = Subscriber(http, service, member, indexer_pub)
    assert isinstance(await sub.open(None), Welcome)
    await sub.until(checkpoint_at_least(member.block))
    before = sub.cursor
    assert before is not None
    snapshot = await chain.rpc("evm_snapshot")
    ghost = await chain.member()
    assert isinstance(await sub.until(registers(ghost)), Event)
    stale = sub.cursor
    await chain.rpc("evm_revert", snapshot)
    await chain.mine(5)
    reason = await sub.close_reason()
    assert reason == "reorg"
    assert service.metrics.reorgs._value.get() >= 1
    # a cursor on the abandoned branch is refused
    again = Subscriber(http, service, member, indexer_pub)
    refused = await again.open(stale)
    assert isinstance(refused, Close) and refused.reason == "reorg"
    # from before the fork: the canonical chain only, the ghost never again
    canonical = Subscriber(http, service, member, indexer_pub)
    assert isinstance(await canonical.open(before), Welcome)
    head = await conn.block_number()
    await canonical.until(checkpoint_at_least(head))
    assert not any(registers(ghost)(e) for e in canonical.events)
    assert await ClusterClient(conn, member.cluster).member_by_id(ghost.member_id) is None


async def test_shutdown_closes_every_session_within_the_timeout(
    http: aiohttp.ClientSession, make_indexer: Factory, chain: Chain, indexer_pub: Bytes32
) -> None:
    member = await chain.member()
    service = await make_indexer()
    await wait_healthy(http, service)
    subs = [Subscriber(http, service, member, indexer_pub) for _ in range(3)]
    for sub in subs:
        assert isinstance(await sub.open(None), Welcome)
    started = time.monotonic()
    stopping = asyncio.create_task(service.shutdown())
    for sub in subs:
        assert await sub.close_reason() == "shutdown"
    await stopping
    assert time.monotonic() - started < service.settings.shutdown_timeout
    assert service.metrics.sessions_closed.labels("shutdown")._value.get() == 3
