"""The first reconcile steps: identity, chain read, membership (lost state and registration), endpoint.

Owns each step's decision and its wording: a step takes its dependencies at construction (the guest
agent's key source, the ``ClusterChain``, the settings it needs), is run with what earlier steps found, and
returns an ``Outcome`` (its part of the facts, whether the pass goes on, a requeue hint, transient or
terminal). A step remembers only what it needs to log a condition once. Also owns ``warn_limited``, the
rate-limited warning every step uses for a failure that repeats every pass.

Rules: an unreadable chain stops the pass before anything changes (the last good snapshot is kept by the
controller); a reachable chain that is not the configured one (wrong chain id, no contract at the cluster
address) is reachable, and says so; an already-registered node never registers again (its keys must match
the chain, otherwise it is a terminal "lost state").
Must not: log or expose private keys; catch anything broader than the adapters' own errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from sidecar.chain.errors import ChainError, ChainIdMismatch, UnexpectedChainError
from sidecar.core.backoff import Spacing
from sidecar.core.endpoint import gateway_endpoint, parse_endpoint, same_endpoint
from sidecar.core.keys import KeyScope
from sidecar.core.model import MemberRecord
from sidecar.core.outcome import FactsPart, Failure, Outcome, stop
from sidecar.core.readpin import HeadRead, ReadPin
from sidecar.core.repeats import Repeats
from sidecar.core.snapshot import Snapshot
from sidecar.drivers.anchors import AnchorGate
from sidecar.drivers.chainlink import ClusterChain, QuorumNotReached
from sidecar.drivers.identity import KeySource, NodeIdentity, derive_keys
from sidecar.drivers.readsource import ReadPlanner
from sidecar.dstack.agent import GuestAgentError
from sidecar.observability import Metrics
from sidecar.settings import MeshSettings

log = structlog.get_logger("sidecar.control")


def warn_limited(repeats: Repeats, event: str, error: str, now: float, **fields: Any) -> None:
    """Log ``event`` at warning level for the first failure, then at most once per interval with a count."""
    report = repeats.failed(event, error, now)
    if report is not None:
        extra = {} if report.first else {"repeats": report.repeats}
        log.warning(event, error=error, **fields, **extra)


class IdentityStep:
    """Derive the node's identity from the guest agent once; until then the agent is unreachable. With an
    ``AnchorGate``, the measured anchors are checked first (against ``Info``, before any key is derived)
    and the signer proof's KMS root after: a problem is terminal (the daemon exits 2)."""

    def __init__(self, agent: KeySource, scope: KeyScope, anchors: AnchorGate | None = None) -> None:
        self.agent = agent
        self.scope = scope
        self.anchors = anchors
        self._error = ""

    async def run(self, known: NodeIdentity | None) -> tuple[Outcome, NodeIdentity | None]:
        if known is not None:
            return Outcome({"agent_ok": True, "agent_error": ""}), known
        try:
            info = await self.agent.info()
            problems = self.anchors.check_info(info) if self.anchors is not None else []
            ident = None if problems else await derive_keys(self.agent, info, self.scope)
        except GuestAgentError as exc:
            if str(exc) != self._error:  # log an outage once, not on every retry
                log.warning("identity.unavailable", error=str(exc), transient=exc.transient)
            self._error = str(exc)
            failure: Failure = "transient" if exc.transient else "terminal"
            return stop({"agent_ok": False, "agent_error": str(exc)}, failure), None
        if ident is not None and self.anchors is not None:
            problems = self.anchors.check_proof(ident.proof)
        if problems or ident is None:
            error = "measured configuration refused: " + "; ".join(problems)
            return stop({"agent_ok": False, "agent_error": error}, "terminal"), None
        self._error = ""
        log.info(
            "identity.derived",
            app_id=str(ident.app_id),
            compose_hash=str(ident.info.compose_hash),
            signer=str(ident.signer),
            wg_pub=ident.keys.wg_pub.hex,
            identity_pub=ident.keys.identity_pub.hex,
        )
        return Outcome({"agent_ok": True, "agent_error": ""}), ident


class ChainStep:
    """Read the chain snapshot at a confirmed block; classify a failure (unreachable, or the wrong chain).

    With a ``ReadPlanner`` (push mode's RPC budget, ``sidecar.drivers.readsource``) the read is pinned to a
    block the node already knows when the planner says so; a pinned read that fails is retried at once as a
    head read, and the planner is told. ``read_at`` says where the last read was made (``push``, ``poll``:
    pinned; ``head``; None before the first)."""

    def __init__(self, chain: ClusterChain, metrics: Metrics, planner: ReadPlanner | None = None) -> None:
        self.chain = chain
        self.metrics = metrics
        self.planner = planner
        self.read_at: str | None = None  # none yet
        self._failing = False
        self._mismatch = ""
        self._quorum = ""

    async def _read(self, identity: NodeIdentity) -> tuple[int, Snapshot]:
        planner = self.planner
        plan = HeadRead("no event source") if planner is None else planner.plan()
        if isinstance(plan, ReadPin):
            try:
                read = await self.chain.read(identity, at=plan.position)
            except ChainError as exc:
                refused = str(exc) or type(exc).__name__
            else:
                self.read_at = plan.source
                return read
        else:
            refused = ""
        self.read_at = "head"
        mark = None if planner is None else planner.mark()
        head, snap = await self.chain.read(identity)
        if planner is not None and mark is not None:
            planner.observed_head(head, mark)
            if isinstance(plan, ReadPin):
                planner.refused(plan, refused)
        return head, snap

    async def run(self, identity: NodeIdentity) -> tuple[Outcome, tuple[int, Snapshot] | None]:
        try:
            head, snap = await self._read(identity)
        except QuorumNotReached as exc:
            return self._disputed(exc), None
        except ChainError as exc:
            return await self._failed(exc), None
        if self._failing:
            log.info("chain.recovered", head=head)
        self._failing, self._mismatch, self._quorum = False, "", ""
        verdict = snap.verdict
        facts: FactsPart = {
            "chain_ok": True,
            "chain_error": "",
            "chain_id_ok": True,
            "chain_mismatch": "",
            "chain_quorum": "",
            "boot_allowed": verdict.allowed,
            "boot_reason": verdict.reason,
        }
        return Outcome(facts), (head, snap)

    def _disputed(self, exc: QuorumNotReached) -> Outcome:
        """The providers answered, but no quorum agreed on one snapshot: nothing may change this pass (the
        controller keeps the last good snapshot); the named reason goes to /healthz."""
        self.metrics.chain_errors.labels(kind="transient").inc()
        verdict = exc.verdict
        reason = f"{verdict.reason}: {verdict.detail}"
        who = f"{verdict.reason} {verdict.agreeing} {verdict.dissenting} {verdict.failed}"
        if who != self._quorum:  # said once per distinct split of the providers, not on every pass
            log.warning(
                "chain.quorum_missed",
                reason=verdict.reason,
                agreeing=list(verdict.agreeing),
                dissenting=list(verdict.dissenting),
                failed=list(verdict.failed),
                detail=verdict.detail,
            )
        self._failing, self._mismatch, self._quorum = True, "", who
        facts: FactsPart = {
            "chain_ok": False,
            "chain_error": verdict.reason,
            "chain_id_ok": True,
            "chain_mismatch": "",
            "chain_quorum": reason,
        }
        return stop(facts, "transient")

    async def _failed(self, exc: ChainError) -> Outcome:
        self._quorum = ""
        self.metrics.chain_errors.labels(kind="transient" if exc.transient else "terminal").inc()
        failure: Failure = "transient" if exc.transient else "terminal"
        if not exc.transient:
            await self.chain.reset()
        mismatch = await self._explain_mismatch(exc)
        if mismatch:  # reachable, but not the configured chain or cluster: a terminal misconfiguration
            if mismatch != self._mismatch:
                log.warning("chain.mismatched", reason=mismatch)
            self._failing, self._mismatch = True, mismatch
            return stop(
                {
                    "chain_ok": True,
                    "chain_error": "",
                    "chain_id_ok": False,
                    "chain_mismatch": mismatch,
                    "chain_quorum": "",
                },
                failure,
            )
        error = str(exc) or type(exc).__name__
        if not self._failing or self._mismatch:  # an outage is logged once, when it starts
            log.warning("chain.unreachable", error=error, transient=exc.transient)
        self._failing, self._mismatch = True, ""
        return stop(
            {
                "chain_ok": False,
                "chain_error": error,
                "chain_id_ok": True,
                "chain_mismatch": "",
                "chain_quorum": "",
            },
            failure,
        )

    async def _explain_mismatch(self, exc: ChainError) -> str:
        """The whole reason when the RPC answers but is not the configured chain or cluster ("" if not)."""
        if isinstance(exc, ChainIdMismatch):
            return f"chain id mismatch: expected {exc.expected}, the RPC serves {exc.actual}"
        if isinstance(exc, UnexpectedChainError):
            try:
                has_contract = await self.chain.has_contract()
            except ChainError:
                return ""
            if not has_contract:
                return f"no cluster contract at {self.chain.cluster}: the address holds no code on this chain"
        return ""


def own_endpoint(mesh: MeshSettings) -> Callable[[NodeIdentity], str]:
    """This node's endpoint as it registers it: the configured ``ip:port`` (direct transport), or its app's
    passthrough route on the dstack gateway (``tls://<app id>-<port>s.<domain>:443``, gateway transport)."""
    domain, direct = mesh.gateway_domain, mesh.endpoint
    if domain is not None:
        return lambda ident: str(gateway_endpoint(ident.app_id, domain, mesh.gateway_port))
    if direct is None:
        raise ValueError("the settings name no endpoint and no gateway domain")
    return lambda ident: direct


class MembershipStep:
    """Find this node in the snapshot: lost state (terminal), boot policy, registration when absent."""

    def __init__(
        self, chain: ClusterChain, metrics: Metrics, endpoint: Callable[[NodeIdentity], str]
    ) -> None:
        self.chain = chain
        self.metrics = metrics
        self.endpoint = endpoint
        self._lost: list[str] = []
        self._error = ""
        self._registered_here = False
        self._registered_block: int | None = None
        self._carried_over_logged = False

    async def run(self, ident: NodeIdentity, snap: Snapshot) -> tuple[Outcome, MemberRecord | None]:
        mine = snap.by_app(ident.app_id)
        lost = ident.matches(mine) if mine is not None else []
        if lost and lost != self._lost:  # terminal: said once, then shown in /healthz
            log.error("identity.lost_state", member_id=str(mine.member_id) if mine else None, differs=lost)
        self._lost = lost
        facts: FactsPart = {"lost_state": bool(lost), "registered": mine is not None}
        if lost:
            return stop(facts, "terminal"), mine
        if not snap.verdict.allowed:
            return stop(facts, "terminal"), mine
        if mine is None:
            if self._registered_block is not None and snap.block < self._registered_block:
                # our registration has not reached the confirmed snapshot yet: never send it twice
                return stop({**facts, "register_error": self._error}), None
            return await self._register(ident), None
        self._error = ""
        if not self._carried_over_logged and not self._registered_here:
            self._carried_over_logged = True
            log.info("registration.skipped", reason="identity carried over", member_id=str(mine.member_id))
        return Outcome({**facts, "register_error": ""}), mine

    async def _register(self, ident: NodeIdentity) -> Outcome:
        emit = log.debug if self._error else log.info  # retries after a logged failure: debug
        emit(
            "registration.attempted",
            app_id=str(ident.app_id),
            signer=str(ident.signer),
            endpoint=self.endpoint(ident),
        )
        try:
            done = await self.chain.register(ident, self.endpoint(ident))
        except ChainError as exc:
            reason = explain_register_error(exc)
            self.metrics.registration_attempts.labels(result="failed").inc()
            if reason != self._error:  # once per distinct failure, not on every retry
                log.warning("registration.failed", reason=reason, transient=exc.transient)
            self._error = reason
            failure: Failure = "transient" if exc.transient else "terminal"
            return stop({"registered": False, "register_error": reason}, failure)
        self._error = ""
        self._registered_here = True
        self._registered_block = done.block
        self.metrics.registration_attempts.labels(result="ok").inc()
        log.info("registration.succeeded", member_id=str(done.member_id), block=done.block, gas=done.gas)
        return stop({"registered": False, "register_error": ""}, requeue=0.0)  # pass again at once


#: ``setEndpoint`` attempts are spaced by windows doubling from ENDPOINT_RETRY_MIN to ENDPOINT_RETRY_MAX
#: seconds (``Spacing``): whatever the chain (or a lying RPC) keeps showing, at most one transaction per
#: window, and one per ENDPOINT_RETRY_MAX in the long run.
ENDPOINT_RETRY_MIN = 30.0
ENDPOINT_RETRY_MAX = 600.0


class EndpointStep:
    """Publish this node's endpoint when the chain holds another one, at most once per window (``Spacing``:
    a lying RPC that keeps showing an old endpoint cannot make the node send ``setEndpoint`` on every pass);
    failures rate-limited in the log. A record that says the same endpoint in another form (a bare
    ``ip:port`` for ``udp://ip:port``) is left alone."""

    def __init__(
        self,
        chain: ClusterChain,
        endpoint: Callable[[NodeIdentity], str],
        repeats: Repeats,
        metrics: Metrics,
        *,
        spacing: Spacing | None = None,
    ) -> None:
        self.chain = chain
        self.endpoint = endpoint
        self.repeats = repeats
        self.metrics = metrics
        self.spacing = spacing or Spacing(ENDPOINT_RETRY_MIN, ENDPOINT_RETRY_MAX)
        self._deferred_logged_for: float | None = None  # the attempt whose window a deferral was logged in

    async def run(self, ident: NodeIdentity, mine: MemberRecord, now: float) -> Outcome:
        wanted = self.endpoint(ident)
        if mine.endpoint == wanted or same_endpoint(mine.endpoint, parse_endpoint(wanted)):
            self.spacing.settled(now)
            return Outcome()
        wait = self.spacing.wait(now)
        if wait > 0:
            self.metrics.endpoint_update("deferred")
            if self._deferred_logged_for != self.spacing.last:  # once per window
                self._deferred_logged_for = self.spacing.last
                log.info(
                    "endpoint.update_deferred",
                    chain_endpoint=mine.endpoint,
                    wanted=wanted,
                    attempts=self.spacing.attempts,
                    retry_in=round(wait, 1),
                )
            return Outcome(requeue=wait)
        self.spacing.attempted(now)
        try:
            await self.chain.set_endpoint(ident, wanted)
        except ChainError as exc:  # not fatal for the pass: the mesh works on the old endpoint meanwhile
            self.metrics.endpoint_update("failed")
            warn_limited(self.repeats, "endpoint.update_failed", str(exc), now)
            return Outcome(failure="transient" if exc.transient else "terminal")
        self.metrics.endpoint_update("sent")
        self.repeats.succeeded("endpoint.update_failed")
        log.info("endpoint.updated", old=mine.endpoint, new=wanted, attempts=self.spacing.attempts)
        return Outcome()


def explain_register_error(exc: ChainError) -> str:
    """Say why a registration failed, in the operator's terms."""
    name = type(exc).__name__
    if name == "InsufficientFunds":
        return f"no gas: the signer has no funds to register ({exc})"
    if name == "FeeAboveCap":
        return f"registration held: {exc}"
    if exc.transient:
        return f"chain unreachable while registering: {exc}"
    return f"registration reverted: {exc}"
