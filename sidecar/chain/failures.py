"""The chain adapter's failure taxonomy: every failure a caller sees is a ``ChainError``.

Owns the transient/terminal split (``ChainError.transient``), the adapter's own failures (unavailable,
timeouts, nonce conflicts, funds, chain id mismatch, rejections), ``ContractRevert`` with its three generic
kinds (``RevertWithReason``, ``Panic``, ``UnknownRevert``) and ``CustomError``, the base of one class per
Solidity custom error: defining such a class registers it in ``CUSTOM_ERRORS`` under its own name, so the
classes are the one list (the classes themselves are in ``sidecar.chain.errors``).

Must not: import aiohttp or the JSON-RPC client (``sidecar.chain.errors`` classifies their exceptions),
retry, sleep or log, or put key material into a message. Callers import these names from
``sidecar.chain.errors``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

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


GWEI = 10**9


def gwei(wei: int) -> str:
    """A wei amount per gas, shown in gwei (``1.5 gwei``)."""
    return f"{wei / GWEI:.9g} gwei"


class FeeAboveCap(TransientChainError):
    """The fees the RPC quotes would exceed the configured cap: the transaction was not sent (the fees may
    fall, or the RPC was lying: either way, wait; never pay what it asks). ``str`` starts ``fee_cap:``."""

    def __init__(self, *, base_fee: int, tip: int, cap: int) -> None:
        super().__init__(
            f"fee_cap: base fee {gwei(base_fee)} + tip {gwei(tip)} per gas exceeds the cap of {gwei(cap)} "
            "(ATTESTMESH_MAX_FEE_GWEI); transaction not sent"
        )
        self.base_fee, self.tip, self.cap = base_fee, tip, cap


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


_CUSTOM_ERRORS: dict[str, type[CustomError]] = {}

#: Every custom-error class, by Solidity error name: filled by defining ``CustomError`` subclasses.
CUSTOM_ERRORS: Mapping[str, type[CustomError]] = MappingProxyType(_CUSTOM_ERRORS)


class CustomError(ContractRevert):
    """The contract reverted with one of the Solidity custom errors of our ABIs, named like this class.

    Subclassing registers the subclass in ``CUSTOM_ERRORS`` under its class name (the Solidity error's name).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__ in _CUSTOM_ERRORS:
            raise TypeError(f"a custom error named {cls.__name__} is already defined")
        _CUSTOM_ERRORS[cls.__name__] = cls
