"""The sidecar process: surfaces first, then the supervised loops, then a bounded shutdown.

Owns start-up order (``/healthz`` binds before anything else, then the app API socket, then the control
loop, the event source and the signer's balance watch), the supervision of every long-running task (an
eternal task that returns or raises is logged, counted and restarted with backoff), the mesh-bound services
(heartbeats, peer API) started when the mesh IP is on the interface, and shutdown: on SIGTERM or SIGINT
every task is cancelled and every server closed within ``shutdown_timeout``; a second signal exits at once.
The WireGuard interface is left up (it outlives a sidecar restart).

It is the composition root: ``Daemon`` builds the clock, the state store, the chain connection, the event
source and (through ``sidecar.drivers.node.build_node``) the steps and the controller once, and hands each
component the parts and the narrow settings group it needs; nothing is patched after construction. The
measured trust anchors are checked where the guest agent first answers (``sidecar.drivers.anchors``): a
problem stops the daemon, which then returns ``EXIT_BAD_CONFIGURATION`` with the problems in ``refused``.
Must not: hold protocol rules (those are in ``sidecar.core``) or talk to the chain or WireGuard directly (the
adapters do).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from ipaddress import IPv4Address

import structlog

from sidecar.buildinfo import build_info
from sidecar.core.cskepochs import PreviousCsk
from sidecar.core.ids import MemberId, SecretBytes
from sidecar.core.liveness import Liveness, Transition
from sidecar.core.status import NodeStatus, PeerView, SelfView
from sidecar.drivers.anchors import AnchorGate
from sidecar.drivers.balance import BalanceWatch
from sidecar.drivers.chainlink import ChainLink
from sidecar.drivers.clock import SystemClock, wall_ms
from sidecar.drivers.control import Controller
from sidecar.drivers.events import ChainLogPoller, SharedCursor
from sidecar.drivers.heartbeats import HeartbeatService
from sidecar.drivers.node import build_node
from sidecar.drivers.push import Credentials, PushSubscriber
from sidecar.drivers.readsource import ReadSource
from sidecar.drivers.router import EventRouter
from sidecar.drivers.store import StateStore
from sidecar.drivers.supervisor import StopSignal, Supervisor
from sidecar.dstack.agent import GuestAgent
from sidecar.http.appapi import app_api, start_unix
from sidecar.http.health import health_app, start_health, start_tcp
from sidecar.http.peerapi import peer_api
from sidecar.http.server import Runner
from sidecar.observability import Metrics
from sidecar.settings import EXIT_BAD_CONFIGURATION, Settings
from sidecar.transport.tlsconf import verifying_context
from sidecar.wg.select import resolve_backend
from sidecar.wg.userspace import WireGuardGo, should_start

log = structlog.get_logger("sidecar.daemon")


class _AppView:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def status(self) -> NodeStatus:
        return self.controller.current_status()

    def self_view(self) -> SelfView | None:
        return self.controller.self_view()

    def peers(self) -> list[PeerView]:
        return self.controller.peer_views()

    def csk(self) -> SecretBytes | None:
        return self.controller.csk_value()

    def csk_previous(self) -> PreviousCsk | None:
        return self.controller.csk_previous()


EXIT_START_FAILED = 1


class Daemon:
    """The composition root: builds the store, the chain connection, the event source and the node, and
    hands each the parts it needs."""

    def __init__(self, settings: Settings, *, env: Mapping[str, str], metrics: Metrics | None = None) -> None:
        """``env`` is the process environment ``settings`` came from: its measured values are checked
        against the compose the guest agent reports."""
        self.settings = settings
        self.refused: list[str] = []  # the measured-anchor problems that stopped the daemon
        self.metrics = metrics or Metrics()
        self.clock = SystemClock()
        mesh = settings.mesh
        self.liveness = Liveness(window=mesh.heartbeat_interval * mesh.liveness_misses)
        self.agent = GuestAgent()
        self.store = StateStore(settings.state_dir)
        self.chain = ChainLink(settings.chain, self.metrics)
        cursor = SharedCursor(self.store)  # the push resume point; the poller also keeps its own
        self.poller = ChainLogPoller(
            connection=self.chain.connection,
            cluster=settings.chain.cluster,
            store=self.store,
            wake=self._wake,
            metrics=self.metrics,
            interval=settings.chain.poll_interval,
            confirmations=settings.chain.confirmations,
            max_range=settings.chain.max_log_range,
            cursor=cursor,
        )
        self.push = self._push_subscriber(cursor)
        self.events = EventRouter(
            poller=self.poller,
            push=self.push,
            poll_interval=settings.chain.poll_interval,
            safety_interval=settings.events.poll_interval_pushed,
            metrics=self.metrics,
            on_change=self._events_changed,
        )
        self.node = build_node(
            settings,
            agent=self.agent,
            metrics=self.metrics,
            liveness=self.liveness,
            clock=self.clock,
            chain=self.chain,
            store=self.store,
            events=self.events,
            planner=None
            if self.push is None
            else ReadSource(self.events, self.push.positions, confirmations=settings.chain.confirmations),
            on_mesh_up=self._mesh_up,
            on_member_removed=self._member_removed,
            on_carrier_up=self._carrier_up,
            anchors=AnchorGate(dict(env), settings.chain.kms_roots, self._refuse),
        )
        self.controller = self.node.controller
        self.state = self.node.state
        self.balance = BalanceWatch(
            signer=lambda: self.state.identity.signer if self.state.identity else None,
            read=self.chain.balance,
            metrics=self.metrics,
        )
        self.supervisor = Supervisor()
        self.heartbeats: HeartbeatService | None = None
        self._runners: list[Runner] = []
        self._peer_runner: Runner | None = None
        self.stop_signal = StopSignal("sidecar")

    def _push_subscriber(self, cursor: SharedCursor) -> PushSubscriber | None:
        """The indexer push subscription, when a registry is configured (it shares the poller's cursor)."""
        chain, ev = self.settings.chain, self.settings.events
        if chain.indexer_registry is None:
            return None
        return PushSubscriber(
            connection=self.chain.connection,
            registry=chain.indexer_registry,
            cluster=chain.cluster,
            credentials=self._credentials,
            cursor=cursor,
            wake=self._wake,
            metrics=self.metrics,
            registry_refresh=ev.registry_refresh,
            backoff_min=ev.push_backoff_min,
            backoff_max=ev.push_backoff_max,
            crosscheck=ev.push_crosscheck,
            ready_interval=chain.poll_interval,
            now_ms=lambda: wall_ms(self.clock),
            monotonic=self.clock.monotonic,
            on_change=self._push_changed,
            tls=verifying_context(ev.ca_file),
        )

    def _refuse(self, problems: list[str]) -> None:
        """The environment overrides a measured value: stop, and exit with a configuration error."""
        self.refused = list(problems)
        self.stop_signal.request()

    def _wake(self, reason: str = "") -> None:
        self.node.controller.wake(reason)

    def _push_changed(self) -> None:
        self.events.push_changed()

    def _events_changed(self) -> None:
        self.node.controller.refresh_events()

    def _credentials(self) -> Credentials | None:
        """The hello's signer once the node is a member: its member id and identity key."""
        st = self.state
        if st.identity is None or st.member_id is None:
            return None
        return Credentials(st.member_id, st.identity.identity_key)

    def _member_removed(self, member: MemberId) -> None:
        """A member left the cluster: drop its heartbeat (and liveness) state."""
        if self.heartbeats is not None:
            self.heartbeats.forget(member)
        else:
            self.liveness.forget(member)

    def _carrier_up(self, member: MemberId) -> None:
        """A gateway stream to ``member`` opened: greet it now rather than at the next heartbeat tick."""
        if self.heartbeats is not None:
            self.heartbeats.greet(member)

    def _on_liveness(self, transition: Transition) -> None:
        self.controller.wake("peer up" if transition.up else "peer down")

    def _mesh_up(self, mesh_ip: IPv4Address) -> None:
        """The mesh IP is on the interface: (re)start the services bound to it."""
        self.supervisor.start("mesh-services", lambda: self._run_mesh_services(mesh_ip))

    async def _run_mesh_services(self, mesh_ip: IPv4Address) -> None:
        st = self.state
        assert st.identity is not None and st.member_id is not None
        if self.heartbeats is None:
            self.heartbeats = HeartbeatService(
                me=st.member_id,
                identity_key=st.identity.identity_key,
                members=st.heartbeat_table,
                liveness=self.liveness,
                metrics=self.metrics,
                port=self.settings.mesh.heartbeat_port,
                interval=self.settings.mesh.heartbeat_interval,
                on_transition=self._on_liveness,
                clock=self.clock.monotonic,
                wall_ms=lambda: wall_ms(self.clock),
            )
        await self.heartbeats.bind(mesh_ip)
        if self._peer_runner is not None:
            await self._peer_runner.close()
        app = peer_api(self.node.csk, self.metrics)
        self._peer_runner = await start_tcp(app, str(mesh_ip), self.settings.mesh.peer_api_port)
        log.info("peer_api.listening", mesh_ip=str(mesh_ip), port=self.settings.mesh.peer_api_port)
        await self.heartbeats.run()

    async def run(self) -> int:
        s = self.settings
        self.stop_signal.install()
        health = health_app(self.controller.current_status, self.metrics)
        addr = f"{s.http.health_addr.host}:{s.http.health_addr.port}"
        try:
            self._runners.append(
                await start_health(health, s.http.health_addr.host, s.http.health_addr.port, self.metrics)
            )
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
        build = build_info()
        log.info(
            "sidecar.started",
            version=build.version,
            commit=build.commit,
            dirty=build.dirty,
            cluster=str(s.chain.cluster),
            pid=os.getpid(),
        )
        await self._start_wireguard_go()
        self.supervisor.start("control", self.controller.run)
        self.supervisor.start("events", self.events.run)
        self.supervisor.start("balance", self.balance.run)
        await self.stop_signal.wait()
        await self.shutdown()
        return EXIT_BAD_CONFIGURATION if self.refused else 0

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
                await self.node.close()
                await self.chain.close()
                await self.agent.close()
        log.info("sidecar.stopped", interface_left_up=True)
