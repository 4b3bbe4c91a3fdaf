"""The core's secp256k1 (coincurve, libsecp256k1) and keccak (pycryptodome) agree with eth_keys and
eth_utils, the libraries they replaced, byte for byte, for random keys and messages."""

from __future__ import annotations

from eth_keys.datatypes import PrivateKey as EthPrivateKey
from eth_keys.datatypes import Signature
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.hashing import checksum_address, keccak256
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.keys import SECP256K1_N, secp256k1_address, secp256k1_public_key
from sidecar.core.memberproof import binding_message, make_member_proof
from sidecar.core.sigchain import SigChainProof, recover_address

scalars = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big"))


@given(st.binary(max_size=300))
def test_keccak256_is_eth_utils_keccak(data: bytes) -> None:
    assert keccak256(data) == keccak(data)


@given(st.binary(min_size=20, max_size=20))
def test_checksum_address_is_eip55_as_eth_utils_writes_it(raw: bytes) -> None:
    assert checksum_address(raw) == to_checksum_address(raw)


@settings(max_examples=60)
@given(scalars)
def test_public_key_and_address_match_eth_keys(key: bytes) -> None:
    theirs = EthPrivateKey(key).public_key
    assert secp256k1_public_key(SecretBytes(key)) == theirs.to_bytes()
    assert secp256k1_address(SecretBytes(key)).checksum == theirs.to_checksum_address()


@settings(max_examples=60)
@given(scalars, st.binary(max_size=200))
def test_recovery_matches_eth_keys_signatures(key: bytes, message: bytes) -> None:
    signature = EthPrivateKey(key).sign_msg_hash(keccak(message))
    assert recover_address(signature.to_bytes(), message, "sig").checksum == (
        EthPrivateKey(key).public_key.to_checksum_address()
    )


@settings(max_examples=40)
@given(scalars, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_member_proof_signature_is_byte_identical_to_eth_keys(
    key: bytes, identity: bytes, seal: bytes
) -> None:
    public = secp256k1_public_key(SecretBytes(key))
    cluster, app_id = Address(b"\x11" * 20), Address(b"\x22" * 20)
    chain = SigChainProof(app_id, Address(b"\x33" * 20), public, public, b"\x00" * 65, b"\x00" * 65)
    proof = make_member_proof(
        chain,
        SecretBytes(key),
        salt=Bytes32(bytes(32)),
        chain_id=31337,
        cluster=cluster,
        identity_pub=Bytes32(identity),
        seal_pub=Bytes32(seal),
    )
    message = binding_message(31337, cluster, app_id, Bytes32(identity), Bytes32(seal))
    expected = EthPrivateKey(key).sign_msg_hash(keccak(message))
    assert proof.binding_signature == expected.to_bytes()
    assert (
        Signature(proof.binding_signature).recover_public_key_from_msg_hash(keccak(message)).to_bytes()
        == public
    )
