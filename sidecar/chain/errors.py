"""The chain adapter's errors as callers see them: the taxonomy, our contracts' custom errors, classification.

Owns one ``CustomError`` subclass per Solidity custom error in our artifacts (same class name as the
Solidity error; defining it registers it in ``CUSTOM_ERRORS``), ``classify`` (JSON-RPC error objects with
their revert data, malformed answers, ABI encoding failures, aiohttp / asyncio / OS exceptions to ours)
and ``translated()``, the one place in the adapter that catches broad exceptions. It re-exports the
taxonomy (``sidecar.chain.failures``) and revert decoding (``sidecar.chain.reverts``), so callers import
every error name from here.

Must not: retry, sleep or log (the drivers decide what to do with a transient error), or put key material
into a message. Revert data and RPC messages are public; nothing else is quoted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiohttp
from eth_abi.exceptions import EncodingError

from sidecar.chain.failures import (
    CUSTOM_ERRORS,
    ChainError,
    ChainIdMismatch,
    ChainUnavailable,
    ContractRevert,
    CustomError,
    FeeAboveCap,
    InsufficientFunds,
    NonceConflict,
    NoSubmitter,
    Panic,
    RevertWithReason,
    RpcRejected,
    TerminalChainError,
    TransactionTimeout,
    TransientChainError,
    UnexpectedChainError,
    UnknownRevert,
)
from sidecar.chain.jsonrpc import RpcError, RpcResponseError
from sidecar.chain.reverts import (
    ERROR_STRING_SELECTOR,
    PANIC_CODES,
    PANIC_SELECTOR,
    ErrorSpec,
    ErrorTable,
    decode_revert,
    default_error_table,
)

# The names re-exported from failures and reverts, and ours; the custom error classes below are imported by
# name as well (``CUSTOM_ERRORS`` maps every one of them) but are deliberately not listed a second time.
__all__ = [
    "CUSTOM_ERRORS",
    "ERROR_STRING_SELECTOR",
    "PANIC_CODES",
    "PANIC_SELECTOR",
    "ChainError",
    "ChainIdMismatch",
    "ChainUnavailable",
    "ContractRevert",
    "CustomError",
    "ErrorSpec",
    "ErrorTable",
    "FeeAboveCap",
    "InsufficientFunds",
    "NoSubmitter",
    "NonceConflict",
    "Panic",
    "RevertWithReason",
    "RpcRejected",
    "TerminalChainError",
    "TransactionTimeout",
    "TransientChainError",
    "UnexpectedChainError",
    "UnknownRevert",
    "classify",
    "decode_revert",
    "default_error_table",
    "translated",
]


# --- our contracts (ICluster / IIndexerRegistry) ---------------------------------------------------------


class AppIdNotAllowed(CustomError):
    """The app id is neither pre-approved nor already a member."""


class NotMemberApp(CustomError):
    """The app id is not a member app of the cluster's member-app factory (an EOA, another contract)."""


class ForeignApp(CustomError):
    """The app id is a member app of another cluster."""


class InvalidMemberAppFactory(CustomError):
    """A cluster's member-app factory must be a contract (deployment)."""


class KeyInUse(CustomError):
    """Another member already publishes this WireGuard, identity or seal public key."""


class InvalidEndpoint(CustomError):
    """The endpoint is not one of the forms the sidecar accepts (udp://, tls://, legacy ip:port)."""


class AlreadyRegistered(CustomError):
    """The app id is already a member of this cluster."""


class KmsRootNotAllowed(CustomError):
    """The signature chain ends at a KMS root the cluster does not trust."""


class KmsSignatureMismatch(CustomError):
    """The KMS signature does not recover to the claimed KMS root (wrong app id or app key)."""


class AppSignatureMismatch(CustomError):
    """The app signature does not recover to the app key."""


class InvalidSignature(CustomError):
    """A signature is malformed (length or recovery byte)."""


class InvalidPubkey(CustomError):
    """A public key is malformed (not 64 bytes, or not on the curve)."""


class SenderNotDerivedKey(CustomError):
    """The transaction was not sent by the derived key the proof is for."""


class ZeroKey(CustomError):
    """A published public key is zero."""


class EndpointTooLong(CustomError):
    """The endpoint string exceeds the contract's limit."""


class MeshExhausted(CustomError):
    """The mesh CIDR has no unallocated host left."""


class InvalidMeshCidr(CustomError):
    """The mesh CIDR is malformed (host bits set or prefix length out of range)."""


class NotMember(CustomError):
    """The sender is not a member of this cluster."""


class UnknownMember(CustomError):
    """No member has this id."""


class NotOriginator(CustomError):
    """Only the originator (the first member) may do this."""


class CskCommitmentAlreadySet(CustomError):
    """The CSK commitment is set once per epoch and this epoch's already is."""


class WrongEpoch(CustomError):
    """A CSK commitment names an epoch other than the current one."""


class ZeroCommitment(CustomError):
    """The CSK commitment must not be zero."""


class RenounceDisabled(CustomError):
    """Ownership cannot be renounced."""


# --- OpenZeppelin ---------------------------------------------------------------------------------------


class OwnableUnauthorizedAccount(CustomError):
    """Only the owner may do this."""


class OwnableInvalidOwner(CustomError):
    """The new owner is not a valid owner (zero address)."""


class ECDSAInvalidSignature(CustomError):
    """The signature does not recover to an address."""


class ECDSAInvalidSignatureLength(CustomError):
    """The signature has the wrong length."""


class ECDSAInvalidSignatureS(CustomError):
    """The signature's s value is in the upper half of the curve order."""


class Create2EmptyBytecode(CustomError):
    """CREATE2 was asked to deploy empty bytecode."""


class FailedDeployment(CustomError):
    """A CREATE/CREATE2 deployment failed."""


class InsufficientBalance(CustomError):
    """The contract's balance is below what the operation needs."""


class FailedCall(CustomError):
    """A low-level call failed without a reason."""


class StringsInsufficientHexLength(CustomError):
    """A value does not fit the requested hex length."""


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


def _classify_rpc_error(exc: RpcError) -> ChainError:
    code, message = exc.code, exc.message
    lowered = message.lower()
    # A revert (EIP-1474 code 3, or geth/anvil's "execution reverted" text) carries the revert data.
    if code == 3 or "revert" in lowered:
        data = _revert_data_bytes(exc.data)
        if data is not None:
            return decode_revert(data)
        return UnknownRevert(message=f"reverted: {message or 'no reason'}")
    if any(text in lowered for text in _FUNDS_MESSAGES):
        return InsufficientFunds(f"insufficient funds: {message}")
    if any(text in lowered for text in _NONCE_MESSAGES):
        return NonceConflict(f"nonce conflict: {message}")
    if code in TRANSIENT_RPC_CODES or any(text in lowered for text in _TRANSIENT_MESSAGES):
        return ChainUnavailable(f"node busy or limiting (code {code}): {message}")
    return RpcRejected(
        f"node rejected the request (code {code}): {message}", code=code if isinstance(code, int) else None
    )


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


def _from_rpc(exc: BaseException) -> ChainError | None:
    if isinstance(exc, RpcError):
        return _classify_rpc_error(exc)
    if isinstance(exc, RpcResponseError):
        return UnexpectedChainError(f"malformed RPC response: {exc}")
    if isinstance(exc, EncodingError):
        return UnexpectedChainError(f"arguments do not fit the ABI: {exc}")
    return None


def classify(exc: BaseException) -> ChainError:
    """Map any exception raised by the JSON-RPC client, aiohttp or asyncio to a ``ChainError``."""
    if isinstance(exc, ChainError):
        return exc
    for rule in (_from_rpc, _from_transport):
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
