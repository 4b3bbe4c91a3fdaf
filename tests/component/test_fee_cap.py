"""The fee cap against a lying RPC: a real JSON-RPC proxy (aiohttp) in front of a real anvil that inflates the
tip it quotes, or the base fee of the latest block, while anvil itself stays cheap. Issue 12, item 8: fees
came from whatever the RPC said; with a ``FeeCap`` the tip is clamped and a fee that cannot fit under the
cap is never signed nor sent. What reached the chain is read from anvil directly, not through the proxy.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devnet.anvil import DEVNET_DEV_KEYS, AnvilProcess
from sidecar.chain.errors import FeeAboveCap
from sidecar.chain.rpc import ChainConnection, checksum, connect
from sidecar.chain.tx import FeeCap, LocalSigner, TxSubmitter
from sidecar.core.ids import Address
from tests.component.toolkit import CHAIN_ID, HOST, Serve

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

GWEI = 10**9
CAP = FeeCap(max_fee=10 * GWEI, max_tip=2 * GWEI)
SINK = Address(b"\x5e" * 20)


class LyingRpc:
    """Forwards JSON-RPC to anvil; ``tip`` replaces eth_maxPriorityFeePerGas, ``base_fee`` the latest
    block's baseFeePerGas (None: the truth)."""

    def __init__(self, upstream: str, http: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.http = http
        self.tip: int | None = None
        self.base_fee: int | None = None
        self.sent_raw = 0

    async def handle(self, request: web.Request) -> web.Response:
        call = json.loads(await request.read())
        method = call.get("method")
        if method == "eth_sendRawTransaction":
            self.sent_raw += 1
        async with self.http.post(self.upstream, json=call) as upstream:
            answer: dict[str, Any] = await upstream.json()
        if method == "eth_maxPriorityFeePerGas" and self.tip is not None:
            answer["result"] = hex(self.tip)
        if method == "eth_getBlockByNumber" and self.base_fee is not None and answer.get("result"):
            answer["result"]["baseFeePerGas"] = hex(self.base_fee)
        return web.json_response(answer)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.handle)
        return app


@pytest.fixture
async def lying(anvil: AnvilProcess, serve: Serve) -> AsyncIterator[tuple[LyingRpc, ChainConnection]]:
    async with aiohttp.ClientSession() as http:
        proxy = LyingRpc(anvil.rpc_url, http)
        runner = await serve(proxy.app())
        async with await connect(
            f"http://{HOST}:{runner.port}/", timeout=10.0, expected_chain_id=CHAIN_ID
        ) as through:
            yield proxy, through


def submitter(conn: ChainConnection, cap: FeeCap | None = CAP) -> TxSubmitter:
    signer = LocalSigner(DEVNET_DEV_KEYS[2])
    return TxSubmitter(conn, signer, receipt_timeout=20.0, poll_interval=0.05, fee_cap=cap)


async def test_an_inflated_tip_is_clamped_to_the_cap(
    lying: tuple[LyingRpc, ChainConnection], conn: ChainConnection
) -> None:
    proxy, through = lying
    proxy.tip = 500 * GWEI
    receipt = await submitter(through).send(SINK, b"", value=1)
    tx = await conn.w3.eth.get_transaction(receipt.tx_hash.raw)  # type: ignore[arg-type]  # anvil itself
    assert tx["maxPriorityFeePerGas"] == CAP.max_tip
    assert tx["maxFeePerGas"] <= CAP.max_fee
    uncapped = await submitter(through, None).send(SINK, b"", value=1)  # what the node did before
    tx = await conn.w3.eth.get_transaction(uncapped.tx_hash.raw)  # type: ignore[arg-type]
    assert tx["maxPriorityFeePerGas"] == 500 * GWEI


async def test_an_inflated_base_fee_sends_nothing(
    lying: tuple[LyingRpc, ChainConnection], conn: ChainConnection
) -> None:
    proxy, through = lying
    account = LocalSigner(DEVNET_DEV_KEYS[2]).address
    nonce = await conn.w3.eth.get_transaction_count(checksum(account), "pending")
    balance = await conn.get_balance(account)
    proxy.base_fee = 300 * GWEI
    with pytest.raises(FeeAboveCap) as refused:
        await submitter(through).send(SINK, b"", value=1)
    assert str(refused.value).startswith("fee_cap: base fee 300 gwei + tip ")
    assert refused.value.transient and refused.value.cap == CAP.max_fee
    assert proxy.sent_raw == 0
    assert await conn.w3.eth.get_transaction_count(checksum(account), "pending") == nonce
    assert await conn.get_balance(account) == balance
    proxy.base_fee = None  # the lie ends: the same submitter sends again
    await submitter(through).send(SINK, b"", value=1)
    assert proxy.sent_raw == 1
