"""CSK cryptography of sidecar.core.csk: requests and responses, sealed delivery, the encrypted cache."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey, PublicKey, SealedBox

from sidecar.core import csk as cskmod
from sidecar.core.csk import (
    CACHE_BYTES,
    REQUEST_DOMAIN,
    RESPONSE_DOMAIN,
    CskError,
    CskRequest,
    CskWireError,
    check_response,
    commitment,
    csk_from_key,
    open_cache,
    open_sealed,
    parse_request,
    seal,
    seal_cache,
    sign_request,
    sign_response,
)
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import ed25519_public_key, x25519_public_key
from sidecar.core.memberproof import ProofRejected, proof_json
from tests.unit.proofkit import ANCHORS, CLUSTER, ROGUE_KMS, derived_member, member_app, member_id, prove

CSK = SecretBytes(bytes(range(32)))
COMMIT = commitment(CSK)
OTHER_CLUSTER = Address(b"\xc2" * 20)
ME = member_id("responder")
REQ = member_id("requester")
STRANGER = MemberId(b"\x03" * 32)
IDENTITY = SecretBytes(b"\x5a" * 32)
OTHER_IDENTITY = SecretBytes(b"\x5b" * 32)
SEAL_KEY = SecretBytes(b"\x7c" * 32)
STATE_KEY = SecretBytes(b"\x3d" * 32)
NOW = 1_700_000_000_000
SECRETS = [CSK, IDENTITY, SEAL_KEY, STATE_KEY]
SEAL_PUB = Bytes32(x25519_public_key(SEAL_KEY))
PROOF = prove(member_app("requester"), Bytes32(ed25519_public_key(IDENTITY)), SEAL_PUB)
RESPONDER_PROOF, RESPONDER_IDENTITY, _ = derived_member(member_app("responder"))


def request(
    ts: int = NOW, cluster: Address = CLUSTER, responder: MemberId = ME, requester: MemberId = REQ
) -> CskRequest:
    return CskRequest(cluster=cluster, requester=requester, responder=responder, timestamp_ms=ts)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret.reveal().hex() not in text.lower()


# --- commitment and derivation -------------------------------------------------------------------------


def test_commitment_is_keccak() -> None:
    assert Bytes32(keccak(CSK.reveal())) == COMMIT


def test_csk_from_key_is_the_identity_with_a_length_check() -> None:
    assert csk_from_key(SecretBytes(b"\x09" * 32)).reveal() == b"\x09" * 32
    with pytest.raises(CskError) as info:
        csk_from_key(SecretBytes(b"\x09" * 31))
    assert "0909" not in str(info.value)
    with pytest.raises(CskError):
        commitment(SecretBytes(b"\x01" * 33))


# --- requests ------------------------------------------------------------------------------------------


def test_request_wire_form_and_signature() -> None:
    obj = sign_request(dataclasses.replace(request(), epoch=7), IDENTITY, PROOF)
    assert set(obj) == {
        "version", "cluster", "epoch", "requester", "responder", "timestamp_ms", "signature", "proof",
    }  # fmt: skip
    assert obj["version"] == 3
    assert obj["epoch"] == 7
    assert obj["cluster"] == "0x" + CLUSTER.hex
    assert obj["requester"] == str(REQ)
    assert obj["responder"] == str(ME)
    assert obj["timestamp_ms"] == NOW
    assert obj["proof"] == proof_json(PROOF)
    epoch = (7).to_bytes(8, "big")
    message = REQUEST_DOMAIN + CLUSTER.raw + epoch + REQ.raw + ME.raw + NOW.to_bytes(8, "big")
    assert REQUEST_DOMAIN == b"attestmesh/csk-request/v3\x00"
    signature = bytes.fromhex(str(obj["signature"])[2:])
    Ed25519PublicKey.from_public_bytes(ed25519_public_key(IDENTITY)).verify(signature, message)
    assert "proof" not in sign_request(request(), IDENTITY, None)


@given(
    cluster=st.binary(min_size=20, max_size=20).map(Address),
    a=st.binary(min_size=32, max_size=32).map(MemberId),
    b=st.binary(min_size=32, max_size=32).map(MemberId),
    ts=st.integers(0, 2**64 - 1),
    epoch=st.integers(1, 2**64 - 1),
)
def test_request_round_trip(cluster: Address, a: MemberId, b: MemberId, ts: int, epoch: int) -> None:
    req = CskRequest(cluster, a, b, ts, epoch)
    signed = parse_request(json.loads(json.dumps(sign_request(req, IDENTITY, PROOF))))
    assert signed.request == req and signed.proof == proof_json(PROOF)
    assert cskmod.verify_request(signed.request, signed.signature, Bytes32(ed25519_public_key(IDENTITY)))


def test_a_request_without_proof_or_of_version_1_parses_with_no_proof() -> None:
    bare = sign_request(request(), IDENTITY, None)
    assert parse_request(bare).proof is None
    v1 = {k: v for k, v in bare.items() if k not in ("version", "epoch")}  # version 1 named no epoch: 0
    parsed = parse_request(v1)
    assert parsed.request == dataclasses.replace(request(), epoch=0) and parsed.proof is None


def test_the_signature_covers_the_epoch() -> None:
    asked = {**GOOD, "epoch": 2}  # the epoch changed after signing: the signature no longer verifies
    signed = parse_request(asked)
    assert signed.request.epoch == 2
    assert not cskmod.verify_request(signed.request, signed.signature, Bytes32(ed25519_public_key(IDENTITY)))
    assert cskmod.verify_request(
        parse_request(GOOD).request, signed.signature, Bytes32(ed25519_public_key(IDENTITY))
    )


GOOD = sign_request(request(), IDENTITY, PROOF)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "x",
        {},
        {**GOOD, "extra": 1},
        {k: v for k, v in GOOD.items() if k != "signature"},
        {k: v for k, v in GOOD.items() if k != "version"},  # a proof without a version
        {**GOOD, "version": 1},
        {**GOOD, "version": 2},  # version 2 named no epoch
        {k: v for k, v in GOOD.items() if k != "epoch"},
        {**GOOD, "version": 4},
        {**GOOD, "version": True},
        {**GOOD, "version": "3"},
        {**GOOD, "epoch": 0},
        {**GOOD, "epoch": -1},
        {**GOOD, "epoch": 2**64},
        {**GOOD, "epoch": True},
        {**GOOD, "epoch": "1"},
        {**GOOD, "epoch": 1.0},
        {**GOOD, "timestamp_ms": True},
        {**GOOD, "timestamp_ms": -1},
        {**GOOD, "timestamp_ms": 2**64},
        {**GOOD, "timestamp_ms": 1.5},
        {**GOOD, "timestamp_ms": "1"},
        {**GOOD, "cluster": "c1" * 21},
        {**GOOD, "cluster": "0x" + "c1" * 19},
        {**GOOD, "requester": "0x" + "zz" * 32},
        {**GOOD, "requester": "0x" + " 2" * 32},
        {**GOOD, "responder": 5},
        {**GOOD, "signature": "0x" + "00" * 63},
        {**GOOD, "signature": "0x" + "\u0660" * 128},  # non-ASCII digits
    ],
)
def test_parse_request_rejects(obj: object) -> None:
    with pytest.raises(CskWireError):
        parse_request(obj)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=140),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=6),
    max_leaves=20,
)


@given(json_values)
def test_parse_request_only_raises_wire_errors(obj: object) -> None:
    with contextlib.suppress(CskWireError):
        parse_request(obj)


@given(
    st.fixed_dictionaries(
        {k: json_values | st.just(v) for k, v in GOOD.items()},
    )
)
def test_parse_request_only_raises_wire_errors_near_the_real_shape(obj: dict[str, object]) -> None:
    with contextlib.suppress(CskWireError):
        parse_request(obj)


# --- responses -----------------------------------------------------------------------------------------


def answer(req: CskRequest | None = None, identity: SecretBytes = RESPONDER_IDENTITY) -> dict[str, object]:
    req = req or request()
    return sign_response(req, seal(CSK, SEAL_PUB), identity, RESPONDER_PROOF)


def test_response_wire_form_and_check() -> None:
    obj = answer()
    assert set(obj) == {"version", "sealed", "proof", "signature"} and obj["version"] == 3
    sealed = check_response(request(), json.loads(json.dumps(obj)), ANCHORS)
    assert open_sealed(sealed, SEAL_KEY, COMMIT).reveal() == CSK.reveal()
    epoch = (1).to_bytes(8, "big")
    message = RESPONSE_DOMAIN + CLUSTER.raw + epoch + REQ.raw + ME.raw + NOW.to_bytes(8, "big") + sealed
    signature = bytes.fromhex(str(obj["signature"])[2:])
    public = Bytes32(ed25519_public_key(RESPONDER_IDENTITY)).raw
    Ed25519PublicKey.from_public_bytes(public).verify(signature, message)


def test_a_response_with_a_replayed_proof_is_refused() -> None:
    # A non-TEE that copies a member's (public) proof cannot sign with its identity key.
    with pytest.raises(ProofRejected) as info:
        check_response(request(), answer(identity=OTHER_IDENTITY), ANCHORS)
    assert info.value.reason == "bad_proof"


def test_a_response_for_another_request_is_refused() -> None:
    with pytest.raises(ProofRejected, match="not signed"):
        check_response(request(ts=NOW + 1), answer(), ANCHORS)


def test_a_response_for_another_epoch_is_refused() -> None:
    # A box answering a request for epoch 1 cannot be passed off as the answer for epoch 2.
    with pytest.raises(ProofRejected, match="not signed"):
        check_response(dataclasses.replace(request(), epoch=2), answer(), ANCHORS)


def test_a_response_proving_another_member_than_the_responder_asked_is_refused() -> None:
    req = request(responder=member_id("peer-1"))
    with pytest.raises(ProofRejected, match="another member") as info:
        check_response(req, answer(req), ANCHORS)
    assert info.value.reason == "bad_proof"


def test_a_response_from_a_root_nobody_measured_is_refused() -> None:
    rogue, identity, _ = derived_member(member_app("responder"), ROGUE_KMS)
    obj = sign_response(request(), seal(CSK, SEAL_PUB), identity, rogue)
    with pytest.raises(ProofRejected) as info:
        check_response(request(), obj, ANCHORS)
    assert info.value.reason == "untrusted_root"


GOOD_ANSWER = answer()


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        {},
        {**GOOD_ANSWER, "extra": 1},
        {k: v for k, v in GOOD_ANSWER.items() if k != "proof"},
        {**GOOD_ANSWER, "version": 1},
        {**GOOD_ANSWER, "sealed": "0x" + "00" * 79},
        {**GOOD_ANSWER, "sealed": "00" * 80},
        {**GOOD_ANSWER, "signature": "0x" + "zz" * 64},
    ],
)
def test_check_response_rejects_malformed(obj: object) -> None:
    with pytest.raises(CskWireError):
        check_response(request(), obj, ANCHORS)


@given(st.fixed_dictionaries({k: json_values | st.just(v) for k, v in GOOD_ANSWER.items()}))
def test_check_response_only_raises_its_errors(obj: dict[str, object]) -> None:
    with contextlib.suppress(CskWireError, ProofRejected):
        check_response(request(), obj, ANCHORS)


# --- sealed delivery -----------------------------------------------------------------------------------


def test_seal_open_round_trip_and_nacl_compatibility() -> None:
    seal_pub = Bytes32(x25519_public_key(SEAL_KEY))
    assert bytes(PrivateKey(SEAL_KEY.reveal()).public_key) == seal_pub.raw
    box = seal(CSK, seal_pub)
    assert len(box) == 80
    assert box != seal(CSK, seal_pub)  # ephemeral sender key
    assert open_sealed(box, SEAL_KEY, COMMIT).reveal() == CSK.reveal()


def test_open_sealed_rejects() -> None:
    seal_pub = Bytes32(x25519_public_key(SEAL_KEY))
    other = SecretBytes(b"\x7d" * 32)
    wrong_csk = SecretBytes(b"\xee" * 32)
    cases = [
        (seal(CSK, seal_pub), other, COMMIT, "does not open"),
        (seal(CSK, seal_pub), SEAL_KEY, commitment(wrong_csk), "commitment"),
        (seal(wrong_csk, seal_pub), SEAL_KEY, COMMIT, "commitment"),
        (seal(CSK, seal_pub)[:-1], SEAL_KEY, COMMIT, "length"),
        (b"", SEAL_KEY, COMMIT, "length"),
    ]
    for box, key, commit, match in cases:
        with pytest.raises(CskError, match=match) as info:
            open_sealed(box, key, commit)
        assert_no_secret(str(info.value))
        assert_no_secret(repr(info.value))


def test_open_sealed_rejects_a_box_of_a_short_plaintext() -> None:
    box = SealedBox(PublicKey(x25519_public_key(SEAL_KEY))).encrypt(b"\x00" * 31)
    with pytest.raises(CskError, match="length"):
        open_sealed(box, SEAL_KEY, COMMIT)


# --- the cache -----------------------------------------------------------------------------------------


def test_cache_round_trip() -> None:
    blob = seal_cache(CSK, STATE_KEY, CLUSTER, REQ, COMMIT)
    assert len(blob) == CACHE_BYTES == 77
    assert blob[:5] == b"AMCK\x01"
    assert blob != seal_cache(CSK, STATE_KEY, CLUSTER, REQ, COMMIT)  # random nonce
    assert open_cache(blob, STATE_KEY, CLUSTER, REQ, COMMIT).reveal() == CSK.reveal()
    assert CSK.reveal() not in blob


def test_seal_cache_refuses_a_key_that_does_not_match_the_commitment() -> None:
    with pytest.raises(CskError, match="commitment"):
        seal_cache(CSK, STATE_KEY, CLUSTER, REQ, Bytes32(b"\x00" * 32))


def test_cache_rejects_every_mismatch() -> None:
    blob = seal_cache(CSK, STATE_KEY, CLUSTER, REQ, COMMIT)
    other_commit = commitment(SecretBytes(b"\xee" * 32))
    cases: list[tuple[bytes, SecretBytes, Address, MemberId, Bytes32]] = [
        (blob, SecretBytes(b"\x3e" * 32), CLUSTER, REQ, COMMIT),
        (blob, STATE_KEY, OTHER_CLUSTER, REQ, COMMIT),
        (blob, STATE_KEY, CLUSTER, STRANGER, COMMIT),
        (blob, STATE_KEY, CLUSTER, REQ, other_commit),
        (blob[:-1], STATE_KEY, CLUSTER, REQ, COMMIT),
        (blob + b"\x00", STATE_KEY, CLUSTER, REQ, COMMIT),
        (b"XXXX" + blob[4:], STATE_KEY, CLUSTER, REQ, COMMIT),
        (blob[:4] + b"\x02" + blob[5:], STATE_KEY, CLUSTER, REQ, COMMIT),
        (b"", STATE_KEY, CLUSTER, REQ, COMMIT),
    ]
    cases += [
        (blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1 :], STATE_KEY, CLUSTER, REQ, COMMIT)
        for i in range(5, len(blob))
    ]
    for data, key, cluster, member, commit in cases:
        with pytest.raises(CskError) as info:
            open_cache(data, key, cluster, member, commit)
        assert_no_secret(str(info.value))


@given(st.binary(max_size=120))
def test_open_cache_only_raises_csk_error(data: bytes) -> None:
    with contextlib.suppress(CskError):
        open_cache(data, STATE_KEY, CLUSTER, REQ, COMMIT)


def test_reprs_show_no_key_material() -> None:
    assert_no_secret(
        repr(CSK) + repr(csk_from_key(CSK)) + repr(open_sealed(seal(CSK, SEAL_PUB), SEAL_KEY, COMMIT))
    )
    assert_no_secret(repr(parse_request(GOOD)) + repr(GOOD_ANSWER))
