"""The indexer's Prometheus metrics, in one injected registry, every known label set created at zero.

Owns ``IndexerMetrics`` (the sidecar's ``Metrics`` style: public metric attributes, closed label sets).
Must not put a cluster, a member id, a key or a block number into a label.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from sidecar.buildinfo import BuildInfo, register_build_gauge
from sidecar.core.indexerwire import CLOSE_REASONS

HelloOutcome = Literal[
    "accepted",
    "not_member",
    "wrong_indexer",
    "bad_signature",
    "stale",
    "future",
    "replayed",
    "not_followed",
    "unavailable",
]
HELLO_OUTCOMES: Final[tuple[str, ...]] = get_args(HelloOutcome)
CLOSE_LABELS: Final[tuple[str, ...]] = (*sorted(CLOSE_REASONS), "client_gone")


class IndexerMetrics:
    """Every metric the indexer exports (a fresh registry unless one is injected)."""

    def __init__(self, registry: CollectorRegistry | None = None, build: BuildInfo | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.registry: Final = registry
        r = registry
        self.build_info = register_build_gauge(r, build)  # the sidecar's: which code runs
        self.head_block = Gauge("attestmesh_indexer_head_block", "Latest block seen.", registry=r)
        self.indexed_through = Gauge(
            "attestmesh_indexer_indexed_through_block", "Every followed log up to this block is indexed.",
            registry=r,
        )  # fmt: skip
        self.head_lag = Gauge(
            "attestmesh_indexer_head_lag_blocks", "Confirmed blocks not yet indexed.", registry=r
        )
        self.heads_subscribed = Gauge(
            "attestmesh_indexer_heads_subscribed",
            "1 while the newHeads subscription is open (0: the follower only polls).",
            registry=r,
        )
        self.clusters = Gauge("attestmesh_indexer_clusters", "Clusters followed.", registry=r)
        self.subscribers = Gauge("attestmesh_indexer_subscribers", "Open subscriber sessions.", registry=r)
        self.ranges_scanned = Counter(
            "attestmesh_indexer_ranges_scanned_total", "Block ranges scanned and committed.", registry=r
        )
        self.logs_indexed = Counter(
            "attestmesh_indexer_logs_indexed_total", "Cluster logs added to the index.", registry=r
        )
        self.scan_failures = Counter(
            "attestmesh_indexer_scan_failures_total", "Scans that failed and were retried.", registry=r
        )
        self.reorgs = Counter(
            "attestmesh_indexer_reorgs_total", "Reorgs detected under the index.", registry=r
        )
        self.events_sent = Counter("attestmesh_indexer_events_sent_total", "Events pushed.", registry=r)
        self.push_delay = Histogram(
            "attestmesh_indexer_push_delay_seconds",
            "From a block's logs being indexed to an event of it written to a subscriber (live delivery).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.checkpoints_sent = Counter(
            "attestmesh_indexer_checkpoints_sent_total", "Checkpoints pushed.", registry=r
        )
        self.hellos = Counter(
            "attestmesh_indexer_hellos_total", "Hellos by outcome.", ["outcome"], registry=r
        )
        self.sessions_closed = Counter(
            "attestmesh_indexer_sessions_closed_total", "Sessions ended, by close reason.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.http_rejected = Counter(
            "attestmesh_indexer_http_rejected_total", "HTTP requests answered with a 4xx.", registry=r
        )
        self.http_clients_gone = Counter(
            "attestmesh_indexer_http_client_gone_total", "Clients that hung up mid-request.", registry=r
        )
        for outcome in HELLO_OUTCOMES:
            self.hellos.labels(outcome)
        for reason in CLOSE_LABELS:
            self.sessions_closed.labels(reason)

    def hello(self, outcome: HelloOutcome) -> None:
        self.hellos.labels(outcome).inc()

    def session_closed(self, reason: str) -> None:
        self.sessions_closed.labels(reason if reason in CLOSE_LABELS else "client_gone").inc()
