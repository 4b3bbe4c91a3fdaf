"""Where a reconcile pass reads the chain: at a block the node already knows, or at a head it reads itself.

Owns ``Position`` (a block and its hash), ``PushedPositions`` (the newest position the verified push
stream vouched for — an event's log block or a checkpoint's block — and how deep below the chain head such
positions were each time the node read the head itself), the two outcomes ``ReadPin`` (read at this block
hash) and ``HeadRead`` (read the head first, as in poll mode; ``reason`` says why) and ``choose_pin``, the
rule.

The rule (DESIGN "Trust": data from the indexer decides when to look, never whom to trust). In push mode a
pass need not ask for the head: the signed stream already named a recent block and its hash, and the
chain-log poller its own, chain-verified, confirmed cursor. The pass reads the state itself, always from
the chain, pinned to the chosen hash with EIP-1898 ``requireCanonical``: a provider refuses a hash that is
not canonical, so a lying indexer can delay the node (name an old block) but never make it read state the
chain does not hold. The pinned read is taken only when all of these hold, otherwise the pass reads its own
head (``HeadRead``):

- push is healthy and not distrusted (a pinned read at a pushed hash failed while the head read worked);
- the pushed position is at least ``confirmations`` deep: the shallowest depth seen this session, measured
  against heads the node read from the chain itself (an indexer that checkpoints shallower than this node's
  confirmations, or one not measured yet, gives no pin);
- the pin lies at or after every log the node has handled (``handled``, the shared cursor's block): a wake
  for a log beyond it must read past it.

The poller's own cursor is confirmed and chain-verified, so it is a pin of its own; the newer of the two
wins, which bounds how long a stalled or withholding indexer can hold the node back (the poller's safety
interval). Must not: do I/O or read a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sidecar.core.ids import Bytes32

PinSource = Literal["push", "poll"]


@dataclass(frozen=True, slots=True)
class Position:
    """A block and its hash."""

    block: int
    block_hash: Bytes32


@dataclass(frozen=True, slots=True)
class HeadMark:
    """The pushed position as it stood when a head read started (``PushedPositions.mark``)."""

    session: int
    newest: Position | None


@dataclass(frozen=True, slots=True)
class ReadPin:
    """Read at ``position`` (its hash, ``requireCanonical``), without asking for the head."""

    position: Position
    source: PinSource


@dataclass(frozen=True, slots=True)
class HeadRead:
    """Read the head first (the poll-mode read); ``reason`` is short public text."""

    reason: str


class PushedPositions:
    """What one verified push session vouched for: its newest position and how deep such positions were.

    ``note`` is called for every accepted event and checkpoint, ``observe_head`` whenever the node read the
    chain head itself (with the ``mark`` taken before that read), ``clear`` when a new session starts (its
    depth is measured afresh) and ``distrust`` when a read pinned to a pushed hash failed although the head
    read worked (until the next session).
    """

    def __init__(self) -> None:
        self.newest: Position | None = None
        self.depth: int | None = None  # the shallowest depth observed this session
        self.distrusted = False
        self._session = 0

    def clear(self) -> None:
        """A new session: forget its predecessor's position, depth and distrust."""
        self.newest, self.depth, self.distrusted = None, None, False
        self._session += 1

    def note(self, block: int, block_hash: Bytes32) -> None:
        """Record a position the verified stream vouched for (never moves back: the verifier orders them)."""
        if self.newest is None or block >= self.newest.block:
            self.newest = Position(block, block_hash)

    def mark(self) -> HeadMark:
        """What ``observe_head`` compares a head with: take it before the head read starts."""
        return HeadMark(self._session, self.newest)

    def observe_head(self, head: int, mark: HeadMark) -> None:
        """Record how deep the position of ``mark`` lies below ``head``, a head the node read from the chain
        after taking the mark (a position that arrived during the read might be newer than that head)."""
        if mark.session != self._session or mark.newest is None:
            return  # taken in another session, or before anything was pushed
        depth = head - mark.newest.block
        self.depth = depth if self.depth is None else min(self.depth, depth)

    def distrust(self) -> None:
        self.distrusted = True


def choose_pin(
    *,
    push_healthy: bool,
    pushed: PushedPositions | None,
    polled: Position | None,
    handled: int | None,
    confirmations: int,
) -> ReadPin | HeadRead:
    """Choose where a pass reads (see the module docstring): the newer usable pin, or the head."""
    if not push_healthy or pushed is None:
        return HeadRead("push down")
    if pushed.distrusted:
        return HeadRead("push distrusted")
    candidates: list[ReadPin] = []
    if pushed.newest is not None and pushed.depth is not None and pushed.depth >= confirmations:
        candidates.append(ReadPin(pushed.newest, "push"))
    if polled is not None and not polled.block_hash.is_zero:
        candidates.append(ReadPin(polled, "poll"))
    if not candidates:
        return HeadRead(
            "no confirmed pin yet" if pushed.depth is None else "indexer shallower than confirmations"
        )
    best = max(candidates, key=lambda pin: pin.position.block)
    if handled is not None and best.position.block < handled:
        return HeadRead("a handled log lies beyond the pin")
    return best
