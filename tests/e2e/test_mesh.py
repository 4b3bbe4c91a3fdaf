"""The sidecar on the devnet: boot to healthy over a real WireGuard mesh, joins, restarts, evictions,
allowlist changes, refused input and a chain outage — asserted through /healthz, the app API, the device
(UAPI), chain reads and probes inside the node namespaces."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TypeVar

import pytest
from eth_utils.crypto import keccak

from devnet.chainpoke import poke_member_endpoint
from devnet.compose import NodeAnchors, encode_app_compose, node_app_compose
from devnet.deployment import deploy_member_app
from devnet.kms import DevnetKms, get_key
from devnet.procs import ProcRecord
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.heartbeat import Heartbeat, encode
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, ed25519_public_key, key_path, x25519_public_key
from sidecar.core.memberproof import MemberProof
from sidecar.core.model import MemberKeys
from sidecar.core.sigchain import build_proof
from tests.e2e.cskkit import PEER_API_PORT, ask_csk, csk_request, member_proof
from tests.e2e.lab import REPO, LabCli, chain, sidecar_log, wait_until
from tests.e2e.mesh import device_key, identity_key, member_id, nodes, wait_all_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

T = TypeVar("T")
POLL_INTERVAL = 1.0  # the devnet's ATTESTMESH_POLL_INTERVAL
CONFIRMATION_WAIT = 2.0  # the sidecars' default two confirmations at the devnet's one block a second
HEARTBEAT_PORT = 51821


# --- 1. three nodes converge (through `make demo`) ------------------------------------------------------


def test_make_demo_three_nodes_reach_healthy_with_one_csk(lab: LabCli) -> None:
    proc = subprocess.run(
        ["make", "demo"], env=lab.env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = [
        line.split() for line in proc.stdout.splitlines() if line.startswith("node-") and "healthy" in line
    ]
    assert [row[0] for row in table] == ["node-1", "node-2", "node-3"]

    found = wait_all_healthy(lab)
    bodies = {name: node.healthz() for name, node in found.items()}
    mesh_ips = {name: body["node"]["mesh_ip"] for name, body in bodies.items()}
    wg_keys = {}
    for node in found.values():
        wg_keys[node.name] = node.device()["public_key"]
    for node in found.values():
        peers = node.device_peers()
        others = [o for o in found.values() if o.name != node.name]
        assert set(peers) == {wg_keys[o.name] for o in others}
        gateway = lab.state().transport == "gateway"  # `make demo` builds the default lab: gateway mode
        if gateway:  # every peer reached through the gateway, over its stream
            assert bodies[node.name]["peers"]["transport"] == {"gateway": {"up": 2, "down": 0}}
        for other in others:
            peer = peers[wg_keys[other.name]]
            if gateway:  # the peer's loopback bridge: the device never sees the gateway
                assert str(peer["endpoint"]).startswith("127.0.0.1:")
            else:
                assert peer["endpoint"] == f"{other.data['underlay_ip']}:51820"
            assert peer["allowed_ips"] == [f"{mesh_ips[other.name]}/32"]
            assert peer["persistent_keepalive_interval"] == 25
            assert node.pings(mesh_ips[other.name]), f"{node.name} -> {other.name}"

    # Compare digests, never the key itself: a failing assertion must not print the CSK.
    digests = set()
    for node in found.values():
        status, body = node.app("/v1/csk")
        assert status == 200
        digests.add(Bytes32(keccak(bytes.fromhex(body["csk"]))))
    commitment = chain(lab, lambda conn, cluster: cluster.csk_commitment())
    assert digests == {commitment}
    assert len({body["membership_digest"] for body in bodies.values()}) == 1
    assert {body["csk"]["commitment"] for body in bodies.values()} == {str(commitment)}
    status, me = found["node-2"].app("/v1/self")
    assert status == 200 and me["mesh_ip"] == mesh_ips["node-2"]
    status, peers_body = found["node-2"].app("/v1/peers")
    assert status == 200 and {p["mesh_ip"] for p in peers_body["peers"]} == {
        mesh_ips["node-1"],
        mesh_ips["node-3"],
    }
    assert all(p["live"] and p["configured"] for p in peers_body["peers"])


# --- 2. a fourth node joins the live cluster ------------------------------------------------------------


def test_fourth_node_is_configured_within_one_poll_and_becomes_healthy(lab: LabCli) -> None:
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    before = {name: len(node.device_peers()) for name, node in found.items()}
    assert before == {"node-1": 2, "node-2": 2, "node-3": 2}
    lab.run("node", "add", "node-4")
    newcomer = nodes(lab)["node-4"]
    new_key = wait_until(lambda: device_key(newcomer), 30, "node-4's device")
    registered = wait_until(
        lambda: chain(lab, lambda conn, cluster: cluster.member_count()) == 4 and time.monotonic(),
        30,
        "node-4's registration",
        interval=0.05,
    )
    # Within the confirmations (two blocks; the lab mines one a second), one poll interval and the pass.
    for node in found.values():
        wait_until(
            lambda n=node: new_key in n.device_peers(),
            CONFIRMATION_WAIT + POLL_INTERVAL + 1.5,
            f"{node.name} has node-4",
        )
    assert time.monotonic() - registered < CONFIRMATION_WAIT + POLL_INTERVAL + 2.5
    wait_until(newcomer.healthy, 30, "node-4 healthy")
    assert newcomer.healthz()["csk"]["source"] == "peer"
    served = sum(node.counter("attestmesh_csk_requests_served_total") for node in found.values())
    assert served >= 1


# --- 3. restarts ----------------------------------------------------------------------------------------


def test_restarts_keep_identity_and_recover(lab: LabCli) -> None:
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    # `up` boots the nodes together, so any of them may have registered first: ask the chain who the
    # originator (index 0, the one that derives the CSK) is, and restart a member first, then it.
    first = chain(lab, lambda conn, c: c.originator())
    assert first is not None
    originator = next(
        n for n in sorted(found) if found[n].healthz()["node"]["member_id"] == str(first).lower()
    )
    member = next(n for n in sorted(found) if n != originator)
    node2 = found[member]
    before = node2.healthz()
    signer = Address.from_hex(before["node"]["signer"])
    nonce_before = chain(lab, lambda conn, c: conn.w3.eth.get_transaction_count(signer.checksum))
    count_before = chain(lab, lambda conn, c: c.member_count())

    lab.run("node", "restart", member)
    wait_until(node2.healthy, 30, f"{member} healthy after restart")
    after = node2.healthz()
    assert after["node"]["member_id"] == before["node"]["member_id"]
    assert after["node"]["mesh_ip"] == before["node"]["mesh_ip"]
    assert after["csk"]["source"] == "cache"
    assert chain(lab, lambda conn, c: c.member_count()) == count_before
    assert chain(lab, lambda conn, c: conn.w3.eth.get_transaction_count(signer.checksum)) == nonce_before
    log = (lab.root / "logs" / f"{member}-sidecar.log").read_text()
    assert log.count('"registration.attempted"') == 1  # the first start only; the restart carried over
    assert '"identity carried over"' in log

    mesh3 = found["node-3"].healthz()["node"]["mesh_ip"]
    lab.run("node", "restart", originator)
    wait_until(found[originator].healthy, 30, f"{originator} healthy after restart")
    assert found[originator].healthz()["csk"]["source"] == "derived"

    log = (lab.root / "logs" / f"{member}-sidecar.log").read_text()
    stopped = [json.loads(line) for line in log.splitlines() if '"sidecar.stopped"' in line]
    assert stopped and stopped[0]["interface_left_up"] is True  # the SIGTERM of `node restart` was graceful

    # A stopped node goes down on its peers (liveness goes down as well as up), then everything recovers.
    def node3_live_on_node1() -> bool:
        return bool(
            next(p for p in found["node-1"].app("/v1/peers")[1]["peers"] if p["mesh_ip"] == mesh3)["live"]
        )

    # node-1 is healthy with one live peer: hear node-3 first, or its stop would be no transition at all.
    wait_until(node3_live_on_node1, 15, "node-1 hears node-3 after its restart")
    downs = found["node-1"].counter("attestmesh_peer_liveness_transitions_total", direction="down")
    lab.run("node", "stop", "node-3")
    wait_until(lambda: not node3_live_on_node1(), 15, "node-1 sees node-3 down")
    wait_until(
        lambda: (
            found["node-1"].counter("attestmesh_peer_liveness_transitions_total", direction="down") > downs
        ),
        5,
        "node-1 counts the down transition",
    )
    for name in ("node-1", "node-2"):
        lab.run("node", "stop", name)
    for name in found:
        lab.run("node", "start", name)
    wait_all_healthy(lab, timeout=60)
    assert chain(lab, lambda conn, c: c.member_count()) == 3


# --- 4. eviction ----------------------------------------------------------------------------------------


def test_removed_member_leaves_every_device_within_one_poll(lab: LabCli) -> None:
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    gone_key = found["node-3"].device()["public_key"]
    lab.run("node", "remove", "node-3")
    removed_at = time.monotonic()
    for name in ("node-1", "node-2"):
        node = found[name]
        wait_until(
            lambda n=node: gone_key not in n.device_peers(),
            CONFIRMATION_WAIT + POLL_INTERVAL + 1.5,
            f"{name} drops node-3",
        )
    assert time.monotonic() - removed_at < CONFIRMATION_WAIT + POLL_INTERVAL + 2.5
    body = wait_until(
        lambda: (b := found["node-3"].healthz()) and not b["healthy"] and b, 10, "node-3 reports its eviction"
    )
    assert body["phase"] == "boot_gate"
    assert "app id not allowed" in body["reason"]
    wait_until(found["node-1"].healthy, 10, "node-1 still healthy")
    assert found["node-1"].healthz()["peers"]["desired"] == 1


def test_changed_endpoint_is_applied_by_every_peer(lab: LabCli) -> None:
    """The direct transport: the device holds the peer's registered ip:port, and follows a change."""
    lab.run("up", "--nodes", "3", "--transport", "direct")
    found = wait_all_healthy(lab)
    n1, n3 = found["node-1"], found["node-3"]
    key3 = n3.device()["public_key"]
    original = f"{n3.data['underlay_ip']}:51820"
    moved = f"{n3.data['underlay_ip']}:51999"

    def endpoint_on_node1() -> str:
        return str(n1.device_peers()[key3]["endpoint"])

    assert endpoint_on_node1() == original
    app3 = Address.from_hex(n3.data["app_id"])
    assert n3.scope is not None
    signer_key = get_key(DevnetKms(), app3, n3.scope.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)[0]

    async def move(conn: ChainConnection, cluster: ClusterClient) -> object:
        member = ClusterClient(conn, cluster.address, TxSubmitter(conn, LocalSigner(signer_key)))
        return await member.set_endpoint(moved)

    # node-3 is powered off, so its own sidecar does not restore its endpoint while we watch node-1.
    lab.run("node", "stop", "node-3")
    chain(lab, move)  # as node-3's own signer (the devnet KMS seed is public)
    wait_until(
        lambda: endpoint_on_node1() == moved,
        CONFIRMATION_WAIT + POLL_INTERVAL + 2,
        "node-1 applies the new endpoint",
    )
    # Back up, node-3's sidecar sets the on-chain endpoint to its configuration again; every peer follows.
    lab.run("node", "start", "node-3")
    wait_until(lambda: endpoint_on_node1() == original, 30, "node-3 restores its endpoint")
    wait_all_healthy(lab)


def test_a_member_with_an_unusable_endpoint_never_takes_the_others_down(lab: LabCli) -> None:
    """Issue 12, acceptance 4: a record the device cannot take (planted straight into the contract's storage,
    since the contract may refuse it) is excluded and listed; every other node stays healthy. Before, the
    zone-id endpoint made every pass's device apply fail: 503 on every node."""
    lab.run("up", "--nodes", "3", "--transport", "direct")
    found = wait_all_healthy(lab)
    n3 = found["node-3"]
    member3 = MemberId.from_hex(n3.healthz()["node"]["member_id"])
    key3 = n3.device()["public_key"]
    # node-3 is powered off, so its own sidecar does not restore its endpoint while we watch the others.
    lab.run("node", "stop", "node-3")

    async def plant(conn: ChainConnection, cluster: ClusterClient) -> None:
        await poke_member_endpoint(conn, cluster.address, member3, "udp://[fe80::1%eth0]:51820")
        assert (await cluster.member_by_id(member3)).endpoint == "udp://[fe80::1%eth0]:51820"  # type: ignore[union-attr]

    chain(lab, plant)
    listed = [{"member_id": str(member3), "reason": "bad_endpoint"}]
    for name in ("node-1", "node-2"):
        node = found[name]
        # no event announces a storage write: the next periodic resync (15 s on the devnet) picks it up
        wait_until(
            lambda n=node: n.healthz()["peers"]["excluded"] == listed, 45, f"{name} lists node-3 as excluded"
        )
    for name in ("node-1", "node-2"):
        body = found[name].healthz()
        assert body["healthy"], f"{name}: {body['reason']}"
        assert body["peers"]["excluded_count"] == 1 and body["peers"]["desired"] == 1
        assert key3 not in found[name].device_peers()
        assert found[name].counter("attestmesh_peers_excluded", reason="bad_endpoint") == 1
        assert [e["member_id"] for e in sidecar_log(lab, name, "peer.excluded")] == [str(member3)]
    # node-3 comes back and publishes its endpoint again: it is let back in everywhere.
    lab.run("node", "start", "node-3")
    wait_all_healthy(lab, timeout=60)
    for name in ("node-1", "node-2"):
        wait_until(lambda n=found[name]: n.healthz()["peers"]["excluded_count"] == 0, 30, f"{name} readmits")
        wait_until(lambda n=found[name]: key3 in n.device_peers(), 10, f"{name} configures node-3 again")


# --- 5. compose hash removed after registration ---------------------------------------------------------


def test_compose_hash_removed_after_registration_sends_node_to_boot_gate(lab: LabCli, tmp_path: Path) -> None:
    lab.run("up", "--nodes", "2")
    wait_all_healthy(lab)
    compose = tmp_path / "app-compose.json"
    compose.write_bytes(
        encode_app_compose(node_app_compose(NodeAnchors.of_lab(lab.state()), extra_envs=("APP_MODE",)))
    )
    digest = Bytes32(hashlib.sha256(compose.read_bytes()).digest())
    chain(lab, lambda conn, c: c.add_compose_hash(digest))
    lab.run("node", "add", "node-3", "--compose-file", str(compose))
    found = wait_all_healthy(lab)
    chain(lab, lambda conn, c: c.remove_compose_hash(digest))
    body = wait_until(
        lambda: (b := found["node-3"].healthz()) and b["phase"] == "boot_gate" and b,
        15,
        "node-3 at boot_gate",
    )
    assert body["healthy"] is False
    assert "compose hash not allowed" in body["reason"]
    assert found["node-1"].healthy() and found["node-2"].healthy()


# --- 6. refused input -----------------------------------------------------------------------------------


def test_bad_requests_and_heartbeats_are_refused_and_counted(lab: LabCli) -> None:
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    n1, n2, n3 = found["node-1"], found["node-2"], found["node-3"]
    cluster = lab.status()["cluster"]
    id2, id3 = member_id(n2), member_id(n3)
    key3 = identity_key(n3)
    proof3 = member_proof(lab, Address.from_hex(n3.data["app_id"]))
    csk_before = keccak(hexstr=n2.app("/v1/csk")[1]["csk"])  # a digest: never print the key

    def refused(reason: str) -> float:
        return n2.counter("attestmesh_csk_requests_refused_total", reason=reason)

    now, stranger = int(time.time() * 1000), SecretBytes(os.urandom(32))
    cases = {
        "not_member": csk_request(
            cluster, MemberId(os.urandom(32)), id2, SecretBytes(os.urandom(32)), now, None
        ),
        "no_proof": csk_request(cluster, id3, id2, key3, now, None),
        "bad_signature": csk_request(cluster, id3, id2, stranger, now, proof3),
    }
    for reason, body in cases.items():
        before = refused(reason)
        answer = ask_csk(n3, n2, body)
        assert answer["status"] == 403, answer
        assert refused(reason) == before + 1

    replay = csk_request(cluster, id3, id2, key3, int(time.time() * 1000), proof3)
    assert ask_csk(n3, n2, replay)["status"] == 200
    before = refused("replayed")
    assert ask_csk(n3, n2, replay)["status"] == 403
    assert refused("replayed") == before + 1

    # A registered member whose heartbeats never verified (no node runs behind it).
    silent = _register_silent_member(lab)
    wait_until(lambda: n2.healthz()["peers"]["desired"] == 3, 10, "node-2 sees the silent member")
    before = refused("not_live")
    silent_request = csk_request(cluster, silent[0], id2, silent[1], int(time.time() * 1000), silent[2])
    answer = ask_csk(n3, n2, silent_request)
    assert answer["status"] == 403 and refused("not_live") == before + 1

    # Malformed bodies to every HTTP surface: 4xx, counted, nothing changes.
    mesh2 = n2.healthz()["node"]["mesh_ip"]
    for args in (
        ("POST", f"http://{mesh2}:{PEER_API_PORT}/v1/csk", b"{not json".hex()),
        ("POST", f"http://{mesh2}:{PEER_API_PORT}/v1/csk", (b"[" * 5000).hex()),
        ("GET", f"http://{mesh2}:{PEER_API_PORT}/v1/csk"),
    ):
        assert 400 <= n3.probe("http", *args)["status"] < 500, args
    for args in (  # the health port, from inside node-2 (in gateway mode nothing else reaches it directly)
        ("POST", "http://127.0.0.1:9090/healthz", b"{}".hex()),
        ("GET", "http://127.0.0.1:9090/nope"),
    ):
        assert 400 <= n2.probe("http", *args)["status"] < 500, args

    # Forged and replayed heartbeats, sent from node-3's mesh IP as if by node-3.
    mesh3 = n3.healthz()["node"]["mesh_ip"]
    rejected = {
        r: n2.counter("attestmesh_heartbeats_rejected_total", reason=r) for r in ("bad_signature", "replayed")
    }
    forged = encode(Heartbeat(id3, int(time.time() * 1000), 2**62, (id3,)), SecretBytes(os.urandom(32)))
    n3.probe("udp", mesh3, mesh2, str(HEARTBEAT_PORT), forged.hex())
    old = encode(Heartbeat(id3, int(time.time() * 1000), 1, (id3,)), key3)
    n3.probe("udp", mesh3, mesh2, str(HEARTBEAT_PORT), old.hex())
    wait_until(
        lambda: (
            n2.counter("attestmesh_heartbeats_rejected_total", reason="bad_signature")
            > rejected["bad_signature"]
            and n2.counter("attestmesh_heartbeats_rejected_total", reason="replayed") > rejected["replayed"]
        ),
        5,
        "both heartbeats rejected",
    )
    assert n2.healthy() and n1.healthy() and n3.healthy()
    assert keccak(hexstr=n2.app("/v1/csk")[1]["csk"]) == csk_before
    # The silent member (a direct ip:port, no node behind it) never handshakes: its transport is down.
    transports = (
        {"gateway": {"up": 2, "down": 0}, "direct": {"up": 0, "down": 1}}
        if lab.state().transport == "gateway"
        else {"direct": {"up": 2, "down": 1}}
    )
    assert n2.healthz()["peers"] == {
        "desired": 3, "configured": 3, "live": 2, "transport": transports,
        "excluded": [], "excluded_count": 0,
    }  # fmt: skip


def _register_silent_member(lab: LabCli) -> tuple[MemberId, SecretBytes, MemberProof]:
    status = lab.status()
    kms = DevnetKms()

    async def register(
        conn: ChainConnection, cluster: ClusterClient
    ) -> tuple[MemberId, SecretBytes, Address]:
        assert cluster.submitter is not None
        app = await deploy_member_app(
            conn, cluster.submitter, Address.from_hex(status["member_app_factory"]), cluster.address, "silent"
        )
        await cluster.add_allowed_app_id(app)

        def path(kp: KeyPath) -> str:
            return key_path(kp, int(status["chain_id"]), cluster.address)

        key, sigchain = get_key(kms, app, path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
        proof = build_proof(app, key, sigchain)
        await cluster.submitter.send(proof.signer, b"", value=10**18)
        identity = get_key(kms, app, path(KeyPath.IDENTITY), "")[0]
        keys = MemberKeys(
            seal_pub=Bytes32(x25519_public_key(get_key(kms, app, path(KeyPath.SEAL), "")[0])),
            wg_pub=Bytes32(x25519_public_key(get_key(kms, app, path(KeyPath.WIREGUARD), "")[0])),
            identity_pub=Bytes32(ed25519_public_key(identity)),
        )
        member = ClusterClient(conn, cluster.address, TxSubmitter(conn, LocalSigner(key)))
        _, mid = await member.register(proof, keys, "10.213.0.99:51820")
        return mid, identity, app

    mid, identity, app = chain(lab, register)
    return mid, identity, member_proof(lab, app)


# --- 7. chain outage ------------------------------------------------------------------------------------


def test_chain_outage_keeps_the_data_plane_and_recovers(lab: LabCli) -> None:
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    anvil = ProcRecord.from_json(lab.status()["processes"]["anvil"])
    n1, n2 = found["node-1"], found["node-2"]
    mesh2 = n2.healthz()["node"]["mesh_ip"]
    peers_before = {name: set(node.device_peers()) for name, node in found.items()}
    os.kill(anvil.pid, signal.SIGSTOP)
    try:
        # In push mode nothing reads the chain until a pass does: the devnet's 15 s resync, then the read's
        # 5 s RPC timeout (production: 600 s, the RPC budget's price; docs/architecture.md).
        body = wait_until(
            lambda: (b := n1.healthz()) and not b["healthy"] and b, 40, "node-1 notices the chain is gone"
        )
        assert "chain unreachable" in body["reason"]
        assert body["chain"]["reachable"] is False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for name, node in found.items():
                assert set(node.device_peers()) == peers_before[name], f"{name} lost peers during the outage"
            assert n1.pings(mesh2), "traffic stopped during the chain outage"
            time.sleep(2)
    finally:
        os.kill(anvil.pid, signal.SIGCONT)
    wait_all_healthy(lab, timeout=60)
    assert n1.healthz()["chain"]["reachable"] is True
