"""Metrics: the one metrics registry of the sidecar (logging is ``sidecar.logs``).

Owns ``Metrics``: every Prometheus metric the sidecar exports, registered in one injected registry, with
every known label set created at zero so dashboards and alerts see a series before the first event. The
label vocabularies (``PHASES``, ``CSK_REFUSALS``, …) are ``sidecar.metricvocab``'s, the per-pass call
counts ``sidecar.rpctally``'s; the gateway transport's series and vocabularies live in
``sidecar.transportmetrics`` (``Metrics`` inherits its methods).

Must not: put a key, an address, a member id or a block number into a metric label. One deliberate
exception, which ``sidecar.transportmetrics`` enforces: the per-peer transport series (with a ``peer``
label) name the peer by its mesh IP, public and bounded by the cluster's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from sidecar.buildinfo import BuildInfo, register_build_gauge
from sidecar.core.peerscreen import EXCLUSION_REASONS
from sidecar.core.status import NodeStatus
from sidecar.metricvocab import (
    CHAIN_ERROR_KINDS,
    CONNECTION_DROPS,
    CSK_PULL_RESULTS,
    CSK_REFUSALS,
    ENDPOINT_UPDATES,
    EVENT_MODES,
    HEARTBEAT_REJECTIONS,
    HTTP_SURFACES,
    LIVENESS_DIRECTIONS,
    NAN,
    PASS_RPC_BUCKETS,
    PEER_CHANGES,
    PEER_STATES,
    PHASES,
    PUSH_REJECTIONS,
    RECONCILE_RESULTS,
    RECONCILE_STEPS,
    REGISTRATION_RESULTS,
    RPC_QUORUM_FAILURES,
    RPC_SOURCES,
    STEP_FAILURES,
    WEI_PER_ETHER,
    ChainErrorKind,
    ConnectionDrop,
    CskPullResult,
    CskRefusal,
    EndpointUpdate,
    EventMode,
    HeartbeatRejection,
    HttpSurface,
    LivenessDirection,
    PeerChange,
    PushRejection,
    ReconcileResult,
    ReconcileStep,
    RegistrationResult,
    StepFailure,
    membership_fingerprint,
)
from sidecar.rpctally import RpcTally, current_tally, rpc_method_label
from sidecar.transportmetrics import (
    STREAM_ENDS,
    STREAM_REFUSALS,
    TransportMetrics,
    known_label,
)


class Metrics(TransportMetrics):
    """Every metric the sidecar exports, in one registry (a fresh one unless injected).

    The metric objects are public attributes for tests and unusual uses; callers normally use the methods,
    which check label values against the closed sets above so a label can never carry an identifier.
    """

    def __init__(self, registry: CollectorRegistry | None = None, build: BuildInfo | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.registry: Final = registry
        r = registry

        self.build_info = register_build_gauge(r, build)
        self.phase = Gauge(
            "attestmesh_phase", "1 for the node's current phase, 0 for the others.", ["phase"], registry=r
        )
        self.phase_transitions = Counter(
            "attestmesh_phase_transitions_total", "Phase changes, by from and to phase.",
            ["from_phase", "to_phase"], registry=r,
        )  # fmt: skip
        self.phase_unexpected_transitions = Counter(
            "attestmesh_phase_unexpected_transitions_total",
            "Phase changes that the transition table does not allow (logged, not crashed on).",
            registry=r,
        )
        self.peers = Gauge(
            "attestmesh_peers",
            "Peers the chain wants, the device has, and that are live.",
            ["state"],
            registry=r,
        )
        self.peers_excluded = Gauge(
            "attestmesh_peers_excluded",
            "Member records kept off the WireGuard device because they cannot be used, by reason.",
            ["reason"],
            registry=r,
        )
        self.peer_changes = Counter(
            "attestmesh_peer_changes_total", "WireGuard peer changes applied.", ["change"], registry=r
        )
        self.reconcile_passes = Counter(
            "attestmesh_reconcile_passes_total", "Reconcile passes by result.", ["result"], registry=r
        )
        self.step_failures = Counter(
            "attestmesh_reconcile_step_failures_total",
            "Reconcile steps that failed, by step and class (transient: retried; terminal: reported).",
            ["step", "failure"],
            registry=r,
        )
        self.heartbeats_sent = Counter("attestmesh_heartbeats_sent_total", "Heartbeats sent.", registry=r)
        self.heartbeats_received = Counter(
            "attestmesh_heartbeats_received_total", "Heartbeats accepted.", registry=r
        )
        self.heartbeats_rejected = Counter(
            "attestmesh_heartbeats_rejected_total", "Heartbeats dropped, by reason.", ["reason"], registry=r
        )
        self.peer_liveness_transitions = Counter(
            "attestmesh_peer_liveness_transitions_total", "Peers going live (up) or silent (down).",
            ["direction"], registry=r,
        )  # fmt: skip
        self.csk_requests_served = Counter(
            "attestmesh_csk_requests_served_total", "CSK requests answered with a sealed key.", registry=r
        )
        self.csk_requests_refused = Counter(
            "attestmesh_csk_requests_refused_total",
            "CSK requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.csk_pull_attempts = Counter(
            "attestmesh_csk_pull_attempts_total", "CSK pulls from peers, by result.", ["result"], registry=r
        )
        self.http_rejected = Counter(
            "attestmesh_http_rejected_total", "HTTP requests rejected with a 4xx, by surface.", ["surface"],
            registry=r,
        )  # fmt: skip
        self.http_clients_gone = Counter(
            "attestmesh_http_client_gone_total", "Clients that hung up mid-request, by surface.", ["surface"],
            registry=r,
        )  # fmt: skip
        self.http_connections_dropped = Counter(
            "attestmesh_http_connections_dropped_total",
            "Connections closed by the server's limits, by surface and reason (over_limit: refused over the "
            "connection cap; header_timeout: no complete request head in time).",
            ["surface", "reason"],
            registry=r,
        )
        self.chain_errors = Counter(
            "attestmesh_chain_errors_total", "Chain errors by class.", ["kind"], registry=r
        )
        self.chain_logs_polled = Counter(
            "attestmesh_chain_logs_polled_total", "Cluster event logs read by polling.", registry=r
        )
        self.chain_logs_pushed = Counter(
            "attestmesh_chain_logs_pushed_total",
            "Cluster event logs first handled from the indexer's push stream.",
            registry=r,
        )
        self.push_rejected = Counter(
            "attestmesh_push_rejected_total",
            "Pushed indexer messages rejected (the stream is torn down), by reason.",
            ["reason"],
            registry=r,
        )
        self.push_connected = Gauge(
            "attestmesh_push_connected",
            "1 while a verified push session with the registered indexer is open.",
            registry=r,
        )
        self.event_mode = Gauge(
            "attestmesh_event_mode", "1 for the event source's current mode, 0 for the other.", ["mode"],
            registry=r,
        )  # fmt: skip
        self.registration_attempts = Counter(
            "attestmesh_registration_attempts_total", "Registration transactions, by result.", ["result"],
            registry=r,
        )  # fmt: skip
        self.rpc_calls = Counter(
            "attestmesh_rpc_calls_total", "JSON-RPC calls by method.", ["method"], registry=r
        )
        self.rpc_calls_by_source = Counter(
            "attestmesh_rpc_calls_by_source_total",
            "JSON-RPC calls by who made them: a reconcile pass, the chain-log poller, the push subscriber.",
            ["source"],
            registry=r,
        )
        self.pass_rpc_calls = Histogram(
            "attestmesh_reconcile_pass_rpc_calls",
            "JSON-RPC calls made by one reconcile pass.",
            buckets=PASS_RPC_BUCKETS,
            registry=r,
        )
        self.endpoint_updates = Counter(
            "attestmesh_endpoint_updates_total",
            "setEndpoint decisions: sent, failed, or deferred (rate-limited: the chain still shows another).",
            ["result"],
            registry=r,
        )
        self.rpc_provider_up = Gauge(
            "attestmesh_rpc_provider_up",
            "1 when the JSON-RPC provider (its index in ATTESTMESH_RPC_URLS) answered the last snapshot read "
            "with the accepted snapshot, 0 when it failed or disagreed.",
            ["provider"],
            registry=r,
        )
        self.rpc_disagreements = Counter(
            "attestmesh_rpc_disagreements_total",
            "Snapshot reads where providers answered differently (accepted by a quorum or not).",
            registry=r,
        )
        self.rpc_quorum_failures = Counter(
            "attestmesh_rpc_quorum_failures_total",
            "Snapshot reads that no quorum of providers vouched for, by reason.",
            ["reason"],
            registry=r,
        )

        self.csk_held = Gauge(
            "attestmesh_csk_held",
            "1 while the node holds the current epoch's cluster shared key, verified against the commitment.",
            registry=r,
        )
        self.chain_reachable = Gauge(
            "attestmesh_chain_reachable",
            "1 when the last reconcile pass read the chain (a quorum of providers agreeing), else 0.",
            registry=r,
        )
        self.membership_fingerprint = Gauge(
            "attestmesh_membership_digest_fingerprint",
            "The first 48 bits of /healthz membership_digest as an integer: equal on every node that reads "
            "the same member set, so comparable across nodes (NaN before the first snapshot).",
            registry=r,
        )
        self.signer_balance = Gauge(
            "attestmesh_signer_balance_ether",
            "The node's signer balance in ether at the last read (NaN before the first read).",
            registry=r,
        )
        self.membership_fingerprint.set(NAN)
        self.signer_balance.set(NAN)

        self._transport_metrics(r)

        for name in PHASES:
            self.phase.labels(phase=name).set(0)
        for surface in HTTP_SURFACES:
            for drop in CONNECTION_DROPS:
                self.http_connections_dropped.labels(surface=surface, reason=drop)
        for step in RECONCILE_STEPS:
            for failure in STEP_FAILURES:
                self.step_failures.labels(step=step, failure=failure)
        self.set_event_mode("poll")
        for labelled, values in (
            (self.peers, PEER_STATES),
            (self.peer_changes, PEER_CHANGES),
            (self.peers_excluded, EXCLUSION_REASONS),
            (self.reconcile_passes, RECONCILE_RESULTS),
            (self.heartbeats_rejected, HEARTBEAT_REJECTIONS),
            (self.peer_liveness_transitions, LIVENESS_DIRECTIONS),
            (self.csk_requests_refused, CSK_REFUSALS),
            (self.csk_pull_attempts, CSK_PULL_RESULTS),
            (self.http_rejected, HTTP_SURFACES),
            (self.http_clients_gone, HTTP_SURFACES),
            (self.chain_errors, CHAIN_ERROR_KINDS),
            (self.rpc_quorum_failures, RPC_QUORUM_FAILURES),
            (self.registration_attempts, REGISTRATION_RESULTS),
            (self.endpoint_updates, ENDPOINT_UPDATES),
            (self.push_rejected, PUSH_REJECTIONS),
            (self.rpc_calls_by_source, RPC_SOURCES),
            (self.transport_streams_refused, STREAM_REFUSALS),
            (self.transport_streams_closed, STREAM_ENDS),
        ):
            for value in values:
                labelled.labels(value)  # creates the series at zero

    # phases
    def set_phase(self, phase: str) -> None:
        """Mark ``phase`` as current (1) and every other phase 0."""
        known_label(phase, PHASES, "phase")
        for name in PHASES:
            self.phase.labels(phase=name).set(1 if name == phase else 0)

    def record_phase(self, from_phase: str | None, to_phase: str, expected: bool = True) -> None:
        """Record a phase change: the gauge follows ``to_phase``; a change from a known phase is counted,
        an unexpected one also on its own counter. ``from_phase`` is None for the first observation."""
        self.set_phase(to_phase)
        if from_phase is None:
            return
        self.phase_transitions.labels(
            from_phase=known_label(from_phase, PHASES, "phase"), to_phase=to_phase
        ).inc()
        if not expected:
            self.phase_unexpected_transitions.inc()

    # peers and reconcile
    def set_peer_counts(self, *, desired: int, configured: int, live: int) -> None:
        self.peers.labels(state="desired").set(desired)
        self.peers.labels(state="configured").set(configured)
        self.peers.labels(state="live").set(live)

    def set_peers_excluded(self, counts: Mapping[str, int]) -> None:
        """Set ``attestmesh_peers_excluded{reason}`` for every reason (a reason not in ``counts`` is 0)."""
        for reason in EXCLUSION_REASONS:
            self.peers_excluded.labels(reason=reason).set(counts.get(reason, 0))

    def peer_changed(self, change: PeerChange, count: int = 1) -> None:
        self.peer_changes.labels(known_label(change, PEER_CHANGES, "change")).inc(count)

    def reconcile_pass(self, result: ReconcileResult) -> None:
        self.reconcile_passes.labels(known_label(result, RECONCILE_RESULTS, "result")).inc()

    def step_failed(self, step: ReconcileStep, failure: StepFailure) -> None:
        self.step_failures.labels(step=step, failure=failure).inc()

    # heartbeats and liveness
    def heartbeat_sent(self, count: int = 1) -> None:
        self.heartbeats_sent.inc(count)

    def heartbeat_received(self) -> None:
        self.heartbeats_received.inc()

    def heartbeat_rejected(self, reason: HeartbeatRejection) -> None:
        self.heartbeats_rejected.labels(known_label(reason, HEARTBEAT_REJECTIONS, "reason")).inc()

    def liveness_changed(self, direction: LivenessDirection) -> None:
        self.peer_liveness_transitions.labels(known_label(direction, LIVENESS_DIRECTIONS, "direction")).inc()

    # CSK
    def csk_served(self) -> None:
        self.csk_requests_served.inc()

    def csk_refused(self, reason: CskRefusal) -> None:
        self.csk_requests_refused.labels(known_label(reason, CSK_REFUSALS, "reason")).inc()

    def csk_pull_attempt(self, result: CskPullResult) -> None:
        self.csk_pull_attempts.labels(known_label(result, CSK_PULL_RESULTS, "result")).inc()

    # HTTP, chain, registration
    def http_rejection(self, surface: HttpSurface) -> None:
        self.http_rejected.labels(known_label(surface, HTTP_SURFACES, "surface")).inc()

    def http_client_gone(self, surface: HttpSurface) -> None:
        self.http_clients_gone.labels(known_label(surface, HTTP_SURFACES, "surface")).inc()

    def http_dropped(self, surface: HttpSurface, reason: ConnectionDrop) -> None:
        self.http_connections_dropped.labels(
            surface=surface, reason=known_label(reason, CONNECTION_DROPS, "drop")
        ).inc()

    def chain_error(self, kind: ChainErrorKind) -> None:
        self.chain_errors.labels(known_label(kind, CHAIN_ERROR_KINDS, "kind")).inc()

    def logs_polled(self, count: int) -> None:
        self.chain_logs_polled.inc(count)

    def logs_pushed(self, count: int = 1) -> None:
        self.chain_logs_pushed.inc(count)

    # the event source
    def push_rejection(self, reason: PushRejection) -> None:
        self.push_rejected.labels(known_label(reason, PUSH_REJECTIONS, "reason")).inc()

    def set_push_connected(self, connected: bool) -> None:
        self.push_connected.set(1 if connected else 0)

    def set_event_mode(self, mode: EventMode) -> None:
        """Mark ``mode`` as current (1) and the other mode 0."""
        known_label(mode, EVENT_MODES, "mode")
        for name in EVENT_MODES:
            self.event_mode.labels(mode=name).set(1 if name == mode else 0)

    def registration_attempt(self, result: RegistrationResult) -> None:
        self.registration_attempts.labels(known_label(result, REGISTRATION_RESULTS, "result")).inc()

    def endpoint_update(self, result: EndpointUpdate) -> None:
        self.endpoint_updates.labels(known_label(result, ENDPOINT_UPDATES, "result")).inc()

    # the node's status, comparable across nodes
    def record_status(self, status: NodeStatus) -> None:
        """Set the gauges that follow the status: CSK held, chain reachable, membership fingerprint."""
        self.csk_held.set(1 if status.csk_held else 0)
        self.chain_reachable.set(1 if status.chain_reachable else 0)
        digest = status.membership_digest
        self.membership_fingerprint.set(NAN if digest is None else membership_fingerprint(digest))

    def set_signer_balance(self, wei: int) -> None:
        self.signer_balance.set(wei / WEI_PER_ETHER)

    def set_rpc_providers(self, up: Iterable[bool]) -> None:
        """Set ``attestmesh_rpc_provider_up`` for every provider, by index."""
        for index, answered in enumerate(up):
            self.rpc_provider_up.labels(provider=str(index)).set(1 if answered else 0)

    def rpc_call(self, method: str) -> None:
        """Count a JSON-RPC call by method and by source (the ``rpc_tally`` it was made in, if any);
        anything not shaped like a method name is counted as ``other``."""
        name = rpc_method_label(method)
        self.rpc_calls.labels(name).inc()
        tally = current_tally()
        self.rpc_calls_by_source.labels("other" if tally is None else tally.source).inc()
        if tally is not None:
            tally.count(name)

    def pass_rpc(self, tally: RpcTally) -> None:
        """Record how many JSON-RPC calls one reconcile pass made."""
        self.pass_rpc_calls.observe(tally.total)
