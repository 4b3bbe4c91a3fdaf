"""The health surface: ``/healthz`` (readiness, with the full status body), ``/livez``, ``/metrics``.

Owns only the HTTP mapping: the status comes from a callable the drivers keep current, the metrics from the
injected registry; and the port's connection limits (``HEALTH_LIMITS``: a cap on concurrent connections
and a request-head deadline, ``sidecar.http.limits``), so neither a flood nor a slowloris client can starve
the probes. Bound before anything else at start-up so every phase is observable (the prior
implementation bound it last and was blind while booting).

Must not: compute health (``NodeStatus.healthy`` decides), or expose anything but public values.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from sidecar.core.status import NodeStatus, healthz_body
from sidecar.http.limits import ConnectionLimits
from sidecar.http.server import Runner, error_response, json_errors, start_tcp
from sidecar.observability import Metrics

__all__ = ["HEALTH_LIMITS", "Runner", "health_app", "start_health", "start_tcp"]

log = structlog.get_logger("sidecar.http.health")

NO_STORE = {"Cache-Control": "no-store"}

#: The health port's limits: probes and scrapers need a handful of connections, each of which sends its
#: request at once. Anything beyond is refused, a slow head closed (counted in
#: ``attestmesh_http_connections_dropped_total{surface="health",reason}``).
HEALTH_LIMITS = ConnectionLimits(max_connections=32, header_timeout=10.0)


def health_app(status: Callable[[], NodeStatus], metrics: Metrics) -> web.Application:
    """Build the health application: 200 on ``/healthz`` iff ``status().healthy``, else 503."""

    async def healthz(_request: web.Request) -> web.Response:
        try:
            current = status()
        except Exception:
            log.exception("health.status_failed")
            return error_response(503, "status unavailable", NO_STORE)
        return web.json_response(
            healthz_body(current), status=200 if current.healthy else 503, headers=NO_STORE
        )

    async def livez(_request: web.Request) -> web.Response:
        return web.json_response({"alive": True}, headers=NO_STORE)

    app = web.Application(middlewares=[json_errors("health", metrics)], client_max_size=1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    return app


async def start_health(
    app: web.Application, host: str, port: int, metrics: Metrics, *, limits: ConnectionLimits = HEALTH_LIMITS
) -> Runner:
    """Serve the health application on ``host:port`` behind ``limits`` (drops counted per reason)."""
    return await start_tcp(
        app,
        host,
        port,
        name="health",
        limits=limits,
        on_drop=lambda reason: metrics.http_dropped("health", reason),
    )
