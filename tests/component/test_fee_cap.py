"""The fee cap against a lying RPC: a real JSON-RPC proxy (``devnet.rpcproxy``) in front of a real anvil that
inflates the tip it quotes, or the base fee of the latest block, while anvil itself stays cheap. Issue 12,
item 8: fees came from whatever the RPC said; with a ``FeeCap`` the tip is clamped and a fee that cannot
fit under the cap is never signed nor sent. What reached the chain is read from anvil directly, not through
the proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devnet.anvil import DEVNET_DEV_KEYS, AnvilProcess
from devnet.rpcproxy import Lies, RpcProxy
from sidecar.chain.errors import FeeAboveCap
from sidecar.chain.rpc import ChainConnection, checksum, connect
from sidecar.chain.tx import FeeCap, LocalSigner, TxSubmitter
from sidecar.core.ids import Address
from tests.component.toolkit import CHAIN_ID, HOST

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

GWEI = 10**9
CAP = FeeCap(max_fee=10 * GWEI, max_tip=2 * GWEI)
SINK = Address(b"\x5e" * 20)


@pytest.fixture
async def lying(anvil: AnvilProcess) -> AsyncIterator[tuple[RpcProxy, ChainConnection]]:
    proxy = RpcProxy(anvil.rpc_url)
    await proxy.start(HOST)
    try:
        async with await connect(proxy.url, timeout=10.0, expected_chain_id=CHAIN_ID) as through:
            yield proxy, through
    finally:
        await proxy.close()


def sent_raw(proxy: RpcProxy) -> int:
    return len(proxy.calls("eth_sendRawTransaction"))


def submitter(conn: ChainConnection, cap: FeeCap | None = CAP) -> TxSubmitter:
    signer = LocalSigner(DEVNET_DEV_KEYS[2])
    return TxSubmitter(conn, signer, receipt_timeout=20.0, poll_interval=0.05, fee_cap=cap)


async def test_an_inflated_tip_is_clamped_to_the_cap(
    lying: tuple[RpcProxy, ChainConnection], conn: ChainConnection
) -> None:
    proxy, through = lying
    proxy.lies = Lies(max_priority_fee=500 * GWEI)
    receipt = await submitter(through).send(SINK, b"", value=1)
    tx = await conn.w3.eth.get_transaction(receipt.tx_hash.raw)  # type: ignore[arg-type]  # anvil itself
    assert tx["maxPriorityFeePerGas"] == CAP.max_tip
    assert tx["maxFeePerGas"] <= CAP.max_fee
    uncapped = await submitter(through, None).send(SINK, b"", value=1)  # what the node did before
    tx = await conn.w3.eth.get_transaction(uncapped.tx_hash.raw)  # type: ignore[arg-type]
    assert tx["maxPriorityFeePerGas"] == 500 * GWEI


async def test_an_inflated_base_fee_sends_nothing(
    lying: tuple[RpcProxy, ChainConnection], conn: ChainConnection
) -> None:
    proxy, through = lying
    account = LocalSigner(DEVNET_DEV_KEYS[2]).address
    nonce = await conn.w3.eth.get_transaction_count(checksum(account), "pending")
    balance = await conn.get_balance(account)
    proxy.lies = Lies(base_fee=300 * GWEI)
    with pytest.raises(FeeAboveCap) as refused:
        await submitter(through).send(SINK, b"", value=1)
    assert str(refused.value).startswith("fee_cap: base fee 300 gwei + tip ")
    assert refused.value.transient and refused.value.cap == CAP.max_fee
    assert sent_raw(proxy) == 0
    assert await conn.w3.eth.get_transaction_count(checksum(account), "pending") == nonce
    assert await conn.get_balance(account) == balance
    proxy.lies = Lies()  # the lie ends: the same submitter sends again
    await submitter(through).send(SINK, b"", value=1)
    assert sent_raw(proxy) == 1
