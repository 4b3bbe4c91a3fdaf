"""One gateway peer as the carrier keeps it: who it is, its link (bridge + current stream) and its counts.

Owns the gateway transport's value types (``LocalMember``: this node as a hello names it; ``GatewayPeer``:
a peer reached through the gateway; ``GatewayOptions``: the carrier's knobs; ``PeerTransport``: a peer's
transport state for the surfaces), ``PeerTally`` (per-peer counts: plain integers on the per-datagram path,
read by the metrics at scrape time) and ``PeerLink`` (a peer's bridge, stable for its membership, and the
stream that currently carries it: an accepted stream takes over at once, a dialled one when the acceptor
confirms it).

The one held datagram. A datagram from the device while the peer has no open stream is dropped
(``no_stream``; UDP semantics, WireGuard retransmits) — except a WireGuard handshake initiation (message
type 1, 148 bytes), of which the link keeps the newest, ONE per peer, for the peer's next stream, and sends
it only while it is at most ``handshake_hold`` seconds old (5 s, wireguard-go's ``REKEY_TIMEOUT``: by then
the device has sent a newer one). Without it the initiation a device sends when a peer is configured —
always before the peer's stream is open — was lost, and wireguard-go retries only after ``REKEY_TIMEOUT``,
so every gateway peer came up ≈ 5 s late at bring-up and after a restart.

When it is sent matters: at a cold bring-up BOTH devices have initiated, and two initiations that cross
both fail (each device, answering the other's, overwrites its own handshake state and then drops the
answer to it), costing the same 5 s. So one side goes first: the dialer sends its held initiation as soon
as its stream is confirmed; the acceptor keeps its own until the peer's first datagram on the stream —
an initiation (the dialer's) makes it drop its own (``crossed``: the device answers the peer's instead),
anything else (the peer's device has a session, e.g. this node restarted) sends it.

Chosen over making the device start a new handshake when the stream opens (re-adding the peer over UAPI):
that would reach from the transport into the device, which the transport must not touch, and race with
the reconcile loop's own device updates. The slot is bounded (one datagram per peer, whatever the device
sends), holds no data (so data is never reordered) and its outcomes are counted
(``attestmesh_transport_handshakes_held_total{outcome}``: ``held``, then ``released``, or dropped as
``expired``, ``superseded`` (a newer initiation) or ``crossed``, which are also ``no_stream`` drops).

Must not: dial, listen or admit streams (``sidecar.transport.gateway`` does), hold more than that one
datagram per peer, or log key material or payloads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import structlog

from sidecar.core.endpoint import GatewayEndpoint
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.observability import Metrics
from sidecar.transport.bridge import Bridge
from sidecar.transport.stream import Stream

log = structlog.get_logger("sidecar.transport")

Role = Literal["dialer", "acceptor"]

#: A WireGuard handshake initiation: message type 1 and three reserved zero bytes, 148 bytes in all.
INITIATION_HEADER: Final = b"\x01\x00\x00\x00"
INITIATION_BYTES: Final = 148


def is_initiation(datagram: bytes) -> bool:
    return len(datagram) == INITIATION_BYTES and datagram.startswith(INITIATION_HEADER)


class LinkHost(Protocol):
    """What a link needs from its carrier."""

    options: GatewayOptions
    metrics: Metrics
    monotonic: Callable[[], float]
    on_stream_opened: Callable[[MemberId], None]

    def changed(self, link: PeerLink | None) -> None: ...


@dataclass(frozen=True, slots=True)
class LocalMember:
    """This node as the hello names it: its member id, its cluster and its identity key."""

    member_id: MemberId
    cluster: Address
    identity_key: SecretBytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class GatewayPeer:
    """A peer reached through the gateway: whom, where (its registered route) and its identity key."""

    member_id: MemberId
    label: str  # the peer's mesh IP: how logs and metrics name it
    endpoint: GatewayEndpoint
    identity_pub: Bytes32


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    port: int  # the TLS listener (ATTESTMESH_GATEWAY_PORT)
    wg_port: int  # the device's listen port on loopback
    keepalive: float = 10.0
    idle_timeout: float = 30.0
    hello_timeout: float = 5.0
    connect_timeout: float = 5.0
    backoff_min: float = 0.1
    backoff_max: float = 2.0
    redial_quick_max: float = 0.25  # the dial backoff's cap while a peer is expected back (see gateway.py)
    redial_window: float = 10.0  # … for this long after a link is made or its working stream ends
    max_pending: int = 256
    handshake_hold: float = 5.0  # how long a held handshake initiation may wait for the peer's stream


@dataclass(frozen=True, slots=True)
class PeerTransport:
    """One peer's transport state, as ``/healthz`` and ``/v1/peers`` show it."""

    member_id: MemberId
    transport: Literal["direct", "gateway"]
    up: bool
    role: Role | None = None
    reconnects: int = 0
    stream_age: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    drops: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The ``transport`` object of ``/v1/peers`` (a direct peer: kind and up only)."""
        if self.transport == "direct":
            return {"kind": "direct", "up": self.up}
        return {
            "kind": "gateway",
            "up": self.up,
            "role": self.role,
            "reconnects": self.reconnects,
            "stream_age_seconds": None if self.stream_age is None else round(self.stream_age, 3),
            "bytes": {"sent": self.bytes_sent, "received": self.bytes_received},
            "datagrams": {"sent": self.datagrams_sent, "received": self.datagrams_received},
            "drops": dict(sorted(self.drops.items())),
        }


class PeerTally:
    """One peer's counters: kept here for the status views and mirrored to the Prometheus series."""

    def __init__(self, metrics: Metrics, label: str) -> None:
        self.metrics, self.label = metrics, label
        self.bytes_sent = self.bytes_received = self.datagrams_sent = self.datagrams_received = 0
        self.drops: dict[str, int] = {}
        self.holds: dict[str, int] = {}

    def sent(self, nbytes: int) -> None:  # per datagram: plain integers, read by the metrics at scrape time
        self.bytes_sent += nbytes
        self.datagrams_sent += 1

    def received(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        self.datagrams_received += 1

    def traffic(self) -> tuple[str, int, int, int, int]:
        return self.label, self.bytes_sent, self.bytes_received, self.datagrams_sent, self.datagrams_received

    def dropped(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self.metrics.transport_dropped(self.label, reason)

    def hold(self, outcome: str) -> None:
        """What became of a held handshake initiation (``HandshakeHold``)."""
        self.holds[outcome] = self.holds.get(outcome, 0) + 1
        self.metrics.transport_handshake_held(self.label, outcome)


class PeerLink:
    """One gateway peer: its bridge (stable for the peer's membership) and its current stream, if any."""

    def __init__(self, carrier: LinkHost, peer: GatewayPeer, role: Role) -> None:
        self.carrier, self.peer, self.role = carrier, peer, role
        self.tally = PeerTally(carrier.metrics, peer.label)
        self.bridge = Bridge(carrier.options.wg_port, self._from_device, self.tally.dropped)
        self.stream: Stream | None = None
        self.established = 0
        self.task: asyncio.Task[None] | None = None
        self._held: tuple[float, bytes] | None = None  # (when, initiation): at most one, see the docstring

    @property
    def held_bytes(self) -> int:
        """Bytes the link holds for the peer's next stream (0, or one handshake initiation)."""
        return 0 if self._held is None else len(self._held[1])

    @property
    def reconnects(self) -> int:
        return max(self.established - 1, 0)

    @property
    def up(self) -> bool:
        return self.stream is not None and self.stream.open and self.stream.confirmed

    def _from_device(self, datagram: bytes) -> None:
        stream = self.stream
        if stream is not None and stream.open:
            if self._held is not None and is_initiation(datagram):
                self._lose("superseded")  # the device's newer initiation goes on the stream itself
            stream.send(datagram)
        elif is_initiation(datagram):
            if self._held is not None:
                self._lose("superseded")
            self._held = (self.carrier.monotonic(), datagram)
            self.tally.hold("held")
        else:
            self.tally.dropped("no_stream")

    def _to_device(self, datagram: bytes) -> None:
        """A datagram from the peer's stream: to the device (an acceptor's held initiation answers it)."""
        if self._held is not None and self.role == "acceptor" and self.stream is not None:
            if is_initiation(datagram):
                self._lose("crossed")  # the peer went first: the device answers its initiation instead
            else:
                self._release(self.stream)
        self.bridge.deliver(datagram)

    def _lose(self, outcome: Literal["superseded", "expired", "crossed"]) -> None:
        self._held = None
        self.tally.hold(outcome)
        self.tally.dropped("no_stream")

    def _release(self, stream: Stream) -> None:
        """Send the held initiation, if any and still fresh, on ``stream``."""
        if self._held is None:
            return
        at, datagram = self._held
        if self.carrier.monotonic() - at > self.carrier.options.handshake_hold:
            self._lose("expired")
            return
        self._held = None
        stream.send(datagram)
        self.tally.hold("released")

    async def carry(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, accepted: bool
    ) -> Stream:
        """Carry a stream of this peer until it ends. An accepted stream (its hello admitted) takes over
        at once; a dialled one once the acceptor's first frame confirms it. Returns the ended stream."""
        options, carrier = self.carrier.options, self.carrier
        stream = Stream(
            reader,
            writer,
            deliver=self._to_device,
            tally=self.tally,
            monotonic=carrier.monotonic,
            keepalive=options.keepalive,
            idle_timeout=options.idle_timeout,
            confirmed=accepted,
            on_confirmed=lambda: self._take(stream),
        )
        if accepted:
            self._take(stream)
        end = await stream.run()
        if self.stream is stream:
            self.stream = None
            carrier.changed(self)
        if stream.confirmed:
            carrier.metrics.transport_stream_closed(end)
            emit = log.debug if end in ("replaced", "removed", "shutdown") else log.info
            emit("transport.stream_closed", peer=self.peer.label, reason=end, age=round(stream.age, 3))
        return stream

    def _take(self, stream: Stream) -> None:
        """Make ``stream`` the peer's current stream, replacing (closing) the one before."""
        previous, self.stream = self.stream, stream
        if previous is not None:
            previous.close("replaced")
        self.established += 1
        if self.established > 1:
            self.carrier.metrics.transport_reconnected(self.peer.label)
        self.carrier.changed(self)
        log.info("transport.stream_opened", peer=self.peer.label, role=self.role, streams=self.established)
        if self.role == "dialer":  # the acceptor's waits for the peer's first datagram (the docstring)
            self._release(stream)
        self.carrier.on_stream_opened(self.peer.member_id)

    def view(self) -> PeerTransport:
        stream, t = self.stream, self.tally
        return PeerTransport(
            member_id=self.peer.member_id,
            transport="gateway",
            up=self.up,
            role=self.role,
            reconnects=self.reconnects,
            stream_age=stream.age if stream is not None and stream.open else None,
            bytes_sent=t.bytes_sent,
            bytes_received=t.bytes_received,
            datagrams_sent=t.datagrams_sent,
            datagrams_received=t.datagrams_received,
            drops=dict(t.drops),
        )

    def close(self) -> None:
        self._held = None  # the peer is gone (its series with it): nothing to send it to
        if self.task is not None:
            self.task.cancel()
        if self.stream is not None:
            self.stream.close("removed")
        self.bridge.close()
