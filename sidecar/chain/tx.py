"""Sending transactions: local signing, nonces, gas, fees and the receipt wait.

Owns: ``LocalSigner`` (a secp256k1 key held in memory; signs locally, never via the node) and
``TxSubmitter``, which serialises one account's sends (an ``asyncio.Lock``), tracks its nonce (read with
``pending`` on first use, re-read after any failure), estimates gas (the place reverts are caught and decoded,
before anything is sent), prices EIP-1559 fees from the latest base fee, and waits for the receipt with a
deadline. A mined-but-reverted transaction is replayed as a call at its parent block to decode the reason.
Fees come from the RPC, which may lie: with a ``FeeCap`` the tip is clamped to its tip cap and the fee cap
to its fee cap, and when the quoted base fee plus tip alone exceeds the fee cap, nothing is signed or sent
(``FeeAboveCap``, transient).

``eth_account`` (the transaction signer) is imported when the first ``LocalSigner`` is built: a sidecar
that is registered and only reads never loads it.

Must not: log, repr or put into an error any key material; retry a failed send (the caller decides); or
return raw JSON-RPC shapes. Every failure leaves as a ``ChainError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

from sidecar.chain.errors import (
    ChainError,
    ContractRevert,
    FeeAboveCap,
    InsufficientFunds,
    TransactionTimeout,
    UnknownRevert,
    translated,
)
from sidecar.chain.rpc import ChainConnection, tx_params
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.model import TxReceipt

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

GAS_HEADROOM: Final = 1.2
#: Fee cap = 2 * base fee + tip: survives six consecutive full blocks of base-fee growth.
BASE_FEE_MULTIPLIER: Final = 2


@dataclass(frozen=True, slots=True)
class FeeCap:
    """The most this account pays per gas, whatever the RPC quotes: ``max_fee`` (maxFeePerGas) and
    ``max_tip`` (maxPriorityFeePerGas), in wei."""

    max_fee: int
    max_tip: int

    def __post_init__(self) -> None:
        if not 0 < self.max_tip <= self.max_fee:
            raise ValueError("a fee cap needs 0 < max_tip <= max_fee")

    def price(self, base_fee: int, tip: int) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas) within the cap for the quoted base fee and tip; raise
        ``FeeAboveCap`` when even the base fee plus the (clamped) tip does not fit under it."""
        tip = min(tip, self.max_tip)
        if base_fee + tip > self.max_fee:
            raise FeeAboveCap(base_fee=base_fee, tip=tip, cap=self.max_fee)
        return min(BASE_FEE_MULTIPLIER * base_fee + tip, self.max_fee), tip


def uncapped(base_fee: int, tip: int) -> tuple[int, int]:
    """(maxFeePerGas, maxPriorityFeePerGas) as quoted: for operator tools that have no cap configured."""
    return BASE_FEE_MULTIPLIER * base_fee + tip, tip


class LocalSigner:
    """A secp256k1 account key held in process memory. ``repr`` shows the address only."""

    __slots__ = ("_account", "address")

    def __init__(self, key: SecretBytes) -> None:
        from eth_account import Account  # noqa: PLC0415 - ~0.3 s and ~20 MiB: only when something is signed

        try:
            account: LocalAccount = Account.from_key(key.reveal())
        except (ValueError, TypeError):
            raise ValueError("signer key is not a valid secp256k1 private key") from None
        self._account = account
        self.address = Address.from_hex(account.address)

    def sign(self, tx: Mapping[str, Any]) -> tuple[bytes, Bytes32]:
        """Sign a transaction dict; return the raw signed bytes and the transaction hash."""
        signed = self._account.sign_transaction(dict(tx))
        return bytes(signed.raw_transaction), Bytes32(bytes(signed.hash))

    def __repr__(self) -> str:
        return f"LocalSigner({self.address})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("LocalSigner cannot be pickled")


class TxSubmitter:
    """Sends one account's transactions, one at a time, and waits for their receipts."""

    def __init__(
        self,
        conn: ChainConnection,
        signer: LocalSigner,
        *,
        receipt_timeout: float = 60.0,
        poll_interval: float = 0.2,
        fee_cap: FeeCap | None = None,
    ) -> None:
        self._conn = conn
        self._signer = signer
        self.receipt_timeout = receipt_timeout
        self.poll_interval = poll_interval
        self.fee_cap = fee_cap
        self._lock = asyncio.Lock()
        self._nonce: int | None = None

    @property
    def address(self) -> Address:
        return self._signer.address

    @property
    def connection(self) -> ChainConnection:
        return self._conn

    def __repr__(self) -> str:
        return f"TxSubmitter({self._signer.address}, {self._conn.rpc_url!r})"

    async def send(
        self,
        to: Address | None,
        data: bytes,
        *,
        value: int = 0,
        gas_limit: int | None = None,
        receipt_timeout: float | None = None,
    ) -> TxReceipt:
        """Send a transaction (``to=None`` deploys ``data`` as init code) and wait for a successful receipt.

        Raises the decoded ``ContractRevert`` when the call would revert (before sending, from gas
        estimation) or did revert on chain; ``TransactionTimeout`` when no receipt arrives in time.
        """
        async with self._lock:
            try:
                return await self._send_locked(to, data, value, gas_limit, receipt_timeout)
            except BaseException:
                self._nonce = None  # whatever happened, the node's pending count is the truth next time
                raise

    async def _send_locked(
        self,
        to: Address | None,
        data: bytes,
        value: int,
        gas_limit: int | None,
        receipt_timeout: float | None,
    ) -> TxReceipt:
        conn = self._conn
        call = tx_params(self.address, to, data, value=value)
        try:
            with translated():
                chain_id = await conn.chain_id()
                if self._nonce is None:
                    self._nonce = await conn.transaction_count(self.address, "pending")
                if gas_limit is None:
                    gas_limit = int(await conn.estimate_gas(call) * GAS_HEADROOM)
                base_fee = await conn.base_fee()
                quoted_tip = await conn.max_priority_fee()
            price = uncapped if self.fee_cap is None else self.fee_cap.price
            max_fee, tip = price(base_fee, quoted_tip)  # FeeAboveCap: nothing signed, nothing sent
        except InsufficientFunds as exc:  # estimation already knows the account cannot pay
            raise await self._insufficient(None, value, str(exc)) from exc
        tx: dict[str, Any] = {
            "from": self.address.checksum,
            "data": data,
            "value": value,
            "chainId": chain_id,
            "nonce": self._nonce,
            "gas": gas_limit,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": tip,
            "type": 2,
        }
        if to is not None:
            tx["to"] = to.checksum
        raw, tx_hash = self._signer.sign(tx)
        try:
            await conn.send_raw_transaction(raw)
        except InsufficientFunds as exc:
            detail = f"gas {gas_limit} at up to {max_fee} wei + value {value}"
            raise await self._insufficient(gas_limit * max_fee + value, value, detail) from exc
        self._nonce += 1
        receipt = await self._wait_for_receipt(tx_hash, receipt_timeout or self.receipt_timeout)
        if not receipt.succeeded:
            raise await self._explain_revert(call, gas_limit, receipt)
        return receipt

    async def _insufficient(self, needed: int | None, value: int, detail: str) -> InsufficientFunds:
        try:
            have: int | None = await self._conn.get_balance(self.address)
        except ChainError:
            have = None
        balance = "an unknown balance" if have is None else f"{have} wei"
        need = f"needs up to {needed} wei" if needed is not None else f"cannot pay gas + value {value} wei"
        return InsufficientFunds(
            f"{self.address} has {balance}, {need} ({detail})", address=self.address, needed=needed, have=have
        )

    async def _wait_for_receipt(self, tx_hash: Bytes32, wait_seconds: float) -> TxReceipt:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        last_problem = ""
        while True:
            try:
                receipt = await self._conn.transaction_receipt(tx_hash)
                if receipt is not None:
                    return receipt
            except ChainError as exc:
                if not exc.transient:
                    raise
                last_problem = str(exc)  # a blip while polling: keep polling until the deadline
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TransactionTimeout(tx_hash, wait_seconds, last_problem)
            await asyncio.sleep(min(self.poll_interval, remaining))

    async def _explain_revert(self, call: dict[str, str], gas_limit: int, receipt: TxReceipt) -> ChainError:
        """Replay a reverted transaction as a call at its parent block to recover the revert data."""
        replay = {**call, "gas": hex(gas_limit)}
        try:
            await self._conn.call(replay, max(receipt.block_number - 1, 0))
        except ContractRevert as exc:
            exc.tx_hash = receipt.tx_hash
            return exc
        except ChainError as exc:
            return UnknownRevert(
                message=f"transaction {receipt.tx_hash} reverted on chain; replaying it failed: {exc}",
                tx_hash=receipt.tx_hash,
            )
        return UnknownRevert(
            message=f"transaction {receipt.tx_hash} reverted on chain (gas used {receipt.gas_used} of "
            f"{gas_limit}); replaying it did not reproduce the revert",
            tx_hash=receipt.tx_hash,
        )
