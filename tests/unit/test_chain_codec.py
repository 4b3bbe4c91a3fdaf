"""sidecar.chain.codec and the pure parts of sidecar.chain.tx: event decoding, receipt conversion, signer."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
from eth_abi.abi import encode
from eth_keys.datatypes import PrivateKey
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.crypto import keccak

from sidecar.chain.abi import canonical_type, contract_abi
from sidecar.chain.artifacts import load_artifact
from sidecar.chain.codec import EventCodec, block_header_from_rpc, python_value, quantity, receipt_from_rpc
from sidecar.chain.contracts import (
    ClusterClient,
    ClusterFactoryClient,
    ContractClient,
    IndexerRegistryClient,
    MemberAppClient,
    MemberAppFactoryClient,
)
from sidecar.chain.errors import NotMember, decode_revert
from sidecar.chain.tx import LocalSigner
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.model import ChainLog, TxReceipt

CLUSTER = Address(b"\xc1" * 20)
APP = Address(b"\xa1" * 20)
SIGNER = Address(b"\x51" * 20)
MEMBER = MemberId(b"\x82" * 32)  # bytes32 params named memberId decode as MemberId
# A throwaway key made up for this test (not anyone's account).
KEY = SecretBytes(bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"))


def _topic(address: Address) -> Bytes32:
    return Bytes32(bytes(12) + address.raw)


def _log(topics: tuple[Bytes32, ...], data: bytes, address: Address = CLUSTER) -> ChainLog:
    return ChainLog(
        address=address,
        topics=topics,
        data=data,
        block_number=7,
        block_hash=Bytes32(b"\xbb" * 32),
        tx_hash=Bytes32(b"\xee" * 32),
        log_index=0,
    )


def test_decodes_member_registered_into_our_types() -> None:
    codec = EventCodec(load_artifact("Cluster").abi)
    topic0 = Bytes32(keccak(b"MemberRegistered(bytes32,address,address,uint32)"))
    assert codec.topic_of("MemberRegistered") == topic0
    log = _log((topic0, MEMBER, _topic(APP), _topic(SIGNER)), encode(["uint32"], [0x0A0D0001]))
    event = codec.decode(log)
    assert event is not None
    assert event.name == "MemberRegistered"
    assert dict(event.args) == {"memberId": MEMBER, "appId": APP, "signer": SIGNER, "meshIp": 0x0A0D0001}
    assert list(event.args) == ["memberId", "appId", "signer", "meshIp"]  # ABI order
    assert event.log is log


def test_decodes_string_data_and_filters_by_address_and_name() -> None:
    codec = EventCodec(load_artifact("Cluster").abi)
    changed = _log((codec.topic_of("EndpointChanged"), MEMBER), encode(["string"], ["10.0.0.1:51820"]))
    elsewhere = _log(changed.topics, changed.data, address=APP)
    unrelated = _log((Bytes32(b"\x00" * 32),), b"")
    receipt = TxReceipt(
        tx_hash=Bytes32(b"\xee" * 32),
        block_number=7,
        gas_used=1,
        succeeded=True,
        logs=(changed, elsewhere, unrelated),
    )
    events = codec.decode_all(receipt, address=CLUSTER)
    assert [e["endpoint"] for e in events] == ["10.0.0.1:51820"]
    assert codec.decode_all(receipt, name="MemberRemoved") == []


def test_malformed_logs_are_skipped_not_raised() -> None:
    codec = EventCodec(load_artifact("Cluster").abi)
    topic0 = codec.topic_of("MemberRegistered")
    assert codec.decode(_log((topic0, MEMBER), b"")) is None  # wrong topic count
    assert codec.decode(_log((topic0, MEMBER, _topic(APP), _topic(SIGNER)), b"\x01")) is None  # short data


def test_python_value_conversions() -> None:
    assert python_value("address", APP.checksum) == APP
    assert python_value("bytes32", MEMBER.raw) == Bytes32(MEMBER.raw)
    assert python_value("bytes32", MEMBER.raw, "memberId") == MEMBER
    assert type(python_value("bytes32", MEMBER.raw, "originator")) is MemberId
    assert type(python_value("bytes", b"\x01")) is bytes
    assert python_value("address[]", [APP.checksum]) == (APP,)
    assert python_value("bool", 1) is True


def test_receipt_from_rpc_converts_hex_quantities_and_data() -> None:
    raw = {
        "transactionHash": "0x" + "ee" * 32,
        "blockNumber": "0x9",
        "gasUsed": hex(50_000),
        "status": "0x1",
        "contractAddress": None,
        "logs": [
            {
                "address": CLUSTER.checksum.lower(),
                "topics": ["0x" + "01" * 32],
                "data": "0x02",
                "blockNumber": "0x9",
                "blockHash": "0x" + "bb" * 32,
                "transactionHash": "0x" + "ee" * 32,
                "logIndex": "0x3",
                "removed": False,
            }
        ],
    }
    receipt = receipt_from_rpc(raw)
    assert receipt.succeeded and receipt.gas_used == 50_000 and receipt.block_number == 9
    assert type(receipt.tx_hash) is Bytes32
    (log,) = receipt.logs
    assert type(log.data) is bytes and log.address == CLUSTER and log.log_index == 3
    assert all(type(t) is Bytes32 for t in log.topics)


def test_local_signer_never_shows_its_key() -> None:
    signer = LocalSigner(KEY)
    secret_hex = KEY.reveal().hex()
    assert signer.address == Address(PrivateKey(KEY.reveal()).public_key.to_canonical_address())
    for text in (repr(signer), str(signer), f"{signer}"):
        assert secret_hex not in text.lower()
        assert str(signer.address) in text
    with pytest.raises(TypeError):
        pickle.dumps(signer)
    assert not hasattr(signer, "__dict__")


def test_local_signer_rejects_invalid_keys_without_echoing_them() -> None:
    with pytest.raises(ValueError) as caught:
        LocalSigner(SecretBytes(bytes(32)))
    assert "00" * 32 not in str(caught.value)


def test_local_signer_signs_locally() -> None:
    raw, tx_hash = LocalSigner(KEY).sign(
        {
            "to": APP.checksum,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 2,
            "maxPriorityFeePerGas": 1,
            "nonce": 0,
            "chainId": 31337,
            "type": 2,
        }
    )
    assert raw[0] == 2  # EIP-1559 envelope
    assert tx_hash.raw == keccak(raw)


# --- bindings cover the ABIs -------------------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


#: ABI functions bound under another name, or deliberately not bound (with the reason).
ALIASES = {
    "allowedComposeHashes": "allowed_compose_hash",
    "allowedDeviceIds": "allowed_device",
    "allowedAppIds": "allowed_app_id",
    "allowedKmsRoots": "allowed_kms_root",
    "renounceOwnership": None,  # always reverts with RenounceDisabled
}


@pytest.mark.parametrize(
    "client",
    [ClusterClient, MemberAppClient, MemberAppFactoryClient, ClusterFactoryClient, IndexerRegistryClient],
)
def test_every_abi_function_has_a_binding(client: type[ContractClient]) -> None:
    missing = []
    for entry in load_artifact(client.CONTRACT).entries("function"):
        name = ALIASES.get(entry["name"], _snake(entry["name"]))
        if name is not None and not callable(getattr(client, name, None)):
            missing.append(f"{entry['name']} -> {name}")
    assert not missing, f"{client.__name__} lacks bindings: {missing}"


def test_contract_reverts_survive_copy_and_pickle() -> None:
    data = function_signature_to_4byte_selector("NotMember(address)") + encode(["address"], [APP.checksum])
    error = decode_revert(data, tx_hash=Bytes32(b"\x01" * 32))
    for clone in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert type(clone) is NotMember
        assert clone.args == (APP,)
        assert clone.fields == {"sender": APP}
        assert str(clone) == str(error)
        assert clone.tx_hash == error.tx_hash


def test_block_header_and_quantities_from_rpc() -> None:
    header = block_header_from_rpc(
        {"number": "0x2a", "hash": "0x" + "aa" * 32, "parentHash": "0x" + "bb" * 32, "timestamp": "0x10"}
    )
    assert (header.number, header.timestamp, header.hash) == (42, 16, Bytes32(b"\xaa" * 32))
    assert quantity("0x0") == 0 and quantity(7) == 7
    for bad in ("0xzz", True, None, 1.5):
        with pytest.raises(ValueError):
            quantity(bad)


def test_canonical_types_and_selectors_match_eth_utils() -> None:
    from eth_utils.abi import abi_to_signature  # noqa: PLC0415 - the reference only

    for name in ("Cluster", "ClusterFactory", "IndexerRegistry", "ClusterMemberApp"):
        for entry in load_artifact(name).abi:
            if entry.get("type") != "function":
                continue
            spec = contract_abi(name).function(entry["name"])
            assert spec.selector == function_signature_to_4byte_selector(abi_to_signature(entry))
            assert spec.input_types == tuple(canonical_type(p) for p in entry["inputs"])


def test_call_encoding_and_result_decoding_round_trip() -> None:
    spec = contract_abi("Cluster").function("memberIdOf")
    calldata = spec.encode([APP.checksum])
    assert calldata == spec.selector + encode(["address"], [APP.checksum])
    assert spec.decode(MEMBER.raw) == MEMBER.raw  # one output: unwrapped
    current = contract_abi("IndexerRegistry").function("current")
    values = ["wss://i.example", b"\x01" * 32, b"\x02" * 32, 7]
    assert current.decode(encode(list(current.output_types), values)) == values  # several: a list


@pytest.mark.parametrize(
    ("args", "message"),
    [((), "takes 1 arguments, 0 given"), ((APP.checksum, 1), "takes 1 arguments, 2 given")],
)
def test_a_call_with_the_wrong_arity_is_refused(args: tuple[object, ...], message: str) -> None:
    from sidecar.chain.errors import UnexpectedChainError  # noqa: PLC0415

    with pytest.raises(UnexpectedChainError, match=message):
        contract_abi("Cluster").function("memberIdOf").encode(args)


def test_empty_or_unknown_results_are_unexpected_errors() -> None:
    from sidecar.chain.errors import UnexpectedChainError  # noqa: PLC0415

    with pytest.raises(UnexpectedChainError, match="no contract at the address"):
        contract_abi("Cluster").function("memberCount").decode(b"")
    with pytest.raises(UnexpectedChainError, match="has no function"):
        contract_abi("Cluster").function("noSuchFunction")
