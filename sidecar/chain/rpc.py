"""The connection to one JSON-RPC node (our ``JsonRpcClient`` over one aiohttp session).

Owns: opening the client (request timeout, no hidden retries, the ``on_rpc`` hook that sees every method
sent), checking the chain id at connect time, the node-level reads and sends everyone needs (chain id, head,
block headers, logs, balance, code, nonce, ``eth_call``, gas estimate, fees, raw transactions, receipts)
and closing the HTTP session. ``request`` sends any other method (operator and test tooling).

Must not: retry (the drivers own backoff), sign, or let raw JSON-RPC shapes or client exceptions escape:
every call goes through ``translated()``. It does not import web3: the sidecar's start-up path stays
lean. ``w3`` builds a web3 object on first use for test and devnet tooling only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from sidecar.chain.codec import block_header_from_rpc, hex_bytes, log_from_rpc, quantity, receipt_from_rpc
from sidecar.chain.errors import ChainIdMismatch, UnexpectedChainError, translated
from sidecar.chain.jsonrpc import JsonRpcClient
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import BlockHeader, ChainLog, TxReceipt

if TYPE_CHECKING:
    from web3 import AsyncHTTPProvider, AsyncWeb3

BlockTag = Literal["latest", "earliest", "pending", "safe", "finalized"]


def checksum(address: Address) -> str:
    """Return ``address`` in its EIP-55 form."""
    return address.checksum


def block_param(block: int | str | Bytes32 | None) -> Any:
    """The JSON-RPC block parameter: a number, a tag, or a hash (EIP-1898, ``requireCanonical``)."""
    if block is None:
        return "latest"
    if isinstance(block, Bytes32):
        return {"blockHash": "0x" + block.hex, "requireCanonical": True}
    if isinstance(block, bool):
        raise TypeError("a block is a number, a tag or a hash")
    if isinstance(block, int):
        if block < 0:
            raise ValueError(f"block number must not be negative, got {block}")
        return hex(block)
    return block


def tx_params(
    sender: Address | None = None,
    to: Address | None = None,
    data: bytes = b"",
    *,
    value: int = 0,
    gas: int | None = None,
) -> dict[str, str]:
    """A JSON-RPC transaction object for ``eth_call`` / ``eth_estimateGas``."""
    params: dict[str, str] = {"data": "0x" + data.hex()}
    if sender is not None:
        params["from"] = sender.checksum
    if to is not None:
        params["to"] = to.checksum
    if value:
        params["value"] = hex(value)
    if gas is not None:
        params["gas"] = hex(gas)
    return params


class ChainConnection:
    """An open connection to one node. Use ``connect()`` to build one; close it (or ``async with``)."""

    def __init__(self, client: JsonRpcClient, rpc_url: str, timeout: float) -> None:
        self._client = client
        self.rpc_url = rpc_url
        self.timeout = timeout
        self._chain_id: int | None = None
        self._w3: AsyncWeb3[AsyncHTTPProvider] | None = None

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Send one JSON-RPC request and return its raw result (failures as ``ChainError``)."""
        with translated():
            return await self._client.request(method, params)

    async def chain_id(self) -> int:
        """Return the node's chain id (read once, then cached: a node never changes it)."""
        if self._chain_id is None:
            self._chain_id = await self._quantity("eth_chainId")
        return self._chain_id

    async def block_number(self) -> int:
        """Return the latest block number."""
        return await self._quantity("eth_blockNumber")

    async def get_balance(self, address: Address) -> int:
        """Return the balance of ``address`` in wei at the latest block."""
        return await self._quantity("eth_getBalance", address.checksum, "latest")

    async def get_code(self, address: Address) -> bytes:
        """Return the runtime code at ``address`` (empty for an account without code)."""
        with translated():
            return hex_bytes(await self._client.request("eth_getCode", [address.checksum, "latest"]))

    async def transaction_count(self, address: Address, block: int | BlockTag = "latest") -> int:
        """Return the nonce of ``address`` at ``block`` (``pending`` counts the mempool)."""
        return await self._quantity("eth_getTransactionCount", address.checksum, block_param(block))

    async def block_header(self, block: int | BlockTag = "latest") -> BlockHeader:
        """Return the header of block ``block`` (a number, or a tag: latest, safe, finalized, …)."""
        with translated():
            raw = await self._client.request("eth_getBlockByNumber", [block_param(block), False])
            if raw is None:
                raise UnexpectedChainError(f"the node has no block {block}")
            return block_header_from_rpc(raw)

    async def base_fee(self) -> int:
        """Return the latest block's base fee per gas (0 before London)."""
        with translated():
            raw = await self._client.request("eth_getBlockByNumber", ["latest", False])
            if raw is None:
                raise UnexpectedChainError("the node has no latest block")
            return quantity(raw.get("baseFeePerGas", 0))

    async def max_priority_fee(self) -> int:
        """Return the node's suggested priority fee per gas."""
        return await self._quantity("eth_maxPriorityFeePerGas")

    async def call(self, tx: Mapping[str, str], block: int | BlockTag | Bytes32 | None = None) -> bytes:
        """``eth_call`` of ``tx`` (see ``tx_params``) at ``block``; reverts raise the decoded error."""
        with translated():
            return hex_bytes(await self._client.request("eth_call", [dict(tx), block_param(block)]))

    async def estimate_gas(self, tx: Mapping[str, str]) -> int:
        """``eth_estimateGas`` of ``tx``; a revert raises the decoded error."""
        return await self._quantity("eth_estimateGas", dict(tx))

    async def send_raw_transaction(self, raw: bytes) -> Bytes32:
        """Broadcast a signed transaction; return its hash."""
        with translated():
            return Bytes32(
                hex_bytes(await self._client.request("eth_sendRawTransaction", ["0x" + raw.hex()]))
            )

    async def transaction_receipt(self, tx_hash: Bytes32) -> TxReceipt | None:
        """Return the receipt of ``tx_hash``, or None while it is not mined."""
        with translated():
            raw = await self._client.request("eth_getTransactionReceipt", ["0x" + tx_hash.hex])
            return None if raw is None else receipt_from_rpc(raw)

    async def get_logs(
        self,
        addresses: Sequence[Address],
        from_block: int,
        to_block: int,
        topics: Sequence[Sequence[Bytes32] | None] = (),
    ) -> list[ChainLog]:
        """Return the logs of ``addresses`` in ``[from_block, to_block]`` matching ``topics`` (log order).

        ``topics[i]`` is the set of accepted values of topic i (None: any). The caller bounds the range.
        """
        if from_block > to_block:
            raise ValueError(f"empty block range {from_block}..{to_block}")
        params = {
            "address": [a.checksum for a in addresses],
            "fromBlock": hex(from_block),
            "toBlock": hex(to_block),
            "topics": [None if t is None else ["0x" + v.hex for v in t] for t in topics],
        }
        with translated():
            raw = await self._client.request("eth_getLogs", [params])
            return [log_from_rpc(entry) for entry in raw]

    async def _quantity(self, method: str, *params: Any) -> int:
        with translated():
            return quantity(await self._client.request(method, params))

    @property
    def w3(self) -> AsyncWeb3[AsyncHTTPProvider]:
        """A web3 object on the same URL, built on first use: for test and devnet tooling only (nothing in
        the sidecar or the indexer uses it; its requests bypass ``on_rpc`` and ``translated()``)."""
        if self._w3 is None:
            from web3 import AsyncHTTPProvider, AsyncWeb3  # noqa: PLC0415 - tooling only, never on start-up

            w3 = AsyncWeb3(AsyncHTTPProvider(self.rpc_url, exception_retry_configuration=None))
            w3.middleware_onion.remove("validation")
            self._w3 = w3
        return self._w3

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        with translated():
            await self._client.close()
            if self._w3 is not None:
                await self._w3.provider.disconnect()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"ChainConnection({self.rpc_url!r})"


async def connect(
    rpc_url: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - bounds each HTTP request of the connection, not this call
    expected_chain_id: int | None = None,
    on_rpc: Callable[[str], None] | None = None,
) -> ChainConnection:
    """Open a connection to ``rpc_url``; check the chain id when ``expected_chain_id`` is given.

    ``on_rpc`` is called with the method name of every JSON-RPC request the connection sends.
    """
    conn = ChainConnection(JsonRpcClient(rpc_url, timeout=timeout, on_rpc=on_rpc), rpc_url, timeout)
    try:
        actual = await conn.chain_id()
        if expected_chain_id is not None and actual != expected_chain_id:
            raise ChainIdMismatch(expected_chain_id, actual)
    except BaseException:
        await conn.close()
        raise
    return conn
