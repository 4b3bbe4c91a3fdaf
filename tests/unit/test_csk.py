"""CSK cryptography of sidecar.core.csk: requests and the gate, sealed delivery, the encrypted cache."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey, PublicKey, SealedBox

from sidecar.core import csk as cskmod
from sidecar.core.csk import (
    CACHE_BYTES,
    MAX_REQUESTS_PER_WINDOW,
    REQUEST_DOMAIN,
    CskError,
    CskGate,
    CskRequest,
    CskWireError,
    Refusal,
    commitment,
    csk_from_key,
    open_cache,
    open_sealed,
    parse_request,
    seal,
    seal_cache,
    sign_request,
)
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import ed25519_public_key, x25519_public_key

CSK = SecretBytes(bytes(range(32)))
COMMIT = commitment(CSK)
CLUSTER = Address(b"\xc1" * 20)
OTHER_CLUSTER = Address(b"\xc2" * 20)
ME = MemberId(b"\x01" * 32)
REQ = MemberId(b"\x02" * 32)
STRANGER = MemberId(b"\x03" * 32)
IDENTITY = SecretBytes(b"\x5a" * 32)
OTHER_IDENTITY = SecretBytes(b"\x5b" * 32)
SEAL_KEY = SecretBytes(b"\x7c" * 32)
STATE_KEY = SecretBytes(b"\x3d" * 32)
NOW = 1_700_000_000_000
SECRETS = [CSK, IDENTITY, SEAL_KEY, STATE_KEY]

MEMBERS = {
    REQ: (Bytes32(ed25519_public_key(IDENTITY)), Bytes32(x25519_public_key(SEAL_KEY))),
    ME: (Bytes32(ed25519_public_key(OTHER_IDENTITY)), Bytes32(b"\x00" * 32)),
}


def live(_: MemberId) -> bool:
    return True


def request(
    ts: int = NOW, cluster: Address = CLUSTER, responder: MemberId = ME, requester: MemberId = REQ
) -> CskRequest:
    return CskRequest(cluster=cluster, requester=requester, responder=responder, timestamp_ms=ts)


def signed(req: CskRequest, key: SecretBytes = IDENTITY) -> tuple[CskRequest, bytes]:
    return parse_request(json.loads(json.dumps(sign_request(req, key))))


def check(
    gate: CskGate,
    pair: tuple[CskRequest, bytes],
    now: int = NOW,
    verified: Callable[[MemberId], bool] = live,
) -> Refusal | None:
    return gate.check(
        pair[0], pair[1], me=ME, cluster=CLUSTER, members=MEMBERS, verified_recently=verified, now_ms=now
    )


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
    obj = sign_request(request(), IDENTITY)
    assert set(obj) == {"cluster", "requester", "responder", "timestamp_ms", "signature"}
    assert obj["cluster"] == "0x" + "c1" * 20
    assert obj["requester"] == "0x" + "02" * 32
    assert obj["responder"] == "0x" + "01" * 32
    assert obj["timestamp_ms"] == NOW
    message = REQUEST_DOMAIN + CLUSTER.raw + REQ.raw + ME.raw + NOW.to_bytes(8, "big")
    signature = bytes.fromhex(str(obj["signature"])[2:])
    Ed25519PublicKey.from_public_bytes(ed25519_public_key(IDENTITY)).verify(signature, message)


@given(
    cluster=st.binary(min_size=20, max_size=20).map(Address),
    a=st.binary(min_size=32, max_size=32).map(MemberId),
    b=st.binary(min_size=32, max_size=32).map(MemberId),
    ts=st.integers(0, 2**64 - 1),
)
def test_request_round_trip(cluster: Address, a: MemberId, b: MemberId, ts: int) -> None:
    req = CskRequest(cluster, a, b, ts)
    parsed, signature = parse_request(json.loads(json.dumps(sign_request(req, IDENTITY))))
    assert parsed == req
    assert cskmod.verify_request(parsed, signature, Bytes32(ed25519_public_key(IDENTITY)))


GOOD = sign_request(request(), IDENTITY)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "x",
        {},
        {**GOOD, "extra": 1},
        {k: v for k, v in GOOD.items() if k != "signature"},
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


# --- the gate ------------------------------------------------------------------------------------------


def test_gate_accepts_a_good_request() -> None:
    assert check(CskGate(), signed(request())) is None


@pytest.mark.parametrize(
    ("pair", "reason"),
    [
        (signed(request(cluster=OTHER_CLUSTER)), "wrong_cluster"),
        (signed(request(responder=STRANGER)), "wrong_responder"),
        (signed(request(requester=STRANGER)), "not_member"),
        (signed(request(), OTHER_IDENTITY), "bad_signature"),
        (signed(request(ts=NOW - 30_001)), "stale"),
        (signed(request(ts=NOW + 30_001)), "stale"),
    ],
)
def test_gate_refusals(pair: tuple[CskRequest, bytes], reason: str) -> None:
    assert check(CskGate(), pair) == Refusal(reason)  # type: ignore[arg-type]


def test_a_signature_for_another_responder_does_not_verify() -> None:
    req, signature = signed(request(responder=STRANGER))
    redirected = CskRequest(req.cluster, req.requester, ME, req.timestamp_ms)
    assert check(CskGate(), (redirected, signature)) == Refusal("bad_signature")


def test_freshness_is_inclusive() -> None:
    gate = CskGate(freshness_ms=30_000)
    assert check(gate, signed(request(ts=NOW - 30_000))) is None
    assert check(gate, signed(request(ts=NOW + 30_000))) is None


def test_not_live() -> None:
    assert check(CskGate(), signed(request()), verified=lambda m: False) == Refusal("not_live")


def test_replayed_within_the_window_and_state_only_on_acceptance() -> None:
    gate = CskGate()
    pair = signed(request())
    assert check(gate, pair, verified=lambda m: False) == Refusal("not_live")
    assert check(gate, pair) is None  # the refusal left no trace
    assert check(gate, pair, now=NOW + 1) == Refusal("replayed")
    assert check(gate, pair, now=NOW + 30_000) == Refusal("replayed")
    assert check(gate, pair, now=NOW + 30_001) == Refusal("stale")
    assert check(gate, signed(request(ts=NOW + 1)), now=NOW + 1) is None


def test_a_clock_going_back_does_not_reopen_a_replay() -> None:
    gate = CskGate()
    old = signed(request(ts=NOW))
    assert check(gate, old) is None
    assert check(gate, signed(request(ts=NOW + 40_000)), now=NOW + 40_000) is None  # prunes the first
    assert check(gate, old, now=NOW) == Refusal("stale")


def test_rate_limit_and_bounded_memory() -> None:
    gate = CskGate()
    for i in range(MAX_REQUESTS_PER_WINDOW):
        assert check(gate, signed(request(ts=NOW + i)), now=NOW + i) is None
    assert check(gate, signed(request(ts=NOW + 100)), now=NOW + 100) == Refusal("rate_limited")
    later = NOW + 31_000
    assert check(gate, signed(request(ts=later)), now=later) is None
    assert sum(len(v) for v in gate._seen.values()) == 1


def test_forget() -> None:
    gate = CskGate()
    pair = signed(request())
    assert check(gate, pair) is None
    gate.forget(REQ)
    assert check(gate, pair) is None


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
        repr(CSK) + repr(csk_from_key(CSK)) + repr(open_sealed(seal(CSK, MEMBERS[REQ][1]), SEAL_KEY, COMMIT))
    )
    gate = CskGate()
    check(gate, signed(request()))
    assert_no_secret(repr(gate))
