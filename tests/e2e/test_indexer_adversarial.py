"""The shared indexer under attack on the devnet: a rogue indexer registered on chain (acceptance point 4), a
chain reorg across a registration (point 5), and malformed WebSocket frames and hellos (point 6) — asserted
through the sidecars' /healthz, /metrics and logs, the WireGuard devices (UAPI), chain reads, and the real
indexer's /status, /metrics and WebSocket answers.

The rogue indexer (``tests/rogue.py``) runs in this process, on an event loop in a thread of its own, bound to
the lab's root-side address (conftest's ``PLAN.root_ip``), which the node namespaces reach through the lab
bridge. Keys are derived from the public devnet KMS (as an attacker could on a devnet, never on dstack), held
in ``SecretBytes`` and never printed. Traffic goes only to lab addresses.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest

from devnet.boot import PUSH_CROSSCHECK_ENV
from devnet.kms import DevnetKms, derive_key
from devnet.labreach import LabReach
from indexer.follower import MEMBER_REGISTERED
from indexer.service import key_path as indexer_key_path
from sidecar.chain.contracts import ClusterClient, ClusterFactoryClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.indexerwire import (
    MAX_FRAME_BYTES,
    Checkpoint,
    Close,
    Event,
    Hello,
    Message,
    PushVerifier,
    Verified,
    Welcome,
    decode,
    encode,
    sign_hello,
)
from sidecar.core.keys import ed25519_public_key
from sidecar.core.model import ClusterConfig, MemberRecord, MeshCidr
from tests.e2e.lab import PLAN, LabCli, as_owner, sidecar_log, wait_until
from tests.e2e.mesh import Node, identity_key, in_push_mode, lab_reach, member_id, nodes, wait_all_healthy
from tests.rogue import RogueIndexer, Script, forge_next_event, other_cluster, replayed, tampered

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

T = TypeVar("T")

DEADLINE = 30.0
RESYNC_INTERVAL = 15.0  # the devnet's ATTESTMESH_RESYNC_INTERVAL: a control pass at least this often
PUSHED = "attestmesh_chain_logs_pushed_total"
# The close codes docs/protocol.md suggests with each reason (the indexer's own table is not consulted).
CLOSE_CODE = {"malformed": 1008, "unauthorized": 1008, "protocol": 1008, "unavailable": 1011}


@dataclass(frozen=True)
class LabChain:
    """Chain reads and owner transactions against one lab (read its status once: every ``status`` is a CLI
    run, and the RPC URL, chain id and cluster of a lab never change)."""

    status: dict[str, Any]

    def __call__(self, action: Callable[[ChainConnection, ClusterClient], Awaitable[T]]) -> T:
        return as_owner(self.status, action)


# --- sidecars ------------------------------------------------------------------------------------------


def wait_push(found: dict[str, Node], timeout: float = DEADLINE) -> None:
    for node in found.values():
        wait_until(lambda n=node: in_push_mode(n), timeout, f"{node.name} in push mode")


def rejected(node: Node, reason: str) -> int:
    return int(node.healthz()["events"]["rejected_by_reason"].get(reason, 0))


def peer_changes(node: Node) -> float:
    return sum(
        node.counter("attestmesh_peer_changes_total", change=c) for c in ("added", "removed", "updated")
    )


def passes(node: Node) -> float:
    return sum(
        node.counter("attestmesh_reconcile_passes_total", result=r) for r in ("changed", "unchanged", "error")
    )


def handled(lab: LabCli, name: str, source: str) -> set[tuple[int, int]]:
    """Positions (block, log index) the node's shared cursor handled first from ``source`` (push or poll)."""
    return {
        (e["block"], e["log_index"])
        for e in sidecar_log(lab, name, "events.handled")
        if e["source"] == source
    }


def restart_sidecar_with_crosscheck(lab: LabCli, name: str) -> None:
    """Restart the node's sidecar with ATTESTMESH_PUSH_CROSSCHECK=1 (every pushed event checked on chain)."""
    lab.run("node", "restart", name, env={PUSH_CROSSCHECK_ENV: "1"})


def canonical_peers(members: list[MemberRecord], me: MemberId) -> set[str]:
    """The WireGuard keys (UAPI's hex) a member's device must hold: every other member on chain."""
    return {m.wg_pub.hex for m in members if m.member_id != me}


# --- the real indexer ----------------------------------------------------------------------------------


@dataclass
class Indexer:
    """The lab's indexer as the state file describes it, read the way its lab allows (through the gateway
    in gateway mode)."""

    data: dict[str, Any]
    reach: LabReach = field(default_factory=LabReach)

    @property
    def url(self) -> str:
        return str(self.data["url"])

    @property
    def public_key(self) -> Bytes32:
        return Bytes32.from_hex(self.data["public_key"])

    def _url(self, key: str) -> str:
        through = self.data.get(f"gateway_{key}") if self.reach.gateway is not None else None
        return str(through or self.data[key])

    def status(self) -> dict[str, Any]:
        answer = self.reach.get_json(self._url("status_url"), 3.0)
        assert answer.ok and isinstance(answer.data, dict), f"indexer /status answered {answer.status}"
        return answer.data

    def metrics(self) -> list[str]:
        answer = self.reach.get_json(self._url("health_url").replace("/healthz", "/metrics"), 3.0)
        assert answer.ok, f"indexer /metrics answered {answer.status}"
        return answer.text.splitlines()

    def counters(self, name: str) -> dict[str, float]:
        """Every sample of the counter ``name``, by its one label value."""
        found = {}
        for line in self.metrics():
            if line.startswith(f"{name}{{"):
                metric, _, value = line.rpartition(" ")
                found[metric.split('"')[1]] = float(value)
        return found

    def counter(self, name: str) -> float:
        """The one sample of the unlabelled counter ``name``."""
        return next(float(line.split()[1]) for line in self.metrics() if line.startswith(f"{name} "))


def seed_of(indexer: dict[str, Any]) -> SecretBytes:
    """The genuine indexer's signing seed: what its guest agent derives from the public devnet KMS."""
    return derive_key(DevnetKms().app_key(Address.from_hex(indexer["app_id"])), indexer_key_path(1))


# --- the rogue indexer, served from a thread -----------------------------------------------------------


class RogueThread:
    """A ``RogueIndexer`` on its own event loop in a background thread (these tests are synchronous)."""

    def __init__(self, seed: SecretBytes, host: str) -> None:
        self.rogue = RogueIndexer(seed, host)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rogue-indexer", daemon=True)

    def __enter__(self) -> RogueIndexer:
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.rogue.__aenter__(), self.loop).result(timeout=10)
        except BaseException:
            self._stop_loop()
            raise
        return self.rogue

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.rogue.__aexit__(None, None, None), self.loop).result(30)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the rogue indexer's loop did not stop"
        self.loop.close()


@dataclass(frozen=True)
class Served:
    """One rogue session: which script, to whom, under which registered key, and what it pushed."""

    script: str
    member_id: MemberId
    audience: Bytes32  # the indexer key the node read from the registry (its hello's audience)
    events: tuple[tuple[int, int], ...]  # (block, log index) of every event pushed
    ghosts: tuple[Bytes32, ...]  # member ids of the MemberRegistered events pushed


def recording(name: str, script: Script, served: list[Served]) -> Script:
    def run(rogue: RogueIndexer, hello: Hello, session: bytes) -> list[Message]:
        messages = script(rogue, hello, session)
        pushed = [m for m in messages if isinstance(m, Event)]
        ghosts = tuple(e.log.topics[1] for e in pushed if e.log.topics[0] == MEMBER_REGISTERED)
        served.append(
            Served(
                name,
                hello.member_id,
                hello.indexer,
                tuple((e.log.block_number, e.log.log_index) for e in pushed),
                ghosts,
            )
        )
        return messages

    return run


def served_to(served: list[Served], script: str, member: MemberId, audience: Bytes32) -> list[Served]:
    return [
        s for s in list(served) if s.script == script and s.member_id == member and s.audience == audience
    ]


def register_indexer(on: LabChain, endpoint: str, code_id: Bytes32, key: Bytes32) -> None:
    """``IndexerRegistry.setIndexer`` as the owner (who is also the cluster owner on the devnet)."""
    registry = Address.from_hex(on.status["indexer_registry"])

    async def write(conn: ChainConnection, cluster: ClusterClient) -> object:
        return await IndexerRegistryClient(conn, registry, cluster.submitter).set_indexer(
            endpoint, code_id, key
        )

    on(write)


def deploy_other_cluster(on: LabChain) -> Address:
    """A second cluster through the lab's factory: a real cluster whose events are not ours."""
    status = on.status

    async def deploy(conn: ChainConnection, cluster: ClusterClient) -> Address:
        assert cluster.submitter is not None
        config = ClusterConfig(
            owner=cluster.submitter.address,
            mesh_cidr=MeshCidr(PLAN.mesh),
            member_app_factory=Address.from_hex(status["member_app_factory"]),
            kms_roots=(Address.from_hex(status["kms_root"]),),
            allow_any_device=True,
        )
        factory = ClusterFactoryClient(conn, Address.from_hex(status["cluster_factory"]), cluster.submitter)
        address, _ = await factory.deploy_cluster(config, Bytes32(os.urandom(32)))
        return address

    return on(deploy)


# --- 4. a rogue indexer --------------------------------------------------------------------------------


def test_rogue_indexer_pushes_are_rejected_counted_and_never_change_a_peer(lab: LabCli) -> None:
    lab.run("up", "--nodes", "3")
    wait_all_healthy(lab)
    # node-3 cross-checks every pushed event against eth_getLogs; node-1 and node-2 keep the default (off)
    restart_sidecar_with_crosscheck(lab, "node-3")
    found = wait_all_healthy(lab)
    wait_push(found)
    status = lab.status()
    on = LabChain(status)
    # The rogue signs with the GENUINE indexer key (derived from the public devnet KMS): a stolen key or a
    # malicious indexer operator, the strongest rogue. Only the registry decides which key a sidecar trusts.
    real_seed = seed_of(status["indexer"])
    real_key = Indexer(status["indexer"], lab_reach(status)).public_key
    assert Bytes32(ed25519_public_key(real_seed)) == real_key
    code_id = Bytes32.from_hex(status["indexer"]["code_id"])
    ids = {name: member_id(node) for name, node in found.items()}
    peers_before = {name: set(node.device_peers()) for name, node in found.items()}
    assert all(len(peers) == 2 for peers in peers_before.values())
    changes_before = {name: peer_changes(node) for name, node in found.items()}
    pushed_before = {name: node.counter(PUSHED) for name, node in found.items()}
    members_before = on(lambda conn, c: c.list_members())
    other = deploy_other_cluster(on)
    served: list[Served] = []

    # The real indexer keeps running: a registry change alone sends every sidecar to the rogue.
    with RogueThread(real_seed, str(PLAN.root_ip)) as rogue:
        rogue.cluster = other
        stranger = Bytes32(ed25519_public_key(SecretBytes(os.urandom(32))))
        registered: tuple[str, Bytes32] | None = None
        cases = [
            ("wrong key", "bad_signature", forge_next_event, stranger),  # the registry names another key
            ("tampered", "bad_signature", tampered, real_key),
            ("other cluster", "wrong_cluster", other_cluster, real_key),
            ("replayed", "replay", replayed, real_key),
        ]
        for case, reason, script, key in cases:
            seen = {name: rejected(node, reason) for name, node in found.items()}
            rogue.script = recording(case, script, served)  # the script first: never a valid push by mistake
            if registered != (rogue.endpoint, key):
                register_indexer(on, rogue.endpoint, code_id, key)
                registered = (rogue.endpoint, key)
            for name, node in found.items():
                wait_until(
                    lambda n=name, k=key, c=case: served_to(served, c, ids[n], k),
                    DEADLINE,
                    f"{name} served the {case} push",
                )
                wait_until(
                    lambda n=node, r=reason, s=seen[name]: rejected(n, r) > s,
                    DEADLINE,
                    f"{name} rejects the {case} push as {reason}",
                )
        for name, node in found.items():  # not one of those pushes was taken
            assert node.counter(PUSHED) == pushed_before[name], name

        # A MemberRegistered for a member that does not exist, signed with the REGISTERED key: only the
        # cross-check can reject it; without it, it is taken — as a wake-up only, the chain decides.
        case = "fake member"
        seen_crosscheck = rejected(found["node-3"], "crosscheck")
        rogue.script = recording(case, forge_next_event, served)
        taken_at = {}
        for name in ("node-1", "node-2"):
            node = found[name]
            wait_until(lambda n=name: served_to(served, case, ids[n], real_key), DEADLINE, f"{name} served")
            wait_until(
                lambda n=node, b=pushed_before[name]: n.counter(PUSHED) > b, DEADLINE, f"{name} takes it"
            )
            taken_at[name] = passes(node)
        wait_until(lambda: served_to(served, case, ids["node-3"], real_key), DEADLINE, "node-3 served")
        wait_until(
            lambda: rejected(found["node-3"], "crosscheck") > seen_crosscheck,
            DEADLINE,
            "node-3 cross-checks it",
        )
        for name in ("node-1", "node-2"):
            node = found[name]
            forged = {pos for s in served_to(served, case, ids[name], real_key) for pos in s.events}
            assert forged & handled(lab, name, "push"), f"{name} did not take the forged event"
            assert rejected(node, "crosscheck") == 0
        assert found["node-3"].counter(PUSHED) == pushed_before["node-3"]
        ghosts = {g for s in served if s.script == case for g in s.ghosts}
        assert ghosts

        async def ghosts_on_chain(conn: ChainConnection, cluster: ClusterClient) -> list[object]:
            return [await cluster.member_by_id(g) for g in ghosts]

        assert on(ghosts_on_chain) == [None] * len(ghosts)
        assert on(lambda conn, c: c.list_members()) == members_before
        for name, node in found.items():
            assert set(node.device_peers()) == peers_before[name], f"{name}'s peers changed"
            assert peer_changes(node) == changes_before[name], f"{name} changed a peer"
            assert node.healthz()["peers"]["desired"] == 2
            # counted: /healthz and the metric agree, and each reason was logged
            events = node.healthz()["events"]
            by_reason = events["rejected_by_reason"]
            assert (
                by_reason["bad_signature"] >= 2
                and by_reason["wrong_cluster"] >= 1
                and by_reason["replay"] >= 1
            )
            assert events["rejected_pushes"] == sum(by_reason.values())
            for reason, count in by_reason.items():
                assert node.counter("attestmesh_push_rejected_total", reason=reason) == count
            logged = {e["reason"] for e in sidecar_log(lab, name, "events.push_rejected")}
            assert logged == set(by_reason), name

        # The genuine indexer is registered again (it re-registers itself); everyone returns to it.
        lab.run("indexer", "start")
        indexer = Indexer(status["indexer"], lab_reach(status))
        wait_until(
            lambda: (s := indexer.status())["subscribers"] == 3 and s["registry"]["matches"] is True,
            60,
            "every sidecar subscribed to the genuine indexer",
        )
        wait_push(found, timeout=60)

    for name in ("node-1", "node-2"):
        node = found[name]
        # The forged block hash the cursor took is found off the chain by the poller and rewound.
        wait_until(lambda n=name: sidecar_log(lab, n, "events.reorg_detected"), DEADLINE, f"{name} rewinds")
        # A control pass has run since the forged event was taken (that wake, the rewind's or the resync).
        wait_until(
            lambda n=node, p=taken_at[name]: passes(n) > p, RESYNC_INTERVAL + 10, f"{name} ran a pass since"
        )
    for name, node in found.items():
        assert set(node.device_peers()) == peers_before[name], f"{name}'s peers changed"
        assert peer_changes(node) == changes_before[name], f"{name} changed a peer"
    wait_all_healthy(lab)


# --- 5. a reorg across a registration ------------------------------------------------------------------


def anvil_reorg(on: LabChain, depth: int) -> None:
    """Replace the newest ``depth`` blocks with as many empty ones (anvil's ``anvil_reorg``)."""

    async def reorg(conn: ChainConnection, cluster: ClusterClient) -> None:
        response = await conn.w3.provider.make_request("anvil_reorg", [depth, []])
        assert "error" not in response, response

    on(reorg)


def interval_mining(on: LabChain, seconds: int) -> None:
    """Set the devnet anvil's empty-block interval (0 pauses it; transactions are still mined at once)."""

    async def apply(conn: ChainConnection, cluster: ClusterClient) -> None:
        response = await conn.w3.provider.make_request("evm_setIntervalMining", [seconds])  # type: ignore[arg-type]
        assert "error" not in response, response

    on(apply)


def test_reorg_across_a_registration_leaves_no_ghost_peer(lab: LabCli) -> None:
    # The test subscribes to the indexer itself from the root namespace (a replay from a registration block);
    # what is tested is the indexer's and the sidecars' handling of a reorg, not the transport: a direct lab.
    lab.run("up", "--nodes", "3", "--transport", "direct")
    found = wait_all_healthy(lab)
    wait_push(found)
    status = lab.status()
    on = LabChain(status)
    lab.run("node", "add", "node-4")
    node4 = nodes(lab)["node-4"]
    wait_until(node4.healthy, 60, "node-4 healthy")
    id4 = member_id(node4)
    signer4 = Address.from_hex(node4.healthz()["node"]["signer"])
    key4 = node4.device()["public_key"]
    for node in found.values():
        wait_until(lambda n=node: key4 in n.device_peers(), DEADLINE, f"{node.name} has node-4")
    lab.run("node", "stop", "node-4")  # powered off: it cannot register again while we watch

    async def registration(conn: ChainConnection, cluster: ClusterClient) -> tuple[int, int, list[Address]]:
        head = await conn.block_number()
        logs = await conn.get_logs([cluster.address], 0, head, [[MEMBER_REGISTERED], [id4]])
        assert len(logs) == 1, logs
        block = logs[0].block_number
        senders = []
        for number in range(block, head + 1):
            body = await conn.w3.eth.get_block(number)
            for tx in body["transactions"]:
                sent = await conn.w3.eth.get_transaction(tx)
                senders.append(Address.from_hex(str(sent["from"])))
        return block, head, senders

    async def canonical(conn: ChainConnection, cluster: ClusterClient) -> tuple[int, list[MemberRecord]]:
        return await conn.block_number(), await cluster.members()

    # The devnet mines an empty block every second: paused while the depth is measured and the reorg made, so
    # the reorg takes exactly the blocks from the registration to the head that was read.
    interval_mining(on, 0)
    try:
        block, head, senders = on(registration)
        # Every transaction from the registration on is node-4's own: the reorg takes exactly its registration
        # away; its app contract, allowlisting and funding (earlier blocks) stay.
        assert senders and set(senders) == {signer4}, senders
        anvil_reorg(on, head - block + 1)
        reorged = time.monotonic()
        new_head, members = on(canonical)
    finally:
        interval_mining(on, 1)
    assert new_head == head and len(members) == 3 and id4 not in {m.member_id for m in members}
    assert on(lambda conn, c: c.member_by_id(id4)) is None

    # Sidecars: every device holds exactly the canonical peers (node-4, a ghost now, is gone everywhere),
    # promptly: the indexer closes the streams with "reorg", each poller finds its cursor's block hash off
    # the chain, rewinds and wakes its control loop, which re-reads membership.
    for name, node in found.items():
        mine = member_id(node)
        wait_until(
            lambda n=node, m=mine: set(n.device_peers()) == canonical_peers(members, m),
            DEADLINE,
            f"{name} drops the ghost",
        )
    assert time.monotonic() - reorged < RESYNC_INTERVAL - 5
    for name, node in found.items():
        assert node.healthz()["peers"]["desired"] == 2
        wait_until(lambda n=name: sidecar_log(lab, n, "events.reorg_detected"), DEADLINE, f"{name} rewinds")
    for node in found.values():  # node-4 is powered off
        wait_until(node.healthy, DEADLINE, f"{node.name} healthy")
    wait_push(found)

    # The indexer: it saw the reorg, its index matches the canonical chain, and a fresh subscriber's replay
    # carries no trace of the dropped registration.
    indexer = Indexer(status["indexer"], lab_reach(status))
    wait_until(
        lambda: indexer.counter("attestmesh_indexer_reorgs_total") >= 1, DEADLINE, "the indexer's reorg"
    )
    cluster_address = status["cluster"]

    def index_agrees() -> bool:
        status = indexer.status()
        ours = next(c for c in status["clusters"] if c["address"].lower() == cluster_address.lower())
        through = status["health"]["indexed_through"]

        async def count(conn: ChainConnection, cluster: ClusterClient) -> int:
            return len(await conn.get_logs([cluster.address], ours["since"], through))

        return bool(through >= head and ours["logs"] == on(count))

    wait_until(index_agrees, DEADLINE, "the indexer's log count equals the canonical chain's")
    node1 = found["node-1"]
    id1 = member_id(node1)
    replay = asyncio.run(
        replay_from_registration(indexer, Address.from_hex(cluster_address), id1, identity_key(node1))
    )

    async def expected(conn: ChainConnection, cluster: ClusterClient) -> list[tuple[int, int]]:
        head = await conn.block_number()
        joined = (await conn.get_logs([cluster.address], 0, head, [[MEMBER_REGISTERED], [id1]]))[0]
        logs = await conn.get_logs([cluster.address], joined.block_number, head)
        return [(e.block_number, e.log_index) for e in logs]

    assert replay and [(b, i) for b, i, _ in replay] == on(expected)
    assert id4 not in {mid for _, _, mid in replay}

    # node-4 powers on: not a member on the canonical chain, it registers again; everyone converges to four.
    lab.run("node", "start", "node-4")
    wait_until(lambda: on(lambda conn, c: c.member_count()) == 4, 60, "node-4 registered again")
    members = on(lambda conn, c: c.members())
    everyone = nodes(lab)
    for name, node in everyone.items():
        # node-4 names its member id once its new registration is confirmed (two blocks deep)
        wait_until(lambda n=node: n.healthz()["node"]["member_id"] is not None, DEADLINE, f"{name} a member")
        mine = member_id(node)
        wait_until(
            lambda n=node, m=mine: set(n.device_peers()) == canonical_peers(members, m),
            DEADLINE,
            f"{name} has the three others",
        )
    wait_all_healthy(lab)


async def replay_from_registration(
    indexer: Indexer, cluster: Address, me: MemberId, key: SecretBytes
) -> list[tuple[int, int, MemberId | None]]:
    """Subscribe as ``me`` with no cursor (replay from its registration block), verify every push, ack it,
    and return (block, log index, registered member id or None) of every event up to the current head."""
    async with aiohttp.ClientSession() as http, http.ws_connect(indexer.url) as ws:
        hello = sign_hello(
            cluster=cluster,
            member_id=me,
            indexer=indexer.public_key,
            cursor=None,
            timestamp_ms=int(time.time() * 1000),
            nonce=os.urandom(16),
            identity_key=key,
        )
        await ws.send_str(encode(hello))
        welcome = decode((await ws.receive(timeout=DEADLINE)).data)
        assert isinstance(welcome, Welcome), welcome
        verifier = PushVerifier(cluster, indexer.public_key, welcome.start, hello.nonce)
        assert verifier.welcome(welcome) is None
        head = welcome.head
        seen: list[tuple[int, int, MemberId | None]] = []
        async with asyncio.timeout(DEADLINE):
            while True:
                message = decode((await ws.receive()).data)
                assert isinstance(message, Event | Checkpoint), message
                checked = verifier.check(message)
                assert isinstance(checked, Verified), checked
                verifier.accept(checked)
                ack = verifier.ack()
                assert ack is not None
                await ws.send_str(encode(ack))
                if isinstance(message, Event):
                    entry = message.log
                    registered = (
                        MemberId(entry.topics[1].raw) if entry.topics[0] == MEMBER_REGISTERED else None
                    )
                    seen.append((entry.block_number, entry.log_index, registered))
                elif message.block >= head:
                    return seen


# --- 6. malformed frames and hellos --------------------------------------------------------------------


@dataclass(frozen=True)
class Closed:
    """How the indexer ended a connection: its close message (if any) and the WebSocket close frame."""

    close: Close | None
    code: int | None
    message: str


async def closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = DEADLINE) -> Closed:  # noqa: ASYNC109
    """Read until the indexer closes the socket (taking any pushed messages on the way)."""
    close = None
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                decoded = decode(msg.data)
                if isinstance(decoded, Close):
                    close = decoded
                continue
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return Closed(close, int(msg.data), str(msg.extra or ""))
            return Closed(close, ws.close_code, "")


@dataclass(frozen=True)
class Subscriber:
    """Who a hello claims to be."""

    cluster: Address
    member_id: MemberId
    key: SecretBytes = dataclasses.field(repr=False)

    def hello(self, indexer: Bytes32, **changes: Any) -> Hello:
        fields: dict[str, Any] = {
            "cluster": self.cluster,
            "member_id": self.member_id,
            "indexer": indexer,
            "cursor": None,
            "timestamp_ms": int(time.time() * 1000),
            "nonce": os.urandom(16),
            "identity_key": self.key,
        }
        fields.update(changes)
        return sign_hello(**fields)


def with_fields(hello: Hello, **fields: Any) -> str:
    obj = json.loads(encode(hello))
    obj.update(fields)
    return json.dumps(obj)


async def barrage(indexer: Indexer, me: Subscriber) -> dict[str, Closed]:
    """Every kind of bad input, each on its own connection; return how each connection was closed."""
    pub = indexer.public_key
    stranger = SecretBytes(os.urandom(32))
    frames: dict[str, str | bytes] = {
        "not JSON": "not json",
        "a binary frame": b"\x00binary",
        "an oversized frame": json.dumps({"v": 1, "type": "hello", "pad": "x" * MAX_FRAME_BYTES}),
        "a hello without its fields": '{"v":2,"type":"hello"}',
        "a hello with an extra field": with_fields(me.hello(pub), extra=1),
        "a hello of protocol version 1": with_fields(me.hello(pub), v=1),  # a sidecar of an older release
        "a hello of protocol version 3": with_fields(me.hello(pub), v=3),
        "a hello with a bad signature": encode(me.hello(pub, identity_key=stranger)),
        "a hello of a non-member": encode(
            me.hello(pub, member_id=MemberId(os.urandom(32)), identity_key=stranger)
        ),
        "a stale hello": encode(me.hello(pub, timestamp_ms=int(time.time() * 1000) - 120_000)),
        "a hello to another indexer": encode(me.hello(Bytes32(os.urandom(32)))),
        "a hello for an unknown cluster": encode(me.hello(pub, cluster=Address(os.urandom(20)))),
    }
    results: dict[str, Closed] = {}
    async with aiohttp.ClientSession() as http:

        async def silent() -> Closed:  # connects and never says hello
            async with http.ws_connect(indexer.url) as ws:
                return await closed(ws, timeout=DEADLINE)

        waiting = asyncio.create_task(silent())
        for case, frame in frames.items():
            async with http.ws_connect(indexer.url, max_msg_size=4 * MAX_FRAME_BYTES) as ws:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
                results[case] = await closed(ws)
        async with http.ws_connect(indexer.url) as ws:  # a valid session, then a second hello
            await ws.send_str(encode(me.hello(pub)))
            assert isinstance(decode((await ws.receive(timeout=DEADLINE)).data), Welcome)
            await ws.send_str(encode(me.hello(pub)))
            results["a second hello"] = await closed(ws)
        results["no hello"] = await waiting
    return results


def raw_frame(url: str, frame: bytes) -> bytes:
    """Upgrade a plain TCP connection to a WebSocket by hand, send ``frame`` and return all that comes back
    before the indexer closes the connection (for frames no WebSocket client library would send)."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    assert host is not None and port is not None
    with socket.create_connection((host, port), timeout=DEADLINE) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            assert chunk, "the indexer closed during the upgrade"
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head.split(b"\r\n")[0]
        sock.sendall(frame)
        while chunk := sock.recv(4096):
            rest += chunk
        return rest


def masked_text_frame(payload: bytes, declared: int | None = None) -> bytes:
    """A client text frame (FIN, masked); ``declared`` overrides the length in the header."""
    length = len(payload) if declared is None else declared
    mask = os.urandom(4)
    header = bytes([0x81]) + (
        bytes([0x80 | length]) if length < 126 else bytes([0x80 | 127]) + struct.pack(">Q", length)
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_frame_code(data: bytes) -> int:
    """The status code of the server's close frame (unmasked, opcode 8) at the start of ``data``."""
    assert len(data) >= 4 and data[0] == 0x88, data[:16]
    return int(struct.unpack(">H", data[2:4])[0])


def test_malformed_frames_and_hellos_are_closed_with_a_reason_and_others_keep_being_served(
    lab: LabCli,
) -> None:
    # Raw WebSocket frames from the root namespace to the indexer's own port: what is tested is the
    # indexer's input checking, which the gateway's terminated route relays untouched (byte-exact relay:
    # tests/component/test_gateway_standin.py), so this lab is a direct one.
    lab.run("up", "--nodes", "3", "--transport", "direct")
    found = wait_all_healthy(lab)
    wait_push(found)
    status = lab.status()
    on = LabChain(status)
    indexer = Indexer(status["indexer"], lab_reach(status))
    wait_until(lambda: indexer.status()["subscribers"] == 3, DEADLINE, "three subscribers")
    hellos_before = indexer.counters("attestmesh_indexer_hellos_total")
    closed_before = indexer.counters("attestmesh_indexer_sessions_closed_total")
    node1 = found["node-1"]
    me = Subscriber(Address.from_hex(status["cluster"]), member_id(node1), identity_key(node1))

    results = asyncio.run(barrage(indexer, me))
    expected = {
        "not JSON": ("malformed", "not UTF-8 JSON"),
        "a binary frame": ("malformed", "frames must be text"),
        "an oversized frame": ("malformed", "size limit"),
        "a hello without its fields": ("malformed", ""),
        "a hello with an extra field": ("malformed", ""),
        "a hello of protocol version 1": ("malformed", "unsupported protocol version"),
        "a hello of protocol version 3": ("malformed", "unsupported protocol version"),
        "a hello with a bad signature": ("unauthorized", "bad_signature"),
        "a hello of a non-member": ("unauthorized", "not a member"),
        "a stale hello": ("unauthorized", "stale"),
        "a hello to another indexer": ("unauthorized", "wrong_indexer"),
        "a hello for an unknown cluster": ("unavailable", "not followed"),
        "a second hello": ("protocol", "only acks"),
        "no hello": ("protocol", "no hello"),
    }
    assert set(results) == set(expected)
    for case, (reason, detail) in expected.items():
        got = results[case]
        assert got.close is not None and got.close.reason == reason, (case, got)
        assert detail in got.close.detail, (case, got)
        assert (got.code, got.message) == (CLOSE_CODE[reason], reason), (case, got)
    # Frames the WebSocket layer refuses before the protocol sees them: closed with their WebSocket codes.
    too_big = raw_frame(indexer.url, masked_text_frame(b"", declared=4 * MAX_FRAME_BYTES + 1))
    assert close_frame_code(too_big) == 1009  # refused on the header, before any payload is buffered
    not_utf8 = raw_frame(indexer.url, masked_text_frame(b"\xff\xfe\xfd"))
    assert close_frame_code(not_utf8) == 1007

    # Counted by reason; no other session ended and no sidecar had to say hello again.
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}

    closes = {"malformed": 9.0, "unauthorized": 4.0, "unavailable": 1.0, "protocol": 2.0}
    wait_until(
        lambda: delta(closed_before, indexer.counters("attestmesh_indexer_sessions_closed_total")) == closes,
        DEADLINE,
        f"sessions closed by reason: {closes}",
    )
    hellos = {
        "bad_signature": 1.0,
        "not_member": 1.0,
        "stale": 1.0,
        "wrong_indexer": 1.0,
        "not_followed": 1.0,
    }
    hellos["accepted"] = 1.0  # the test's own valid session (the second-hello case)
    assert delta(hellos_before, indexer.counters("attestmesh_indexer_hellos_total")) == hellos
    wait_until(lambda: indexer.status()["subscribers"] == 3, DEADLINE, "three subscribers again")
    for node in found.values():
        assert in_push_mode(node), node.name
        assert node.healthz()["events"]["rejected_pushes"] == 0

    # The indexer keeps serving: a newcomer's registration reaches every node by push.
    pushed = {name: node.counter(PUSHED) for name, node in found.items()}
    lab.run("node", "add", "node-4")
    node4 = nodes(lab)["node-4"]
    wait_until(node4.healthy, 60, "node-4 healthy")
    id4 = member_id(node4)
    key4 = node4.device()["public_key"]

    async def registered_at(conn: ChainConnection, cluster: ClusterClient) -> tuple[int, int]:
        logs = await conn.get_logs(
            [cluster.address], 0, await conn.block_number(), [[MEMBER_REGISTERED], [id4]]
        )
        assert len(logs) == 1, logs
        return logs[0].block_number, logs[0].log_index

    position = on(registered_at)
    for name, node in found.items():
        wait_until(lambda n=node: key4 in n.device_peers(), DEADLINE, f"{name} has node-4")
        assert position in handled(lab, name, "push") | handled(lab, name, "poll")
        # node-4's allowlisting and registration are seconds apart while the safety poll runs every 10 s,
        # so at least one of them is handled from the push stream on every node
        assert node.counter(PUSHED) > pushed[name], f"{name} took nothing from the push stream"
        assert in_push_mode(node), name
    assert position in set().union(*(handled(lab, name, "push") for name in found))
