"""Where the chain step reads, from what the node's event source already knows (push mode's RPC budget).

Owns ``ReadPlanner`` (what the chain step asks: a plan per pass, a mark before a head read, what the head
read found, and that a pinned read failed) and ``ReadSource``, its implementation over the ``EventRouter``:
the push subscriber's ``PushedPositions`` (the verified stream's newest block and hash, and its measured
depth), the chain-log poller's own chain-verified cursor and the shared cursor (the newest handled log), fed
to the pure rule ``sidecar.core.readpin.choose_pin``. A pinned read that fails while the head read after it
works distrusts the pushed positions until the next push session (logged once, ``chain.pin_refused``).

Must not: read the chain itself, or let pushed data be anything but a block number and hash to read at (the
state is always read from the chain, pinned with ``requireCanonical``).
"""

from __future__ import annotations

from typing import Protocol

import structlog

from sidecar.core.readpin import HeadMark, HeadRead, Position, PushedPositions, ReadPin, choose_pin
from sidecar.drivers.router import EventRouter

log = structlog.get_logger("sidecar.chain")


class ReadPlanner(Protocol):
    """What the chain step asks before and after each read."""

    def plan(self) -> ReadPin | HeadRead: ...

    def mark(self) -> HeadMark: ...

    def observed_head(self, head: int, mark: HeadMark) -> None: ...

    def refused(self, pin: ReadPin, error: str) -> None: ...


class ReadSource:
    """``ReadPlanner`` over the event router; see the module docstring."""

    def __init__(self, router: EventRouter, pushed: PushedPositions, *, confirmations: int) -> None:
        self.router = router
        self.pushed = pushed
        self.confirmations = confirmations

    def plan(self) -> ReadPin | HeadRead:
        own = self.router.poller.cursor
        return choose_pin(
            push_healthy=self.router.mode == "push",
            pushed=self.pushed,
            polled=None if own is None else Position(own.block, own.block_hash),
            handled=self.router.shared.block,
            confirmations=self.confirmations,
        )

    def mark(self) -> HeadMark:
        return self.pushed.mark()

    def observed_head(self, head: int, mark: HeadMark) -> None:
        self.pushed.observe_head(head, mark)

    def refused(self, pin: ReadPin, error: str) -> None:
        """A read pinned to ``pin`` failed and the head read after it worked: a pushed hash the providers
        refuse (not canonical, or unknown) is not used again this session."""
        if pin.source == "push" and not self.pushed.distrusted:
            self.pushed.distrust()
            log.warning("chain.pin_refused", block=pin.position.block, source=pin.source, error=error[:200])
