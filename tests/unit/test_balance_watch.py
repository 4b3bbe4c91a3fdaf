"""sidecar.drivers.balance: the signer's balance read on a slow schedule into its gauge."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sidecar.chain.errors import TransientChainError
from sidecar.core.ids import Address
from sidecar.drivers.balance import BalanceWatch
from sidecar.observability import Metrics

SIGNER = Address(bytes.fromhex("11" * 20))


class Chain:
    """Answers balance reads from a script: an int is a balance in wei, an exception is raised."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[Address] = []

    async def balance(self, address: Address) -> int:
        self.asked.append(address)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Stop(Exception):
    pass


def gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("attestmesh_signer_balance_ether")


async def test_no_read_before_the_signer_is_known_then_one_read_per_interval() -> None:
    registry = CollectorRegistry()
    chain = Chain(2 * 10**18, 10**17)
    known: list[Address | None] = [None, SIGNER]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise Stop

    watch = BalanceWatch(
        signer=lambda: known[min(len(slept), 1)], read=chain.balance, metrics=Metrics(registry),
        interval=600.0, identity_poll=1.0, sleep=sleep,
    )  # fmt: skip
    with pytest.raises(Stop):
        await watch.run()
    assert slept == [1.0, 600.0, 600.0]  # polled for the identity without a call, then read per interval
    assert chain.asked == [SIGNER, SIGNER]
    assert gauge(registry) == pytest.approx(0.1)


async def test_a_failed_read_keeps_the_last_value_and_logs_once_each_way() -> None:
    registry = CollectorRegistry()
    chain = Chain(3 * 10**18, TransientChainError("timed out"), TransientChainError("timed out"), 10**18)
    watch = BalanceWatch(signer=lambda: SIGNER, read=chain.balance, metrics=Metrics(registry))
    with capture_logs() as logs:
        assert await watch.check()
        assert gauge(registry) == pytest.approx(3.0)
        assert await watch.check()
        assert await watch.check()
        assert gauge(registry) == pytest.approx(3.0)  # kept through the outage
        assert await watch.check()
        assert gauge(registry) == pytest.approx(1.0)
    events = [entry["event"] for entry in logs]
    assert events == ["balance.read_failed", "balance.read_recovered"]
