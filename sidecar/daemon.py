"""The sidecar process: surfaces first, then the supervised loops, then a bounded shutdown.

Owns start-up order (``/healthz`` binds before anything else, then the app API socket, then the control
loop and the event source), the supervision of every long-running task (an eternal task that returns or
raises is logged, counted and restarted with backoff), the mesh-bound services (heartbeats, peer API)
started when the mesh IP is on the interface, the peer API's CSK responder, and shutdown: on SIGTERM or
SIGINT every task is cancelled and every server closed within ``shutdown_timeout``; a second signal exits
at once. The WireGuard interface is left up (it outlives a sidecar restart). Must not: hold protocol
rules (those are in ``sidecar.core``) or talk to web3/WireGuard directly (the adapters do).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from ipaddress import IPv4Address

import structlog

from sidecar import __version__
from sidecar.core import csk as cskcore
from sidecar.core.ids import Bytes32, MemberId, SecretBytes
from sidecar.core.liveness import Liveness, Transition
from sidecar.core.status import NodeStatus, PeerView, SelfView
from sidecar.drivers.control import Controller
from sidecar.drivers.events import ChainLogPoller, EventRouter, SharedCursor
from sidecar.drivers.heartbeats import HeartbeatService
from sidecar.drivers.push import Credentials, PushSubscriber
from sidecar.drivers.supervisor import Supervisor
from sidecar.dstack.agent import GuestAgent
from sidecar.http.appapi import app_api, start_unix
from sidecar.http.health import health_app, start_tcp
from sidecar.http.peerapi import CskAnswer, peer_api
from sidecar.http.server import Runner
from sidecar.observability import CskRefusal, Metrics
from sidecar.settings import Settings
from sidecar.wg.select import resolve_backend
from sidecar.wg.userspace import WireGuardGo, should_start

log = structlog.get_logger("sidecar.daemon")


class _AppView:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def status(self) -> NodeStatus:
        return self.controller.status

    def self_view(self) -> SelfView | None:
        return self.controller.self_view()

    def peers(self) -> list[PeerView]:
        return self.controller.peer_views()

    def csk(self) -> SecretBytes | None:
        return self.controller.csk_value()


class CskService:
    """The peer API's answer to a CSK request: pure checks in ``sidecar.core.csk``, facts from the node."""

    def __init__(self, controller: Controller, metrics: Metrics, freshness_ms: int = 30_000) -> None:
        self.controller = controller
        self.metrics = metrics
        self.gate = cskcore.CskGate(freshness_ms=freshness_ms)

    def respond(self, body: object, remote_ip: IPv4Address) -> CskAnswer:
        c = self.controller
        try:
            request, signature = cskcore.parse_request(body)
        except cskcore.CskWireError as exc:
            return self._refuse(400, "malformed", str(exc))
        csk = c.csk_value()
        if csk is None or c.member_id is None or c.identity is None:
            return self._refuse(503, "not_held", "cluster shared key not held yet")
        members = c.members_by_id()
        table = {m: (r.identity_pub, r.seal_pub) for m, r in members.items()}
        now = c.clock()
        refusal = self.gate.check(
            request,
            signature,
            me=c.member_id,
            cluster=c.settings.chain.cluster,
            members=table,
            verified_recently=lambda m: c.liveness.is_live(m, now),
            now_ms=int(time.time() * 1000),
        )
        if refusal is not None:
            return self._refuse(403, refusal.reason, refusal.reason.replace("_", " "))
        sealed = cskcore.seal(csk, members[request.requester].seal_pub)
        self.metrics.csk_requests_served.inc()
        log.info("csk.served", requester=str(request.requester), remote=str(remote_ip))
        return CskAnswer(200, {"sealed": sealed.hex()})

    def _refuse(self, status: int, reason: CskRefusal, detail: str) -> CskAnswer:
        self.metrics.csk_requests_refused.labels(reason=reason).inc()
        log.info("csk.request_refused", reason=reason)
        return CskAnswer(status, {"error": detail, "reason": reason})


EXIT_START_FAILED = 1


class Daemon:
    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        mesh = settings.mesh
        self.liveness = Liveness(window=mesh.heartbeat_interval * mesh.liveness_misses)
        self.agent = GuestAgent()
        self.controller = Controller(
            settings, self.agent, self.metrics, self.liveness, on_mesh_up=self._mesh_up
        )
        cursor = SharedCursor(self.controller.store)  # ONE cursor: poller and push subscriber share it
        self.poller = ChainLogPoller(
            connection=lambda: self.controller.conn,
            cluster=settings.chain.cluster,
            store=self.controller.store,
            wake=self.controller.wake,
            metrics=self.metrics,
            interval=settings.chain.poll_interval,
            confirmations=settings.chain.confirmations,
            max_range=settings.chain.max_log_range,
            cursor=cursor,
        )
        self.push: PushSubscriber | None = None
        if settings.chain.indexer_registry is not None:
            ev = settings.events
            self.push = PushSubscriber(
                connection=lambda: self.controller.conn,
                registry=settings.chain.indexer_registry,
                cluster=settings.chain.cluster,
                credentials=self._credentials,
                cursor=cursor,
                wake=self.controller.wake,
                metrics=self.metrics,
                registry_refresh=ev.registry_refresh,
                backoff_min=ev.push_backoff_min,
                backoff_max=ev.push_backoff_max,
                crosscheck=ev.push_crosscheck,
                ready_interval=settings.chain.poll_interval,
            )
        self.events = EventRouter(
            poller=self.poller,
            push=self.push,
            poll_interval=settings.chain.poll_interval,
            safety_interval=settings.events.poll_interval_pushed,
            metrics=self.metrics,
            on_change=self.controller.refresh_events,
        )
        self.controller.events = self.events
        self.supervisor = Supervisor()
        self.heartbeats: HeartbeatService | None = None
        self._runners: list[Runner] = []
        self._peer_runner: Runner | None = None
        self._stop = asyncio.Event()

    def _credentials(self) -> Credentials | None:
        """The hello's signer once the node is a member: its member id and identity key."""
        c = self.controller
        if c.identity is None or c.member_id is None:
            return None
        return Credentials(c.member_id, c.identity.identity_key)

    def _members(self) -> Mapping[MemberId, tuple[Bytes32, IPv4Address]]:
        return {m: (r.identity_pub, r.mesh_ip) for m, r in self.controller.members_by_id().items()}

    def _on_liveness(self, transition: Transition) -> None:
        self.controller.wake("peer up" if transition.up else "peer down")

    def _mesh_up(self, mesh_ip: IPv4Address) -> None:
        """The mesh IP is on the interface: (re)start the services bound to it."""
        self.supervisor.start("mesh-services", lambda: self._run_mesh_services(mesh_ip))

    async def _run_mesh_services(self, mesh_ip: IPv4Address) -> None:
        c = self.controller
        assert c.identity is not None and c.member_id is not None
        if self.heartbeats is None:
            self.heartbeats = HeartbeatService(
                me=c.member_id,
                identity_key=c.identity.identity_key,
                members=self._members,
                liveness=self.liveness,
                metrics=self.metrics,
                port=self.settings.mesh.heartbeat_port,
                interval=self.settings.mesh.heartbeat_interval,
                on_transition=self._on_liveness,
            )
            c.forget_member = self.heartbeats.forget
        await self.heartbeats.bind(mesh_ip)
        if self._peer_runner is not None:
            await self._peer_runner.close()
        app = peer_api(CskService(c, self.metrics), self.metrics)
        self._peer_runner = await start_tcp(app, str(mesh_ip), self.settings.mesh.peer_api_port)
        log.info("peer_api.listening", mesh_ip=str(mesh_ip), port=self.settings.mesh.peer_api_port)
        await self.heartbeats.run()

    async def run(self) -> int:
        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled)
        health = health_app(lambda: self.controller.status, self.metrics)
        addr = f"{s.http.health_addr.host}:{s.http.health_addr.port}"
        try:
            self._runners.append(await start_tcp(health, s.http.health_addr.host, s.http.health_addr.port))
            log.info("health.listening", addr=addr)
            self._runners.append(
                await start_unix(app_api(_AppView(self.controller), self.metrics), str(s.http.app_socket))
            )
            log.info("app_api.listening", socket=str(s.http.app_socket))
        except OSError as exc:  # a port or socket another process holds: one clear line, not a traceback
            what = "app API socket " + str(s.http.app_socket) if self._runners else "health address " + addr
            log.error("sidecar.start_failed", surface=what, error=exc.strerror or str(exc))
            for runner in self._runners:
                await runner.close()
            return EXIT_START_FAILED
        log.info("sidecar.started", version=__version__, cluster=str(s.chain.cluster), pid=os.getpid())
        await self._start_wireguard_go()
        self.supervisor.start("control", self.controller.run)
        self.supervisor.start("events", self.events.run)
        await self._stop.wait()
        await self.shutdown()
        return 0

    async def _start_wireguard_go(self) -> None:
        """The userspace backend on wireguard-go's own socket directory (a kernel without WireGuard, in the
        image): run wireguard-go as a supervised child. The devnet and operators who run it themselves use
        another UAPI directory, and nothing is started."""
        mesh = self.settings.mesh
        backend = await asyncio.to_thread(resolve_backend, mesh.backend)
        start, why = should_start(backend, mesh.uapi_dir)
        log.info("wg.backend_selected", backend=backend, interface=mesh.interface, wireguard_go=why)
        if start:
            self.supervisor.start("wireguard-go", WireGuardGo(mesh.interface).run)

    def _signalled(self) -> None:
        if self._stop.is_set():
            log.warning("sidecar.forced_exit")
            os._exit(1)
        log.info("sidecar.stopping")
        self._stop.set()

    async def shutdown(self) -> None:
        timeout = self.settings.shutdown_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.supervisor.stop(timeout / 2)
                if self.heartbeats is not None:
                    self.heartbeats.close()
                for runner in [self._peer_runner, *self._runners]:
                    if runner is not None:
                        await runner.close()
                await self.controller.close()
                await self.agent.close()
        log.info("sidecar.stopped", interface_left_up=True)
