"""The control loop: one level-triggered pass from facts to actions, repeated on every wake.

Owns the order of a pass and folding each step's ``Outcome`` into the node's ``Facts``: identity (guest
agent) → chain snapshot (boot policy, membership, commitment, one ``members()`` call at a confirmed block)
→ membership (lost-state check, registration) → endpoint → mesh (plan the peer delta, apply only the
delta) → cluster shared key; then the peer facts and the phase (``sidecar.core.phases``). A step that
does not proceed ends the pass; a fact a step did not observe keeps its last value (so an unreadable
chain keeps the last good snapshot and never touches the device). Wakes come from the event source,
peer liveness changes, a periodic resync (slow while push is healthy: pushes wake the loop on every change),
a step's requeue hint and an error backoff; every pass re-reads the whole desired and actual state, so a
missed wake only delays convergence. Every pass counts its own JSON-RPC calls (``control.passed``, debug).

The steps own their wording and their dependencies (``sidecar.drivers.steps``, ``.mesh``, ``.csk``);
this module owns no error strings. Broad exceptions are caught in exactly one place (``run``).
Must not: log or expose private keys; block the event loop on anything unbounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import structlog

from sidecar.buildinfo import build_info
from sidecar.core.backoff import Backoff
from sidecar.core.cskepochs import PreviousCsk
from sidecar.core.digest import membership_digest
from sidecar.core.ids import Address, SecretBytes
from sidecar.core.liveness import Liveness
from sidecar.core.outcome import FactsPart, Outcome, fold
from sidecar.core.phases import Facts, Phase, PhaseTracker, next_phase
from sidecar.core.status import NodeStatus, PeerView, SelfView
from sidecar.drivers.clock import Clock
from sidecar.drivers.csk import CskKeeper
from sidecar.drivers.events import EventSource
from sidecar.drivers.mesh import MeshStep
from sidecar.drivers.nodestate import NodeState
from sidecar.drivers.steps import ChainStep, EndpointStep, IdentityStep, MembershipStep
from sidecar.metricvocab import ReconcileStep
from sidecar.observability import Metrics
from sidecar.rpctally import rpc_tally

log = structlog.get_logger("sidecar.control")

ERROR_BACKOFF_MIN = 0.5
ERROR_BACKOFF_MAX = 10.0
PROGRESS_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class Steps:
    """The steps of a pass, in order."""

    identity: IdentityStep
    chain: ChainStep
    membership: MembershipStep
    endpoint: EndpointStep
    mesh: MeshStep
    csk: CskKeeper


class Controller:
    """The node's control loop: runs the steps, folds their outcomes, computes the phase and status."""

    def __init__(
        self,
        steps: Steps,
        state: NodeState,
        *,
        cluster: Address,
        liveness: Liveness,
        metrics: Metrics,
        clock: Clock,
        resync_interval: float,
        events: EventSource | None = None,
        resync_interval_pushed: float | None = None,
    ) -> None:
        self.steps = steps
        self.state = state
        self.cluster = cluster
        self.liveness = liveness
        self.metrics = metrics
        self.clock = clock
        self.resync_interval = resync_interval
        #: The resync period while push is healthy (pushes wake the loop on every change; None: as in poll).
        self.resync_interval_pushed = resync_interval_pushed
        self.events = events
        self._wake = asyncio.Event()
        self._requeue: float | None = None
        self.tracker = PhaseTracker()
        build = build_info()
        self.status = NodeStatus.initial(
            build.version, commit=build.commit, dirty=build.dirty, build_source=build.source
        )

    @property
    def facts(self) -> Facts:
        return self.state.facts

    @property
    def requeue(self) -> float | None:
        """The earliest next pass a step of the last pass asked for (None: the loop's own schedule)."""
        return self._requeue

    # --- wakes -------------------------------------------------------------------------------------

    def wake(self, reason: str = "") -> None:
        """Ask for a pass soon (events, liveness changes). Idempotent and cheap."""
        if reason:
            log.debug("control.woken", reason=reason)
        self._wake.set()

    async def run(self) -> None:
        """Pass after pass until cancelled: on a wake, on the resync timer, or after an error backoff."""
        backoff = Backoff(ERROR_BACKOFF_MIN, ERROR_BACKOFF_MAX)
        while True:
            self._wake.clear()
            try:
                await self.pass_once()
                if self._settled():  # healthy: only events and the resync timer trigger a pass
                    delay = self.resync_delay()
                    backoff.reset()
                elif self._progressing():  # progressing: check again soon
                    delay = PROGRESS_RETRY
                    backoff.reset()
                else:  # a dependency is failing: capped exponential backoff
                    delay = backoff.next()
                if self._requeue is not None:  # a step asked for an earlier pass
                    delay = min(delay, self._requeue)
            except asyncio.CancelledError:
                raise
            except Exception:  # the one broad catch of this loop: log, count, back off, keep going
                log.exception("control.pass_failed")
                self.metrics.reconcile_passes.labels(result="error").inc()
                delay = backoff.next()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives just as
            # the event is set, which would hang shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def resync_delay(self) -> float:
        """The resync period now: the slow one while push is healthy, the poll-mode one otherwise."""
        pushed = self.resync_interval_pushed
        if pushed is not None and self.events is not None and self.events.mode == "push":
            return pushed
        return self.resync_interval

    def _settled(self) -> bool:
        return self.status.phase == Phase.HEALTHY.value

    def _progressing(self) -> bool:
        """Agent and chain answer (a chain that is not the configured one is failing, not progressing)."""
        facts = self.facts
        return facts.chain_ok and facts.agent_ok and facts.chain_id_ok

    # --- one pass ----------------------------------------------------------------------------------

    async def pass_once(self) -> None:
        """Run the steps in order, fold their outcomes, then compute the phase and the status; count the
        pass's JSON-RPC calls (``attestmesh_reconcile_pass_rpc_calls``, ``control.passed``)."""
        self._requeue = None
        with rpc_tally("pass") as tally:
            try:
                await self._run_steps()
            finally:
                self.metrics.pass_rpc(tally)
        self._apply(self._standing_facts())
        self._update_status()
        log.debug(
            "control.passed",
            phase=self.status.phase,
            read_at=self.steps.chain.read_at,
            rpc_calls=tally.total,
            rpc_methods=dict(sorted(tally.calls.items())),
        )

    def _apply(self, part: FactsPart | Outcome, step: ReconcileStep | None = None) -> bool:
        """Fold an outcome (or a bare facts part) into the facts, count a failed step by its class; return
        whether the pass goes on."""
        outcome = part if isinstance(part, Outcome) else Outcome(part)
        if step is not None and outcome.failure is not None:
            self.metrics.step_failed(step, outcome.failure)
        self.state.facts = fold(self.state.facts, outcome.facts)
        if outcome.requeue is not None:
            self._requeue = outcome.requeue if self._requeue is None else min(self._requeue, outcome.requeue)
        return outcome.proceed

    async def _run_steps(self) -> None:
        st, steps = self.state, self.steps
        outcome, identity = await steps.identity.run(st.identity)
        if not self._apply(outcome, "identity") or identity is None:
            return
        st.identity = identity
        outcome, read = await steps.chain.run(identity)
        if not self._apply(outcome, "chain") or read is None:
            return
        st.head, st.snapshot = read
        snap = st.snapshot
        outcome, mine = await steps.membership.run(identity, snap)
        st.member_id = mine.member_id if mine is not None else None
        if not self._apply(outcome, "membership") or mine is None:
            return
        self._apply(await steps.endpoint.run(identity, mine, self.clock.monotonic()), "endpoint")
        if not self._apply(await steps.mesh.run(identity, snap, mine), "mesh"):
            return
        self._apply(await steps.csk.run(identity, snap, mine), "csk")

    def _standing_facts(self) -> FactsPart:
        """Facts re-read after every pass, whichever step it ended at: the usable peers (the mesh step's
        last screen; an excluded record is neither desired nor needed live), and the key against the
        snapshot's commitment (a key committed or pulled between passes counts at once)."""
        snap = self.state.snapshot
        usable = {m.member_id for m in self.steps.mesh.screen.usable}  # excluded records never count
        others = [m for m in snap.others(self.state.member_id) if m.member_id in usable] if snap else []
        live = self.liveness.live(self.clock.monotonic())
        return {
            "other_members": len(others),
            "live_peers": sum(1 for m in others if m.member_id in live),
            "csk_held": snap is not None and self.steps.csk.holds(snap.commitment),
        }

    # --- phase and status ------------------------------------------------------------------------------

    def _update_status(self) -> None:
        facts, now = self.state.facts, self.clock.monotonic()
        phase, reason = next_phase(facts)
        change = self.tracker.observe(phase, reason, now)
        if change is not None:
            log.info(
                "phase.changed",
                from_phase=str(change.from_phase) if change.from_phase else None,
                to_phase=str(change.to_phase),
                reason=reason,
                expected=change.expected,
            )
            self.metrics.record_phase(change.from_phase, change.to_phase, change.expected)
        configured = len(self.steps.mesh.configured)
        self.metrics.peers.labels(state="desired").set(facts.other_members)
        self.metrics.peers.labels(state="configured").set(configured)
        self.metrics.peers.labels(state="live").set(facts.live_peers)
        ident, snap, mine = self.state.identity, self.state.snapshot, self.state.me()
        member_id = self.state.member_id
        held = self.steps.csk.held
        self.status = NodeStatus(
            phase=phase.value,
            healthy=phase == Phase.HEALTHY,
            reason=reason,
            app_id=str(ident.app_id) if ident else None,
            instance_id=ident.info.instance_id.hex() if ident else None,
            compose_hash=str(ident.info.compose_hash) if ident else None,
            member_id=str(member_id) if member_id else None,
            mesh_ip=str(mine.mesh_ip) if mine else None,
            signer=str(ident.signer) if ident else None,
            peers_desired=facts.other_members,
            peers_configured=configured,
            peers_live=facts.live_peers,
            peers_transport=self.steps.mesh.transport.summary(),
            peers_excluded=tuple((str(e.member_id), e.reason) for e in self.steps.mesh.screen.excluded),
            csk_held=facts.csk_held,
            csk_epoch=snap.csk_epoch if snap else None,
            csk_previous_epoch=previous.epoch if (previous := self.steps.csk.previous()) else None,
            csk_commitment=str(snap.commitment) if snap and snap.commitment else None,
            csk_source=held.source or None,
            csk_peering_error=self.steps.csk.peering_error or None,
            **self._events_fields(),
            membership_digest=str(membership_digest(m.member_id for m in snap.members)) if snap else None,
            version=self.status.version,
            commit=self.status.commit,
            dirty=self.status.dirty,
            build_source=self.status.build_source,
            chain_reachable=facts.chain_ok,
            chain_error=facts.chain_quorum or facts.chain_error or facts.chain_mismatch,
            chain_write_held=self.steps.chain.chain.write_held,
            chain_read_at=self.steps.chain.read_at,
            **self._rpc_fields(),
        )
        self.metrics.record_status(self.status)

    def _rpc_fields(self) -> dict[str, Any]:
        rpc = self.steps.chain.chain.rpc
        return {
            "rpc_providers": rpc.providers,
            "rpc_quorum": rpc.quorum,
            "rpc_up": rpc.up,
            "rpc_agreeing": rpc.agreeing,
            "rpc_dissenting": rpc.dissenting,
            "rpc_reason": rpc.reason or None,
        }

    def _events_fields(self) -> dict[str, Any]:
        source, head = self.events, self.state.head
        if source is None:
            return {"events_mode": "poll", "indexer_connected": False, "head_block": head}
        heads = [h for h in (head, source.head_block) if h is not None]
        return {
            "events_mode": source.mode,
            "indexer_connected": source.indexer_connected,
            "cursor_block": source.cursor_block,
            "head_block": max(heads) if heads else None,
            "rejected_pushes": source.rejected_pushes,
            "rejected_by_reason": tuple(sorted(source.rejected_by_reason.items())),
        }

    def current_status(self) -> NodeStatus:
        """The status with the transport's state as of now (streams go up and down between passes)."""
        return dataclasses.replace(self.status, peers_transport=self.steps.mesh.transport.summary())

    def refresh_events(self) -> None:
        """Re-read the event source into the status now (its mode flips between passes); a flip of the mode
        also wakes the loop, so the resync timer follows the new mode and the first pass after it reads the
        chain as that mode does."""
        previous = self.status.events_mode
        self.status = dataclasses.replace(self.status, **self._events_fields())
        if self.status.events_mode != previous:
            self.wake("events mode changed")

    # --- views for the app API ---------------------------------------------------------------------

    def self_view(self) -> SelfView | None:
        ident, mine = self.state.identity, self.state.me()
        if ident is None or mine is None:
            return None
        return SelfView(
            cluster=str(self.cluster),
            member_id=str(mine.member_id),
            app_id=str(ident.app_id),
            instance_id=ident.info.instance_id.hex(),
            mesh_ip=str(mine.mesh_ip),
            signer=str(ident.signer),
            wg_pub=ident.keys.wg_pub.hex,
            seal_pub=ident.keys.seal_pub.hex,
            identity_pub=ident.keys.identity_pub.hex,
        )

    def peer_views(self) -> list[PeerView]:
        snap = self.state.snapshot
        if snap is None:
            return []
        now = self.clock.monotonic()
        transports = self.steps.mesh.transport.views()
        views = []
        for m in snap.others(self.state.member_id):
            carrier = transports.get(m.member_id)
            heard = self.liveness.last_heard(m.member_id)
            views.append(
                PeerView(
                    member_id=str(m.member_id),
                    mesh_ip=str(m.mesh_ip),
                    endpoint=m.endpoint,
                    configured=m.member_id in self.steps.mesh.configured,
                    live=self.liveness.is_live(m.member_id, now),
                    last_heard_ms_ago=None if heard is None else int((now - heard) * 1000),
                    transport=None if carrier is None else carrier.to_json(),
                )
            )
        return views

    def csk_value(self) -> SecretBytes | None:
        return self.steps.csk.value() if self.state.facts.csk_held else None

    def csk_previous(self) -> PreviousCsk | None:
        """The previous epoch's key during its grace period, next to a held current key."""
        return self.steps.csk.previous() if self.state.facts.csk_held else None
