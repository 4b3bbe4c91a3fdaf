"""The running stand-in: route watcher, SNI proxy and metrics surface, started and stopped together.

Owns ``GatewayService`` (``start`` from a ``GatewayConfig``; ``close`` within a bound), ``load_contexts``
and ``SHUTDOWN_SECONDS``. ``python -m devnet.gateway`` and the component tests run it the same way.

Must not: read the environment or install signal handlers (``__main__`` does), or reach anything but the
configured listen addresses and the route table's instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Final

import structlog
from prometheus_client import CollectorRegistry

from devnet.gateway.config import ConfigError, GatewayConfig
from devnet.gateway.metrics import ActiveConnections, GatewayMetrics, metrics_app
from devnet.gateway.proxy import GatewayProxy
from devnet.gateway.routes import RouteWatcher
from devnet.gateway.sni import RouteKind
from devnet.gateway.streams import terminating_context
from sidecar.http import Runner, start_tcp

SHUTDOWN_SECONDS: Final = 3.0
"""How long ``close`` waits for connections to drop and the HTTP surface to stop."""

log = structlog.get_logger("devnet.gateway")


def load_contexts(config: GatewayConfig) -> dict[RouteKind, ssl.SSLContext]:
    """The server TLS contexts of the terminated routes; ``ConfigError`` when the certificate or key fails."""
    try:
        return {
            "terminate": terminating_context(config.cert_file, config.key_file, h2=False),
            "h2": terminating_context(config.cert_file, config.key_file, h2=True),
        }
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError([f"cannot load cert_file/key_file: {reason}"]) from None


class GatewayService:
    """A started stand-in; ``port`` and ``metrics_port`` are the bound ports."""

    def __init__(
        self,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        active: ActiveConnections,
        routes: RouteWatcher,
        proxy: GatewayProxy,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.active = active
        self.routes = routes
        self.proxy = proxy
        self._http: Runner | None = None
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, config: GatewayConfig, *, registry: CollectorRegistry | None = None
    ) -> GatewayService:
        """Load the certificate and routes, bind the listener and the metrics surface, poll the routes."""
        contexts = load_contexts(config)
        metrics = GatewayMetrics(registry)
        active = ActiveConnections(metrics, config.max_connections_per_app)
        routes = RouteWatcher(config.routes_file, poll_interval=config.route_poll_interval, metrics=metrics)
        routes.refresh()
        proxy = GatewayProxy(config, routes, metrics, active, contexts)
        service = cls(config, metrics, active, routes, proxy)
        await proxy.start()
        try:
            if config.metrics_listen is not None:
                host, port = config.metrics_listen.host, config.metrics_listen.port
                service._http = await start_tcp(
                    metrics_app(metrics, active), host, port, name="gateway_metrics", close_timeout=1.0
                )
        except BaseException:
            await proxy.close(SHUTDOWN_SECONDS)
            raise
        service._watch = asyncio.create_task(service._watch_routes(), name="gateway-routes")
        log.info(
            "gateway.started",
            listen=f"{config.listen.host}:{service.port}",
            metrics_listen=f"{config.metrics_listen.host}:{service.metrics_port}"
            if config.metrics_listen
            else None,
            domain=config.domain,
            routes_file=str(config.routes_file),
        )
        return service

    @property
    def port(self) -> int:
        """The proxy's bound port."""
        return self.proxy.port

    @property
    def metrics_port(self) -> int | None:
        """The metrics surface's bound port (None without ``metrics_listen``)."""
        return self._http.port if self._http is not None else None

    async def _watch_routes(self) -> None:
        """Poll the routes file until cancelled; an unexpected failure is logged and the polling goes on."""
        while True:
            try:
                await self.routes.run()
            except Exception:  # the one broad catch of this loop: the data plane outlives a bad poll
                log.exception("gateway.routes_poll_failed")
                await asyncio.sleep(self.config.route_poll_interval)

    async def close(self, grace: float = SHUTDOWN_SECONDS) -> None:
        """Stop accepting, drop the connections, stop polling and serving metrics; bounded by ``grace``."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.proxy.close(grace)
        if self._http is not None:
            await self._http.close()
        log.info("gateway.stopped")
