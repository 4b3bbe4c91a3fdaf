"""Member proofs (sidecar.core.memberproof): each verdict, malformed input, and the docs' test vectors.

The test vectors in docs/protocol.md (section "The CSK peer protocol") are rendered by
``render_csk_vectors`` and compared here (``python -m tests.unit.test_memberproof`` prints the block).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from devnet.kms import get_key
from sidecar.core.csk import (
    CskRequest,
    check_response,
    parse_request,
    response_message,
    sign_request,
    sign_response,
    verify_request,
)
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.keys import KeyPath, ed25519_public_key, key_path, x25519_public_key
from sidecar.core.memberproof import (
    BINDING_DOMAIN,
    PROOF_FIELDS,
    MemberProof,
    ProofAnchors,
    ProofRejected,
    binding_message,
    create2_address,
    make_member_proof,
    member_app_code_hash,
    parse_proof,
    proof_json,
    verify_member_proof,
)
from sidecar.core.sigchain import build_proof
from tests.unit.proofkit import ANCHORS, CLUSTER, KMS, ROGUE_KMS, member_app, member_id, prove, salt_for

DOCS = Path(__file__).resolve().parents[2] / "docs"
IDENTITY_PUB = Bytes32(b"\x11" * 32)
SEAL_PUB = Bytes32(b"\x22" * 32)
APP = member_app("requester")
PROOF = prove(APP, IDENTITY_PUB, SEAL_PUB)


def verdict(proof: object, anchors: ProofAnchors = ANCHORS) -> str:
    try:
        verify_member_proof(parse_proof(proof), anchors)
    except ProofRejected as exc:
        return exc.reason
    return "proven"


def test_a_proof_proves_its_member_and_keys_and_round_trips_through_json() -> None:
    proven = verify_member_proof(PROOF, ANCHORS)
    assert (proven.member_id, proven.app_id) == (member_id("requester"), APP)
    assert (proven.identity_pub, proven.seal_pub) == (IDENTITY_PUB, SEAL_PUB)
    assert parse_proof(json.loads(json.dumps(proof_json(PROOF)))) == PROOF
    assert set(proof_json(PROOF)) == set(PROOF_FIELDS)


def test_member_app_address_is_create2_of_factory_salt_and_the_cluster_bound_init_code() -> None:
    code = b"\x60\x80\x60\x40"
    expected_hash = keccak(code + bytes(12) + CLUSTER.raw)
    assert member_app_code_hash(code, CLUSTER).raw == expected_hash
    factory, salt = Address(b"\xfa" * 20), Bytes32(b"\x05" * 32)
    assert (
        create2_address(factory, salt, Bytes32(expected_hash)).raw
        == keccak(b"\xff" + factory.raw + salt.raw + expected_hash)[12:]
    )
    with pytest.raises(ValueError):
        member_app_code_hash(b"", CLUSTER)


@pytest.mark.parametrize(
    ("proof", "expected"),
    [
        (prove(APP, IDENTITY_PUB, SEAL_PUB, kms=ROGUE_KMS), "untrusted_root"),
        (prove(Address(b"\xf0" * 20), IDENTITY_PUB, SEAL_PUB), "foreign_app"),
        (prove(APP, IDENTITY_PUB, SEAL_PUB, salt=salt_for("other")), "foreign_app"),
        (prove(APP, IDENTITY_PUB, SEAL_PUB, chain_id=1), "bad_proof"),
        (prove(APP, IDENTITY_PUB, SEAL_PUB, cluster=Address(b"\xc2" * 20)), "bad_proof"),
        (dataclasses.replace(PROOF, identity_pub=Bytes32(b"\x33" * 32)), "bad_proof"),
        (dataclasses.replace(PROOF, seal_pub=Bytes32(b"\x33" * 32)), "bad_proof"),
        (dataclasses.replace(PROOF, binding_signature=prove(APP, SEAL_PUB, IDENTITY_PUB).binding_signature),
         "bad_proof"),
        (dataclasses.replace(PROOF, chain=dataclasses.replace(PROOF.chain, kms_root=Address(b"\x01" * 20))),
         "bad_proof"),
        (dataclasses.replace(PROOF, chain=dataclasses.replace(PROOF.chain, app_id=member_app("peer-1"))),
         "bad_proof"),  # the KMS signed another app id: the chain breaks before the address is judged
    ],
)  # fmt: skip
def test_each_verdict(proof: object, expected: str) -> None:
    assert verdict(proof_json(proof)) == expected  # type: ignore[arg-type]


def test_a_root_is_trusted_only_when_measured() -> None:
    assert verdict(proof_json(PROOF), dataclasses.replace(ANCHORS, kms_roots=frozenset())) == "untrusted_root"
    assert verdict(
        proof_json(PROOF), dataclasses.replace(ANCHORS, member_app_factory=Address(b"\x01" * 20))
    ) == ("foreign_app")


def test_make_member_proof_refuses_a_key_that_is_not_the_chains() -> None:
    other = SecretBytes(b"\x07" * 32)
    with pytest.raises(ValueError, match="not the signature chain") as info:
        make_member_proof(
            PROOF.chain, other, salt=salt_for("requester"), chain_id=1, cluster=CLUSTER,
            identity_pub=IDENTITY_PUB, seal_pub=SEAL_PUB,
        )  # fmt: skip
    assert "0707" not in str(info.value)


def test_binding_message_layout() -> None:
    message = binding_message(31337, CLUSTER, APP, IDENTITY_PUB, SEAL_PUB)
    assert (
        message
        == BINDING_DOMAIN + (31337).to_bytes(32, "big") + CLUSTER.raw + APP.raw + b"\x11" * 32 + b"\x22" * 32
    )
    assert len(message) == 27 + 32 + 20 + 20 + 32 + 32
    with pytest.raises(ValueError):
        binding_message(0, CLUSTER, APP, IDENTITY_PUB, SEAL_PUB)


# --- hostile input -------------------------------------------------------------------------------------

GOOD = proof_json(PROOF)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=140),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=6),
    max_leaves=20,
)


@given(json_values)
def test_any_json_value_is_a_bad_proof_never_an_exception(obj: object) -> None:
    assert verdict(obj) == "bad_proof"


@given(st.fixed_dictionaries({k: json_values | st.just(v) for k, v in GOOD.items()}))
def test_near_the_real_shape_only_proof_errors(obj: dict[str, object]) -> None:
    with contextlib.suppress(ProofRejected):
        verify_member_proof(parse_proof(obj), ANCHORS)


@given(st.sampled_from(sorted(PROOF_FIELDS)), st.data())
def test_any_changed_byte_of_a_proof_is_refused(key: str, data: st.DataObject) -> None:
    raw = bytearray.fromhex(GOOD[key][2:])
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    changed = {**GOOD, key: "0x" + raw.hex()}
    assert verdict(changed) != "proven"


@pytest.mark.parametrize(
    "obj",
    [
        {**GOOD, "extra": "0x"},
        {k: v for k, v in GOOD.items() if k != "salt"},
        {**GOOD, "salt": GOOD["salt"][2:] + "00"},
        {**GOOD, "salt": 5},
        {**GOOD, "app_id": "0x" + "g" * 40},
        {**GOOD, "kms_signature": GOOD["kms_signature"] + "00"},
        [GOOD],
    ],
)
def test_malformed_proofs(obj: object) -> None:
    with pytest.raises(ProofRejected) as info:
        parse_proof(obj)
    assert info.value.reason == "bad_proof"


# --- test vectors (docs/protocol.md) --------------------------------------------------------------------

VECTOR_CHAIN_ID = 31337
VECTOR_CLUSTER = Address(b"\xc1" * 20)
VECTOR_FACTORY = Address(b"\xfa" * 20)
VECTOR_CODE_HASH = Bytes32(keccak(b"example ClusterMemberApp creation code" + bytes(12) + VECTOR_CLUSTER.raw))
VECTOR_ANCHORS = ProofAnchors(
    VECTOR_CHAIN_ID, VECTOR_CLUSTER, VECTOR_FACTORY, VECTOR_CODE_HASH, frozenset({KMS.root_address})
)
VECTOR_NOW = 1_790_000_000_000
VECTOR_SEALED = bytes(range(80))  # a stand-in: a real sealed box is random


@dataclasses.dataclass(frozen=True)
class VectorNode:
    salt: Bytes32
    identity: SecretBytes = dataclasses.field(repr=False)
    seal: SecretBytes = dataclasses.field(repr=False)

    def proof(self) -> MemberProof:
        app = create2_address(VECTOR_FACTORY, self.salt, VECTOR_CODE_HASH)
        path = key_path(KeyPath.SIGNER, VECTOR_CHAIN_ID, VECTOR_CLUSTER)
        signer, chain = get_key(KMS, app, path, KeyPath.SIGNER.purpose)
        return make_member_proof(
            build_proof(app, signer, chain), signer, salt=self.salt, chain_id=VECTOR_CHAIN_ID,
            cluster=VECTOR_CLUSTER, identity_pub=Bytes32(ed25519_public_key(self.identity)),
            seal_pub=Bytes32(x25519_public_key(self.seal)),
        )  # fmt: skip


REQUESTER = VectorNode(
    Bytes32(keccak(b"example requester salt")),
    SecretBytes(bytes(range(0x40, 0x60))),
    SecretBytes(bytes(range(0x60, 0x80))),
)
RESPONDER = VectorNode(
    Bytes32(keccak(b"example responder salt")),
    SecretBytes(bytes(range(0x80, 0xA0))),
    SecretBytes(bytes(range(0xA0, 0xC0))),
)


VECTOR_EPOCH = 2  # the epoch the vectors' request asks for


def vector_exchange() -> tuple[CskRequest, dict[str, object], dict[str, object]]:
    """The vectors' request (as sent) and response, between two proven members."""
    asker, answerer = (verify_member_proof(n.proof(), VECTOR_ANCHORS) for n in (REQUESTER, RESPONDER))
    req = CskRequest(VECTOR_CLUSTER, asker.member_id, answerer.member_id, VECTOR_NOW, epoch=VECTOR_EPOCH)
    request = sign_request(req, REQUESTER.identity, REQUESTER.proof())
    return req, request, sign_response(req, VECTOR_SEALED, RESPONDER.identity, RESPONDER.proof())


def _wrap(hexstr: str, indent: int) -> list[str]:
    rows = [hexstr[i : i + 64] for i in range(0, len(hexstr), 64)]
    return [rows[0], *(" " * indent + row for row in rows[1:])]


def _node_line(role: str, node: VectorNode) -> str:
    proven = verify_member_proof(node.proof(), VECTOR_ANCHORS)
    return (
        f"{role}: salt `{node.salt}`, app id `{proven.app_id}`, member id `{proven.member_id}`, "
        f"identity seed `0x{node.identity.reveal().hex()}`, seal key `0x{node.seal.reveal().hex()}`."
    )


def render_csk_vectors() -> str:
    """Render the CSK-protocol test vectors of docs/protocol.md from the code."""
    req, request, response = vector_exchange()
    proof = REQUESTER.proof()
    binding = binding_message(
        VECTOR_CHAIN_ID, VECTOR_CLUSTER, proof.app_id, proof.identity_pub, proof.seal_pub
    )
    return "\n".join(
        [
            f"Anchors: chain id {VECTOR_CHAIN_ID}, cluster `{VECTOR_CLUSTER}`, factory `{VECTOR_FACTORY}`, "
            f"member app init code hash `{VECTOR_CODE_HASH}` (a stand-in: the real one is keccak256 of the "
            "compiled creation code ‖ abi.encode(cluster)), KMS root "
            f"`{KMS.root_address}` (the devnet KMS, public seed; its signer keys are what `GetKey` gives).",
            "",
            "- " + _node_line("Requester", REQUESTER),
            "- " + _node_line("Responder", RESPONDER),
            "",
            "#### the requester's binding message (163 bytes; its signer key signs the keccak256)",
            "",
            "```text",
            *_wrap(binding.hex(), 0),
            "```",
            "",
            "#### request (version 3, asking for epoch 2)",
            "",
            "```json",
            json.dumps(request, indent=2),
            "```",
            "",
            "#### response (version 3; the sealed box is a stand-in, `00 01 … 4f`) and the bytes it signs",
            "",
            "```json",
            json.dumps(response, indent=2),
            "```",
            "",
            "```text",
            *_wrap(response_message(req, VECTOR_SEALED).hex(), 0),
            "```",
            "",
        ]
    )


def test_vectors_verify() -> None:
    req, request, response = vector_exchange()
    signed = parse_request(request)
    proven = verify_member_proof(parse_proof(signed.proof), VECTOR_ANCHORS)
    assert proven.member_id == req.requester
    assert verify_request(req, signed.signature, proven.identity_pub)
    assert check_response(req, response, VECTOR_ANCHORS) == VECTOR_SEALED


def test_the_csk_vectors_in_the_docs_are_what_the_code_produces() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    start = text.index("<!-- csk-vectors:start -->\n") + len("<!-- csk-vectors:start -->\n")
    end = text.index("<!-- csk-vectors:end -->")
    assert text[start:end] == render_csk_vectors()


if __name__ == "__main__":
    print(render_csk_vectors(), end="")
