"""The stand-in's metrics and HTTP surface: Prometheus text at ``/metrics``, live connections at ``/status``.

Owns ``GatewayMetrics`` (every metric in one injected registry; the label vocabularies; label sets created
at zero), ``ActiveConnections`` (the live count per app and kind, which the per-app limit and ``/status``
read and the ``active_connections`` gauge mirrors) and ``metrics_app`` (the aiohttp application).

Series (``kind`` is ``terminate``, ``passthrough`` or ``h2``, or ``none`` before a name was routed)::

    attestmesh_gateway_connections_total{kind,outcome}   every accepted TCP connection, once, by outcome
    attestmesh_gateway_closed_total{kind,reason}         every relayed connection, once, by how it ended
    attestmesh_gateway_bytes_total{kind,direction}       payload relayed (plaintext when terminated)
    attestmesh_gateway_active_connections{kind,app_id}   relaying now (series per app of the route table)
    attestmesh_gateway_route_instances                   instances in the current route table
    attestmesh_gateway_route_reloads_total{result}       routes file reads: loaded, rejected, missing

Must not: put an SNI name, an address, a port or anything a client chose into a label (``app_id`` comes
from the route table only, so its label set is bounded by the apps the devnet announced).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, TypedDict, get_args

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.aiohttp import make_aiohttp_handler

KindLabel = Literal["none", "terminate", "passthrough", "h2"]
RoutedKind = Literal["terminate", "passthrough", "h2"]
Outcome = Literal[
    "relayed",
    "no_sni",
    "not_tls",
    "bad_name",
    "foreign_domain",
    "reserved_id",
    "unknown_route",
    "port_policy_unknown",
    "port_not_allowed",
    "app_limit",
    "connect_failed",
    "handshake_timeout",
    "tls_failed",
]
CloseReason = Literal["eof", "idle", "lifetime", "error", "shutdown"]
Direction = Literal["to_app", "to_client"]
ReloadResult = Literal["loaded", "rejected", "missing"]

KINDS: Final[tuple[KindLabel, ...]] = get_args(KindLabel)
ROUTED_KINDS: Final[tuple[RoutedKind, ...]] = get_args(RoutedKind)
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
CLOSE_REASONS: Final[tuple[CloseReason, ...]] = get_args(CloseReason)
DIRECTIONS: Final[tuple[Direction, ...]] = get_args(Direction)
RELOAD_RESULTS: Final[tuple[ReloadResult, ...]] = get_args(ReloadResult)

UNROUTED_OUTCOMES: Final[tuple[Outcome, ...]] = (
    "no_sni",
    "not_tls",
    "bad_name",
    "foreign_domain",
    "handshake_timeout",
)
"""The outcomes of a connection refused before its name routed (``kind="none"``); the rest have a kind."""


class GatewayMetrics:
    """Every metric of the stand-in, registered in ``registry`` with the known label sets at zero."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.connections = Counter(
            "attestmesh_gateway_connections",
            "Connections accepted by the gateway stand-in, by route kind and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.closed = Counter(
            "attestmesh_gateway_closed",
            "Relayed connections that ended, by route kind and reason.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "attestmesh_gateway_bytes",
            "Payload bytes relayed (plaintext on terminated routes), by route kind and direction.",
            ["kind", "direction"],
            registry=self.registry,
        )
        self.active = Gauge(
            "attestmesh_gateway_active_connections",
            "Connections relaying now, by route kind and app id.",
            ["kind", "app_id"],
            registry=self.registry,
        )
        self.route_instances = Gauge(
            "attestmesh_gateway_route_instances",
            "Instances in the gateway stand-in's current route table.",
            registry=self.registry,
        )
        self.route_reloads = Counter(
            "attestmesh_gateway_route_reloads",
            "Reads of the routes file, by result.",
            ["result"],
            registry=self.registry,
        )
        for outcome in UNROUTED_OUTCOMES:
            self.connections.labels("none", outcome)
        for kind in ROUTED_KINDS:
            for outcome in OUTCOMES:
                if outcome not in UNROUTED_OUTCOMES or outcome == "handshake_timeout":
                    self.connections.labels(kind, outcome)
            for reason in CLOSE_REASONS:
                self.closed.labels(kind, reason)
            for direction in DIRECTIONS:
                self.bytes.labels(kind, direction)
        for result in RELOAD_RESULTS:
            self.route_reloads.labels(result)

    def connection(self, kind: KindLabel, outcome: Outcome) -> None:
        """Count one accepted connection's outcome."""
        self.connections.labels(_known(kind, KINDS), _known(outcome, OUTCOMES)).inc()

    def connection_closed(self, kind: RoutedKind, reason: CloseReason) -> None:
        """Count one relayed connection's end."""
        self.closed.labels(_known(kind, ROUTED_KINDS), _known(reason, CLOSE_REASONS)).inc()

    def relayed_bytes(self, kind: RoutedKind, direction: Direction, count: int) -> None:
        """Add ``count`` relayed payload bytes."""
        self.bytes.labels(kind, direction).inc(count)

    def set_active(self, kind: RoutedKind, app_id: str, count: int) -> None:
        """Mirror the live connection count of one app and kind."""
        self.active.labels(kind, app_id).set(count)

    def route_reload(self, result: ReloadResult) -> None:
        """Count one read of the routes file."""
        self.route_reloads.labels(_known(result, RELOAD_RESULTS)).inc()

    def routes_installed(self, instances: int, app_ids: Iterable[str]) -> None:
        """Record a new route table: its size, and a zero ``active_connections`` series per new app."""
        self.route_instances.set(instances)
        for app_id in app_ids:
            for kind in ROUTED_KINDS:
                self.active.labels(kind, app_id)


def _known(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown label {value!r}; expected one of {', '.join(allowed)}")
    return value


class ActiveEntry(TypedDict):
    """One row of ``/status``: how many connections of one kind relay to one app now."""

    app_id: str
    kind: RoutedKind
    count: int


class ActiveConnections:
    """Live relayed connections per (app id, kind) and reserved slots per app (the per-app limit)."""

    def __init__(self, metrics: GatewayMetrics, max_per_app: int) -> None:
        self._metrics = metrics
        self._max_per_app = max_per_app
        self._slots: dict[str, int] = {}
        self._active: dict[tuple[str, RoutedKind], int] = {}

    def reserve(self, app_id: str) -> bool:
        """Take a slot for a connection to ``app_id`` (any instance, any kind); False at the limit."""
        held = self._slots.get(app_id, 0)
        if self._max_per_app and held >= self._max_per_app:
            return False
        self._slots[app_id] = held + 1
        return True

    def release(self, app_id: str) -> None:
        """Give back a slot taken by ``reserve``."""
        held = self._slots.get(app_id, 0) - 1
        if held > 0:
            self._slots[app_id] = held
        else:
            self._slots.pop(app_id, None)

    def opened(self, app_id: str, kind: RoutedKind) -> None:
        """A reserved connection started relaying."""
        count = self._active.get((app_id, kind), 0) + 1
        self._active[(app_id, kind)] = count
        self._metrics.set_active(kind, app_id, count)

    def closed(self, app_id: str, kind: RoutedKind) -> None:
        """A relaying connection ended."""
        count = self._active.get((app_id, kind), 0) - 1
        if count > 0:
            self._active[(app_id, kind)] = count
        else:
            self._active.pop((app_id, kind), None)
        self._metrics.set_active(kind, app_id, max(count, 0))

    def snapshot(self) -> list[ActiveEntry]:
        """The live connections, one row per app and kind, sorted."""
        return [
            ActiveEntry(app_id=app_id, kind=kind, count=count)
            for (app_id, kind), count in sorted(self._active.items())
        ]


def metrics_app(metrics: GatewayMetrics, active: ActiveConnections) -> web.Application:
    """The HTTP surface: ``GET /metrics`` (Prometheus text) and ``GET /status`` (JSON)."""

    async def status(_request: web.Request) -> web.Response:
        connections = active.snapshot()
        return web.json_response({"connections": connections, "total": sum(c["count"] for c in connections)})

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/status", status)
    return app
