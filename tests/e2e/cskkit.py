"""Shared e2e helpers for the CSK peer API: crafted (signed, optionally proven) CSK requests sent from a
lab node's namespace to another node's peer API over the mesh, as a member (or an attacker holding a
member's position) would.

Owns ``csk_request``, ``member_proof`` (any node's proof from the devnet KMS's public seed: a devnet-only
power, never one on dstack) and ``ask_csk``. Must not: start or stop lab processes.
"""

from __future__ import annotations

import json
from typing import Any

from devnet.kms import DevnetKms, get_key
from sidecar.chain.contracts import ClusterClient, MemberAppFactoryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core import csk as cskcore
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, KeyScope, ed25519_public_key, x25519_public_key
from sidecar.core.memberproof import MemberProof, make_member_proof
from sidecar.core.sigchain import build_proof
from tests.e2e.lab import LabCli, chain
from tests.e2e.mesh import Node

PEER_API_PORT = 51822  # the devnet sidecars' ATTESTMESH_PEER_API_PORT


def csk_request(
    cluster: str,
    requester: MemberId,
    responder: MemberId,
    key: SecretBytes,
    ts: int,
    proof: MemberProof | None,
    epoch: int = 1,
) -> str:
    request = cskcore.CskRequest(Address.from_hex(cluster), requester, responder, ts, epoch)
    return json.dumps(cskcore.sign_request(request, key, proof)).encode().hex()


def member_proof(lab: LabCli, app: Address) -> MemberProof:
    """The member proof of ``app``'s node: the devnet KMS seed is public, so a test can make any node's
    proof (as an attacker could on a devnet, never on dstack)."""
    status, kms = lab.status(), DevnetKms()

    async def salt(conn: ChainConnection, _cluster: ClusterClient) -> Bytes32:
        return await MemberAppFactoryClient(conn, Address.from_hex(status["member_app_factory"])).salt_of(app)

    state = lab.state()
    scope = KeyScope(state.chain_id, Address.from_hex(state.cluster))
    signer, sigchain = get_key(kms, app, scope.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
    identity = get_key(kms, app, scope.path(KeyPath.IDENTITY), KeyPath.IDENTITY.purpose)[0]
    seal = get_key(kms, app, scope.path(KeyPath.SEAL), KeyPath.SEAL.purpose)[0]
    return make_member_proof(
        build_proof(app, signer, sigchain), signer, salt=chain(lab, salt), chain_id=lab.state().chain_id,
        cluster=Address.from_hex(status["cluster"]), identity_pub=Bytes32(ed25519_public_key(identity)),
        seal_pub=Bytes32(x25519_public_key(seal)),
    )  # fmt: skip


def ask_csk(sender: Node, responder: Node, body_hex: str) -> dict[str, Any]:
    mesh_ip = responder.healthz()["node"]["mesh_ip"]
    return sender.probe("http", "POST", f"http://{mesh_ip}:{PEER_API_PORT}/v1/csk", body_hex)
