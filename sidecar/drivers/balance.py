"""The signer's balance, read on a slow schedule for the ``attestmesh_signer_balance_ether`` gauge.

Owns ``BalanceWatch``: once the node's identity (and so its signer's address) is known, it reads the
signer's balance every ``interval`` seconds (10 minutes by default: one ``eth_getBalance`` call, a tenth of
a call a minute on the RPC budget; the alert on it waits longer than that) and sets the gauge. A failed
read keeps the last value and is logged once when the failures start (``balance.read_failed``) and once
when they end (``balance.read_recovered``). Nothing in the node depends on the value: it is for operators.
Must not: send anything, read more often than the interval, or hold a key (only the public address).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from sidecar.chain.errors import ChainError
from sidecar.core.ids import Address
from sidecar.observability import Metrics

log = structlog.get_logger("sidecar.balance")

BALANCE_INTERVAL: Final = 600.0
#: How often to look for the identity before the first read (no RPC call is made while it is unknown).
IDENTITY_POLL: Final = 1.0


class BalanceWatch:
    """Reads the signer's balance every ``interval`` seconds and sets the gauge."""

    def __init__(
        self,
        *,
        signer: Callable[[], Address | None],
        read: Callable[[Address], Awaitable[int]],
        metrics: Metrics,
        interval: float = BALANCE_INTERVAL,
        identity_poll: float = IDENTITY_POLL,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.signer = signer
        self.read = read
        self.metrics = metrics
        self.interval = interval
        self.identity_poll = identity_poll
        self._sleep = sleep
        self._failing = False

    async def check(self) -> bool:
        """Read the balance once and set the gauge; False when the signer is not known yet (nothing read)."""
        address = self.signer()
        if address is None:
            return False
        try:
            wei = await self.read(address)
        except ChainError as exc:
            if not self._failing:
                log.warning("balance.read_failed", signer=str(address), error=str(exc))
            self._failing = True
            return True
        if self._failing:
            log.info("balance.read_recovered", signer=str(address))
        self._failing = False
        self.metrics.set_signer_balance(wei)
        return True

    async def run(self) -> None:
        """Read every ``interval`` seconds, forever (a supervised task)."""
        while True:
            read = await self.check()
            await self._sleep(self.interval if read else self.identity_poll)
