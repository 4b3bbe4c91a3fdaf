"""The CSK responder's gate (sidecar.core.cskgate): every refusal reason, in order, and its memory."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import get_args

import pytest

from sidecar.core.csk import CskRequest, SignedRequest, parse_request, sign_request
from sidecar.core.cskgate import MAX_PROVEN, MAX_REQUESTS_PER_WINDOW, CskGate, Refusal, RefusalReason
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import ed25519_public_key, x25519_public_key
from sidecar.core.memberproof import MemberProof, ProvenMember, proof_json
from sidecar.core.model import member_id_for
from sidecar.metricvocab import CSK_REFUSALS
from tests.unit.proofkit import ANCHORS, CLUSTER, ROGUE_KMS, member_app, member_id, prove

ME = member_id("responder")
REQ = member_id("requester")
OTHER = member_id("peer-1")
STRANGER = MemberId(b"\x03" * 32)
FOREIGN_APP = Address(b"\xf0" * 20)  # a valid signature chain for an app that is not this cluster's
FOREIGN = member_id_for(CLUSTER, FOREIGN_APP)
IDENTITY = SecretBytes(b"\x5a" * 32)
OTHER_IDENTITY = SecretBytes(b"\x5b" * 32)
IDENTITY_PUB = Bytes32(ed25519_public_key(IDENTITY))
SEAL_PUB = Bytes32(x25519_public_key(SecretBytes(b"\x7c" * 32)))
NOW = 1_700_000_000_000
PROOF = prove(member_app("requester"), IDENTITY_PUB, SEAL_PUB)
MEMBERS = frozenset({ME, REQ, OTHER, FOREIGN})
APP_PUB = proof_json(PROOF)["app_pubkey"]


def live(_: MemberId) -> bool:
    return True


def request(
    ts: int = NOW, cluster: Address = CLUSTER, responder: MemberId = ME, requester: MemberId = REQ
) -> CskRequest:
    return CskRequest(cluster=cluster, requester=requester, responder=responder, timestamp_ms=ts)


def signed(req: CskRequest, key: SecretBytes = IDENTITY, proof: MemberProof | None = PROOF) -> SignedRequest:
    return parse_request(json.loads(json.dumps(sign_request(req, key, proof))))


def check(
    gate: CskGate, req: SignedRequest, now: int = NOW, verified: Callable[[MemberId], bool] = live
) -> Refusal | ProvenMember:
    return gate.check(
        req, me=ME, cluster=CLUSTER, members=MEMBERS, anchors=ANCHORS, verified_recently=verified, now_ms=now
    )


def reason(result: Refusal | ProvenMember) -> str:
    return result.reason if isinstance(result, Refusal) else "served"


def test_every_refusal_reason_is_a_metric_label() -> None:
    assert set(get_args(RefusalReason)) <= set(CSK_REFUSALS)


def test_gate_serves_a_proven_member_and_names_its_proven_keys() -> None:
    result = check(CskGate(), signed(request()))
    assert result == ProvenMember(REQ, member_app("requester"), IDENTITY_PUB, SEAL_PUB)


def with_proof(req: SignedRequest, proof: object) -> SignedRequest:
    return SignedRequest(req.request, req.signature, proof)


def proof_with(**fields: str) -> dict[str, str]:
    return {**proof_json(PROOF), **fields}


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (signed(request(cluster=Address(b"\xc2" * 20))), "wrong_cluster"),
        (signed(request(responder=STRANGER)), "wrong_responder"),
        (signed(request(requester=STRANGER)), "not_member"),
        (signed(request(), proof=None), "no_proof"),
        (with_proof(signed(request()), "not an object"), "bad_proof"),
        (with_proof(signed(request()), proof_with(salt="0x12")), "bad_proof"),
        # the app key's signature does not cover this derived key
        (with_proof(signed(request()), proof_with(derived_pubkey=APP_PUB)), "bad_proof"),
        # a valid chain from a KMS root nobody measured
        (signed(request(), proof=prove(member_app("requester"), IDENTITY_PUB, SEAL_PUB, kms=ROGUE_KMS)),
         "untrusted_root"),
        # a valid chain from the measured root, but not for this cluster's member app
        (signed(request(requester=FOREIGN), proof=prove(FOREIGN_APP, IDENTITY_PUB, SEAL_PUB)), "foreign_app"),
        # the right app, with a salt that does not make its address
        (signed(request(), proof=prove(member_app("requester"), IDENTITY_PUB, SEAL_PUB,
                                       salt=Bytes32(b"\x01" * 32))), "foreign_app"),
        # a binding forged for other keys: signed over the real ones, the keys swapped afterwards
        (with_proof(signed(request()), proof_with(identity_pub="0x" + "11" * 32)), "bad_proof"),
        (with_proof(signed(request()), proof_with(seal_pub="0x" + "22" * 32)), "bad_proof"),
        # bindings made for another chain id or another cluster
        (signed(request(), proof=prove(member_app("requester"), IDENTITY_PUB, SEAL_PUB, chain_id=1)),
         "bad_proof"),
        (signed(request(), proof=prove(member_app("requester"), IDENTITY_PUB, SEAL_PUB,
                                       cluster=Address(b"\xc2" * 20))), "bad_proof"),
        # another member's valid proof
        (signed(request(), proof=prove(member_app("peer-1"), IDENTITY_PUB, SEAL_PUB)), "bad_proof"),
        # signed by another identity key than the proven one (the chain may show any key: not consulted)
        (signed(request(), OTHER_IDENTITY), "bad_signature"),
        (signed(request(ts=NOW - 30_001)), "stale"),
        (signed(request(ts=NOW + 30_001)), "stale"),
    ],
)  # fmt: skip
def test_gate_refusals(req: SignedRequest, expected: str) -> None:
    assert reason(check(CskGate(), req)) == expected


def test_a_signature_for_another_responder_does_not_verify() -> None:
    req = signed(request(responder=OTHER))
    redirected = SignedRequest(CskRequest(CLUSTER, REQ, ME, NOW), req.signature, req.proof)
    assert reason(check(CskGate(), redirected)) == "bad_signature"


def test_freshness_is_inclusive() -> None:
    gate = CskGate(freshness_ms=30_000)
    assert reason(check(gate, signed(request(ts=NOW - 30_000)))) == "served"
    assert reason(check(gate, signed(request(ts=NOW + 30_000)))) == "served"


def test_not_live() -> None:
    assert reason(check(CskGate(), signed(request()), verified=lambda m: False)) == "not_live"


def test_replayed_within_the_window_and_state_only_on_acceptance() -> None:
    gate = CskGate()
    req = signed(request())
    assert reason(check(gate, req, verified=lambda m: False)) == "not_live"
    assert reason(check(gate, req)) == "served"  # the refusal left no trace
    assert reason(check(gate, req, now=NOW + 1)) == "replayed"
    assert reason(check(gate, req, now=NOW + 30_000)) == "replayed"
    assert reason(check(gate, req, now=NOW + 30_001)) == "stale"
    assert reason(check(gate, signed(request(ts=NOW + 1)), now=NOW + 1)) == "served"


def test_a_clock_going_back_does_not_reopen_a_replay() -> None:
    gate = CskGate()
    old = signed(request(ts=NOW))
    assert reason(check(gate, old)) == "served"
    assert reason(check(gate, signed(request(ts=NOW + 40_000)), now=NOW + 40_000)) == "served"
    assert reason(check(gate, old, now=NOW)) == "stale"


def test_rate_limit_and_bounded_memory() -> None:
    gate = CskGate()
    for i in range(MAX_REQUESTS_PER_WINDOW):
        assert reason(check(gate, signed(request(ts=NOW + i)), now=NOW + i)) == "served"
    assert reason(check(gate, signed(request(ts=NOW + 100)), now=NOW + 100)) == "rate_limited"
    later = NOW + 31_000
    assert reason(check(gate, signed(request(ts=later)), now=later)) == "served"
    assert sum(len(v) for v in gate._seen.values()) == 1


def test_forget() -> None:
    gate = CskGate()
    req = signed(request())
    assert reason(check(gate, req)) == "served"
    gate.forget(REQ)
    assert reason(check(gate, req)) == "served"


def test_verified_proofs_are_remembered_failed_ones_are_not_and_memory_is_bounded() -> None:
    gate = CskGate()
    assert reason(check(gate, signed(request()))) == "served"
    assert len(gate._proven) == 1
    rogue = prove(member_app("requester"), IDENTITY_PUB, SEAL_PUB, kms=ROGUE_KMS)
    assert reason(check(gate, signed(request(ts=NOW + 1), proof=rogue), now=NOW + 1)) == "untrusted_root"
    assert len(gate._proven) == 1
    # A remembered proof is judged again against other anchors (nothing is trusted from memory alone).
    refused = gate.check(
        signed(request(ts=NOW + 2)), me=ME, cluster=CLUSTER, members=MEMBERS,
        anchors=dataclasses.replace(ANCHORS, kms_roots=frozenset()), verified_recently=live, now_ms=NOW + 2,
    )  # fmt: skip
    assert reason(refused) == "untrusted_root"
    filler = ProvenMember(STRANGER, FOREIGN_APP, IDENTITY_PUB, SEAL_PUB)
    for i in range(MAX_PROVEN):
        gate._proven[(PROOF, dataclasses.replace(ANCHORS, chain_id=1000 + i))] = filler
    other_seal = prove(member_app("requester"), IDENTITY_PUB, Bytes32(b"\x09" * 32))
    assert reason(check(gate, signed(request(ts=NOW + 3), proof=other_seal), now=NOW + 3)) == "served"
    assert len(gate._proven) == 1
