"""The sidecar's phase: computed from observed facts, never set imperatively.

Owns ``Phase``, the ``Facts`` a pass observes, ``next_phase`` (first unmet precondition wins, with a human
reason), the allowed-transition table ``TRANSITIONS`` (which also draws the docs diagram) and
``PhaseTracker``, which turns a stream of computed phases into change records so the driver logs
``phase.changed`` once per change. Must not do I/O, read clocks or decide what to do about a phase: the
driver gathers the facts, passes ``now`` in, and acts.

Preconditions, in order (the first unmet one names the phase and the reason):

==============================================  ============  =====================================
unmet precondition                              phase         reason
==============================================  ============  =====================================
guest agent answers                             boot_gate     "guest agent unreachable: …"
chain reachable (see the degraded rule below)   boot_gate     "chain unreachable: …"
RPC providers agree (a quorum; degraded rule)   boot_gate     "rpc_disagreement: …" / "rpc_quorum_…"
chain id as configured, contract at cluster     boot_gate     "chain id mismatch: …" / "no …"
on-chain keys equal the derived ones            boot_gate     "lost state: …" (terminal)
boot policy checked                             boot_gate     "boot policy not checked yet"
boot policy allows                              boot_gate     "boot policy denies: …"
registered                                      register      "not registered: …"
mesh device up                                  mesh          "mesh device not up…"
device peers equal the usable records           mesh          "device out of sync with chain…"
CSK held and verified against the commitment    csk_acquire   "waiting for the cluster shared key: …"
a live peer, when there are usable peers        mesh          "no live peer"
(all met)                                       healthy       ""
==============================================  ============  =====================================

Lost state is checked before the boot policy because it is terminal and the operator must see it first.
"Usable" is ``sidecar.core.peerscreen``'s verdict: an excluded member record is neither planned nor needed
live (``other_members`` and ``live_peers`` count usable peers only).

Degraded rule (an unreachable source of truth never tears down the data plane): when the chain cannot be
read but the node is known to be registered and its mesh device is up, the remaining preconditions are
evaluated against the last good snapshot (the chain id and an unknown boot verdict are skipped; a known
denial and lost state still apply). The node is never healthy meanwhile and the reason always names the
chain: if the other facts would give ``healthy`` the phase is ``mesh`` with reason "chain unreachable: …";
otherwise it is the phase the other facts give, with reason "chain unreachable: …; <their reason>".
Before registration is known (or with the device down) an unreachable chain is simply ``boot_gate``. A read
on which the JSON-RPC providers did not agree (``chain_quorum``) counts as an unreadable chain, and its
named reason (``rpc_disagreement: …``, ``rpc_quorum_unavailable: …``) replaces "chain unreachable: …".

Transitions (``TRANSITIONS``): any single forward step; forward skips out of ``boot_gate`` (a restart
whose identity, device and CSK carried over, or a chain that came back) and out of ``register`` (the pass
after a registration lands sees the new member in the snapshot and can configure the mesh and take the
CSK before the phase is computed again); ``mesh → healthy`` (the CSK was already held, e.g. a live peer
came back or the device resynced); and any backward move (losing a fact) except back into ``register``.
A member record does not vanish while its app id stays approved: eviction also revokes the approval, so an
evicted node goes to ``boot_gate`` first. A direct move back to ``register`` therefore means a reorg
dropped our registration (or a contract misbehaved): it is logged and counted as unexpected, never raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    BOOT_GATE = "boot_gate"
    REGISTER = "register"
    MESH = "mesh"
    CSK_ACQUIRE = "csk_acquire"
    HEALTHY = "healthy"


#: The phases in their forward order.
ORDER: tuple[Phase, ...] = (Phase.BOOT_GATE, Phase.REGISTER, Phase.MESH, Phase.CSK_ACQUIRE, Phase.HEALTHY)
_RANK = {p: i for i, p in enumerate(ORDER)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """What one pass observed (keyword-only). Error strings are human reasons, never key material."""

    agent_ok: bool
    agent_error: str = ""
    chain_ok: bool
    chain_error: str = ""
    chain_id_ok: bool = True  # False: reachable, but not the configured chain (or no cluster contract)
    chain_mismatch: str = ""  # the whole reason when ``chain_id_ok`` is False ("chain id mismatch: …")
    chain_quorum: str = (
        ""  # with ``chain_ok`` False: the providers answered but no quorum agreed ("rpc_…: …")
    )
    boot_allowed: bool | None  # None: not known yet
    boot_reason: str = ""
    lost_state: bool = False  # terminal: on-chain keys differ from the derived ones
    registered: bool = False
    register_error: str = ""
    device_up: bool = False
    device_in_sync: bool = False  # device peers == chain snapshot
    mesh_error: str = ""
    csk_held: bool = False  # held AND verified against the commitment
    csk_error: str = ""
    other_members: int = 0
    live_peers: int = 0


def _detail(prefix: str, detail: str, default: str = "") -> str:
    text = detail or default
    return f"{prefix}: {text}" if text else prefix


def _unmet(f: Facts, *, degraded: bool) -> Iterator[tuple[Phase, str]]:
    """Yield the unmet preconditions in order (the chain and agent checks are done by the caller)."""
    if not degraded and not f.chain_id_ok:
        yield Phase.BOOT_GATE, f.chain_mismatch or "chain id mismatch"
    if f.lost_state:
        yield Phase.BOOT_GATE, "lost state: on-chain keys differ from the derived keys"
    if f.boot_allowed is None and not degraded:
        yield Phase.BOOT_GATE, "boot policy not checked yet"
    if f.boot_allowed is False:
        yield Phase.BOOT_GATE, _detail("boot policy denies", f.boot_reason)
    if not f.registered:
        yield Phase.REGISTER, _detail("not registered", f.register_error, "registration pending")
    if not f.device_up:
        yield Phase.MESH, _detail("mesh device not up", f.mesh_error)
    if not f.device_in_sync:
        yield Phase.MESH, _detail("device out of sync with chain", f.mesh_error)
    if not f.csk_held:
        yield Phase.CSK_ACQUIRE, _detail("waiting for the cluster shared key", f.csk_error, "not held yet")
    if f.other_members > 0 and f.live_peers == 0:
        yield Phase.MESH, "no live peer"


def next_phase(facts: Facts) -> tuple[Phase, str]:
    """Compute the phase and its reason from the facts; the reason is "" exactly when healthy."""
    if not facts.agent_ok:
        return Phase.BOOT_GATE, _detail("guest agent unreachable", facts.agent_error, "no answer")
    chain_reason = facts.chain_quorum or _detail("chain unreachable", facts.chain_error, "no answer")
    degraded = not facts.chain_ok
    if degraded and not (facts.registered and facts.device_up):
        return Phase.BOOT_GATE, chain_reason
    phase, reason = next(_unmet(facts, degraded=degraded), (Phase.HEALTHY, ""))
    if not degraded:
        return phase, reason
    if phase is Phase.HEALTHY:
        return Phase.MESH, chain_reason
    return phase, f"{chain_reason}; {reason}"


def _build_transitions() -> frozenset[tuple[Phase, Phase]]:
    allowed: set[tuple[Phase, Phase]] = set()
    for a in ORDER:
        for b in ORDER:
            if a is b:
                continue
            step = _RANK[b] - _RANK[a]
            forward = step > 0 and (step == 1 or a in (Phase.BOOT_GATE, Phase.REGISTER))
            backward = step < 0 and b is not Phase.REGISTER
            if forward or backward:
                allowed.add((a, b))
    allowed.add((Phase.MESH, Phase.HEALTHY))
    return frozenset(allowed)


#: Every allowed (from, to) pair; anything else is logged and counted as unexpected.
TRANSITIONS: frozenset[tuple[Phase, Phase]] = _build_transitions()


def is_expected(a: Phase, b: Phase) -> bool:
    """Tell whether moving from ``a`` to ``b`` is in the transition table."""
    return (a, b) in TRANSITIONS


def mermaid_diagram() -> str:
    """Draw ``TRANSITIONS`` as a Mermaid state diagram (forward edges first, then backward ones)."""
    lines = ["stateDiagram-v2", f"    [*] --> {ORDER[0].value}"]
    forward = sorted(
        (p for p in TRANSITIONS if _RANK[p[1]] > _RANK[p[0]]), key=lambda p: (_RANK[p[0]], _RANK[p[1]])
    )
    backward = sorted(
        (p for p in TRANSITIONS if _RANK[p[1]] < _RANK[p[0]]), key=lambda p: (_RANK[p[0]], _RANK[p[1]])
    )
    lines += [f"    {a.value} --> {b.value}" for a, b in forward]
    lines += [f"    {a.value} --> {b.value}: lost a fact" for a, b in backward]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class PhaseChange:
    """One phase change; ``from_phase`` is None for the first observation of the process."""

    from_phase: Phase | None
    to_phase: Phase
    reason: str
    expected: bool
    at: float
    elapsed: float | None  # seconds spent in ``from_phase``; None on the first observation


@dataclass(slots=True)
class PhaseTracker:
    """Remembers the current phase and reports changes only (pure: ``now`` is passed in)."""

    phase: Phase | None = None
    reason: str = ""
    since: float | None = None

    def observe(self, phase: Phase, reason: str, now: float) -> PhaseChange | None:
        """Record the phase computed at ``now``; return a change record when the phase differs."""
        previous, since = self.phase, self.since
        self.reason = reason
        if previous is phase:
            return None
        self.phase, self.since = phase, now
        expected = previous is None or is_expected(previous, phase)
        elapsed = None if since is None else now - since
        return PhaseChange(previous, phase, reason, expected, now, elapsed)
