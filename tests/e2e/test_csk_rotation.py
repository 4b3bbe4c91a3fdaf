"""CSK epochs on the devnet (issue 12, acceptance 5): evict a member, rotate with the operator's
``attestmesh chain rotate-csk``; every remaining member holds epoch 2 (keccak of its app API key is
``cskCommitmentOf(2)``) and still serves epoch 1 as ``previous`` during the grace period; the evicted
node's requests for epoch 2 are refused ``not_member`` (counted on the responder) while a member's are
served; a restart of the originator or of another member keeps epoch 2.

Keys are compared by digest only: a failing assertion must never print a CSK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from eth_utils.crypto import keccak

from devnet.anvil import DEVNET_DEPLOYER_KEY
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, Bytes32
from tests.e2e.cskkit import ask_csk, csk_request, member_proof
from tests.e2e.lab import REPO, LabCli, chain, sidecar_log, wait_until
from tests.e2e.mesh import Node, identity_key, member_id, wait_all_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REFUSED = "attestmesh_csk_requests_refused_total"


def digest(hex_key: str) -> Bytes32:
    return Bytes32(keccak(bytes.fromhex(hex_key)))


def app_csk(node: Node) -> dict[str, Any]:
    """The app API's ``/v1/csk`` body ({} while the key is not held or the socket is not up: a restart)."""
    try:
        status, body = node.app("/v1/csk")
    except OSError:
        return {}
    return body if status == 200 else {}


def holds_epoch(node: Node, epoch: int, commitment: Bytes32) -> bool:
    body = app_csk(node)
    return body.get("epoch") == epoch and digest(body["csk"]) == commitment and node.healthy()


def commitment_of(lab: LabCli, epoch: int) -> Bytes32 | None:
    async def read(_conn: ChainConnection, cluster: ClusterClient) -> Bytes32 | None:
        return await cluster.csk_commitment_of(epoch)

    return chain(lab, read)


def rotate(lab: LabCli) -> dict[str, Any]:
    """``attestmesh chain rotate-csk --json`` as the owner runs it (the devnet's deployer key)."""
    status = lab.status()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTMESH_")}
    env["ATTESTMESH_OWNER_KEY"] = "0x" + DEVNET_DEPLOYER_KEY.reveal().hex()
    proc = subprocess.run(
        [
            sys.executable, "-m", "ops", "chain", "rotate-csk", "--rpc-url", status["rpc_url"],
            "--chain-id", str(status["chain_id"]), "--cluster", status["cluster"], "--json",
        ],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert DEVNET_DEPLOYER_KEY.reveal().hex() not in (proc.stdout + proc.stderr).lower()
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_evict_rotate_members_hold_epoch_two_and_the_evicted_is_refused(lab: LabCli) -> None:
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    # `up` boots the nodes together, so any of them may register first: the chain names the originator
    # (index 0, the one that derives the CSK). n1 is it, n3 the member evicted below, n2 the other member.
    first = chain(lab, lambda conn, c: c.originator())
    assert first is not None
    n1 = next(n for n in found.values() if member_id(n) == first)
    n2, n3 = sorted((n for n in found.values() if n is not n1), key=lambda n: n.name)
    cluster = lab.status()["cluster"]
    commitment1 = commitment_of(lab, 1)
    assert commitment1 is not None
    for node in found.values():
        body = app_csk(node)
        assert body["epoch"] == 1 and body["previous"] is None and digest(body["csk"]) == commitment1
    id1, id2, id3 = member_id(n1), member_id(n2), member_id(n3)
    proof3 = member_proof(lab, Address.from_hex(n3.data["app_id"]))  # still a valid proof: same TEE app
    proof2 = member_proof(lab, Address.from_hex(n2.data["app_id"]))
    key3, key2 = identity_key(n3), identity_key(n2)

    # Evict n3, then rotate.
    lab.run("node", "remove", n3.name)
    for node in (n1, n2):
        wait_until(lambda n=node: n.healthz()["peers"]["desired"] == 1, 15, f"{node.name} drops {n3.name}")
    result = rotate(lab)
    assert (result["epoch_before"], result["epoch"], result["changed"]) == (1, 2, True)
    assert result["rotate_csk_on_remove"] is False and result["tx"]

    committed = wait_until(lambda: commitment_of(lab, 2), 30, "the originator commits epoch 2")
    assert committed is not None and committed != commitment1
    commitment2: Bytes32 = committed
    for node in (n1, n2):
        wait_until(lambda n=node: holds_epoch(n, 2, commitment2), 30, f"{node.name} holds epoch 2")
        body = app_csk(node)
        previous = body["previous"]
        assert previous["epoch"] == 1 and digest(previous["csk"]) == commitment1
        assert previous["commitment"] == str(commitment1)
        assert previous["until"] > time.time() + 3000  # the default grace: an hour
        assert body["commitment"] == str(commitment2)
        health = node.healthz()["csk"]
        assert (health["epoch"], health["previous_epoch"], health["held"]) == (2, 1, True)
    assert n2.healthz()["csk"]["source"] == "peer"
    assert n1.healthz()["csk"]["source"] == "derived"

    # The evicted node asks n1 for epoch 2 (from inside the mesh: n2's namespace): not_member.
    before = n1.counter(REFUSED, reason="not_member")
    evicted = csk_request(cluster, id3, id1, key3, int(time.time() * 1000), proof3, epoch=2)
    answer = ask_csk(n2, n1, evicted)
    assert answer["status"] == 403 and json.loads(answer["body"])["reason"] == "not_member", answer
    counted = f"{n1.name} counts not_member"
    wait_until(lambda: n1.counter(REFUSED, reason="not_member") == before + 1, 5, counted)
    refusals = [
        e for e in sidecar_log(lab, n1.name, "csk.request_refused") if e.get("reason") == "not_member"
    ]
    assert refusals
    # A member's identical request is served: the refusal is the eviction, nothing else.
    member = csk_request(cluster, id2, id1, key2, int(time.time() * 1000), proof2, epoch=2)
    assert ask_csk(n2, n1, member)["status"] == 200

    # A restart of a member (cache) and of the originator (re-derived) keeps epoch 2; the previous key is
    # memory only, so a restarted node shows none.
    for node, source in ((n2, "cache"), (n1, "derived")):
        lab.run("node", "restart", node.name)
        wait_until(lambda n=node: holds_epoch(n, 2, commitment2), 30, f"{node.name} holds epoch 2 again")
        assert node.healthz()["csk"]["source"] == source
        assert app_csk(node)["previous"] is None
    assert chain(lab, lambda conn, c: c.csk_epoch()) == 2
