"""The CSK goes only to proven TEEs of this cluster, and is adopted only from them (issue 12, item 3).

Real parts: anvil with our compiled contracts, nodes built by the daemon's ``build_node`` whose keys come
from the in-process dstack simulator (devnet KMS), the peer API on real aiohttp servers. What a lying RPC
would show is put straight into the responder's snapshot (the member list is chain data: it decides whom
to talk to), and each test shows the proof, checked with nothing read from the chain, still decides whom
the key goes to and whom it is taken from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from ipaddress import IPv4Address
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from devnet.deployment import deploy_member_app
from devnet.kms import DevnetKms, get_key
from sidecar.core import csk as cskcore
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, ed25519_public_key, key_path, x25519_public_key
from sidecar.core.memberproof import MemberProof, create2_address, make_member_proof, proof_json
from sidecar.core.model import MemberRecord, member_id_for
from sidecar.core.sigchain import build_proof
from sidecar.http.peerapi import peer_api
from sidecar.http.server import start_tcp
from sidecar.observability import Metrics
from tests.component import controllerkit as ctl
from tests.component.controllerkit import (
    CHAIN_ID,
    FUNDING_WEI,
    OTHER_KMS_SEED,
    Lab,
    NodeUnderTest,
    SealingPeer,
    events,
    sample,
    serve_on_same_port,
)

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

lab = ctl.lab  # the controller tests' fixtures: a freshly deployed cluster on the module's anvil
short_root = ctl.short_root


@dataclasses.dataclass
class Impostor:
    """A requester the test holds every key of; ``proof`` is whatever it can show."""

    record: MemberRecord
    identity_key: SecretBytes = dataclasses.field(repr=False)
    seal_key: SecretBytes = dataclasses.field(repr=False)
    proof: MemberProof | None


async def impostor(lab: Lab, app_id: Address, *, kms: DevnetKms, salt: Bytes32, index: int) -> Impostor:
    """A member record for ``app_id`` (as a lying RPC would list it) and a proof from ``kms``'s keys."""
    identity_key, seal_key = SecretBytes(os.urandom(32)), SecretBytes(os.urandom(32))
    identity_pub, seal_pub = Bytes32(ed25519_public_key(identity_key)), Bytes32(x25519_public_key(seal_key))
    path = key_path(KeyPath.SIGNER, CHAIN_ID, lab.stack.cluster)
    signer, chain = get_key(kms, app_id, path, KeyPath.SIGNER.purpose)
    sig_proof = build_proof(app_id, signer, chain)
    proof = make_member_proof(
        sig_proof, signer, salt=salt, chain_id=CHAIN_ID, cluster=lab.stack.cluster,
        identity_pub=identity_pub, seal_pub=seal_pub,
    )  # fmt: skip
    record = MemberRecord(
        member_id_for(lab.stack.cluster, app_id), app_id, sig_proof.signer, seal_pub, Bytes32(os.urandom(32)),
        identity_pub, "127.0.0.1:51820", IPv4Address(f"127.0.0.{100 + index}"), 10**6 + index,
    )  # fmt: skip
    return Impostor(record, identity_key, seal_key, proof)


def show(node: NodeUnderTest, *records: MemberRecord) -> None:
    """Make the node's snapshot list ``records`` too: what it would read from a lying RPC."""
    snap = node.node.state.snapshot
    assert snap is not None
    node.node.state.snapshot = dataclasses.replace(snap, members=(*snap.members, *records))
    for record in records:
        node.liveness.heard(record.member_id, node.clock())  # and its heartbeats verify


async def responder_node(lab: Lab) -> tuple[NodeUnderTest, MemberRecord]:
    """A real node, the originator, holding the key it derived and committed."""
    app_id = await lab.app("responder")
    node = await lab.controller("responder", app_id)
    await lab.set_balance(lab.signer_of(app_id), FUNDING_WEI)
    await node.pass_once()  # registers
    await node.pass_once()  # sees itself (stops at the mesh step: no device in this test)
    snapshot = node.snapshot
    assert snapshot is not None and node.member_id is not None
    mine = snapshot.member(node.member_id)
    assert mine is not None and snapshot.originator == mine.member_id
    await node.acquire_csk(snapshot, mine)
    await node.pass_once()
    assert node.csk_value() is not None and node.status.csk_peering_error is None
    return node, mine


async def test_the_member_app_address_the_proof_recomputes_is_the_factorys(lab: Lab) -> None:
    # The verifier's CREATE2 (from the compiled artifact) must be the address the factory deployed.
    app_id = await lab.app("someone")
    salt = await lab.factory.salt_of(app_id)
    assert not salt.is_zero
    assert create2_address(lab.stack.member_app_factory, salt, lab.anchors.member_app_code_hash) == app_id


async def test_the_key_goes_only_to_proven_tees_of_this_cluster(lab: Lab) -> None:
    node, mine = await responder_node(lab)
    key = node.csk_value()
    assert key is not None
    commitment = cskcore.commitment(key)
    member = await lab.member("member")  # a real member: its proof is made from its TEE's keys
    await node.pass_once()
    node.liveness.heard(member.member_id, node.clock())

    # A member app of ANOTHER cluster (a valid chain from the measured root) ...
    elsewhere = Address(os.urandom(20))
    foreign_app = await deploy_member_app(
        lab.conn, lab.deployer, lab.stack.member_app_factory, elsewhere, "foreign"
    )
    foreign = await impostor(
        lab, foreign_app, kms=lab.kms, salt=await lab.factory.salt_of(foreign_app), index=1
    )
    # ... this cluster's member app, but its keys from a KMS root nobody measured ...
    rogue_app = await lab.app("rogue", approve=False)
    rogue = await impostor(
        lab, rogue_app, kms=DevnetKms(OTHER_KMS_SEED), salt=await lab.factory.salt_of(rogue_app), index=2
    )
    # ... and a fake member with no TEE at all: keys the test made up, nothing to prove them with.
    fake = await impostor(lab, Address(os.urandom(20)), kms=lab.kms, salt=Bytes32(bytes(32)), index=3)
    fake.proof = None
    # A lying RPC lists them all as members, and their heartbeats verify.
    show(node, foreign.record, rogue.record, fake.record)

    metrics = node.metrics
    runner = await start_tcp(peer_api(node.node.csk, metrics), str(mine.mesh_ip), 0, name="peer")
    lab.exits.push_async_callback(runner.close)
    url = f"http://{mine.mesh_ip}:{runner.port}/v1/csk"

    def request(requester: MemberId) -> cskcore.CskRequest:
        return cskcore.CskRequest(lab.stack.cluster, requester, mine.member_id, int(time.time() * 1000))

    def forged(proof: MemberProof, **fields: str) -> dict[str, str]:
        return {**proof_json(proof), **fields}

    attacker = SecretBytes(os.urandom(32))
    attacker_pub = "0x" + ed25519_public_key(attacker).hex()
    cases: list[tuple[str, dict[str, object]]] = [
        ("foreign_app", cskcore.sign_request(request(foreign.record.member_id), foreign.identity_key,
                                             foreign.proof)),
        ("untrusted_root", cskcore.sign_request(request(rogue.record.member_id), rogue.identity_key,
                                                rogue.proof)),
        ("no_proof", cskcore.sign_request(request(fake.record.member_id), fake.identity_key, None)),
        # A member's (public) proof with the attacker's identity key put in: the binding no longer verifies.
        ("bad_proof", {**cskcore.sign_request(request(member.member_id), attacker, None),
                       "proof": forged(member.proof, identity_pub=attacker_pub)}),
        # The member's proof as it is, a request signed by the attacker: not the proven key.
        ("bad_signature", cskcore.sign_request(request(member.member_id), attacker, member.proof)),
        # Another member's proof for this requester.
        ("bad_proof", cskcore.sign_request(request(fake.record.member_id), member.identity_key,
                                           member.proof)),
    ]  # fmt: skip
    async with aiohttp.ClientSession() as session:

        async def post(body: object) -> tuple[int, dict[str, Any]]:
            data = json.dumps(body).encode()
            async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.json()

        with capture_logs() as logs:
            for reason, body in cases:
                status, answer = await post(body)
                assert (status, answer["reason"]) == (403, reason), reason
            first = request(member.member_id)
            status, answer = await post(cskcore.sign_request(first, member.identity_key, member.proof))
        assert status == 200, answer
        opened = cskcore.open_sealed(
            cskcore.check_response(first, answer, lab.anchors), member.seal_key, commitment
        )
        assert opened.reveal() == key.reveal()

    assert sample(metrics, "attestmesh_csk_requests_served_total") == 1
    expected = {"foreign_app": 1, "untrusted_root": 1, "no_proof": 1, "bad_proof": 2, "bad_signature": 1}
    for reason, count in expected.items():
        assert sample(metrics, "attestmesh_csk_requests_refused_total", reason=reason) == count, reason
    refused = events(logs, "csk.request_refused")
    assert [e["reason"] for e in refused] == [reason for reason, _ in cases]
    assert key.reveal().hex() not in repr(logs)


async def test_a_key_is_adopted_only_from_a_responder_that_proves_itself(lab: Lab) -> None:
    unproven_peer = await lab.member("peer-unproven")  # registered first: the originator, tried first
    good_peer = await lab.member("peer-good")
    csk = SecretBytes(os.urandom(32))
    commitment = cskcore.commitment(csk)
    await unproven_peer.client.set_csk_commitment(1, commitment)
    ips = [await lab.owner.mesh_ip_of(p.member_id) for p in (unproven_peer, good_peer)]

    # Both seal the RIGHT key. The first shows a proof of its app from a root nobody measured: a non-TEE
    # that learned the key (or a lying RPC's listing) must not be a source, even with a matching key.
    rogue = await impostor(
        lab, unproven_peer.app_id, kms=DevnetKms(OTHER_KMS_SEED),
        salt=await lab.factory.salt_of(unproven_peer.app_id), index=1,
    )  # fmt: skip
    assert rogue.proof is not None
    directory: dict[MemberId, MemberRecord] = {}
    liar = SealingPeer(unproven_peer, csk, directory, lab.anchors, proof=rogue.proof)
    right = SealingPeer(good_peer, csk, directory, lab.anchors)
    port = await serve_on_same_port(
        [(str(ips[0]), liar), (str(ips[1]), right)], Metrics(CollectorRegistry()), lab.exits
    )

    app_id = await lab.app("requester")
    node = await lab.controller("requester", app_id, PEER_API_PORT=str(port), CSK_PARALLELISM="1")
    await lab.set_balance(lab.signer_of(app_id), FUNDING_WEI)
    await node.pass_once()  # registers
    await node.pass_once()  # stops at the mesh step (no device in this test)
    snapshot = node.snapshot
    assert snapshot is not None and node.member_id is not None
    mine = snapshot.member(node.member_id)
    assert mine is not None and snapshot.originator == unproven_peer.member_id
    directory.update({m.member_id: m for m in snapshot.members})
    for peer in (unproven_peer, good_peer):
        node.liveness.heard(peer.member_id, node.clock())

    with capture_logs() as logs:
        await node.pull_csk(snapshot, mine, commitment)
    held = node.csk.value
    assert held is not None and held.reveal() == csk.reveal() and node.csk.source == "peer"
    assert (liar.served, right.served) == (1, 1)
    (rejected,) = events(logs, "csk.pull_rejected")
    assert rejected["peer"] == str(unproven_peer.member_id) and rejected["result"] == "unproven"
    assert "untrusted_root" in rejected["reason"]
    (pulled,) = events(logs, "csk.pulled")
    assert pulled["peer"] == str(good_peer.member_id)

    # Only the unproven peer left: its key matches the commitment the chain shows, and is still not taken.
    node.node.csk.drop()
    node.liveness.forget(good_peer.member_id)
    await node.pull_csk(snapshot, mine, commitment)
    assert node.csk.value is None
    assert f"{str(unproven_peer.member_id)[:10]}: unproven" in node.csk.error
    assert sample(node.metrics, "attestmesh_csk_pull_attempts_total", result="unproven") == 2
    assert sample(node.metrics, "attestmesh_csk_pull_attempts_total", result="ok") == 1
    assert liar.served == 2
