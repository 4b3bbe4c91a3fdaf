"""Where a member is reached: the endpoint it registers on chain, parsed into a transport and an address.

Owns ``UdpEndpoint`` (the direct transport: WireGuard UDP to an IP literal), ``GatewayEndpoint`` (the
gateway transport: a TLS stream to the member's passthrough route on the dstack gateway), ``parse_endpoint``
(a registered endpoint string → one of them; a bare ``ip:port``, as every record written before the gateway
transport, is the direct transport), ``gateway_endpoint`` (the route a node registers for itself, computed
from its own app id) and ``EndpointError``. The transport for a peer is chosen from its parsed endpoint
(DESIGN §4 "Transport").

Forms (the canonical one is what ``str`` gives and what a node registers)::

    udp://203.0.113.7:51820      direct; also written bare as 203.0.113.7:51820; IPv6 as udp://[2001:db8::1]:51820
    tls://<app id hex>-<port>s.<gateway domain>:443
                                 gateway; the first label is dstack-gateway's "<id>-<port>s" (TLS passthrough
                                 to <port> of the app <id>), the rest its wildcard domain

Must not do I/O or resolve names: a direct endpoint is an IP literal because WireGuard does not resolve
names; a gateway endpoint's name is the gateway's to route (its SNI), resolved by whoever dials it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from sidecar.core.ids import Address

GATEWAY_PORT: Final = 443
_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_ROUTE: Final = re.compile(r"(?P<id>[0-9a-f]{40})-(?P<port>[0-9]{1,5})s")


class EndpointError(ValueError):
    """An endpoint that cannot be used; the message says what is wrong and never echoes more than it."""


@dataclass(frozen=True, slots=True)
class UdpEndpoint:
    """The direct transport: WireGuard UDP straight to ``ip:port``."""

    ip: IPv4Address | IPv6Address
    port: int

    def __str__(self) -> str:
        host = f"[{self.ip}]" if isinstance(self.ip, IPv6Address) else str(self.ip)
        return f"udp://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class GatewayEndpoint:
    """The gateway transport: a TLS stream to ``host:port`` whose SNI (``host``) the gateway routes."""

    host: str
    port: int = GATEWAY_PORT

    def __str__(self) -> str:
        return f"tls://{self.host}:{self.port}"

    @property
    def app_id(self) -> Address | None:
        """The app the route names (``<app id>-<port>s.…``), or None for a name of another shape."""
        match = _ROUTE.fullmatch(self.host.split(".", 1)[0])
        return Address(bytes.fromhex(match["id"])) if match else None


Endpoint = UdpEndpoint | GatewayEndpoint


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise EndpointError("the port must be a number from 1 to 65535")
    return int(text)


def _is_dns_name(name: str) -> bool:
    labels = name.split(".")
    valid = len(name) <= 253 and len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)
    return valid and not labels[-1].isdigit()  # an all-numeric last label is an IP address, not a name


def _udp(text: str) -> UdpEndpoint:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise EndpointError("must be ip:port ([v6]:port for IPv6)")
    try:
        ip = ip_address(host)
    except ValueError:
        raise EndpointError(
            "a direct endpoint's host must be an IP address (WireGuard does not resolve names)"
        ) from None
    if isinstance(ip, IPv6Address) != text.startswith("["):
        raise EndpointError("an IPv6 address, and only one, is written in brackets: [addr]:port")
    return UdpEndpoint(ip, _port(port))


def _tls(text: str) -> GatewayEndpoint:
    host, sep, port = text.rpartition(":")
    if not sep or not _is_dns_name(host):
        raise EndpointError("a gateway endpoint must be name:port with a DNS name (the gateway routes by it)")
    return GatewayEndpoint(host.lower(), _port(port))


def parse_endpoint(text: str) -> Endpoint:
    """Parse a registered endpoint: ``udp://ip:port``, a bare ``ip:port`` (direct) or ``tls://name:port``."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return _udp(text)
    if scheme == "udp":
        return _udp(rest)
    if scheme == "tls":
        return _tls(rest)
    raise EndpointError("the scheme must be udp:// (direct) or tls:// (through the gateway)")


def parse_gateway_domain(text: str) -> str:
    """The dstack gateway's wildcard domain (``dstack-prod5.phala.network``), lower-cased, no root dot."""
    domain = text.lower().removesuffix(".")
    if not _is_dns_name(domain):
        raise EndpointError("the gateway domain must be a DNS name such as dstack-prod5.phala.network")
    return domain


def gateway_endpoint(app_id: Address, domain: str, port: int) -> GatewayEndpoint:
    """The endpoint a node registers for the gateway transport: its app's passthrough route to ``port``."""
    domain = parse_gateway_domain(domain)
    if not 1 <= port <= 65535:
        raise EndpointError("the gateway port must be from 1 to 65535")
    return GatewayEndpoint(f"{app_id.hex}-{port}s.{domain}")


def same_endpoint(registered: str, wanted: Endpoint) -> bool:
    """Whether the on-chain record already says ``wanted`` (a bare ``ip:port`` equals its ``udp://`` form),
    so that a node sends ``setEndpoint`` only when the endpoint really changed."""
    try:
        return parse_endpoint(registered) == wanted
    except EndpointError:
        return False
