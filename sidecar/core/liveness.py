"""Per-peer liveness from verified heartbeats, with up and down transitions.

Owns ``Liveness`` (when each member was last heard, which members are up) and ``Transition``. A member is
live while ``now - last_heard <= window``; the window is heartbeat interval times allowed misses (2 s * 3
= 6 s by default). ``heard`` emits an up transition when a member becomes live; ``expire`` emits a down
transition once a live member has not been heard for longer than the window; each direction is emitted
once per flip. Must not do I/O or read a clock (``now`` is passed in, in seconds on one monotonic clock),
and must not judge heartbeats: only verified ones (``heartbeat.HeartbeatGate``) are fed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.core.ids import MemberId

HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeats to each peer
HEARTBEAT_MISSES = 3  # missed heartbeats before a peer is down
LIVENESS_WINDOW = HEARTBEAT_INTERVAL * HEARTBEAT_MISSES


@dataclass(frozen=True, slots=True)
class Transition:
    """A member became live (``up``) or stopped being live, observed at ``at``."""

    member: MemberId
    up: bool
    at: float


@dataclass(slots=True)
class Liveness:
    """Tracks when each member was last heard. Pure: every method takes ``now``."""

    window: float = LIVENESS_WINDOW
    _last: dict[MemberId, float] = field(default_factory=dict, repr=False)
    _up: set[MemberId] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if not self.window > 0:
            raise ValueError("liveness window must be positive")

    def heard(self, member: MemberId, now: float) -> Transition | None:
        """Record a verified heartbeat; return an up transition when the member was not up."""
        last = self._last.get(member)
        self._last[member] = now if last is None else max(last, now)
        if member in self._up:
            return None
        self._up.add(member)
        return Transition(member, True, now)

    def expire(self, now: float) -> list[Transition]:
        """Return down transitions (sorted by member) for up members not heard within the window."""
        gone = sorted(m for m in self._up if now - self._last[m] > self.window)
        self._up.difference_update(gone)
        return [Transition(m, False, now) for m in gone]

    def is_live(self, member: MemberId, now: float) -> bool:
        """Tell whether the member was heard within the window before ``now``."""
        last = self._last.get(member)
        return last is not None and now - last <= self.window

    def live(self, now: float) -> frozenset[MemberId]:
        """Return the members heard within the window before ``now``."""
        return frozenset(m for m, last in self._last.items() if now - last <= self.window)

    def last_heard(self, member: MemberId) -> float | None:
        """Return when the member was last heard, or None if never (or forgotten)."""
        return self._last.get(member)

    def forget(self, member: MemberId) -> None:
        """Drop a removed member without emitting a transition."""
        self._last.pop(member, None)
        self._up.discard(member)
