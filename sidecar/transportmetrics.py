"""The gateway transport's metrics: its label vocabularies and the metric methods ``Metrics`` inherits.

Owns ``TransportMetrics`` (a mixin of ``sidecar.observability.Metrics``: the ``attestmesh_transport_*``
series and the methods ``sidecar.transport`` calls), the transport's closed label sets (``TransportDrop``,
``StreamRefusal``, ``StreamEnd``) and ``known_label``, the check every metric method makes so that a label
can only take a value of its closed set. Split from ``sidecar.observability`` by concern (size).

Must not: put a key or a member id into a label. The one deliberate exception, which ``_mesh_ip``
enforces: the per-peer series name the peer by its mesh IP, public and bounded by the cluster's size; a
peer's series are removed when it leaves the cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv4Address
from typing import Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

TransportDirection = Literal["sent", "received"]
TransportDrop = Literal["no_stream", "backpressure", "foreign_source", "oversized"]
#: What became of a WireGuard handshake initiation the link held while the peer had no stream
#: (``sidecar.transport.link``): ``held`` counts every one put in the peer's single slot; each then ends
#: ``released`` (sent on the peer's stream) or dropped: ``expired`` (older than the bound when it could
#: go), ``superseded`` (the device sent a newer one) or ``crossed`` (the peer's initiation came first).
#: The drops are also counted as ``no_stream`` drops.
HandshakeHold = Literal["held", "released", "expired", "superseded", "crossed"]
StreamRefusal = Literal[
    "wrong_cluster", "wrong_acceptor", "not_member", "wrong_direction", "bad_signature", "stale", "future",
    "replayed", "no_hello", "protocol", "tls_failed", "overloaded",
]  # fmt: skip
StreamEnd = Literal["eof", "peer_closed", "idle", "protocol", "error", "replaced", "removed", "shutdown"]

TRANSPORT_DIRECTIONS: Final[tuple[str, ...]] = get_args(TransportDirection)
TRANSPORT_DROPS: Final[tuple[str, ...]] = get_args(TransportDrop)
HANDSHAKE_HOLDS: Final[tuple[str, ...]] = get_args(HandshakeHold)
STREAM_REFUSALS: Final[tuple[str, ...]] = get_args(StreamRefusal)
STREAM_ENDS: Final[tuple[str, ...]] = get_args(StreamEnd)


#: What a traffic source yields per peer: its label (mesh IP), then bytes sent, bytes received, datagrams
#: sent, datagrams received since the peer's link was made.
Traffic = tuple[str, int, int, int, int]


class TransportTraffic(Collector):
    """``attestmesh_transport_bytes_total`` and ``_datagrams_total`` per peer and direction, read from the
    transport's own per-peer counts when scraped: the per-datagram path only adds to plain integers (a
    Prometheus ``inc`` per datagram, with its lock, cost as much as the TLS)."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[Traffic]]] = []

    def add_source(self, source: Callable[[], Iterable[Traffic]]) -> None:
        self.sources.append(source)

    def collect(self) -> Iterator[CounterMetricFamily]:
        carried = CounterMetricFamily(
            "attestmesh_transport_bytes", "WireGuard datagram bytes carried by the gateway transport.",
            labels=["peer", "direction"],
        )  # fmt: skip
        datagrams = CounterMetricFamily(
            "attestmesh_transport_datagrams", "WireGuard datagrams carried by the gateway transport.",
            labels=["peer", "direction"],
        )  # fmt: skip
        for source in self.sources:
            for peer, bytes_sent, bytes_received, sent, received in source():
                carried.add_metric([peer, "sent"], bytes_sent)
                carried.add_metric([peer, "received"], bytes_received)
                datagrams.add_metric([peer, "sent"], sent)
                datagrams.add_metric([peer, "received"], received)
        yield carried
        yield datagrams


def _mesh_ip(label: str) -> str:
    """A peer label of the transport series: a mesh IP, and nothing else (never a key or a member id)."""
    return str(IPv4Address(label))


def known_label(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} label {value!r}; expected one of {', '.join(allowed)}")
    return value


class TransportMetrics:
    """The transport's series; ``Metrics`` calls ``_transport_metrics`` with its registry at construction."""

    def _transport_metrics(self, r: CollectorRegistry) -> None:
        self.transport_peers = Gauge(
            "attestmesh_transport_peers", "Peers by transport (direct, gateway) and state (up, down).",
            ["transport", "state"], registry=r,
        )  # fmt: skip
        self.transport_up = Gauge(
            "attestmesh_transport_up", "1 while the peer's gateway stream is up.", ["peer"], registry=r
        )
        self.transport_reconnects = Counter(
            "attestmesh_transport_reconnects_total", "Gateway streams established after the first, per peer.",
            ["peer"], registry=r,
        )  # fmt: skip
        self.transport_traffic = TransportTraffic()  # bytes and datagrams, read from the links at scrape time
        r.register(self.transport_traffic)
        self.transport_drops = Counter(
            "attestmesh_transport_drops_total", "Datagrams the gateway transport dropped, by reason.",
            ["peer", "reason"], registry=r,
        )  # fmt: skip
        self.transport_handshakes_held = Counter(
            "attestmesh_transport_handshakes_held_total",
            "WireGuard handshake initiations held while the peer had no stream, by outcome.",
            ["peer", "outcome"], registry=r,
        )  # fmt: skip
        self.transport_stream_age = Gauge(
            "attestmesh_transport_stream_age_seconds", "Age of the peer's current gateway stream (0: none).",
            ["peer"], registry=r,
        )  # fmt: skip
        self.transport_streams_refused = Counter(
            "attestmesh_transport_streams_refused_total",
            "Inbound gateway streams closed before they were bound to a peer, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.transport_streams_closed = Counter(
            "attestmesh_transport_streams_closed_total", "Gateway streams that ended, by why.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.transport_dial_failed = Counter(
            "attestmesh_transport_dial_failures_total", "Dials to a peer's gateway route that failed.",
            registry=r,
        )  # fmt: skip

    def transport_peer_added(self, peer: str) -> None:
        label = _mesh_ip(peer)
        self.transport_up.labels(peer=label).set(0)
        self.transport_reconnects.labels(peer=label)
        self.transport_stream_age.labels(peer=label).set(0)
        for reason in TRANSPORT_DROPS:
            self.transport_drops.labels(peer=label, reason=reason)
        for outcome in HANDSHAKE_HOLDS:
            self.transport_handshakes_held.labels(peer=label, outcome=outcome)

    def transport_peer_removed(self, peer: str) -> None:
        label = _mesh_ip(peer)
        for metric in (self.transport_up, self.transport_reconnects, self.transport_stream_age):
            with contextlib.suppress(KeyError):
                metric.remove(label)
        for reason in TRANSPORT_DROPS:
            with contextlib.suppress(KeyError):
                self.transport_drops.remove(label, reason)
        for outcome in HANDSHAKE_HOLDS:
            with contextlib.suppress(KeyError):
                self.transport_handshakes_held.remove(label, outcome)

    def transport_dropped(self, peer: str, reason: str) -> None:
        self.transport_drops.labels(peer=peer, reason=known_label(reason, TRANSPORT_DROPS, "drop")).inc()

    def transport_handshake_held(self, peer: str, outcome: str) -> None:
        label = known_label(outcome, HANDSHAKE_HOLDS, "handshake hold")
        self.transport_handshakes_held.labels(peer=peer, outcome=label).inc()

    def transport_reconnected(self, peer: str) -> None:
        self.transport_reconnects.labels(peer=peer).inc()

    def transport_refused(self, reason: str) -> None:
        self.transport_streams_refused.labels(known_label(reason, STREAM_REFUSALS, "refusal")).inc()

    def transport_stream_closed(self, reason: str) -> None:
        self.transport_streams_closed.labels(known_label(reason, STREAM_ENDS, "stream end")).inc()
