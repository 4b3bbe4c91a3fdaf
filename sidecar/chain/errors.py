"""The chain adapter's error taxonomy: every failure a caller sees is a ``ChainError``.

Owns: the transient/terminal split (``ChainError.transient``), one ``ContractRevert`` subclass per Solidity
custom error in our artifacts (same class name as the Solidity error), decoding revert data into them
(``decode_revert``), ``classify`` (web3 / aiohttp / asyncio exceptions to ours) and ``translated()``, the one
place in the adapter that catches broad exceptions.

Must not: retry, sleep or log (the drivers decide what to do with a transient error), or put key material
into a message. Revert data and RPC messages are public; nothing else is quoted.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.abi import (
    abi_to_signature,
    function_signature_to_4byte_selector,
    get_abi_input_names,
    get_abi_input_types,
)
from web3.exceptions import (
    BadFunctionCallOutput,
    BadResponseFormat,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    TooManyRequests,
    Web3RPCError,
)

from sidecar.chain.artifacts import ArtifactError, available_artifacts
from sidecar.chain.codec import python_value
from sidecar.core.ids import Address, Bytes32

# ---------------------------------------------------------------------------------------------------------
# Base classes
# ---------------------------------------------------------------------------------------------------------


class ChainError(Exception):
    """A chain operation failed. ``transient`` says whether retrying the same operation can succeed."""

    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, tx_hash: Bytes32 | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tx_hash = tx_hash

    def __str__(self) -> str:
        return self.message


class TransientChainError(ChainError):
    """Retry with backoff: the node, the network or the mempool may be fine in a moment."""

    transient = True


class TerminalChainError(ChainError):
    """Do not retry the same request: it will fail the same way until something else changes."""

    transient = False


# --- transient ---------------------------------------------------------------------------------------------


class ChainUnavailable(TransientChainError):
    """The node could not be reached or did not answer in time (refused, reset, timeout, 5xx, 429, limits)."""


class TransactionTimeout(TransientChainError):
    """The transaction was sent but no receipt appeared before the deadline."""

    def __init__(self, tx_hash: Bytes32 | None, timeout: float, detail: str = "") -> None:
        message = "no receipt" + (f" for transaction {tx_hash}" if tx_hash else "")
        message += f" within {timeout:g} s" if timeout > 0 else ""
        super().__init__(message + (f" ({detail})" if detail else ""), tx_hash=tx_hash)
        self.timeout = timeout


class NonceConflict(TransientChainError):
    """The node refused our nonce (too low, already known, underpriced replacement); re-read and resend."""


# --- terminal ----------------------------------------------------------------------------------------------


class InsufficientFunds(TerminalChainError):
    """The sending account cannot pay for gas and value."""

    def __init__(
        self,
        message: str,
        *,
        address: Address | None = None,
        needed: int | None = None,
        have: int | None = None,
    ) -> None:
        super().__init__(message)
        self.address = address
        self.needed = needed
        self.have = have


class ChainIdMismatch(TerminalChainError):
    """The RPC endpoint serves another chain than the one configured."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"chain id mismatch: expected {expected}, the node reports {actual}")
        self.expected = expected
        self.actual = actual


class RpcRejected(TerminalChainError):
    """The node answered with a JSON-RPC (or HTTP 4xx) error that retrying will not fix."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class UnexpectedChainError(TerminalChainError):
    """Anything the classifier does not recognise (bad response shape, ABI mismatch, no code at address)."""


class NoSubmitter(TerminalChainError):
    """A write was requested from a binding built without a ``TxSubmitter`` (a wiring bug)."""


# ---------------------------------------------------------------------------------------------------------
# Reverts
# ---------------------------------------------------------------------------------------------------------


class ContractRevert(TerminalChainError):
    """The contract reverted. Subclasses carry the decoded arguments of one Solidity custom error.

    ``args`` is the tuple of decoded values (addresses as ``Address``, ``bytes32`` as ``Bytes32``, or a
    ``MemberId`` when the parameter is a member id),
    ``fields`` the same by Solidity parameter name, ``data`` the raw revert payload.
    """

    def __init__(
        self,
        args: tuple[Any, ...] = (),
        *,
        data: bytes = b"",
        names: Sequence[str] = (),
        message: str | None = None,
        error_name: str | None = None,
        tx_hash: Bytes32 | None = None,
    ) -> None:
        self.error_name = error_name or type(self).__name__
        self.arg_names = tuple(names) if names else tuple(f"arg{i}" for i in range(len(args)))
        if message is None:
            message = _revert_message(self.error_name, self.arg_names, args, type(self).__doc__)
        super().__init__(message, tx_hash=tx_hash)
        self.args = tuple(args)
        self.data = data

    @property
    def fields(self) -> Mapping[str, Any]:
        return dict(zip(self.arg_names, self.args, strict=False))

    def __reduce__(self) -> tuple[Any, ...]:
        # ``args`` holds the decoded values, not the constructor's arguments: rebuild, then restore state.
        return (type(self), (self.args,), self.__dict__)


def _format_value(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, tuple):
        return "(" + ", ".join(_format_value(v) for v in value) + ")"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _revert_message(name: str, names: Sequence[str], args: Sequence[Any], doc: str | None) -> str:
    rendered = ", ".join(f"{n}={_format_value(v)}" for n, v in zip(names, args, strict=False))
    summary = (doc or "").strip().splitlines()[0] if doc else ""
    generic = summary.startswith("The contract reverted")
    return f"{name}({rendered})" + (f": {summary}" if summary and not generic else "")


class RevertWithReason(ContractRevert):
    """The contract reverted with ``Error(string)``."""

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else ""


class Panic(ContractRevert):
    """The contract hit a ``Panic(uint256)`` (assert, overflow, out-of-bounds...)."""

    @property
    def code(self) -> int:
        return int(self.args[0]) if self.args else -1


class UnknownRevert(ContractRevert):
    """The revert data matches no error in our ABIs (or there was none, e.g. out of gas)."""


# --- our contracts (ICluster / IIndexerRegistry) ---------------------------------------------------------


class AppIdNotAllowed(ContractRevert):
    """The app id is neither pre-approved nor already a member."""


class AlreadyRegistered(ContractRevert):
    """The app id is already a member of this cluster."""


class KmsRootNotAllowed(ContractRevert):
    """The signature chain ends at a KMS root the cluster does not trust."""


class KmsSignatureMismatch(ContractRevert):
    """The KMS signature does not recover to the claimed KMS root (wrong app id or app key)."""


class AppSignatureMismatch(ContractRevert):
    """The app signature does not recover to the app key."""


class InvalidSignature(ContractRevert):
    """A signature is malformed (length or recovery byte)."""


class InvalidPubkey(ContractRevert):
    """A public key is malformed (not 64 bytes, or not on the curve)."""


class SenderNotDerivedKey(ContractRevert):
    """The transaction was not sent by the derived key the proof is for."""


class ZeroKey(ContractRevert):
    """A published public key is zero."""


class EndpointTooLong(ContractRevert):
    """The endpoint string exceeds the contract's limit."""


class MeshExhausted(ContractRevert):
    """The mesh CIDR has no unallocated host left."""


class InvalidMeshCidr(ContractRevert):
    """The mesh CIDR is malformed (host bits set or prefix length out of range)."""


class NotMember(ContractRevert):
    """The sender is not a member of this cluster."""


class UnknownMember(ContractRevert):
    """No member has this id."""


class NotOriginator(ContractRevert):
    """Only the originator (the first member) may do this."""


class CskCommitmentAlreadySet(ContractRevert):
    """The CSK commitment is set once and already is."""


class ZeroCommitment(ContractRevert):
    """The CSK commitment must not be zero."""


class RenounceDisabled(ContractRevert):
    """Ownership cannot be renounced."""


# --- OpenZeppelin ---------------------------------------------------------------------------------------


class OwnableUnauthorizedAccount(ContractRevert):
    """Only the owner may do this."""


class OwnableInvalidOwner(ContractRevert):
    """The new owner is not a valid owner (zero address)."""


class ECDSAInvalidSignature(ContractRevert):
    """The signature does not recover to an address."""


class ECDSAInvalidSignatureLength(ContractRevert):
    """The signature has the wrong length."""


class ECDSAInvalidSignatureS(ContractRevert):
    """The signature's s value is in the upper half of the curve order."""


class Create2EmptyBytecode(ContractRevert):
    """CREATE2 was asked to deploy empty bytecode."""


class FailedDeployment(ContractRevert):
    """A CREATE/CREATE2 deployment failed."""


class InsufficientBalance(ContractRevert):
    """The contract's balance is below what the operation needs."""


class FailedCall(ContractRevert):
    """A low-level call failed without a reason."""


class StringsInsufficientHexLength(ContractRevert):
    """A value does not fit the requested hex length."""


#: Every custom-error class, by Solidity error name.
CUSTOM_ERRORS: Mapping[str, type[ContractRevert]] = {
    cls.__name__: cls
    for cls in (
        AppIdNotAllowed,
        AlreadyRegistered,
        KmsRootNotAllowed,
        KmsSignatureMismatch,
        AppSignatureMismatch,
        InvalidSignature,
        InvalidPubkey,
        SenderNotDerivedKey,
        ZeroKey,
        EndpointTooLong,
        MeshExhausted,
        InvalidMeshCidr,
        NotMember,
        UnknownMember,
        NotOriginator,
        CskCommitmentAlreadySet,
        ZeroCommitment,
        RenounceDisabled,
        OwnableUnauthorizedAccount,
        OwnableInvalidOwner,
        ECDSAInvalidSignature,
        ECDSAInvalidSignatureLength,
        ECDSAInvalidSignatureS,
        Create2EmptyBytecode,
        FailedDeployment,
        InsufficientBalance,
        FailedCall,
        StringsInsufficientHexLength,
    )
}

ERROR_STRING_SELECTOR = function_signature_to_4byte_selector("Error(string)")
PANIC_SELECTOR = function_signature_to_4byte_selector("Panic(uint256)")

PANIC_CODES: Mapping[int, str] = {
    0x00: "generic compiler panic",
    0x01: "assert failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "invalid enum value",
    0x22: "corrupt storage byte array",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to a zero-initialised function",
}


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One custom error of an ABI: name, parameter names and types, selector."""

    name: str
    selector: bytes
    input_names: tuple[str, ...]
    input_types: tuple[str, ...]


class ErrorTable:
    """Selector → custom error, built from ABIs."""

    def __init__(self, specs: Iterable[ErrorSpec]) -> None:
        self._by_selector: dict[bytes, ErrorSpec] = {}
        for spec in specs:
            self._by_selector.setdefault(spec.selector, spec)

    @classmethod
    def from_abis(cls, abis: Iterable[Sequence[Mapping[str, Any]]]) -> ErrorTable:
        specs = []
        for abi in abis:
            for entry in abi:
                if entry.get("type") != "error":
                    continue
                element: Any = dict(entry)
                signature = abi_to_signature(element)
                specs.append(
                    ErrorSpec(
                        name=str(entry["name"]),
                        selector=function_signature_to_4byte_selector(signature),
                        input_names=tuple(str(n or "") for n in get_abi_input_names(element)),
                        input_types=tuple(get_abi_input_types(element)),
                    )
                )
        return cls(specs)

    def __iter__(self) -> Iterator[ErrorSpec]:
        return iter(self._by_selector.values())

    def lookup(self, selector: bytes) -> ErrorSpec | None:
        return self._by_selector.get(selector)


@functools.lru_cache(maxsize=1)
def _artifact_table() -> ErrorTable:
    return ErrorTable.from_abis(artifact.abi for artifact in available_artifacts())


def default_error_table() -> ErrorTable:
    """Return the table of every custom error in the committed artifacts (built once)."""
    return _artifact_table()


def decode_revert(
    data: bytes, *, table: ErrorTable | None = None, tx_hash: Bytes32 | None = None
) -> ContractRevert:
    """Decode revert data into the matching ``ContractRevert`` subclass (``UnknownRevert`` when none)."""
    selector, body = data[:4], data[4:]
    try:
        if selector == ERROR_STRING_SELECTOR:
            (reason,) = abi_decode(["string"], body)
            return RevertWithReason(
                (reason,), data=data, names=("reason",), message=f"reverted: {reason}", tx_hash=tx_hash
            )
        if selector == PANIC_SELECTOR:
            (code,) = abi_decode(["uint256"], body)
            meaning = PANIC_CODES.get(code, "unknown panic code")
            return Panic(
                (code,),
                data=data,
                names=("code",),
                message=f"Panic(0x{code:02x}): {meaning}",
                tx_hash=tx_hash,
            )
        if table is None:
            table = default_error_table()
        spec = table.lookup(selector) if len(selector) == 4 else None
        if spec is None:
            return UnknownRevert(
                (data,),
                data=data,
                names=("data",),
                message=f"reverted with unrecognised data 0x{data.hex()}"
                if data
                else "reverted without data",
                tx_hash=tx_hash,
            )
        decoded = abi_decode(list(spec.input_types), body)
    except (DecodingError, ArtifactError, ValueError, OverflowError) as exc:
        return UnknownRevert(
            (data,),
            data=data,
            names=("data",),
            message=f"reverted with undecodable data 0x{data.hex()} ({exc})",
            tx_hash=tx_hash,
        )
    values = tuple(
        python_value(t, v, n) for t, v, n in zip(spec.input_types, decoded, spec.input_names, strict=True)
    )
    cls = CUSTOM_ERRORS.get(spec.name, ContractRevert)
    return cls(values, data=data, names=spec.input_names, error_name=spec.name, tx_hash=tx_hash)


# ---------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------

#: JSON-RPC codes that mean "the node is overloaded or limiting us": retrying later can succeed.
TRANSIENT_RPC_CODES = frozenset({-32005, -32002})
_TRANSIENT_MESSAGES = (
    "rate limit",
    "too many requests",
    "timed out",
    "timeout",
    "header not found",
    "try again",
    "temporarily unavailable",
    "limit exceeded",
)
_NONCE_MESSAGES = (
    "nonce too low",
    "nonce too high",
    "already known",
    "known transaction",
    "replacement transaction underpriced",
    "transaction underpriced",
    "nonce has already been used",
)
_FUNDS_MESSAGES = ("insufficient funds", "lack of funds", "out of funds")


def _revert_data_bytes(data: object) -> bytes | None:
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    if isinstance(data, dict):
        for value in data.values():
            found = _revert_data_bytes(value)
            if found is not None:
                return found
    return None


def _classify_rpc_error(exc: Web3RPCError) -> ChainError:
    response: Any = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = str(error.get("message")) if isinstance(error, dict) else str(exc.message)
    lowered = message.lower()
    if any(text in lowered for text in _FUNDS_MESSAGES):
        return InsufficientFunds(f"insufficient funds: {message}")
    if any(text in lowered for text in _NONCE_MESSAGES):
        return NonceConflict(f"nonce conflict: {message}")
    if code in TRANSIENT_RPC_CODES or any(text in lowered for text in _TRANSIENT_MESSAGES):
        return ChainUnavailable(f"node busy or limiting (code {code}): {message}")
    if isinstance(error, dict) and "revert" in lowered:
        data = _revert_data_bytes(error.get("data"))
        if data is not None:
            return decode_revert(data)
    return RpcRejected(
        f"node rejected the request (code {code}): {message}", code=code if isinstance(code, int) else None
    )


def _from_revert(exc: BaseException) -> ChainError | None:
    if isinstance(exc, ContractLogicError):
        data = _revert_data_bytes(exc.data)
        if data is not None:
            return decode_revert(data)
        return UnknownRevert(message=f"reverted: {exc.message or 'no reason'}")
    return None


def _from_transport(exc: BaseException) -> ChainError | None:
    if isinstance(exc, aiohttp.ClientResponseError):
        if exc.status == 429 or exc.status >= 500:
            return ChainUnavailable(f"RPC endpoint answered HTTP {exc.status}")
        return RpcRejected(f"RPC endpoint answered HTTP {exc.status}", code=exc.status)
    if isinstance(exc, aiohttp.InvalidURL):
        return RpcRejected(f"invalid RPC URL: {exc}")
    if isinstance(exc, (aiohttp.ClientError, OSError, TimeoutError)):
        # OSError covers ConnectionRefusedError / ConnectionResetError raised below aiohttp.
        return ChainUnavailable(f"RPC endpoint unreachable: {type(exc).__name__}: {exc}")
    return None


def _from_web3(exc: BaseException) -> ChainError | None:
    if isinstance(exc, TimeExhausted):
        return TransactionTimeout(None, 0.0, str(exc))
    if isinstance(exc, Web3RPCError):
        return _classify_rpc_error(exc)
    if isinstance(exc, (ProviderConnectionError, TooManyRequests)):
        return ChainUnavailable(f"RPC endpoint unavailable: {exc}")
    if isinstance(exc, BadFunctionCallOutput):
        return UnexpectedChainError(f"call returned no usable output (no contract at the address?): {exc}")
    if isinstance(exc, BadResponseFormat):
        return UnexpectedChainError(f"malformed RPC response: {exc}")
    return None


def classify(exc: BaseException) -> ChainError:
    """Map any exception raised by web3, aiohttp or asyncio during a chain operation to a ``ChainError``."""
    if isinstance(exc, ChainError):
        return exc
    for rule in (_from_revert, _from_web3, _from_transport):
        found = rule(exc)
        if found is not None:
            return found
    return UnexpectedChainError(f"unexpected {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Re-raise anything raised inside the block as a ``ChainError`` (the adapter's one broad catch)."""
    try:
        yield
    except ChainError:
        raise
    except Exception as exc:
        raise classify(exc) from exc
