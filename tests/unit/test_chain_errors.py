"""sidecar.chain.errors: the error table against the artifacts, revert decoding, classification."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from eth_abi.abi import encode
from eth_abi.exceptions import EncodingTypeError
from eth_utils.abi import function_signature_to_4byte_selector
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sidecar.chain import errors
from sidecar.chain.abi import selector
from sidecar.chain.artifacts import CONTRACT_NAMES, available_artifacts, load_artifact
from sidecar.chain.errors import (
    CUSTOM_ERRORS,
    AlreadyRegistered,
    ChainError,
    ChainUnavailable,
    ContractRevert,
    CustomError,
    ErrorTable,
    InsufficientFunds,
    InvalidMeshCidr,
    NonceConflict,
    OwnableUnauthorizedAccount,
    Panic,
    RevertWithReason,
    RpcRejected,
    TerminalChainError,
    TransactionTimeout,
    TransientChainError,
    UnexpectedChainError,
    UnknownRevert,
    ZeroKey,
    classify,
    decode_revert,
    translated,
)
from sidecar.chain.jsonrpc import RpcError, RpcResponseError
from sidecar.core.ids import Address, MemberId

APP = Address.from_hex("0x4602b3a58f47ddd5a85069f0d88772ca14a043f4")
MEMBER = MemberId(b"\x82" * 32)  # bytes32 params named memberId decode as MemberId


def _payload(signature: str, types: list[str], values: list[object]) -> bytes:
    return function_signature_to_4byte_selector(signature) + encode(types, values)


def _rpc_error(code: int, message: str, data: object = None) -> RpcError:
    return RpcError("eth_call", code, message, data)


def test_our_selectors_are_eth_utils_selectors() -> None:
    for text in ("Error(string)", "Panic(uint256)", "AlreadyRegistered(address,bytes32)"):
        assert selector(text) == function_signature_to_4byte_selector(text)


# --- the table covers the artifacts ---------------------------------------------------------------------


def test_every_contract_artifact_is_present() -> None:
    names = {artifact.name for artifact in available_artifacts()}
    assert set(CONTRACT_NAMES) <= names


def test_every_custom_error_in_every_artifact_has_a_class_of_the_same_name() -> None:
    missing = {
        (artifact.name, entry["name"])
        for artifact in available_artifacts()
        for entry in artifact.entries("error")
        if entry["name"] not in CUSTOM_ERRORS
    }
    assert not missing, f"add a ContractRevert subclass to sidecar/chain/errors.py for: {sorted(missing)}"


def test_custom_error_classes_are_module_level_revert_subclasses() -> None:
    for name, cls in CUSTOM_ERRORS.items():
        assert cls.__name__ == name
        assert getattr(errors, name) is cls
        assert issubclass(cls, ContractRevert)
        assert not cls.transient


GENERIC_REVERTS = {ContractRevert, CustomError, RevertWithReason, Panic, UnknownRevert}


def test_custom_errors_map_every_abi_error_and_are_derived_from_the_classes() -> None:
    in_artifacts = {
        entry["name"] for artifact in available_artifacts() for entry in artifact.entries("error")
    }
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, ContractRevert) and value not in GENERIC_REVERTS
    }
    assert in_artifacts <= set(CUSTOM_ERRORS), "CUSTOM_ERRORS must map every error of the ABIs"
    assert defined == set(CUSTOM_ERRORS), "every revert class must derive from CustomError (and so be mapped)"
    for name, cls in CUSTOM_ERRORS.items():
        assert issubclass(cls, CustomError)
        assert getattr(errors, name) is cls


def test_a_second_custom_error_of_the_same_name_is_refused() -> None:
    with pytest.raises(TypeError, match="NotMember is already defined"):
        type("NotMember", (CustomError,), {})
    assert CUSTOM_ERRORS["NotMember"] is errors.NotMember


def test_default_table_decodes_every_artifact_error_to_its_class() -> None:
    for artifact in available_artifacts():
        table = ErrorTable.from_abis([artifact.abi])
        for spec in table:
            values: list[object] = []
            for abi_type in spec.input_types:
                if abi_type == "address":
                    values.append(APP.checksum)
                elif abi_type.startswith("bytes"):
                    values.append(bytes(int(abi_type[5:]) if abi_type != "bytes" else 3))
                elif abi_type == "string":
                    values.append("wireguard")
                else:
                    values.append(7)
            error = decode_revert(spec.selector + encode(list(spec.input_types), values))
            assert type(error) is CUSTOM_ERRORS[spec.name], spec.name
            assert error.error_name == spec.name
            assert len(error.args) == len(spec.input_types)


# --- decoding ------------------------------------------------------------------------------------------


def test_decodes_custom_error_with_typed_args() -> None:
    data = _payload("AlreadyRegistered(address,bytes32)", ["address", "bytes32"], [APP.checksum, MEMBER.raw])
    error = decode_revert(data)
    assert isinstance(error, AlreadyRegistered)
    assert error.args == (APP, MEMBER)
    assert error.fields == {"appId": APP, "memberId": MEMBER}
    assert error.data == data
    assert str(error).startswith(f"AlreadyRegistered(appId={APP}, memberId={MEMBER})")
    assert isinstance(error, TerminalChainError)


def test_decodes_small_integers_and_zero_arg_errors() -> None:
    error = decode_revert(_payload("InvalidMeshCidr(uint32,uint8)", ["uint32", "uint8"], [0x0A0D0001, 33]))
    assert isinstance(error, InvalidMeshCidr)
    assert error.args == (0x0A0D0001, 33)
    zero = decode_revert(function_signature_to_4byte_selector("ZeroKey()"))
    assert isinstance(zero, ZeroKey)
    assert zero.args == ()


def test_decodes_openzeppelin_errors() -> None:
    error = decode_revert(_payload("OwnableUnauthorizedAccount(address)", ["address"], [APP.checksum]))
    assert isinstance(error, OwnableUnauthorizedAccount)
    assert error.args == (APP,)


def test_decodes_error_string_and_panic() -> None:
    reason = decode_revert(_payload("Error(string)", ["string"], ["nope"]))
    assert isinstance(reason, RevertWithReason)
    assert reason.reason == "nope"
    panic = decode_revert(_payload("Panic(uint256)", ["uint256"], [0x11]))
    assert isinstance(panic, Panic)
    assert panic.code == 0x11
    assert "overflow" in str(panic)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x02",
        bytes.fromhex("deadbeef") + bytes(32),
        function_signature_to_4byte_selector("AlreadyRegistered(address,bytes32)") + b"\x00" * 10,
    ],
)
def test_unknown_or_truncated_data_is_an_unknown_revert(data: bytes) -> None:
    error = decode_revert(data)
    assert type(error) is UnknownRevert
    assert error.data == data


def test_table_from_explicit_abi_is_independent_of_artifacts() -> None:
    abi = [{"type": "error", "name": "Mystery", "inputs": [{"name": "n", "type": "uint256"}]}]
    error = decode_revert(_payload("Mystery(uint256)", ["uint256"], [5]), table=ErrorTable.from_abis([abi]))
    assert type(error) is ContractRevert  # no class of that name: the base, still decoded
    assert error.error_name == "Mystery"
    assert error.args == (5,)


def test_cluster_and_registry_share_error_selectors() -> None:
    cluster = ErrorTable.from_abis([load_artifact("Cluster").abi])
    registry = ErrorTable.from_abis([load_artifact("IndexerRegistry").abi])
    shared = {spec.selector for spec in cluster} & {spec.selector for spec in registry}
    assert function_signature_to_4byte_selector("EndpointTooLong(uint256)") in shared


# --- classification ------------------------------------------------------------------------------------


def test_contract_custom_error_is_decoded() -> None:
    data = _payload("AlreadyRegistered(address,bytes32)", ["address", "bytes32"], [APP.checksum, MEMBER.raw])
    classified = classify(_rpc_error(3, "execution reverted", "0x" + data.hex()))
    assert isinstance(classified, AlreadyRegistered)
    assert classified.args == (APP, MEMBER)


def test_contract_panic_and_logic_errors() -> None:
    data = _payload("Panic(uint256)", ["uint256"], [0x12])
    assert isinstance(classify(_rpc_error(3, "execution reverted", "0x" + data.hex())), Panic)
    no_data = classify(_rpc_error(-32000, "execution reverted"))
    assert type(no_data) is UnknownRevert
    empty = classify(_rpc_error(3, "execution reverted", "0x"))
    assert type(empty) is UnknownRevert and "without data" in str(empty)
    reason = _payload("Error(string)", ["string"], ["bad"])
    nested = {"message": "x", "data": "0x" + reason.hex()}  # some nodes nest the data one level down
    assert isinstance(classify(_rpc_error(3, "execution reverted: bad", nested)), RevertWithReason)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_rpc_error(-32005, "limit exceeded"), ChainUnavailable),
        (_rpc_error(-32000, "header not found"), ChainUnavailable),
        (_rpc_error(-32003, "Insufficient funds for gas * price + value"), InsufficientFunds),
        (_rpc_error(-32000, "nonce too low"), NonceConflict),
        (_rpc_error(-32000, "replacement transaction underpriced"), NonceConflict),
        (_rpc_error(-32602, "invalid params"), RpcRejected),
        (_rpc_error(-32000, "request timed out"), ChainUnavailable),
        (RpcResponseError("eth_call: the answer is not JSON (3 bytes)"), UnexpectedChainError),
        (EncodingTypeError("bytes32 cannot hold 33 bytes"), UnexpectedChainError),
        (aiohttp.ServerDisconnectedError(), ChainUnavailable),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), ChainUnavailable),
        (ConnectionRefusedError(111, "Connection refused"), ChainUnavailable),
        (TimeoutError(), ChainUnavailable),
        (ValueError("something else"), UnexpectedChainError),
    ],
)
def test_classify_maps_to_our_taxonomy(exc: BaseException, expected: type[ChainError]) -> None:
    classified = classify(exc)
    assert type(classified) is expected
    assert classified.transient is issubclass(expected, TransientChainError)


def test_rpc_error_code_is_kept_on_rejection() -> None:
    classified = classify(_rpc_error(-32602, "invalid params"))
    assert isinstance(classified, RpcRejected)
    assert classified.code == -32602
    assert "invalid params" in str(classified)


def test_rpc_error_carrying_revert_data_is_decoded() -> None:
    data = _payload("ZeroKey()", [], [])
    assert isinstance(classify(_rpc_error(3, "execution reverted", "0x" + data.hex())), ZeroKey)


def _response_error(status: int) -> aiohttp.ClientResponseError:
    info = aiohttp.RequestInfo(
        url=URL("http://127.0.0.1:8545"),
        method="POST",
        headers=CIMultiDictProxy(CIMultiDict()),
        real_url=URL("http://127.0.0.1:8545"),
    )
    return aiohttp.ClientResponseError(info, (), status=status)


@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (503, True), (401, False)])
def test_http_status_classification(status: int, transient: bool) -> None:
    classified = classify(_response_error(status))
    assert classified.transient is transient
    assert isinstance(classified, ChainUnavailable if transient else RpcRejected)


def test_chain_errors_pass_through_unchanged() -> None:
    original = NonceConflict("x")
    assert classify(original) is original


def test_translated_reraises_classified_with_cause() -> None:
    cause = ConnectionResetError(104, "reset")
    with pytest.raises(ChainUnavailable) as caught, translated():
        raise cause
    assert caught.value.__cause__ is cause
    original = InsufficientFunds("poor")
    with pytest.raises(InsufficientFunds) as again, translated():
        raise original
    assert again.value is original


def test_translated_lets_cancellation_through() -> None:
    with pytest.raises(asyncio.CancelledError), translated():
        raise asyncio.CancelledError


def test_transient_and_terminal_split() -> None:
    for transient in (ChainUnavailable, TransactionTimeout, NonceConflict):
        assert issubclass(transient, TransientChainError)
        assert transient.transient
    for terminal in (
        InsufficientFunds,
        RpcRejected,
        ContractRevert,
        UnexpectedChainError,
        errors.ChainIdMismatch,
    ):
        assert issubclass(terminal, TerminalChainError)
        assert not terminal.transient
    assert errors.ChainIdMismatch(31337, 1).actual == 1
