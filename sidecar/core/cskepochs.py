"""The previous CSK epoch's key, kept for a grace period after the epoch changes.

Owns ``RetiredKey`` and ``GraceKeys``: when the key a node holds is replaced by a later epoch's, the old
one is kept until ``now + grace`` so applications can re-encrypt what they sealed with it (the app API's
``previous``) and a member still at that epoch can be served it. Only the epoch just before the current
one is kept; a key of a later or the same epoch never becomes "previous" (an epoch that went back, as
after a reorg of ``rotateCsk``, simply drops it). The keys live in memory only: a restart forgets them.

Must not do I/O or read a clock (callers pass monotonic seconds), nor let key material into a repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.core.ids import Bytes32, SecretBytes


@dataclass(frozen=True, slots=True)
class RetiredKey:
    """The key of an epoch that is no longer current, usable until ``until`` (monotonic seconds)."""

    epoch: int
    value: SecretBytes = field(repr=False)
    commitment: Bytes32
    until: float


@dataclass(slots=True)
class GraceKeys:
    """Holds at most one retired key (the previous epoch's) for ``grace`` seconds."""

    grace: float
    _previous: RetiredKey | None = field(default=None, repr=False)

    def replaced(
        self, old_epoch: int, old: SecretBytes, old_commitment: Bytes32, *, new_epoch: int, now: float
    ) -> RetiredKey | None:
        """The key held for ``old_epoch`` was replaced by ``new_epoch``'s: keep it for the grace period when
        the epoch moved forward (return it), forget any retired key that is not older than the new one."""
        if self._previous is not None and self._previous.epoch >= new_epoch:
            self._previous = None
        if old_epoch >= new_epoch or self.grace <= 0:
            return None
        self._previous = RetiredKey(old_epoch, old, old_commitment, now + self.grace)
        return self._previous

    def previous(self, now: float) -> RetiredKey | None:
        """The retired key while its grace period lasts (forgotten once it is over)."""
        if self._previous is not None and now >= self._previous.until:
            self._previous = None
        return self._previous

    def for_epoch(self, epoch: int, now: float) -> RetiredKey | None:
        """The retired key if it is ``epoch``'s and still within its grace period."""
        previous = self.previous(now)
        return previous if previous is not None and previous.epoch == epoch else None

    def clear(self) -> None:
        """Forget the retired key (as a restart does)."""
        self._previous = None


@dataclass(frozen=True, slots=True)
class PreviousCsk:
    """What the app API shows of the previous epoch's key: its epoch, the key, its commitment and when the
    grace period ends (unix seconds)."""

    epoch: int
    value: SecretBytes = field(repr=False)
    commitment: Bytes32
    until_unix: int
