"""The sidecar's control loop against real dependencies: anvil running our contracts, the guest-agent
simulator spoken to through the official ``dstack-sdk``, real aiohttp peer-API servers, and ``python -m
sidecar`` as a real process.

The cluster is deployed with the mesh CIDR ``127.0.0.0/8``, so the mesh IPs the contract allocates
(127.0.0.1, 127.0.0.2, ...) are loopback addresses this test can bind: peers' CSK servers listen on their
on-chain mesh IPs exactly as a sidecar would. No WireGuard device is touched: the controller is configured
with the userspace backend and an empty UAPI directory, so its mesh step fails cleanly (``phase == "mesh"``)
and the CSK puller / responder are driven directly. The fakes are small honest ``CskResponder`` classes.
Only 127.0.0.0/8 and unix sockets are used; every process and server started here is stopped here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_utils.crypto import keccak
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from devnet.kms import DevnetKms
from devnet.simulator import SimulatorConfig, serve_unix
from sidecar.chain.contracts import ClusterClient, ClusterFactoryClient
from sidecar.chain.errors import ForeignApp
from sidecar.chain.tx import TxSubmitter
from sidecar.core import csk as cskcore
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyScope
from sidecar.core.liveness import Liveness
from sidecar.core.model import ClusterConfig, MemberRecord, MeshCidr, member_id_for
from sidecar.core.status import healthz_body
from sidecar.drivers.csk import CSK_CACHE_FILE
from sidecar.drivers.identity import derive, derive_csk_key
from sidecar.dstack.agent import GuestAgent
from sidecar.http.peerapi import peer_api
from sidecar.http.server import start_tcp
from sidecar.observability import Metrics
from sidecar.settings import load_settings
from tests.component import controllerkit
from tests.component.controllerkit import (
    CHAIN_ID,
    COMPOSE_HASH,
    FUNDING_WEI,
    HEALTHZ_KEYS,
    MESH_CIDR,
    NODE_KEYS,
    OTHER_KMS_SEED,
    REPO,
    SHUTDOWN_TIMEOUT,
    SUBPROCESS_START_DEADLINE,
    Lab,
    NodeUnderTest,
    SealingPeer,
    closed_port,
    events,
    free_tcp_port,
    measured_compose,
    node_env,
    read_log,
    sample,
    serve_on_same_port,
    subprocess_simulator,
    write_node_config,
)

lab = controllerkit.lab  # the fixtures: a freshly deployed cluster on the module's anvil
short_root = controllerkit.short_root

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

# --- 1. lost state ------------------------------------------------------------------------------------


async def test_lost_state_is_terminal_and_never_registers_twice(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # App A registers with the identity the devnet KMS derives for it ...
    app_a = await lab.app("node-a")
    first_sock = await lab.simulator("first", app_a)
    first_agent = GuestAgent(str(first_sock))
    try:
        original = await derive(first_agent, lab.scope)
    finally:
        await first_agent.close()
    await lab.set_balance(original.signer, FUNDING_WEI)
    submitter = TxSubmitter(lab.conn, original.local_signer(), receipt_timeout=20.0, poll_interval=0.05)
    _, member_a = await lab.owner.with_submitter(submitter).register(
        original.proof, original.keys, "127.0.0.1:51820"
    )
    assert await lab.owner.member_count() == 1

    # ... then a node with the same app id boots behind ANOTHER KMS (a subprocess simulator whose seed
    # comes from its environment; the controller finds it through DSTACK_SIMULATOR_ENDPOINT).
    other_kms = DevnetKms(OTHER_KMS_SEED)
    directory = lab.node_dir("second")
    config = write_node_config(directory, app_a, 99)
    async with subprocess_simulator(config, directory / "agent.sock", OTHER_KMS_SEED) as sock:
        monkeypatch.setenv("DSTACK_SIMULATOR_ENDPOINT", str(sock))
        agent = GuestAgent()
        assert agent.endpoint == str(sock)
        controller = await lab.controller("second", app_a, agent=agent)
        new_signer = lab.signer_of(app_a, other_kms)
        await lab.set_balance(new_signer, FUNDING_WEI)  # funds are not what stops a second registration

        with capture_logs() as logs:
            await controller.pass_once()
            await controller.pass_once()  # terminal: the next pass changes nothing

    status = controller.status
    assert controller.identity is not None and controller.identity.signer == new_signer != original.signer
    assert status.phase == "boot_gate"
    assert status.reason is not None and "lost state" in status.reason
    assert controller.facts.lost_state is True
    assert status.member_id == str(member_a)  # it knows which record is "its own" ...
    lost = events(logs, "identity.lost_state")
    assert lost and lost[0]["member_id"] == str(member_a)
    assert set(lost[0]["differs"]) == {"signer", "seal key", "wireguard key", "identity key"}
    # ... and never a second registration: no transaction from its signer, membership unchanged.
    assert await lab.nonce(new_signer) == 0
    assert await lab.owner.member_count() == 1
    assert (await lab.owner.member_by_id(member_a)) is not None
    assert events(logs, "registration.attempted") == []
    for result in ("ok", "failed"):
        assert sample(controller.metrics, "attestmesh_registration_attempts_total", result=result) == 0


# --- 2. no gas ----------------------------------------------------------------------------------------


async def test_no_gas_is_reported_then_registration_follows_funding(lab: Lab) -> None:
    app_id = await lab.app("poor")
    controller = await lab.controller("poor", app_id)
    signer = lab.signer_of(app_id)
    assert await lab.conn.get_balance(signer) == 0

    await controller.pass_once()
    status = controller.status
    assert status.phase == "register"
    assert status.reason is not None and "no gas" in status.reason
    assert status.signer == str(signer) and status.member_id is None
    assert sample(controller.metrics, "attestmesh_registration_attempts_total", result="failed") == 1
    assert await lab.nonce(signer) == 0

    await lab.set_balance(signer, FUNDING_WEI)
    await lab.conn.w3.provider.make_request("anvil_mine", [2])  # type: ignore[arg-type]  # approval confirmed
    with capture_logs() as logs:
        await controller.pass_once()  # registers (the snapshot it acted on predates the member)
    assert events(logs, "registration.succeeded")
    expected = member_id_for(lab.stack.cluster, app_id)
    assert await lab.owner.member_id_of(app_id) == expected
    assert sample(controller.metrics, "attestmesh_registration_attempts_total", result="ok") == 1
    assert controller.status.reason is not None and "no gas" not in controller.status.reason

    await controller.pass_once()  # sees itself on chain; the mesh step has no device here
    status = controller.status
    assert status.member_id == str(expected)
    assert status.mesh_ip == "127.0.0.1"  # the first host of 127.0.0.0/8
    assert status.phase == "mesh"
    assert status.reason is not None and status.reason.startswith("mesh device not up")
    assert await lab.owner.member_count() == 1


async def set_base_fee(lab: Lab, wei: int) -> None:
    """Make the latest block's base fee ``wei`` (anvil: set the next block's, then mine it)."""
    await lab.conn.w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(wei)])  # type: ignore[arg-type]
    await lab.conn.w3.provider.make_request("anvil_mine", [1])  # type: ignore[arg-type]


async def test_a_base_fee_above_the_cap_holds_registration_named_until_it_falls(lab: Lab) -> None:
    """Issue 12: the node priced fees from whatever the RPC said; now ATTESTMESH_MAX_FEE_GWEI caps them, and
    a transaction the cap refuses is not sent, named in the reason and /healthz, logged once."""
    app_id = await lab.app("thrifty")
    controller = await lab.controller("thrifty", app_id, MAX_FEE_GWEI="10", MAX_PRIORITY_FEE_GWEI="1")
    signer = lab.signer_of(app_id)
    await lab.set_balance(signer, FUNDING_WEI)
    try:
        await set_base_fee(lab, 400 * 10**9)  # 400 gwei: a spike, or a lying RPC
        with capture_logs() as logs:
            await controller.pass_once()
            await controller.pass_once()
        status = controller.status
        assert status.phase == "register"
        assert status.reason is not None
        assert status.reason.startswith("not registered: registration held: fee_cap:")
        held = healthz_body(status)["chain"]["write_held"]  # type: ignore[index]
        assert isinstance(held, str) and held.startswith("fee_cap: base fee 400 gwei")
        assert len(events(logs, "chain.fee_capped")) == 1  # logged when the hold starts, not every pass
        assert events(logs, "chain.fee_capped")[0]["cap"] == "10 gwei"
        assert await lab.nonce(signer) == 0  # nothing sent
        assert await lab.conn.get_balance(signer) == FUNDING_WEI
    finally:
        await set_base_fee(lab, 10**9)
    with capture_logs() as logs:
        await controller.pass_once()
    assert events(logs, "registration.succeeded") and events(logs, "chain.fee_cap_cleared")
    assert controller.status.chain_write_held is None
    tx = await lab.conn.w3.eth.get_transaction_by_block(await lab.conn.block_number(), 0)
    assert tx["maxFeePerGas"] <= 10 * 10**9 and tx["maxPriorityFeePerGas"] <= 10**9


async def test_confirmations_never_send_a_second_registration(lab: Lab) -> None:
    """With confirmations, the pass after a registration reads a snapshot that predates it."""
    app_id = await lab.app("patient")
    controller = await lab.controller("patient", app_id, CONFIRMATIONS="2")
    signer = lab.signer_of(app_id)
    await lab.set_balance(signer, FUNDING_WEI)
    await lab.conn.w3.provider.make_request("anvil_mine", [2])  # type: ignore[arg-type]  # approval confirmed
    with capture_logs() as logs:
        await controller.pass_once()  # registers
        await controller.pass_once()  # the confirmed snapshot does not contain the member yet
        await controller.pass_once()
    assert len(events(logs, "registration.attempted")) == 1
    assert not events(logs, "registration.failed")
    assert await lab.nonce(signer) == 1
    assert controller.status.phase == "register"
    assert controller.status.reason is not None and "reverted" not in controller.status.reason
    await lab.conn.w3.provider.make_request("anvil_mine", [2])  # type: ignore[arg-type]
    await controller.pass_once()  # now confirmed: identity carried over, no second transaction
    assert controller.status.member_id == str(member_id_for(lab.stack.cluster, app_id))
    assert await lab.nonce(signer) == 1


# --- 3. boot policy and registration reverts ------------------------------------------------------------


async def test_unapproved_app_stays_at_boot_gate_until_approved(lab: Lab) -> None:
    app_id = await lab.app("stranger", approve=False)
    controller = await lab.controller("stranger", app_id)
    signer = lab.signer_of(app_id)
    await lab.set_balance(signer, FUNDING_WEI)

    await controller.pass_once()
    await controller.pass_once()  # re-checked, still denied, no crash
    assert controller.status.phase == "boot_gate"
    assert controller.status.reason == "boot policy denies: app id not allowed"
    assert controller.facts.boot_allowed is False
    assert await lab.nonce(signer) == 0

    await lab.owner.add_allowed_app_id(app_id)
    await controller.pass_once()
    assert await lab.owner.member_id_of(app_id) == member_id_for(lab.stack.cluster, app_id)


async def test_registration_revert_is_named_in_the_status(lab: Lab) -> None:
    app_id = await lab.app("untrusted-kms")
    controller = await lab.controller("untrusted-kms", app_id)
    signer = lab.signer_of(app_id)
    await lab.set_balance(signer, FUNDING_WEI)
    await lab.owner.remove_kms_root(lab.kms.root_address)

    with capture_logs() as logs:
        await controller.pass_once()
    status = controller.status
    assert status.phase == "register"
    assert status.reason is not None
    assert "registration reverted: KmsRootNotAllowed" in status.reason
    (failed,) = events(logs, "registration.failed")
    assert "KmsRootNotAllowed" in failed["reason"] and failed["transient"] is False
    assert sample(controller.metrics, "attestmesh_registration_attempts_total", result="failed") == 1
    assert await lab.nonce(signer) == 0  # refused at estimation: nothing was mined
    assert await lab.owner.member_count() == 0

    await lab.owner.add_kms_root(lab.kms.root_address)  # the owner fixes the policy: the next pass registers
    await controller.pass_once()
    assert await lab.owner.member_count() == 1
    assert controller.status.reason is not None and "reverted" not in controller.status.reason


# --- 4. chain unreachable at start ---------------------------------------------------------------------


async def test_unreachable_chain_keeps_the_node_at_boot_gate_with_a_complete_status(
    short_root: Path,
) -> None:
    app_id = Address(b"\xa4" * 20)
    config = SimulatorConfig.load(write_node_config(short_root / "node", app_id, 4))
    running = await serve_unix(short_root / "node" / "agent.sock", config)
    agent = GuestAgent(str(running.socket_path))
    controller: NodeUnderTest | None = None
    try:
        with closed_port() as port:
            env = node_env(
                rpc_url=f"http://127.0.0.1:{port}", cluster=Address(b"\xc1" * 20), root=short_root / "node"
            )
            controller = NodeUnderTest(
                load_settings(env), agent, Metrics(CollectorRegistry()), Liveness(window=60.0)
            )
            with capture_logs() as logs:
                await controller.pass_once()
                await controller.pass_once()
    finally:
        if controller is not None:
            await controller.close()
        await agent.close()
        await running.close()

    status = controller.status
    assert status.phase == "boot_gate" and status.healthy is False
    assert status.reason is not None and status.reason.startswith("chain unreachable: ")
    assert controller.facts.chain_ok is False
    assert len(events(logs, "chain.unreachable")) == 1  # an outage is logged once, not every pass
    assert sample(controller.metrics, "attestmesh_chain_errors_total", kind="transient") == 2

    body = json.loads(json.dumps(healthz_body(status)))  # the /healthz body, through JSON
    assert set(body) == HEALTHZ_KEYS
    assert set(body["node"]) == NODE_KEYS
    assert body["node"]["app_id"] == str(app_id)  # the guest agent answered: identity is known
    assert body["node"]["signer"] is not None and body["node"]["compose_hash"] == str(COMPOSE_HASH)
    assert body["node"]["member_id"] is None and body["node"]["mesh_ip"] is None
    assert body["peers"] == {
        "desired": 0, "configured": 0, "live": 0, "transport": {}, "excluded": [], "excluded_count": 0,
    }  # fmt: skip
    assert body["csk"] == {
        "held": False, "epoch": None, "previous_epoch": None, "commitment": None, "source": None,
        "peering_error": None,
    }  # fmt: skip
    assert set(body["events"]) == {
        "mode",
        "indexer_connected",
        "cursor_block",
        "head_block",
        "rejected_pushes",
        "rejected_by_reason",
    }
    assert body["events"]["mode"] == "poll" and body["events"]["head_block"] is None
    assert body["chain"]["reachable"] is False and body["chain"]["error"]
    assert body["membership_digest"] is None and body["version"]
    # Which code runs: this checkout's HEAD (the tests import the sidecar from the source tree).
    assert body["build"]["commit"] == HEAD and body["build"]["source"] == "git"
    assert body["build"]["version"] == body["version"] == metadata.version("attestmesh")


HEAD = subprocess.run(
    ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
).stdout.strip()


# --- 5. a wrong CSK from a peer -------------------------------------------------------------------------


async def test_wrong_csk_from_a_peer_is_rejected_and_the_next_peer_tried(lab: Lab) -> None:
    bad_peer = await lab.member("peer-bad")  # registered first: the originator, tried first
    good_peer = await lab.member("peer-good")
    csk = SecretBytes(os.urandom(32))
    commitment = cskcore.commitment(csk)
    await bad_peer.client.set_csk_commitment(1, commitment)
    bad_ip = await lab.owner.mesh_ip_of(bad_peer.member_id)
    good_ip = await lab.owner.mesh_ip_of(good_peer.member_id)
    assert (bad_ip, good_ip) == (IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2"))

    directory: dict[MemberId, MemberRecord] = {}
    wrong = SealingPeer(bad_peer, SecretBytes(os.urandom(32)), directory, lab.anchors)
    right = SealingPeer(good_peer, csk, directory, lab.anchors)
    server_metrics = Metrics(CollectorRegistry())
    port = await serve_on_same_port([(str(bad_ip), wrong), (str(good_ip), right)], server_metrics, lab.exits)

    app_id = await lab.app("requester")
    # One pull at a time, so the order is deterministic: the originator (wrong key) first, then the next.
    controller = await lab.controller("requester", app_id, PEER_API_PORT=str(port), CSK_PARALLELISM="1")
    await lab.set_balance(lab.signer_of(app_id), FUNDING_WEI)
    await controller.pass_once()  # registers
    await controller.pass_once()  # sees itself; stops at the mesh step (no device in this test)
    assert controller.status.phase == "mesh"
    snapshot = controller.snapshot
    assert snapshot is not None and snapshot.commitment == commitment
    assert snapshot.originator == bad_peer.member_id
    mine = snapshot.member(controller.member_id)
    assert mine is not None and mine.mesh_ip == IPv4Address("127.0.0.3")
    directory.update({m.member_id: m for m in snapshot.members})

    now = controller.clock()
    controller.liveness.heard(bad_peer.member_id, now)
    controller.liveness.heard(good_peer.member_id, now)
    with capture_logs() as logs:
        await controller.pull_csk(snapshot, mine, commitment)

    held = controller.csk.value
    assert held is not None and held.reveal() == csk.reveal()
    assert keccak(held.reveal()) == commitment.raw
    assert controller.csk.source == "peer" and controller.csk.commitment == commitment
    assert (wrong.served, right.served) == (1, 1)
    metrics = controller.metrics
    assert sample(metrics, "attestmesh_csk_pull_attempts_total", result="invalid") == 1
    assert sample(metrics, "attestmesh_csk_pull_attempts_total", result="ok") == 1
    (rejected,) = events(logs, "csk.pull_rejected")
    assert rejected["peer"] == str(bad_peer.member_id) and "commitment" in rejected["reason"]
    (pulled,) = events(logs, "csk.pulled")
    assert pulled["peer"] == str(good_peer.member_id)
    assert csk.reveal().hex() not in repr(logs)
    # The key is cached encrypted, bound to cluster, member and commitment (mode 0600).
    cache = controller.settings.state_dir / CSK_CACHE_FILE
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert csk.reveal() not in cache.read_bytes()
    assert controller.identity is not None
    opened = cskcore.open_cache(
        cache.read_bytes(), controller.identity.state_key, lab.stack.cluster, mine.member_id, commitment
    )
    assert opened.reveal() == csk.reveal()

    # Only the wrong peer left: nothing is held, and the error names the peer and the failure.
    controller.node.csk.drop()
    controller.liveness.forget(good_peer.member_id)
    await controller.pull_csk(snapshot, mine, commitment)
    assert controller.csk.value is None
    assert controller.csk.error.startswith("no peer served a valid cluster shared key")
    assert f"{str(bad_peer.member_id)[:10]}: invalid" in controller.csk.error
    assert sample(metrics, "attestmesh_csk_pull_attempts_total", result="invalid") == 2
    assert (wrong.served, right.served) == (2, 1)


async def test_a_member_moved_up_to_originator_by_an_eviction_reads_its_cache(lab: Lab) -> None:
    # The committer is evicted; the next member becomes index 0, "the originator", but its own derived key
    # is not the committed one. It must not get stuck re-deriving: it reads its sealed cache like any member.
    committer = await lab.member("committer")
    csk = SecretBytes(os.urandom(32))
    commitment = cskcore.commitment(csk)
    await committer.client.set_csk_commitment(1, commitment)
    app_id = await lab.app("successor")
    controller = await lab.controller("successor", app_id)
    await lab.set_balance(lab.signer_of(app_id), FUNDING_WEI)
    await controller.pass_once()  # registers
    await controller.pass_once()  # sees itself (stops at the mesh step: no device in this test)
    assert controller.member_id is not None
    controller.hold(csk, commitment, "peer")  # as after a pull: the key sealed in its cache
    await lab.owner.remove_member(committer.member_id)

    controller.node.csk.drop()  # a restart: nothing in memory
    await controller.pass_once()
    snapshot = controller.snapshot
    assert snapshot is not None and snapshot.originator == controller.member_id
    mine = snapshot.member(controller.member_id)
    assert mine is not None
    with capture_logs() as logs:
        await controller.acquire_csk(snapshot, mine)
        await controller.acquire_csk(snapshot, mine)  # held now: no second re-derive, no second warning
    held = controller.csk.value
    assert held is not None and held.reveal() == csk.reveal()
    assert controller.csk.source == "cache" and controller.csk.error == ""
    (mismatch,) = events(logs, "csk.rederive_mismatch")
    assert mismatch["log_level"] == "warning" and mismatch["commitment"] == str(commitment)
    assert len(events(logs, "csk.loaded_from_cache")) == 1
    assert csk.reveal().hex() not in repr(logs)


# --- 6. the CSK responder over HTTP ---------------------------------------------------------------------


async def test_a_repointed_originator_commits_an_unrelated_key_in_another_cluster(lab: Lab) -> None:
    """Acceptance 2, second half: a cluster B deployed to catch cluster A's originator. B cannot even approve
    A's app id (the contract: it is A's member app), and the same CVM (one simulator: same app id, same
    KMS) booted for B derives B's keys anyway: through the real GetKey, B's CSK is not A's (the
    commitments, i.e. keccak of the keys, differ), and neither is any other key."""
    app_id = await lab.app("origin")
    factory = ClusterFactoryClient(lab.conn, lab.stack.cluster_factory, lab.deployer)
    config = ClusterConfig(
        owner=lab.deployer.address, mesh_cidr=MeshCidr.parse(MESH_CIDR),
        member_app_factory=lab.stack.member_app_factory, kms_roots=(lab.kms.root_address,),
        compose_hashes=(COMPOSE_HASH,), allow_any_device=True,
    )  # fmt: skip
    cluster_b, _ = await factory.deploy_cluster(config, Bytes32(os.urandom(32)))
    with pytest.raises(ForeignApp):
        await ClusterClient(lab.conn, cluster_b, lab.deployer).add_allowed_app_id(app_id)
    sock = await lab.simulator("origin", app_id)
    agent = GuestAgent(str(sock))
    ctl = await lab.controller("o-a", app_id, agent=agent)
    signer = await derive(agent, KeyScope(CHAIN_ID, lab.stack.cluster))
    await lab.set_balance(signer.signer, FUNDING_WEI)
    await ctl.pass_once()  # registers in A
    await ctl.pass_once()  # sees itself; stops at the mesh step (no device in this test)
    snapshot = ctl.snapshot
    assert snapshot is not None and ctl.member_id is not None and snapshot.originator == ctl.member_id
    mine = snapshot.member(ctl.member_id)
    assert mine is not None
    await ctl.acquire_csk(snapshot, mine)  # the originator derives and commits
    commitment_a = await ClusterClient(lab.conn, lab.stack.cluster).csk_commitment()
    assert commitment_a is not None and ctl.csk.commitment == commitment_a
    agent_b = GuestAgent(str(sock))
    try:
        in_b = await derive(agent_b, KeyScope(CHAIN_ID, cluster_b))
        key_a = await derive_csk_key(agent_b, KeyScope(CHAIN_ID, lab.stack.cluster))
        key_b = await derive_csk_key(agent_b, KeyScope(CHAIN_ID, cluster_b))
    finally:
        await agent_b.close()
    assert in_b.app_id == app_id and in_b.signer != signer.signer  # every key bound to its cluster
    assert in_b.keys != signer.keys
    assert cskcore.commitment(cskcore.csk_from_key(key_a)) == commitment_a
    assert cskcore.commitment(cskcore.csk_from_key(key_b)) != commitment_a  # B never gets A's CSK


async def test_csk_service_serves_live_members_and_refuses_the_rest(lab: Lab) -> None:
    app_id = await lab.app("responder")
    controller = await lab.controller("responder", app_id)
    await lab.set_balance(lab.signer_of(app_id), FUNDING_WEI)
    await controller.pass_once()  # registers: the first member, so the originator
    requester = await lab.member("requester")
    silent = await lab.member("silent")  # a member whose heartbeats were never verified
    await controller.pass_once()
    snapshot = controller.snapshot
    assert snapshot is not None and controller.member_id is not None
    mine = snapshot.member(controller.member_id)
    assert mine is not None and mine.mesh_ip == IPv4Address("127.0.0.1")
    assert snapshot.originator == mine.member_id

    metrics = controller.metrics
    runner = await start_tcp(peer_api(controller.node.csk, metrics), str(mine.mesh_ip), 0, name="peer")
    lab.exits.push_async_callback(runner.close)
    url = f"http://{mine.mesh_ip}:{runner.port}/v1/csk"
    cluster = lab.stack.cluster
    me = mine.member_id

    def request(
        requester_id: MemberId, *, cluster: Address = cluster, responder: MemberId = me, age_ms: int = 0
    ) -> cskcore.CskRequest:
        return cskcore.CskRequest(cluster, requester_id, responder, int(time.time() * 1000) - age_ms)

    async with aiohttp.ClientSession() as session:

        async def post(body: object | bytes) -> tuple[int, dict[str, Any]]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.json()

        # Not held yet: 503.
        status, answer = await post(
            cskcore.sign_request(request(requester.member_id), requester.identity_key, requester.proof)
        )
        assert (status, answer["reason"]) == (503, "not_held")

        # The originator derives the CSK and commits it; the next pass holds it as verified.
        await controller.acquire_csk(snapshot, mine)
        await controller.pass_once()
        key = controller.csk_value()
        assert key is not None and controller.status.csk_source == "derived"
        assert await lab.owner.csk_commitment() == cskcore.commitment(key)
        commitment = cskcore.commitment(key)

        controller.liveness.heard(requester.member_id, controller.clock())
        first = request(requester.member_id)
        good = cskcore.sign_request(first, requester.identity_key, requester.proof)
        status, answer = await post(good)
        assert status == 200, answer
        # The answer proves the responder (the real node's proof, made from its simulator's keys).
        sealed = cskcore.check_response(first, answer, lab.anchors)
        opened = cskcore.open_sealed(sealed, requester.seal_key, commitment)
        assert opened.reveal() == key.reveal()

        stranger_key = SecretBytes(os.urandom(32))
        proof = requester.proof
        refusals = {
            "replayed": good,
            "not_member": cskcore.sign_request(request(MemberId(os.urandom(32))), stranger_key, None),
            "no_proof": cskcore.sign_request(request(requester.member_id), requester.identity_key, None),
            "bad_signature": cskcore.sign_request(request(requester.member_id), stranger_key, proof),
            "not_live": cskcore.sign_request(request(silent.member_id), silent.identity_key, silent.proof),
            "wrong_cluster": cskcore.sign_request(
                request(requester.member_id, cluster=Address(os.urandom(20))), requester.identity_key, proof
            ),
            "wrong_responder": cskcore.sign_request(
                request(requester.member_id, responder=silent.member_id), requester.identity_key, proof
            ),
            "stale": cskcore.sign_request(
                request(requester.member_id, age_ms=600_000), requester.identity_key, proof
            ),
        }
        for reason, body in refusals.items():
            status, answer = await post(body)
            assert (status, answer["reason"]) == (403, reason), reason
        status, answer = await post(b'{"cluster": "0x00", ')  # not JSON at all
        assert status == 400 and "error" in answer

    assert sample(metrics, "attestmesh_csk_requests_served_total") == 1
    for reason in (*refusals, "not_held", "malformed"):
        assert sample(metrics, "attestmesh_csk_requests_refused_total", reason=reason) == 1, reason


# --- 7 and 8. the process: configuration errors, bounded shutdown -----------------------------------------


async def run_sidecar(env: Mapping[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", cwd=REPO, env=dict(env),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip


async def test_invalid_environment_exits_2_listing_every_problem() -> None:
    secret = "leaked-secret-value-0123"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ATTESTMESH_CHAIN_ID": "thirty-one",
        "ATTESTMESH_FOO": secret,
        "ATTESTMESH_CLUSTER": "0x" + "12" * 20,
        "ATTESTMESH_ENDPOINT": "localhost:51820",
        "ATTESTMESH_CSK_PARALLELISM": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", cwd=REPO, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=SUBPROCESS_START_DEADLINE)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 2, text
    assert out == b""
    problems = [line.strip()[2:] for line in text.splitlines() if line.startswith("  - ")]
    expected = [
        "ATTESTMESH_FOO is not a known AttestMesh variable",
        "ATTESTMESH_RPC_URLS (or ATTESTMESH_RPC_URL) is required but not set",
        "ATTESTMESH_MEMBER_APP_FACTORY is required but not set",
        "ATTESTMESH_KMS_ROOTS is required but not set",
        "ATTESTMESH_CHAIN_ID='thirty-one' must be a whole number",
        "ATTESTMESH_ENDPOINT='localhost:51820' must be an IP address",
        "ATTESTMESH_CSK_PARALLELISM='0' must be at least 1",
    ]
    for fragment in expected:
        assert any(p.startswith(fragment) for p in problems), f"{fragment!r} not in {problems}"
    assert len(problems) == len(expected), problems
    assert secret not in text  # an unknown variable may be a misnamed secret: never echoed


async def test_sigterm_stops_the_sidecar_within_the_shutdown_timeout(short_root: Path) -> None:
    app_id = Address(b"\xa8" * 20)
    node = short_root / "node"
    config = SimulatorConfig.load(write_node_config(node, app_id, 8, measured_compose(Address(b"\xc8" * 20))))
    running = await serve_unix(node / "agent.sock", config)
    health_port = free_tcp_port()
    log = short_root / "sidecar.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        with closed_port() as rpc_port:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "DSTACK_SIMULATOR_ENDPOINT": str(running.socket_path),
                **node_env(
                    rpc_url=f"http://127.0.0.1:{rpc_port}",
                    cluster=Address(b"\xc8" * 20),
                    root=node,
                    HEALTH_ADDR=f"127.0.0.1:{health_port}",
                    SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT:g}",
                ),
            }
            proc = await run_sidecar(env, log)
            body = await wait_for_healthz(proc, health_port, log)
            assert body["phase"] == "boot_gate" and body["healthy"] is False
            assert body["node"]["app_id"] == str(app_id)

            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                code = await asyncio.wait_for(proc.wait(), timeout=SHUTDOWN_TIMEOUT + 1.0)
            except TimeoutError:
                pytest.fail(f"no exit within {SHUTDOWN_TIMEOUT + 1.0}s of SIGTERM:\n{read_log(log)}")
            elapsed = time.monotonic() - started
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await running.close()

    text = log.read_text(errors="replace")
    assert code == 0, text
    assert elapsed <= SHUTDOWN_TIMEOUT + 1.0
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    names = [line.get("event") for line in lines]
    assert "sidecar.stopping" in names and "sidecar.stopped" in names
    assert names.index("health.listening") < names.index("sidecar.started")
    assert not (node / "app.sock").exists()  # the app API socket is removed on the way out


async def test_a_node_booted_with_another_cluster_than_its_compose_measures_exits_2_naming_it(
    short_root: Path,
) -> None:
    """Acceptance 2, first half: the compose (measured by the simulator's Info, its hash the compose hash)
    says cluster A; the environment says B. The sidecar refuses at start-up: exit 2, the variable named."""
    cluster_a, cluster_b = Address(b"\xca" * 20), Address(b"\xcb" * 20)
    node = short_root / "node"
    config = SimulatorConfig.load(
        write_node_config(node, Address(b"\xa7" * 20), 7, measured_compose(cluster_a))
    )
    running = await serve_unix(node / "agent.sock", config)
    log = short_root / "sidecar.log"
    try:
        with closed_port() as rpc_port:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "DSTACK_SIMULATOR_ENDPOINT": str(running.socket_path),
                **node_env(
                    rpc_url=f"http://127.0.0.1:{rpc_port}", cluster=cluster_b, root=node,
                    HEALTH_ADDR=f"127.0.0.1:{free_tcp_port()}",
                ),
            }  # fmt: skip
            proc = await run_sidecar(env, log)
            try:
                code = await asyncio.wait_for(proc.wait(), timeout=SUBPROCESS_START_DEADLINE)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    finally:
        await running.close()
    text = read_log(log)
    assert code == 2, text
    assert (
        f"  - ATTESTMESH_CLUSTER={cluster_b} overrides the measured value {cluster_a} in the compose" in text
    )
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    (refused,) = [e for e in lines if e.get("event") == "config.measured_refused"]
    assert refused["problem"].startswith("ATTESTMESH_CLUSTER=") and refused["level"] == "error"
    events_seen = [e.get("event") for e in lines]
    assert "identity.derived" not in events_seen and "registration.attempted" not in events_seen
    assert "Traceback" not in text


async def test_a_taken_health_port_exits_1_with_one_clear_line(short_root: Path) -> None:
    node = short_root / "node"
    write_node_config(node, Address(b"\xa9" * 20), 8)
    with socket.socket() as holder:  # another process's server on the health port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **node_env(
                rpc_url="http://127.0.0.1:9", cluster=Address(b"\xc9" * 20), root=node,
                HEALTH_ADDR=f"127.0.0.1:{port}",
            ),
        }  # fmt: skip
        log = short_root / "sidecar.log"
        proc = await run_sidecar(env, log)
        try:
            code = await asyncio.wait_for(proc.wait(), timeout=SUBPROCESS_START_DEADLINE)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = log.read_text(errors="replace")
    assert code == 1, text
    assert "Traceback" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    (failed,) = [e for e in lines if e.get("event") == "sidecar.start_failed"]
    assert failed["surface"] == f"health address 127.0.0.1:{port}" and failed["level"] == "error"
    assert "sidecar.started" not in text


async def wait_for_healthz(proc: asyncio.subprocess.Process, port: int, log: Path) -> dict[str, Any]:
    """Poll /healthz until the control loop has reported the unreachable chain (boot_gate)."""
    deadline = time.monotonic() + SUBPROCESS_START_DEADLINE
    last: object = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if proc.returncode is not None:
                pytest.fail(f"sidecar exited with {proc.returncode}:\n{read_log(log)}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    last = body = await response.json()
                    assert response.status == 503
                    reason = body.get("reason") or ""
                    if body.get("phase") == "boot_gate" and reason.startswith("chain unreachable"):
                        return dict(body)
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/healthz never reported boot_gate (last {last}):\n{read_log(log)}")
            await asyncio.sleep(0.1)
