"""The WireGuard port: what the sidecar asks of a WireGuard device, whichever backend drives it.

Owns ``InterfaceConfig`` (the interface's own settings), ``DeviceState`` (what a backend reads back),
``WgError`` (the only exception a backend raises, transient or not), the ``WgDevice`` protocol both
backends implement, ``parse_endpoint`` (endpoints are ``ip:port`` literals; anything else is refused
before it reaches a device), ``peer_problem`` (why a device would refuse one peer) and ``checked_plan``
(the part of a plan a device can take, and why the rest cannot be applied).

Contract of every backend: ``ensure_up`` is idempotent and changes only what differs; it never touches
peers and never removes the interface, so the mesh outlives a sidecar restart. ``apply`` changes only the
delta of a ``PeerPlan`` and does nothing for an empty plan. Private keys never appear in a log, an exception
message, a repr or a file.
Must not: do I/O (the backends do), or import pyroute2 (only ``kernel`` and ``link`` do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, ip_address
from typing import Protocol

from sidecar.core.ids import SecretBytes
from sidecar.core.peerplan import WG_KEY_BYTES, ActualPeer, DesiredPeer, PeerPlan, WgKey

DEFAULT_IFNAME = "attestmesh0"
DEFAULT_MTU = 1420
MIN_MTU = 576
MAX_MTU = 65535
MAX_KEEPALIVE = 65535
#: Linux interface names: at most IFNAMSIZ-1 characters, no "/", whitespace or ":"; never "-"-led, so no
#: tool mistakes one for an option.
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
_ENDPOINT = re.compile(
    r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<v6port>[0-9]{1,5})|(?P<v4>[0-9.]+):(?P<v4port>[0-9]{1,5})"
)


class WgError(Exception):
    """A WireGuard device operation failed. ``transient``: retrying the same operation later can succeed.

    ``errno`` is the device's (negative for UAPI, positive for netlink) when it answered with one. The
    message never contains a request, since requests may carry the private key.
    """

    def __init__(self, message: str, *, transient: bool = False, errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.errno = errno

    def __str__(self) -> str:
        return self.message


def validate_ifname(name: str) -> str:
    """Return ``name`` if Linux accepts it as an interface name and it cannot pass for an option."""
    if not _IFNAME.fullmatch(name):
        raise ValueError(f"interface name must match {_IFNAME.pattern}, got {name!r}")
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceConfig:
    """The interface's own settings: identity, UDP port, mesh address (ip/cidr prefix) and MTU."""

    name: str = DEFAULT_IFNAME
    private_key: SecretBytes = field(repr=False)
    listen_port: int
    address: IPv4Interface
    mtu: int = DEFAULT_MTU

    def __post_init__(self) -> None:
        if len(self.private_key) != WG_KEY_BYTES:
            raise ValueError(
                f"WireGuard private key must be {WG_KEY_BYTES} bytes, got {len(self.private_key)}"
            )
        if isinstance(self.listen_port, bool) or not 1 <= self.listen_port <= 65535:
            raise ValueError(f"listen port must be in 1..65535, got {self.listen_port!r}")
        if not isinstance(self.address, IPv4Interface):
            raise ValueError(f"address must be an IPv4Interface, got {type(self.address).__name__}")
        network = self.address.network
        if network.prefixlen < 31 and self.address.ip in (network.network_address, network.broadcast_address):
            raise ValueError(f"address {self.address} is the network or broadcast address of its prefix")
        validate_ifname(self.name)
        if isinstance(self.mtu, bool) or not MIN_MTU <= self.mtu <= MAX_MTU:
            raise ValueError(f"MTU must be in {MIN_MTU}..{MAX_MTU}, got {self.mtu!r}")

    def __repr__(self) -> str:
        return (
            f"InterfaceConfig(name={self.name!r}, listen_port={self.listen_port}, "
            f"address={self.address}, mtu={self.mtu}, private_key=<redacted>)"
        )


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What a backend reads from its device: the private key is represented by its public key only."""

    public_key: WgKey | None
    listen_port: int
    peers: tuple[ActualPeer, ...]


class WgDevice(Protocol):
    """One WireGuard interface in the current network namespace."""

    async def ensure_up(self, config: InterfaceConfig) -> None:
        """Make key, port, address (the only mesh one), MTU, link state and mesh route match ``config``."""
        ...

    async def read_peers(self) -> list[ActualPeer]:
        """Return the device's peers, sorted by public key."""
        ...

    async def apply(self, plan: PeerPlan) -> None:
        """Remove, add and update the plan's peers; nothing when the plan is empty."""
        ...

    async def public_key(self) -> WgKey | None:
        """Return the device's public key, None when it has no private key yet."""
        ...

    async def close(self) -> None:
        """Release the adapter's resources; the interface and its peers stay."""
        ...


def parse_endpoint(endpoint: str) -> tuple[IPv4Address | IPv6Address, int]:
    """Split an ``ip:port`` / ``[ipv6]:port`` endpoint; raise a terminal ``WgError`` for anything else.

    Strict on purpose: endpoints come from the chain, and a line break or a host name must never reach the
    device (UAPI is line based; a smuggled line could reconfigure it).
    """
    match = _ENDPOINT.fullmatch(endpoint)
    if match is None:
        raise WgError(f"endpoint must be ip:port or [ipv6]:port, got {endpoint[:64]!r}")
    host = match["v6"] or match["v4"]
    port = int(match["v6port"] or match["v4port"])
    try:
        addr = ip_address(host)
    except ValueError:
        raise WgError(f"endpoint {endpoint[:64]!r} has no valid IP address") from None
    bracketed = match["v6"] is not None
    if bracketed != isinstance(addr, IPv6Address) or not 1 <= port <= 65535:
        raise WgError(f"endpoint {endpoint[:64]!r} is not a valid ip:port")
    return addr, port


def format_endpoint(addr: IPv4Address | IPv6Address, port: int) -> str:
    """Render an endpoint the way WireGuard reports it (``a.b.c.d:port``, ``[v6]:port``)."""
    return f"[{addr}]:{port}" if isinstance(addr, IPv6Address) else f"{addr}:{port}"


def canonical_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` in the form the device reports back (validated by ``parse_endpoint``)."""
    return format_endpoint(*parse_endpoint(endpoint))


def peer_problem(peer: DesiredPeer) -> str | None:
    """Why a device would refuse this peer (None when it takes it): endpoint, keepalive, allowed IPs."""
    if peer.endpoint is not None:
        try:
            parse_endpoint(peer.endpoint)
        except WgError as exc:
            return str(exc)
    if isinstance(peer.keepalive, bool) or not 0 <= peer.keepalive <= MAX_KEEPALIVE:
        return f"keepalive must be in 0..{MAX_KEEPALIVE}, got {peer.keepalive!r}"
    if not all(isinstance(net, IPv4Network) for net in peer.allowed_ips):
        return "allowed IPs must be IPv4 networks"
    return None


def checked_plan(plan: PeerPlan) -> tuple[PeerPlan, tuple[str, ...]]:
    """Split ``plan`` into what a device can take and why the rest cannot be applied.

    One member's unusable chain data (say, an endpoint that is no ip:port literal) must not hold back the
    rest of the mesh, least of all a removal: backends apply the valid part, then raise a terminal
    ``WgError`` with the problems. A plan naming one key twice is a bug and raises at once.
    """
    keys = [*plan.remove, *(p.public_key for p in plan.add), *(p.public_key for p in plan.update)]
    if len(set(keys)) != len(keys):
        raise WgError("plan names a peer more than once")
    problems: list[str] = []

    def keep(peers: tuple[DesiredPeer, ...]) -> tuple[DesiredPeer, ...]:
        kept = []
        for peer in peers:
            problem = peer_problem(peer)
            if problem is None:
                kept.append(peer)
            else:
                problems.append(f"peer {peer.public_key!r} not applied: {problem}")
        return tuple(kept)

    valid = PeerPlan(add=keep(plan.add), remove=plan.remove, update=keep(plan.update))
    return valid, tuple(problems)


def raise_problems(problems: tuple[str, ...]) -> None:
    """Raise the terminal ``WgError`` that reports the peers ``checked_plan`` held back, if any."""
    if problems:
        raise WgError("; ".join(problems))
