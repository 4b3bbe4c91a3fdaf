"""The connection to one JSON-RPC node (web3 ``AsyncWeb3`` over HTTP).

Owns: building the provider (request timeout, no hidden retries), checking the chain id at connect time,
the node-level reads everyone needs (chain id, head, block headers, logs, balance, code) and closing the HTTP
session. ``ChainConnection.w3`` is for the rest of ``sidecar.chain`` only.

Must not: retry (web3's built-in retries are switched off: the drivers own backoff), sign, or let web3
types or exceptions escape: every call goes through ``translated()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from eth_typing import ChecksumAddress, HexAddress, HexStr
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.middleware.base import Web3Middleware
from web3.types import FilterParams, RPCEndpoint

from sidecar.chain.codec import block_header_from_web3, log_from_web3
from sidecar.chain.errors import ChainIdMismatch, translated
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import BlockHeader, ChainLog

BlockTag = Literal["latest", "earliest", "pending", "safe", "finalized"]


def checksum(address: Address) -> ChecksumAddress:
    """Return ``address`` in the EIP-55 form web3 expects."""
    return ChecksumAddress(HexAddress(HexStr(address.checksum)))


class ChainConnection:
    """An open connection to one node. Use ``connect()`` to build one; close it (or ``async with``)."""

    def __init__(self, w3: AsyncWeb3[AsyncHTTPProvider], rpc_url: str, timeout: float) -> None:
        self._w3 = w3
        self.rpc_url = rpc_url
        self.timeout = timeout
        self._chain_id: int | None = None

    @property
    def w3(self) -> AsyncWeb3[AsyncHTTPProvider]:
        """The underlying web3 object (adapter-internal: nothing outside ``sidecar.chain`` may use it)."""
        return self._w3

    async def chain_id(self) -> int:
        """Return the node's chain id (read once, then cached: a node never changes it)."""
        if self._chain_id is None:
            with translated():
                self._chain_id = int(await self._w3.eth.chain_id)
        return self._chain_id

    async def block_number(self) -> int:
        """Return the latest block number."""
        with translated():
            return int(await self._w3.eth.block_number)

    async def get_balance(self, address: Address) -> int:
        """Return the balance of ``address`` in wei at the latest block."""
        with translated():
            return int(await self._w3.eth.get_balance(checksum(address)))

    async def get_code(self, address: Address) -> bytes:
        """Return the runtime code at ``address`` (empty for an account without code)."""
        with translated():
            return bytes(await self._w3.eth.get_code(checksum(address)))

    async def block_header(self, block: int | BlockTag = "latest") -> BlockHeader:
        """Return the header of block ``block`` (a number, or a tag: latest, safe, finalized, …)."""
        with translated():
            return block_header_from_web3(await self._w3.eth.get_block(block))

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
        params: FilterParams = {
            "address": [checksum(a) for a in addresses],
            "fromBlock": from_block,
            "toBlock": to_block,
            "topics": [None if t is None else [HexStr("0x" + v.hex) for v in t] for t in topics],
        }
        with translated():
            raw = await self._w3.eth.get_logs(params)
        return [log_from_web3(entry) for entry in raw]

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        with translated():
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


def _counting(on_rpc: Callable[[str], None]) -> type[Web3Middleware]:
    """A web3 middleware that reports every JSON-RPC method sent (for the RPC-rate metric)."""

    class CountingMiddleware(Web3Middleware):
        async def async_request_processor(self, method: RPCEndpoint, params: Any) -> Any:
            on_rpc(str(method))
            return method, params

    return CountingMiddleware


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
    provider = AsyncHTTPProvider(
        rpc_url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
        exception_retry_configuration=None,
    )
    w3 = AsyncWeb3(provider)
    # web3's validation middleware asks the node for its chain id before every call, estimate and send;
    # the connection checks the chain id once (below) and signs it into every transaction instead.
    w3.middleware_onion.remove("validation")
    if on_rpc is not None:
        w3.middleware_onion.add(_counting(on_rpc), "attestmesh_rpc_counter")
    conn = ChainConnection(w3, rpc_url, timeout)
    try:
        actual = await conn.chain_id()
        if expected_chain_id is not None and actual != expected_chain_id:
            raise ChainIdMismatch(expected_chain_id, actual)
    except BaseException:
        await conn.close()
        raise
    return conn
