"""Acceptance 1 of issue 12: a lying JSON-RPC provider cannot get the CSK to a fake member, cannot make a node
with a quorum change its device, and cannot make a joining node adopt a key.

The liar is ``devnet.rpcproxy``, a real JSON-RPC proxy in front of the lab's anvil, run by the test in the
lab's hub namespace (where anvil runs: the provider's place on the lab network) and given to one node only,
through ``ATTESTMESH_DEVNET_SIDECAR_ENV`` on the `attestmesh devnet` command that (re)starts its sidecar.
Its rules file, rewritten by the test, says what it lies about.

The fake member F is a record the proxy appends to ``members()``; the test holds all its keys. F has no
WireGuard presence: a gateway-mode lab only carries CVMs the gateway knows, so F cannot be on the mesh.
F's CSK requests are sent from where a member could send them: node-2's namespace, over the mesh, to
node-1's peer API (the responder does not tie a request to the address it came from; a captured mesh
position is exactly what the proofs must defend against). With that one provider node-1 does put F's key on
its device; with the honest anvil beside the liar and a quorum of 2 it never does.

The joining node is node-3 of a two-node lab (the fewest nodes that show "every peer's real key rejected").
A responder that would serve a key matching the fake commitment needs a live peer the liar invents, which
a gateway-mode lab cannot carry (only CVMs the gateway routes are on the mesh); that refusal (``unproven``)
is shown by ``tests/component/test_csk_proofs.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from devnet.boot import SIDECAR_ENV_ENV
from devnet.kms import DevnetKms, get_key
from devnet.lab import fetch_healthz
from devnet.rpcproxy import Lies
from sidecar.core import csk as cskcore
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, ed25519_public_key, key_path, x25519_public_key
from sidecar.core.memberproof import MemberProof, make_member_proof, proof_json
from sidecar.core.model import member_id_for
from sidecar.core.sigchain import build_proof
from tests.e2e.lab import REPO, LabCli, chain, lab_state, sidecar_log, wait_until
from tests.e2e.mesh import Node, nodes, wait_all_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PROXY_PORT = 8546  # in the hub namespace, beside anvil's 8545
PEER_API_PORT = 51822
REFUSED = "attestmesh_csk_requests_refused_total"
ROGUE_KMS_SEED = b"a rogue KMS root nobody measured -- PUBLIC, e2e tests only"
DEADLINE = 60.0


# --- the liar ------------------------------------------------------------------------------------------


@dataclass
class LyingRpc:
    """``python -m devnet.rpcproxy`` in the lab's hub namespace; ``lie`` rewrites its rules file."""

    lab: LabCli
    rules: Path
    proc: subprocess.Popen[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.lab.plan.hub_ip}:{PROXY_PORT}/"

    def lie(self, lies: Lies) -> None:
        tmp = self.rules.with_suffix(".tmp")
        tmp.write_text(json.dumps(lies.to_json()))
        tmp.replace(self.rules)  # whole files only: the proxy re-reads it on every request

    def start(self) -> None:
        state = lab_state(self.lab)
        argv = ["ip", "netns", "exec", self.lab.plan.hub_ns, sys.executable, "-m", "devnet.rpcproxy",
                "--listen", f"{self.lab.plan.hub_ip}:{PROXY_PORT}", "--upstream", state["rpc_url"],
                "--rules", str(self.rules)]  # fmt: skip
        with (self.lab.root / "logs" / "rpcproxy.log").open("ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the proxy prints it once it listens, or exits
        assert line.startswith("rpcproxy listening on "), f"the proxy did not start: {line!r}"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def lying_rpc(lab: LabCli, lies: Lies) -> Iterator[LyingRpc]:
    proxy = LyingRpc(lab, lab.root / "rpcproxy-rules.json")
    proxy.lie(lies)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def sidecar_env(**names: str) -> dict[str, str]:
    """The `attestmesh devnet` command environment that gives the sidecars it starts these settings."""
    return {SIDECAR_ENV_ENV: json.dumps({f"ATTESTMESH_{k}": v for k, v in names.items()})}


# --- the fake member -----------------------------------------------------------------------------------


@dataclass
class FakeMember:
    """A member record only the liar shows: an app id no factory deployed, keys the test made up."""

    cluster: Address
    app_id: Address
    mesh_ip: str
    identity_key: SecretBytes = field(repr=False)
    seal_key: SecretBytes = field(repr=False)
    wg_pub: Bytes32

    @property
    def member_id(self) -> MemberId:
        return member_id_for(self.cluster, self.app_id)

    def record(self) -> dict[str, Any]:
        return {
            "id": str(self.member_id), "appId": str(self.app_id), "signer": "0x" + "f2" * 20,
            "sealPub": "0x" + x25519_public_key(self.seal_key).hex(), "wgPub": str(self.wg_pub),
            "identityPub": "0x" + ed25519_public_key(self.identity_key).hex(), "endpoint": "",
            "meshIp": self.mesh_ip, "registeredAt": 10**9,
        }  # fmt: skip

    def proof(self, kms: DevnetKms, chain_id: int) -> MemberProof:
        """A member proof whose signature chain is sound, from ``kms``'s keys for F's app id."""
        signer, sigs = get_key(kms, self.app_id, key_path(KeyPath.SIGNER, chain_id, self.cluster), "ethereum")
        return make_member_proof(
            build_proof(self.app_id, signer, sigs), signer, salt=Bytes32(os.urandom(32)), chain_id=chain_id,
            cluster=self.cluster, identity_pub=Bytes32(ed25519_public_key(self.identity_key)),
            seal_pub=Bytes32(x25519_public_key(self.seal_key)),
        )  # fmt: skip

    def request(self, responder: MemberId, proof: MemberProof | None) -> dict[str, object]:
        req = cskcore.CskRequest(self.cluster, self.member_id, responder, int(time.time() * 1000))
        return cskcore.sign_request(req, self.identity_key, proof)


def fake_member(lab: LabCli) -> FakeMember:
    mesh = IPv4Network(str(lab.plan.mesh))
    return FakeMember(
        cluster=Address.from_hex(lab_state(lab)["cluster"]), app_id=Address(os.urandom(20)),
        mesh_ip=str(mesh[200]), identity_key=SecretBytes(os.urandom(32)),
        seal_key=SecretBytes(os.urandom(32)),
        wg_pub=Bytes32(x25519_public_key(SecretBytes(os.urandom(32)))),
    )  # fmt: skip


# --- reading the lab -----------------------------------------------------------------------------------


def on_chain_commitment(lab: LabCli) -> str:
    commitment = chain(lab, lambda conn, cluster: cluster.csk_commitment())
    assert commitment is not None
    return str(commitment)


def wg_peers(lab: LabCli, name: str) -> set[str]:
    """The public keys of the node's WireGuard peers, as an operator lists them (``wg show``), in base64."""
    done = lab.run("node", "exec", name, "--", "wg", "show", "attestmesh0", "peers", timeout=30)
    return set(done.stdout.split())


def wg_key(raw: Bytes32) -> str:
    return base64.b64encode(raw.raw).decode()


def post_csk(src: Node, responder: Node, body: dict[str, object]) -> tuple[int, dict[str, Any]]:
    """POST a CSK request from inside ``src``'s namespace, over the mesh, to ``responder``'s peer API."""
    url = f"http://{responder.healthz()['node']['mesh_ip']}:{PEER_API_PORT}/v1/csk"
    answer = src.probe("http", "POST", url, json.dumps(body).encode().hex())
    return int(answer["status"]), json.loads(str(answer["body"]))


def health(node: Node) -> dict[str, Any]:
    """The node's ``/healthz`` through the gateway; ``{}`` while it does not answer (a restarting sidecar)."""
    return fetch_healthz(node.health_url, timeout=3.0, reach=node.reach) or {}


def keys_held(found: dict[str, Node]) -> dict[str, tuple[bool, str | None]]:
    return {name: (n.healthz()["csk"]["held"], n.healthz()["csk"]["commitment"]) for name, n in found.items()}


# --- the tests -----------------------------------------------------------------------------------------


def test_a_fake_member_shown_by_the_rpc_is_refused_the_key_and_counted(lab: LabCli) -> None:
    lab.run("up", "--nodes", "2")
    found = wait_all_healthy(lab, timeout=120)
    real = on_chain_commitment(lab)
    fake = fake_member(lab)
    state = lab_state(lab)
    with lying_rpc(lab, Lies(cluster=state["cluster"], members=(fake.record(),))) as proxy:
        lab.run("node", "restart", "node-1", env=sidecar_env(RPC_URLS=proxy.url))
        node1, node2 = found["node-1"], found["node-2"]
        # node-1 reads F through the liar (F becomes a desired peer: chain data decides whom to talk to)
        # and holds the key again (its sealed cache) after the restart.
        wait_until(
            lambda: (b := health(node1)) and b["peers"]["desired"] == 2 and b["csk"]["held"],
            DEADLINE, "node-1 shows the fake member and holds the key",
        )  # fmt: skip
        assert node2.healthz()["peers"]["desired"] == 1  # the honest node: only node-1
        # With one provider, what it says is what node-1 configures: F's key is on node-1's device (so the
        # quorum test's "never on the device" is the quorum's doing, not the lab's).
        wait_until(lambda: wg_key(fake.wg_pub) in wg_peers(lab, "node-1"), DEADLINE, "F on node-1's device")
        responder = MemberId.from_hex(node1.healthz()["node"]["member_id"])
        chain_id = int(state["chain_id"])
        foreign = fake.proof(DevnetKms(), chain_id)  # the lab's KMS root, an app id no factory made
        cases = [
            ("no_proof", None),
            ("foreign_app", foreign),
            ("untrusted_root", fake.proof(DevnetKms(ROGUE_KMS_SEED), chain_id)),
            # the chain does not verify: the KMS signature replaced by the app key's
            ("bad_proof", {**proof_json(foreign), "kms_signature": proof_json(foreign)["app_signature"]}),
        ]
        before = {reason: node1.counter(REFUSED, reason=reason) for reason, _ in cases}
        served_before = node1.counter("attestmesh_csk_requests_served_total")
        for reason, proof in cases:
            body = fake.request(responder, proof if isinstance(proof, MemberProof) else None)
            if isinstance(proof, dict):
                body["proof"] = proof
            status, answer = post_csk(node2, node1, body)
            assert (status, answer.get("reason")) == (403, reason), answer
        for reason, _ in cases:  # read through the gateway, as an operator reads them
            assert node1.counter(REFUSED, reason=reason) == before[reason] + 1, reason
        assert node1.counter("attestmesh_csk_requests_served_total") == served_before
        served = [
            e for e in sidecar_log(lab, "node-1", "csk.served") if e["requester"] == str(fake.member_id)
        ]
        assert served == []
        assert keys_held(found) == {"node-1": (True, real), "node-2": (True, real)}
        assert on_chain_commitment(lab) == real


def test_two_providers_that_disagree_leave_the_device_alone(lab: LabCli) -> None:
    lab.run("up", "--nodes", "2")
    found = wait_all_healthy(lab, timeout=120)
    node1 = found["node-1"]
    peers_before = wg_peers(lab, "node-1")
    assert len(peers_before) == 1
    fake = fake_member(lab)
    state = lab_state(lab)
    with lying_rpc(lab, Lies(cluster=state["cluster"], members=(fake.record(),))) as proxy:
        urls = f"{state['rpc_url']},{proxy.url}"  # provider 0 honest, provider 1 the liar
        lab.run("node", "restart", "node-1", env=sidecar_env(RPC_URLS=urls, RPC_QUORUM="2"))

        def disagreement() -> bool:
            body = health(node1)
            return bool(body) and body["chain"]["rpc"]["reason"] == "rpc_disagreement" and not body["healthy"]

        wait_until(disagreement, DEADLINE, "node-1 reports the providers' disagreement")
        body = node1.healthz()
        assert body["reason"].startswith("rpc_disagreement: provider 1 disagrees with provider 0")
        assert body["chain"]["rpc"] | {"up": None} == {
            "providers": 2, "quorum": 2, "up": None, "agreeing": [0], "dissenting": [1],
            "reason": "rpc_disagreement",
        }  # fmt: skip
        assert proxy.url not in json.dumps(body)
        seen = node1.counter("attestmesh_rpc_disagreements_total")

        def device_unchanged_for_three_more_passes() -> bool:
            peers = wg_peers(lab, "node-1")  # read on every poll: F must never appear, not only at the end
            assert peers == peers_before and wg_key(fake.wg_pub) not in peers, peers
            return node1.counter("attestmesh_rpc_disagreements_total") >= seen + 3

        wait_until(device_unchanged_for_three_more_passes, DEADLINE, "three more passes that disagree")

        proxy.lie(Lies())  # the liar turns honest: the quorum agrees, node-1 is healthy again
        wait_until(node1.healthy, DEADLINE, "node-1 healthy once the providers agree")
        assert node1.healthz()["chain"]["rpc"]["reason"] is None
        assert wg_peers(lab, "node-1") == peers_before


def test_a_joining_node_shown_a_fake_commitment_adopts_no_key(lab: LabCli) -> None:
    lab.run("up", "--nodes", "2")
    wait_all_healthy(lab, timeout=120)
    real = on_chain_commitment(lab)
    fake_key = SecretBytes(os.urandom(32))
    fake_commitment = str(cskcore.commitment(fake_key))
    state = lab_state(lab)
    with lying_rpc(lab, Lies(cluster=state["cluster"], csk_commitment=fake_commitment)) as proxy:
        lab.run("node", "add", "node-3", env=sidecar_env(RPC_URLS=proxy.url))
        node3 = nodes(lab)["node-3"]

        def refused_both_peers() -> bool:
            rejected = sidecar_log(lab, "node-3", "csk.pull_rejected")
            return len({e["peer"] for e in rejected}) == 2

        wait_until(refused_both_peers, 90, "node-3 rejecting the real key of both peers")
        body = node3.healthz()
        assert (body["csk"]["held"], body["csk"]["commitment"]) == (False, fake_commitment)  # the liar's
        assert body["reason"] is not None and "no peer served a valid cluster shared key" in body["reason"]
        assert "invalid" in body["reason"]
        reasons = {e["reason"] for e in sidecar_log(lab, "node-3", "csk.pull_rejected")}
        assert reasons == {"CSK does not match the on-chain commitment"}
        assert node3.counter("attestmesh_csk_pull_attempts_total", result="invalid") >= 2
        assert sidecar_log(lab, "node-3", "csk.pulled") == []
        assert on_chain_commitment(lab) == real

        proxy.lie(Lies())  # the lie stops: node-3 converges to the real key
        wait_until(
            lambda: (b := health(node3)) and (b["csk"]["held"], b["csk"]["commitment"]) == (True, real),
            DEADLINE, "node-3 holding the real key",
        )  # fmt: skip
        wait_until(node3.healthy, DEADLINE, "node-3 healthy")
