"""The indexer process: health first, then key, chain and registry check, then the follower; bounded shutdown.

Owns ``IndexerService``: the one aiohttp application on ``listen_addr`` (``/healthz``, ``/status``,
``/metrics``, ``/v1/subscribe``) bound before anything else (prior-art field note 8: a catch-up must never
block health); the start-up sequence in the background (signing key from its own ``GetKey`` at
``attestmesh/indexer/v<KEY_VERSION>`` — an Ed25519 seed, kept in ``SecretBytes`` — and the chain
connection, each retried with capped backoff; then a read of ``IndexerRegistry.current()`` compared with its
own endpoint, code id and public key, repeated every ``registry_check_interval``: a mismatch is logged when
it appears and shown in ``/status``, never fatal); the supervised follower;
and shutdown on SIGTERM/SIGINT: every session closed with ``shutdown``, tasks cancelled, server and
connections closed, all within ``shutdown_timeout`` (a second signal exits at once).

Must not: log or expose the signing seed, exit on a registry mismatch, or serve subscribers before the key
and the chain connection exist (they are closed ``unavailable`` and retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from indexer.chainindex import ChainIndex
from indexer.follower import Follower
from indexer.heads import HeadWatcher
from indexer.hub import Hub
from indexer.metrics import IndexerMetrics
from indexer.settings import IndexerSettings
from sidecar.buildinfo import build_info
from sidecar.chain.contracts import IndexerRegistryClient
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.core.backoff import Backoff
from sidecar.core.ids import Bytes32
from sidecar.core.keys import ed25519_public_key
from sidecar.drivers.supervisor import StopSignal, Supervisor
from sidecar.dstack.agent import GuestAgent, GuestAgentError
from sidecar.http.server import Runner, error_middleware, start_tcp

log = structlog.get_logger("indexer")


def key_path(version: int) -> str:
    """The ``GetKey`` path of the indexer's signing key; rotating the key means bumping the version."""
    return f"attestmesh/indexer/v{version}"


KEY_PATH: Final = key_path(1)
RETRY_MIN: Final = 0.5
RETRY_MAX: Final = 30.0


@dataclass(frozen=True, slots=True)
class RegistryCheck:
    """The start-up comparison of ``IndexerRegistry.current()`` with this indexer (shown in ``/status``)."""

    checked: bool
    registered: bool = False
    endpoint_match: bool | None = None  # None: no PUBLIC_URL configured, nothing to compare
    code_id_match: bool | None = None  # None: no CODE_ID configured
    pub_key_match: bool = False
    error: str = ""

    @property
    def matches(self) -> bool:
        return (
            self.checked
            and self.registered
            and self.pub_key_match
            and self.endpoint_match is not False
            and self.code_id_match is not False
        )


class IndexerService:
    """The whole indexer; ``start()`` then ``shutdown()``, or ``run()`` for the process entry point."""

    def __init__(
        self,
        settings: IndexerSettings,
        *,
        agent: GuestAgent | None = None,
        metrics: IndexerMetrics | None = None,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.build = build_info()
        self.metrics = metrics or IndexerMetrics(build=self.build)
        self.agent = agent or GuestAgent()
        self.index = ChainIndex(settings.start_block, settings.clusters, retain_logs=settings.retain_logs)
        self.conn: ChainConnection | None = None
        self.hub = Hub(
            self.index,
            self.metrics,
            queue_bound=settings.queue_bound,
            ack_timeout=settings.ack_timeout,
            hello_freshness_ms=int(settings.hello_freshness * 1000),
            head=lambda: self.follower.head,
            now_ms=now_ms,
        )
        self.follower = Follower(
            lambda: self.conn,
            self.index,
            factory=settings.cluster_factory,
            confirmations=settings.confirmations,
            max_range=settings.max_log_range,
            poll_interval=settings.poll_interval,
            listener=self.hub,
            metrics=self.metrics,
        )
        self.heads = (
            None
            if settings.ws_url is None
            else HeadWatcher(
                settings.ws_url,
                self.follower.head_seen,
                on_change=lambda up: self.metrics.heads_subscribed.set(1 if up else 0),
            )
        )
        self.public_key: Bytes32 | None = None
        self.registry = RegistryCheck(checked=False)
        self.supervisor = Supervisor()
        self.runner: Runner | None = None
        self._bootstrap: asyncio.Task[None] | None = None
        self.stop_signal = StopSignal("indexer")
        self._stopped = False

    # --- HTTP --------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        errors = error_middleware(
            "indexer", rejected=self.metrics.http_rejected.inc, client_gone=self.metrics.http_clients_gone.inc
        )
        app = web.Application(middlewares=[errors])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/subscribe", self.hub.subscribe)
        return app

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the indexer is healthy (caught up, lag within the threshold) and the /healthz body."""
        lag = self.follower.lag
        ready = self.follower.ready and self.public_key is not None
        healthy = ready and lag is not None and lag <= self.settings.max_head_lag
        body = {
            "healthy": healthy,
            "ready": ready,
            "head_block": self.follower.head,
            "indexed_through": self.index.through if self.index.through >= self.index.start_block else None,
            "lag_blocks": lag,
            "max_head_lag": self.settings.max_head_lag,
            "confirmations": self.settings.confirmations,
            "start_block": self.settings.start_block,
            "version": self.build.version,
            "build": self.build.to_json(),
        }
        return healthy, body

    async def _healthz(self, _: web.Request) -> web.Response:
        healthy, body = self.health()
        return web.json_response(body, status=200 if healthy else 503)

    async def _status(self, _: web.Request) -> web.Response:
        health = self.health()[1]
        return web.json_response(
            {
                "public_key": None if self.public_key is None else str(self.public_key),
                "key_version": self.settings.key_version,
                "code_id": None if self.settings.code_id is None else str(self.settings.code_id),
                "public_url": self.settings.public_url or None,
                "chain_id": self.settings.chain_id,
                "cluster_factory": None
                if self.settings.cluster_factory is None
                else str(self.settings.cluster_factory),
                "clusters": [
                    {
                        "address": str(c),
                        "since": clog.since,
                        "explicit": clog.explicit,
                        "logs": len(clog.logs),
                    }
                    for c, clog in self.index.clusters.items()
                ],
                "subscribers": len(self.hub.sessions),
                "heads_subscribed": None if self.heads is None else self.heads.subscribed,
                "registry": {**asdict(self.registry), "matches": self.registry.matches},
                "health": health,
            }
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    # --- start-up ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the HTTP surface, then bring up key, chain and follower in the background."""
        addr = self.settings.listen_addr
        self.runner = await start_tcp(
            self.app(), addr.host, addr.port, name="indexer", close_timeout=self.settings.shutdown_timeout / 4
        )
        log.info("indexer.listening", addr=f"{addr.host}:{self.runner.port}")
        self._bootstrap = asyncio.create_task(self._bring_up(), name="bootstrap")

    @property
    def port(self) -> int:
        assert self.runner is not None
        return self.runner.port

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        while True:
            try:
                await attempt()
            except (GuestAgentError, ChainError, OSError) as exc:
                if backoff.failures == 0:
                    log.warning(f"{what}.failed", error=str(exc)[:200], kind=type(exc).__name__)
                await asyncio.sleep(backoff.next())
                continue
            if backoff.failures:
                log.info(f"{what}.recovered")
            return

    async def _bring_up(self) -> None:
        await self._retry("signing_key", self._load_key)
        await self._retry("chain", self._connect)
        await self._check_registry()
        self.supervisor.start("follower", self.follower.run)
        if self.heads is not None:
            self.supervisor.start("heads", self.heads.run)
        self.supervisor.start("registry", self._watch_registry)
        log.info(
            "indexer.started",
            public_key=str(self.public_key),
            key_version=self.settings.key_version,
            start_block=self.settings.start_block,
            version=self.build.version,
            commit=self.build.commit,
            pid=os.getpid(),
        )

    async def _load_key(self) -> None:
        derived = await self.agent.get_key(key_path(self.settings.key_version))
        self.public_key = Bytes32(ed25519_public_key(derived.key))
        self.hub.key, self.hub.public_key = derived.key, self.public_key
        log.info("indexer.signing_key_derived", public_key=str(self.public_key))

    async def _connect(self) -> None:
        s = self.settings
        self.conn = await connect(s.rpc_url, timeout=s.rpc_timeout, expected_chain_id=s.chain_id)
        self.hub.conn = self.conn

    async def _watch_registry(self) -> None:
        """Repeat the registry read-back: a ``setIndexer`` after start-up (or a rotation) shows in /status."""
        while True:
            await asyncio.sleep(self.settings.registry_check_interval)
            await self._check_registry()

    async def _check_registry(self) -> None:
        s = self.settings
        if s.indexer_registry is None or self.conn is None or self.public_key is None:
            self.registry = RegistryCheck(checked=False, error="no registry configured")
            log.warning("registry.not_checked", reason="no registry configured")
            return
        try:
            record = await IndexerRegistryClient(self.conn, s.indexer_registry).current()
        except ChainError as exc:
            self.registry = RegistryCheck(checked=False, error=str(exc)[:200])
            log.warning("registry.read_failed", error=str(exc)[:200])
            return
        previous = self.registry
        self.registry = RegistryCheck(
            checked=True,
            registered=record.registered,
            endpoint_match=None if not s.public_url else record.endpoint == s.public_url,
            code_id_match=None if s.code_id is None else record.code_id == s.code_id,
            pub_key_match=record.pub_key == self.public_key,
        )
        if self.registry == previous:
            return  # logged when it changes, not on every read
        if self.registry.matches:
            log.info("registry.matched", endpoint=record.endpoint)
        else:
            log.warning(
                "registry.mismatch",
                registered=record.registered,
                registry_endpoint=record.endpoint,
                registry_public_key=str(record.pub_key),
                registry_code_id=str(record.code_id),
                endpoint_match=self.registry.endpoint_match,
                code_id_match=self.registry.code_id_match,
                pub_key_match=self.registry.pub_key_match,
            )

    # --- running and stopping ----------------------------------------------------------------------------

    async def run(self) -> int:
        """The process: serve until SIGTERM/SIGINT, then shut down within the timeout."""
        self.stop_signal.install()
        await self.start()
        await self.stop_signal.wait()
        await self.shutdown()
        return 0

    def request_stop(self) -> None:
        self.stop_signal.request()

    async def shutdown(self) -> None:
        """Close every session with ``shutdown``, stop the tasks and the server; bounded by the timeout."""
        if self._stopped:
            return
        self._stopped = True
        timeout = self.settings.shutdown_timeout
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.hub.close_all("shutdown", "the indexer is stopping", timeout / 2)
                if self._bootstrap is not None:
                    self._bootstrap.cancel()
                    await asyncio.wait({self._bootstrap}, timeout=timeout / 8)
                await self.supervisor.stop(timeout / 8)
                if self.runner is not None:
                    await self.runner.close()
                if self.conn is not None:
                    await self.conn.close()
                await self.agent.close()
        log.info("indexer.stopped", seconds=round(time.monotonic() - started, 3))
