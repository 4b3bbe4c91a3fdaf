"""The devnet KMS, the signature chain proof and the key helpers: pure, no event loop."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eth_keys.constants import SECPK1_N
from eth_keys.datatypes import PrivateKey, Signature
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from devnet.kms import DEVNET_KMS_SEED, DevnetKms, derive_key, get_key
from sidecar.core.ids import Address, SecretBytes
from sidecar.core.keys import (
    SECP256K1_N,
    KeyPath,
    KeyScope,
    compress_secp256k1,
    csk_path,
    ed25519_public_key,
    is_on_secp256k1,
    key_path,
    secp256k1_address,
    secp256k1_public_key,
    x25519_public_key,
)
from sidecar.core.sigchain import SigChainError, SigChainProof, build_proof, verify_proof

APP_A = Address(bytes.fromhex("5bb4ff9a3837357f19dc176407a5709c62eb6c56"))
APP_B = Address(bytes(19) + b"\x01")
SCOPE = KeyScope(31337, Address.from_hex("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"))
SIGNER_PATH, SIGNER_PURPOSE = SCOPE.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose


def rfc5869_hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """An independent HKDF (RFC 5869) so the KMS is not checked against its own code."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@pytest.fixture(scope="module")
def kms() -> DevnetKms:
    return DevnetKms()


@pytest.fixture(scope="module")
def signer_proof(kms: DevnetKms) -> SigChainProof:
    key, chain = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    return build_proof(APP_A, key, chain)


# --- KMS -----------------------------------------------------------------------------------------


def test_devnet_kms_known_answers(kms: DevnetKms) -> None:
    # Pinned: other components and docs may quote these; a change here is a devnet-wide break.
    assert str(kms.root_address) == "0x1C23F2100cfB02bdb4F16E5327c79037143525C1"
    assert kms.root_public_key.hex() == "03eb0aa34910087e57ac26db6d5e06a7609b277f88dfa4159d573b58c044acc521"
    assert str(secp256k1_address(kms.app_key(APP_A))) == "0x855Bc20ce454f5a389D5987c1d23bA2e52F22EF4"
    key, _ = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    assert str(secp256k1_address(key)) == "0xe23514b12B84A07B5f7E08EcfAAaf4856eb25dAe"


def test_kms_is_deterministic_from_its_seed(kms: DevnetKms) -> None:
    again = DevnetKms(DEVNET_KMS_SEED)
    assert again.root_address == kms.root_address
    assert again.app_key(APP_A).reveal() == kms.app_key(APP_A).reveal()
    assert again.app_key_signature(APP_A) == kms.app_key_signature(APP_A)
    assert get_key(again, APP_A, "p", "x") == get_key(kms, APP_A, "p", "x")


def test_another_seed_is_another_kms(kms: DevnetKms) -> None:
    other = DevnetKms(b"some other devnet seed, 32 bytes!")
    assert other.root_address != kms.root_address
    assert other.app_key(APP_A).reveal() != kms.app_key(APP_A).reveal()


def test_short_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        DevnetKms(b"short")


def test_app_key_follows_the_documented_hkdf(kms: DevnetKms) -> None:
    root = rfc5869_hkdf_sha256(b"RATLS", DEVNET_KMS_SEED, b"attestmesh-devnet-kms-root-k256")
    assert secp256k1_address(SecretBytes(root)) == kms.root_address
    app_key = rfc5869_hkdf_sha256(b"RATLS", root, APP_A.raw + b"app-key")
    assert kms.app_key(APP_A).reveal() == app_key
    assert derive_key(SecretBytes(app_key), "a/b").reveal() == rfc5869_hkdf_sha256(b"RATLS", app_key, b"a/b")


def test_app_ids_differ_so_keys_differ(kms: DevnetKms) -> None:
    assert kms.app_key(APP_A).reveal() != kms.app_key(APP_B).reveal()
    key_a, _ = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    key_b, _ = get_key(kms, APP_B, SIGNER_PATH, SIGNER_PURPOSE)
    assert key_a.reveal() != key_b.reveal()


def test_paths_differ_so_keys_differ(kms: DevnetKms) -> None:
    paths = [SCOPE.path(kp) for kp in KeyPath] + [SCOPE.csk_path(1), SCOPE.csk_path(2)]
    keys = {get_key(kms, APP_A, path, "")[0].reveal() for path in paths}
    assert len(keys) == len(KeyPath) + 2


def test_another_cluster_or_chain_derives_unrelated_keys(kms: DevnetKms) -> None:
    other_cluster = KeyScope(SCOPE.chain_id, Address(bytes(19) + b"\x02"))
    other_chain = KeyScope(SCOPE.chain_id + 1, SCOPE.cluster)

    def key(path: str) -> bytes:
        return get_key(kms, APP_A, path, "")[0].reveal()

    for scope in (other_cluster, other_chain):
        for kp in KeyPath:
            assert key(scope.path(kp)) != key(SCOPE.path(kp))
        assert key(scope.csk_path(1)) != key(SCOPE.csk_path(1))
    assert key(SCOPE.csk_path(1)) == key(SCOPE.csk_path(1))  # deterministic


def test_purpose_and_algorithm_do_not_change_the_key_bytes(kms: DevnetKms) -> None:
    base, chain = get_key(kms, APP_A, "attestmesh/identity/v1", "")
    for purpose, algorithm in [("ethereum", "secp256k1"), ("x", "k256"), ("", "ed25519"), ("y", "ed25519")]:
        key, other_chain = get_key(kms, APP_A, "attestmesh/identity/v1", purpose, algorithm)
        assert key.reveal() == base.reveal()
        assert other_chain[1] == chain[1]  # the KMS signature is per app, not per request


def test_kms_signature_signs_the_issued_message(kms: DevnetKms) -> None:
    app_pub = PrivateKey(kms.app_key(APP_A).reveal()).public_key
    msg = b"dstack-kms-issued:" + APP_A.raw + app_pub.to_compressed_bytes()
    sig = Signature(kms.app_key_signature(APP_A))
    assert sig.v in (0, 1)
    assert sig.s <= SECP256K1_N // 2
    assert sig.recover_public_key_from_msg_hash(keccak(msg)).to_checksum_address() == str(kms.root_address)


def test_chain_app_signature_signs_purpose_and_compressed_hex(kms: DevnetKms) -> None:
    key, (app_sig, kms_sig) = get_key(kms, APP_A, "p", "ethereum")
    derived = PrivateKey(key.reveal()).public_key.to_compressed_bytes()
    msg = b"ethereum:" + derived.hex().encode()
    recovered = Signature(app_sig).recover_public_key_from_msg_hash(keccak(msg))
    assert recovered == PrivateKey(kms.app_key(APP_A).reveal()).public_key
    assert kms_sig == kms.app_key_signature(APP_A)
    assert len(app_sig) == 65 and app_sig[64] in (0, 1)


def test_ed25519_chain_signs_the_ed25519_public_key(kms: DevnetKms) -> None:
    key, (app_sig, _) = get_key(kms, APP_A, "attestmesh/identity/v1", "hello", "ed25519")
    pub = Ed25519PrivateKey.from_private_bytes(key.reveal()).public_key().public_bytes_raw()
    msg = b"hello:" + pub.hex().encode()
    recovered = Signature(app_sig).recover_public_key_from_msg_hash(keccak(msg))
    assert recovered == PrivateKey(kms.app_key(APP_A).reveal()).public_key


def test_unknown_algorithm_is_a_value_error(kms: DevnetKms) -> None:
    with pytest.raises(ValueError, match="unsupported algorithm"):
        get_key(kms, APP_A, "p", "x", "p256")


def test_kms_repr_hides_the_root_key(kms: DevnetKms) -> None:
    root = rfc5869_hkdf_sha256(b"RATLS", DEVNET_KMS_SEED, b"attestmesh-devnet-kms-root-k256")
    text = repr(kms) + str(kms) + repr(kms.app_key(APP_A))
    assert root.hex() not in text.lower()
    assert kms.app_key(APP_A).reveal().hex() not in text.lower()
    assert str(kms.root_address) in repr(kms)


# --- sigchain ------------------------------------------------------------------------------------


def test_proof_round_trip(kms: DevnetKms, signer_proof: SigChainProof) -> None:
    key, _ = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    assert signer_proof.kms_root == kms.root_address
    assert signer_proof.signer == secp256k1_address(key)
    assert signer_proof.app_address == secp256k1_address(kms.app_key(APP_A))
    assert len(signer_proof.derived_pubkey) == 64 and len(signer_proof.app_pubkey) == 64
    verify_proof(signer_proof, {kms.root_address})


def test_proof_with_a_custom_purpose(kms: DevnetKms) -> None:
    key, chain = get_key(kms, APP_A, "p", "registration")
    proof = build_proof(APP_A, key, chain, purpose="registration")
    verify_proof(proof, [kms.root_address], purpose="registration")
    with pytest.raises(SigChainError, match="app signature does not match"):
        verify_proof(proof, [kms.root_address])


def test_proof_repr_holds_public_values_only(kms: DevnetKms, signer_proof: SigChainProof) -> None:
    key, _ = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    assert key.reveal().hex() not in repr(signer_proof)
    assert kms.app_key(APP_A).reveal().hex() not in repr(signer_proof)


def test_untrusted_root_is_rejected(signer_proof: SigChainProof) -> None:
    other = DevnetKms(b"another devnet KMS seed for tests")
    with pytest.raises(SigChainError, match="not trusted"):
        verify_proof(signer_proof, {other.root_address})
    with pytest.raises(SigChainError, match="not trusted"):
        verify_proof(signer_proof, [])


def test_proof_for_the_wrong_app_id_fails(kms: DevnetKms, signer_proof: SigChainProof) -> None:
    forged = dataclasses.replace(signer_proof, app_id=APP_B)
    with pytest.raises(SigChainError, match="KMS signature recovers to"):
        verify_proof(forged, {kms.root_address})


def test_build_proof_for_the_wrong_app_id_names_an_untrusted_root(kms: DevnetKms) -> None:
    key, chain = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    proof = build_proof(APP_B, key, chain)
    assert proof.kms_root != kms.root_address
    with pytest.raises(SigChainError, match="not trusted"):
        verify_proof(proof, {kms.root_address})


def test_swapped_derived_key_fails(kms: DevnetKms, signer_proof: SigChainProof) -> None:
    other_pub = secp256k1_public_key(SecretBytes(b"\x11" * 32))
    with pytest.raises(SigChainError, match="app signature does not match"):
        verify_proof(dataclasses.replace(signer_proof, derived_pubkey=other_pub), {kms.root_address})


def test_swapped_app_pubkey_fails(kms: DevnetKms, signer_proof: SigChainProof) -> None:
    other_pub = secp256k1_public_key(SecretBytes(b"\x22" * 32))
    with pytest.raises(SigChainError, match="app signature does not match"):
        verify_proof(dataclasses.replace(signer_proof, app_pubkey=other_pub), {kms.root_address})


def test_wrong_kms_root_field_fails(kms: DevnetKms, signer_proof: SigChainProof) -> None:
    other = DevnetKms(b"another devnet KMS seed for tests")
    with pytest.raises(SigChainError, match="KMS signature recovers to"):
        verify_proof(
            dataclasses.replace(signer_proof, kms_root=other.root_address),
            {kms.root_address, other.root_address},
        )


def test_key_from_another_app_under_the_same_kms_fails(kms: DevnetKms) -> None:
    key_b, chain_b = get_key(kms, APP_B, SIGNER_PATH, SIGNER_PURPOSE)
    _, chain_a = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    # B's derived key with A's chain: the app signature recovers to some unrelated key.
    proof = build_proof(APP_A, key_b, chain_a)
    with pytest.raises(SigChainError):
        verify_proof(proof, {kms.root_address})
    verify_proof(build_proof(APP_B, key_b, chain_b), {kms.root_address})


@pytest.mark.parametrize("field", ["app_signature", "kms_signature"])
def test_tampered_signature_fails(kms: DevnetKms, signer_proof: SigChainProof, field: str) -> None:
    sig = bytearray(getattr(signer_proof, field))
    sig[5] ^= 0x01
    tampered = (
        dataclasses.replace(signer_proof, app_signature=bytes(sig))
        if field == "app_signature"
        else dataclasses.replace(signer_proof, kms_signature=bytes(sig))
    )
    with pytest.raises(SigChainError):
        verify_proof(tampered, {kms.root_address})


def test_v_27_28_is_accepted(kms: DevnetKms, signer_proof: SigChainProof) -> None:
    app = signer_proof.app_signature[:64] + bytes([signer_proof.app_signature[64] + 27])
    kms_sig = signer_proof.kms_signature[:64] + bytes([signer_proof.kms_signature[64] + 27])
    verify_proof(
        dataclasses.replace(signer_proof, app_signature=app, kms_signature=kms_sig), {kms.root_address}
    )


def test_high_s_is_rejected(kms: DevnetKms, signer_proof: SigChainProof) -> None:
    sig = signer_proof.app_signature
    s = int.from_bytes(sig[32:64], "big")
    flipped = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([sig[64] ^ 1])
    with pytest.raises(SigChainError, match="high s"):
        verify_proof(dataclasses.replace(signer_proof, app_signature=flipped), {kms.root_address})


@pytest.mark.parametrize(
    ("sig", "match"),
    [
        (b"\x01" * 64, "65 bytes"),
        (b"\x01" * 66, "65 bytes"),
        (b"\x01" * 64 + b"\x05", "recovery id"),
        (bytes(64) + b"\x00", "out of range"),
        (SECP256K1_N.to_bytes(32, "big") + b"\x01" * 32 + b"\x00", "out of range"),
    ],
    ids=["short", "long", "bad-v", "zero-r", "r-equals-n"],
)
def test_malformed_signatures_are_named(kms: DevnetKms, sig: bytes, match: str) -> None:
    key, (app_sig, kms_sig) = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    with pytest.raises(SigChainError, match=f"app signature.*{match}|app signature has {match}"):
        build_proof(APP_A, key, [sig, kms_sig])
    with pytest.raises(SigChainError, match="KMS signature"):
        build_proof(APP_A, key, [app_sig, sig])


def test_unrecoverable_signature_is_an_error(kms: DevnetKms) -> None:
    key, (_, kms_sig) = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    # r = p-range x with no point on the curve: no public key recovers.
    no_point = (5).to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x00"
    with pytest.raises(SigChainError, match="app signature"):
        build_proof(APP_A, key, [no_point, kms_sig])


@pytest.mark.parametrize("count", [0, 1, 3])
def test_chain_length_must_be_two(kms: DevnetKms, count: int) -> None:
    key, chain = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    with pytest.raises(SigChainError, match="2 signatures"):
        build_proof(APP_A, key, [chain[0]] * count)


@pytest.mark.parametrize(
    "raw", [b"\x01" * 31, bytes(32), SECP256K1_N.to_bytes(32, "big")], ids=["short", "zero", "order"]
)
def test_bad_derived_key_is_an_error_without_the_key(kms: DevnetKms, raw: bytes) -> None:
    _, chain = get_key(kms, APP_A, SIGNER_PATH, SIGNER_PURPOSE)
    with pytest.raises(SigChainError, match="derived key") as info:
        build_proof(APP_A, SecretBytes(raw), chain)
    assert raw.hex() not in str(info.value)


def test_off_curve_or_short_pubkeys_are_named(kms: DevnetKms, signer_proof: SigChainProof) -> None:
    with pytest.raises(SigChainError, match="derived public key must be 64"):
        verify_proof(dataclasses.replace(signer_proof, derived_pubkey=b"\x01" * 33), {kms.root_address})
    with pytest.raises(SigChainError, match="app public key is not a point"):
        verify_proof(dataclasses.replace(signer_proof, app_pubkey=b"\x01" * 64), {kms.root_address})


@settings(max_examples=25, deadline=None)
@given(app=st.binary(min_size=20, max_size=20), path=st.text(max_size=40), purpose=st.text(max_size=20))
def test_any_app_path_purpose_verifies(app: bytes, path: str, purpose: str) -> None:
    kms = DevnetKms()
    app_id = Address(app)
    key, chain = get_key(kms, app_id, path, purpose)
    verify_proof(build_proof(app_id, key, chain, purpose=purpose), {kms.root_address}, purpose=purpose)


# --- keys ----------------------------------------------------------------------------------------


def test_key_paths_follow_the_design() -> None:
    cluster = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"  # lowercase in the path, whatever the input
    assert [(SCOPE.path(k), k.purpose) for k in KeyPath] == [
        (f"attestmesh/signer/v1/31337/{cluster}", "ethereum"),
        (f"attestmesh/identity/v1/31337/{cluster}", ""),
        (f"attestmesh/seal/v1/31337/{cluster}", ""),
        (f"attestmesh/wireguard/v1/31337/{cluster}", ""),
        (f"attestmesh/state/v1/31337/{cluster}", ""),
    ]
    assert csk_path(31337, SCOPE.cluster, 1) == SCOPE.csk_path() == f"attestmesh/csk/v1/31337/{cluster}/1"
    assert csk_path(1, SCOPE.cluster, 12) == f"attestmesh/csk/v1/1/{cluster}/12"
    assert key_path(KeyPath.SEAL, 8453, SCOPE.cluster) == f"attestmesh/seal/v1/8453/{cluster}"
    for bad in (lambda: csk_path(1, SCOPE.cluster, 0), lambda: key_path(KeyPath.SEAL, 0, SCOPE.cluster)):
        with pytest.raises(ValueError):
            bad()


def test_curve_constants_match_eth_keys() -> None:
    assert SECP256K1_N == SECPK1_N


def test_secp256k1_helpers_match_eth_keys() -> None:
    raw = b"\x07" * 32
    pk = PrivateKey(raw).public_key
    assert secp256k1_public_key(SecretBytes(raw)) == pk.to_bytes()
    assert compress_secp256k1(pk.to_bytes()) == pk.to_compressed_bytes()
    assert str(secp256k1_address(SecretBytes(raw))) == pk.to_checksum_address()
    assert is_on_secp256k1(pk.to_bytes())
    assert not is_on_secp256k1(b"\x01" * 64)
    assert not is_on_secp256k1(pk.to_bytes()[:63])


def test_ed25519_and_x25519_public_keys() -> None:
    seed = b"\x09" * 32
    assert ed25519_public_key(SecretBytes(seed)) == (
        Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    )
    # RFC 7748 §6.1 test vector (Alice).
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert x25519_public_key(SecretBytes(alice)).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )


@pytest.mark.parametrize("helper", [secp256k1_public_key, ed25519_public_key, x25519_public_key])
def test_helpers_reject_wrong_lengths_without_echoing_the_key(helper: object) -> None:
    raw = b"\xab" * 31
    with pytest.raises(ValueError, match="32 bytes") as info:
        helper(SecretBytes(raw))  # type: ignore[operator]
    assert raw.hex() not in str(info.value)
