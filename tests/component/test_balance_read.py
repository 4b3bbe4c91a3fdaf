"""The signer's balance through the real ``ChainLink`` (sidecar.drivers.balance reads it for its gauge):
against anvil, and against a provider that does not answer, whose URL (which may carry an API key) must not
reach the error the watch logs.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from sidecar.chain.errors import TransientChainError
from sidecar.chain.tx import LocalSigner
from sidecar.drivers.balance import BalanceWatch
from sidecar.drivers.chainlink import ChainLink
from sidecar.observability import Metrics
from sidecar.settings import load_settings
from tests.component.conftest import CHAIN_ID
from tests.component.toolkit import HOST, closed_port

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

SECRET = "sk-balance-test-key"


def link(rpc_url: str, metrics: Metrics) -> ChainLink:
    settings = load_settings({
        "ATTESTMESH_RPC_URL": rpc_url,
        "ATTESTMESH_RPC_ALLOW_HTTP": "true",
        "ATTESTMESH_RPC_TIMEOUT": "2",
        "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
        "ATTESTMESH_CLUSTER": "0x" + "5a" * 20,
        "ATTESTMESH_MEMBER_APP_FACTORY": "0x" + "fa" * 20,
        "ATTESTMESH_KMS_ROOTS": "0x" + "12" * 20,
        "ATTESTMESH_ENDPOINT": "10.88.0.2:51820",
    })  # fmt: skip
    return ChainLink(settings.chain, metrics)


async def test_the_balance_of_a_funded_account_sets_the_gauge_in_ether(anvil: AnvilProcess) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    chain = link(anvil.rpc_url, metrics)
    deployer = LocalSigner(DEVNET_DEPLOYER_KEY).address
    try:
        wei = await chain.balance(deployer)
        watch = BalanceWatch(signer=lambda: deployer, read=chain.balance, metrics=metrics)
        assert await watch.check()
    finally:
        await chain.close()
    assert wei > 10**18
    balance = registry.get_sample_value("attestmesh_signer_balance_ether")
    assert balance is not None and abs(balance - wei / 10**18) < 1  # the same account, a block or two apart


async def test_an_unreachable_provider_fails_the_read_without_its_url() -> None:
    metrics = Metrics(CollectorRegistry())
    url = f"http://{HOST}:{closed_port()}/v2/{SECRET}"
    chain = link(url, metrics)
    account = LocalSigner(DEVNET_DEPLOYER_KEY).address
    try:
        with pytest.raises(TransientChainError) as failed:
            await chain.balance(account)
        watch = BalanceWatch(signer=lambda: account, read=chain.balance, metrics=metrics)
        with capture_logs() as logs:
            assert await watch.check()
    finally:
        await chain.close()
    assert SECRET not in str(failed.value)
    assert [entry["event"] for entry in logs] == ["balance.read_failed"]
    assert SECRET not in repr(logs)
