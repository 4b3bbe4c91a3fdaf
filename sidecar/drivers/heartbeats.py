"""Heartbeats over the mesh: one UDP socket bound to our own mesh IP, a sender loop and a receiver.

Owns the socket, the send schedule (every interval, to each peer's mesh IP, each heartbeat carrying the next
page of the live list, so any cluster size encodes; one at once to a member whose carrier just came up,
``greet``) and feeding received datagrams
through the pure ``HeartbeatGate`` (signature, source = the sender's mesh IP, freshness, sequence) into
``Liveness``. Up and down transitions are logged once each and wake the control loop. Malformed or
refused datagrams are dropped and counted; nothing a peer sends can crash the receiver.
Must not: bind anything but the mesh IP, or change membership (members come from the chain snapshot).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address

import structlog

from sidecar.core.heartbeat import (
    STARTUP_SPEEDUP,
    Heartbeat,
    HeartbeatError,
    HeartbeatGate,
    decode,
    encode,
    live_page,
    next_seq,
    send_delay,
    should_answer,
)
from sidecar.core.ids import Bytes32, MemberId, SecretBytes
from sidecar.core.liveness import Liveness, Transition
from sidecar.observability import Metrics

log = structlog.get_logger("sidecar.heartbeats")

#: Members as the gate needs them: member id → (Ed25519 identity key, mesh IP), from the chain snapshot.
MemberTable = Callable[[], Mapping[MemberId, tuple[Bytes32, IPv4Address]]]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, service: HeartbeatService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.service.received(data, addr[0])

    def error_received(self, exc: Exception) -> None:  # ICMP errors for unreachable peers: expected
        log.debug("heartbeat.socket_error", error=str(exc))


class HeartbeatService:
    """Send and receive heartbeats for one node."""

    def __init__(
        self,
        *,
        me: MemberId,
        identity_key: SecretBytes,
        members: MemberTable,
        liveness: Liveness,
        metrics: Metrics,
        port: int,
        interval: float,
        on_transition: Callable[[Transition], None],
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.me = me
        self._key = identity_key
        self.members = members
        self.liveness = liveness
        self.metrics = metrics
        self.port = port
        self.interval = interval
        self.on_transition = on_transition
        self.clock = clock
        self.wall_ms = wall_ms
        self.gate = HeartbeatGate()
        self._seq = 0
        self._page = 0  # which page of the live list the next heartbeat carries (``live_page``)
        self._answered: dict[MemberId, float] = {}  # when each sender was last answered (``should_answer``)
        self._greeted: dict[MemberId, float] = {}  # when each member was last greeted (``greet``)
        self._bound_at: float | None = (
            None  # when the socket was bound (the start-up cadence, ``send_delay``)
        )
        self._transport: asyncio.DatagramTransport | None = None
        self.bound_ip: IPv4Address | None = None

    async def bind(self, mesh_ip: IPv4Address) -> None:
        """(Re)bind the socket to ``mesh_ip``:port (the address must already be on the interface)."""
        if self._transport is not None and self.bound_ip == mesh_ip:
            return
        self.close()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(str(mesh_ip), self.port)
        )
        self._transport = transport
        self.bound_ip = mesh_ip
        self._bound_at = self.clock()
        log.info("heartbeat.bound", mesh_ip=str(mesh_ip), port=self.port)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def run(self) -> None:
        """Send every interval and expire silent peers, until cancelled (the socket must be bound first)."""
        while True:
            self.tick()
            await asyncio.sleep(self.next_delay())

    def next_delay(self) -> float:
        """Seconds until the next tick (``send_delay``: faster right after start, until a peer is heard)."""
        now = self.clock()
        since_bind = float("inf") if self._bound_at is None else now - self._bound_at
        heard = any(member != self.me for member in self.liveness.live(now))
        return send_delay(self.interval, since_bind, heard)

    def tick(self) -> None:
        now = self.clock()
        for transition in self.liveness.expire(now):
            self._transition(transition)
        members = self.members()
        if self._transport is None:
            return
        data = self._next_heartbeat(now)
        for member, (_, mesh_ip) in members.items():
            if member != self.me:
                self._transport.sendto(data, (str(mesh_ip), self.port))
                self.metrics.heartbeats_sent.inc()

    def _next_heartbeat(self, now: float) -> bytes:
        now_ms = self.wall_ms()
        self._seq = next_seq(self._seq, now_ms)
        live = live_page(self.liveness.live(now), self.me, self._page)
        self._page += 1
        return encode(Heartbeat(self.me, now_ms, self._seq, live), self._key)

    def _answer(self, heartbeat: Heartbeat, now: float) -> None:
        """Send our heartbeat to a sender that does not see us live yet (``should_answer``)."""
        sender = heartbeat.sender
        last = self._answered.get(sender)
        if self._transport is None or not should_answer(heartbeat, self.me, last, now, self.interval):
            return
        entry = self.members().get(sender)
        if entry is None:
            return
        self._answered[sender] = now
        self._transport.sendto(self._next_heartbeat(now), (str(entry[1]), self.port))
        self.metrics.heartbeats_sent.inc()

    def greet(self, member: MemberId) -> None:
        """A carrier to ``member`` just came up (a gateway stream opened): send it our heartbeat at once,
        unless it is live already or was greeted less than a start-up tick ago. A heartbeat sent before
        the stream existed was lost; without this the next one waits for the next tick."""
        now = self.clock()
        entry = self.members().get(member)
        if self._transport is None or entry is None or member == self.me:
            return
        if member in self.liveness.live(now):
            return
        last = self._greeted.get(member)
        if last is not None and now - last < self.interval / STARTUP_SPEEDUP:
            return
        self._greeted[member] = now
        self._transport.sendto(self._next_heartbeat(now), (str(entry[1]), self.port))
        self.metrics.heartbeats_sent.inc()

    def forget(self, member: MemberId) -> None:
        """A member left the cluster: drop its replay and liveness state (no transition is emitted)."""
        self.gate.forget(member)
        self.liveness.forget(member)
        self._answered.pop(member, None)
        self._greeted.pop(member, None)

    def received(self, data: bytes, src: object) -> None:
        try:
            signed = decode(data)
            src_ip = IPv4Address(str(src))
        except (HeartbeatError, ValueError):
            self.metrics.heartbeats_rejected.labels(reason="malformed").inc()
            return
        verdict = self.gate.check(signed, src_ip, self.members(), self.wall_ms())
        if not verdict.accepted:
            self.metrics.heartbeats_rejected.labels(reason=verdict.reason).inc()
            log.debug("heartbeat.rejected", reason=verdict.reason, src=str(src_ip))
            return
        self.metrics.heartbeats_received.inc()
        now = self.clock()
        transition = self.liveness.heard(signed.heartbeat.sender, now)
        if transition is not None:
            self._transition(transition)
        self._answer(signed.heartbeat, now)

    def _transition(self, transition: Transition) -> None:
        direction = "up" if transition.up else "down"
        log.info(f"peer.{direction}", member_id=str(transition.member))
        self.metrics.peer_liveness_transitions.labels(direction=direction).inc()
        self.on_transition(transition)
