"""Every ``ATTESTMESH_*`` variable of the sidecar, declared once: name, settings field, default, parser.

Owns the declaration table (``GROUPS``: one group per settings object, in the order docs/configuration.md
shows them; ``VARIABLES`` and ``KNOWN_NAMES`` derive from it), the sidecar-only value parsers (the
advertised WireGuard endpoint, the interface name, the health listen address) and ``WgBackend``. Parsing
and the unknown-variable check (``sidecar.settings``) come from this table, and tests/unit/test_settings.py
checks that docs/configuration.md, where each variable's meaning is written, lists exactly these variables
with these defaults in these groups.

Must not: build the settings objects or check one variable against another (``sidecar.settings`` does),
read ``os.environ``, or declare a variable of another service (the indexer has its own table).
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from sidecar.core.endpoint import parse_gateway_domain
from sidecar.core.ids import Address
from sidecar.envkit import (
    AT_LEAST_ONE,
    POSITIVE,
    Declare,
    HostPort,
    LogLevel,
    Variable,
    at_least_one,
    enum_parser,
    is_localhost,
    parse_absolute_path,
    parse_address,
    parse_address_list,
    parse_bool,
    parse_http_url,
    parse_int,
    parse_listen_addr,
    parse_port,
    parse_rate,
    parse_seconds,
    parse_socket_path,
    split_host_port,
)

PREFIX = "ATTESTMESH_"
MAX_INTERFACE_NAME = 15  # IFNAMSIZ - 1
_WRITE_INSTEAD = "write the IP address and port the other peers reach this node at, such as 10.0.0.2:51820"

_INTERFACE = re.compile(r"[A-Za-z0-9_.\-]+", re.ASCII)


class WgBackend(enum.StrEnum):
    """How the WireGuard device is driven: netlink (kernel), wireguard-go's UAPI, or detect."""

    USERSPACE = "userspace"
    KERNEL = "kernel"
    AUTO = "auto"


def parse_endpoint(text: str) -> str:
    """The WireGuard endpoint a node advertises on chain: an IP literal and a port (peers' devices take
    IP literals only; a name would have to be resolved by every peer, and WireGuard does not)."""
    host, port_text = split_host_port(text)
    if is_localhost(host):
        raise ValueError(
            "must be an IP address, not localhost (WireGuard does not resolve names, and to each peer "
            f"localhost would be itself): {_WRITE_INSTEAD}"
        )
    if "%" in host:
        raise ValueError(
            "must not carry an IPv6 zone (%…): a zone names an interface of this host, which means "
            f"nothing to a peer, and the cluster contract refuses it: {_WRITE_INSTEAD}"
        )
    try:
        ip_address(host)
    except ValueError:
        raise ValueError(
            f"must be an IP address, not a host name (WireGuard does not resolve names): {_WRITE_INSTEAD}"
        ) from None
    return str(HostPort(host, parse_port(port_text)))


def parse_readable_file(text: str) -> Path:
    """An absolute path to a file this process can read (a CA bundle, PEM)."""
    path = parse_absolute_path(text)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ValueError("is not a readable file")
    return path


def parse_interface(text: str) -> str:
    """Parse a network interface name (1..15 characters from a safe set)."""
    if len(text) > MAX_INTERFACE_NAME or not _INTERFACE.fullmatch(text) or text in (".", ".."):
        raise ValueError(f"must be 1..{MAX_INTERFACE_NAME} characters from A-Z a-z 0-9 _ . -")
    return text


_GWEI = re.compile(r"(?:[0-9]+(?:\.[0-9]{0,9})?|\.[0-9]{1,9})", re.ASCII)


def parse_gwei(text: str) -> int:
    """A fee per gas written in gwei as a plain decimal (``10``, ``0.05``; at most 9 decimals), in wei."""
    if not _GWEI.fullmatch(text):
        raise ValueError("must be an amount in gwei such as 10 or 0.05 (at most 9 decimals)")
    whole, _, fraction = text.partition(".")
    return int(whole or "0") * 10**9 + int((fraction or "0").ljust(9, "0"))


def _nonzero(address: Address) -> bool:
    return not address.is_zero


def parse_url_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of distinct ``http(s)://`` URLs (JSON-RPC providers). A problem names the item
    by its position only: a provider URL may carry an API key."""
    urls: list[str] = []
    for number, item in enumerate(text.split(","), start=1):
        url = item.strip()
        if not url:
            raise ValueError(f"item {number} is empty")
        try:
            parse_http_url(url)
        except ValueError as exc:
            raise ValueError(f"item {number} {exc}") from None
        if url in urls:
            raise ValueError(f"item {number} repeats item {urls.index(url) + 1}")
        urls.append(url)
    return tuple(urls)


_v = Declare(PREFIX)


@dataclass(frozen=True, slots=True)
class Group:
    """The variables of one settings object (``key`` is its ``Settings`` attribute; "" for the top level)."""

    key: str
    title: str  # its section of docs/configuration.md
    variables: tuple[Variable, ...]


GROUPS: tuple[Group, ...] = (
    Group(
        "chain",
        "Chain",
        (
            _v("RPC_URLS", "rpc_urls", "", parse_url_list, secret=True),
            _v("RPC_URL", "rpc_url", "", parse_http_url, secret=True),
            _v("RPC_QUORUM", "rpc_quorum", "", parse_int, AT_LEAST_ONE),
            _v("RPC_ALLOW_HTTP", "rpc_allow_http", "false", parse_bool),
            _v("CHAIN_ID", "chain_id", None, parse_int, (at_least_one, "a chain id of at least 1")),
            _v("CLUSTER", "cluster", None, parse_address, (_nonzero, "a non-zero address")),
            _v("INDEXER_REGISTRY", "indexer_registry", "", parse_address, (_nonzero, "non-zero")),
            _v("MEMBER_APP_FACTORY", "member_app_factory", None, parse_address, (_nonzero, "non-zero")),
            _v("KMS_ROOTS", "kms_roots", None, parse_address_list),
            _v("CONFIRMATIONS", "confirmations", "2", parse_int),
            _v("POLL_INTERVAL", "poll_interval", "2.0", parse_seconds, POSITIVE),
            _v("RESYNC_INTERVAL", "resync_interval", "30.0", parse_seconds, POSITIVE),
            _v("MAX_LOG_RANGE", "max_log_range", "2000", parse_int, AT_LEAST_ONE),
            _v("RPC_TIMEOUT", "rpc_timeout", "5.0", parse_seconds, POSITIVE),
            _v("RECEIPT_TIMEOUT", "receipt_timeout", "60.0", parse_seconds, POSITIVE),
            _v("MAX_FEE_GWEI", "max_fee_wei", "10", parse_gwei, POSITIVE),
            _v("MAX_PRIORITY_FEE_GWEI", "max_priority_fee_wei", "2", parse_gwei, POSITIVE),
        ),
    ),
    Group(
        "mesh",
        "Mesh",
        (
            _v("WG_INTERFACE", "interface", "attestmesh0", parse_interface),
            _v("WG_BACKEND", "backend", "auto", enum_parser(WgBackend)),
            _v("WG_UAPI_DIR", "uapi_dir", "/run/wireguard", parse_absolute_path),
            _v("WG_LISTEN_PORT", "listen_port", "51820", parse_port),
            _v("ENDPOINT", "endpoint", "", parse_endpoint),
            _v("GATEWAY_DOMAIN", "gateway_domain", "", parse_gateway_domain),
            _v("GATEWAY_PORT", "gateway_port", "51900", parse_port),
            _v("HEARTBEAT_PORT", "heartbeat_port", "51821", parse_port),
            _v("PEER_API_PORT", "peer_api_port", "51822", parse_port),
            _v("HEARTBEAT_INTERVAL", "heartbeat_interval", "2.0", parse_seconds, POSITIVE),
            _v("LIVENESS_MISSES", "liveness_misses", "3", parse_int, AT_LEAST_ONE),
            _v("CSK_PARALLELISM", "csk_parallelism", "4", parse_int, AT_LEAST_ONE),
            _v("CSK_TIMEOUT", "csk_request_timeout", "2.0", parse_seconds, POSITIVE),
            _v("CSK_GRACE", "csk_grace", "3600", parse_seconds),
        ),
    ),
    Group(
        "events",
        "Events",
        (
            _v("POLL_INTERVAL_PUSHED", "poll_interval_pushed", "300.0", parse_seconds, POSITIVE),
            _v("RESYNC_INTERVAL_PUSHED", "resync_interval_pushed", "600.0", parse_seconds, POSITIVE),
            _v("REGISTRY_REFRESH", "registry_refresh", "300.0", parse_seconds, POSITIVE),
            _v("PUSH_CROSSCHECK", "push_crosscheck", "0", parse_rate),
            _v("PUSH_BACKOFF_MIN", "push_backoff_min", "1.0", parse_seconds, POSITIVE),
            _v("PUSH_BACKOFF_MAX", "push_backoff_max", "60.0", parse_seconds, POSITIVE),
            _v("CA_FILE", "ca_file", "", parse_readable_file),
        ),
    ),
    Group(
        "http",
        "HTTP surfaces",
        (
            _v("HEALTH_ADDR", "health_addr", "0.0.0.0:9090", parse_listen_addr),
            _v("APP_SOCKET", "app_socket", "/run/attestmesh/agent.sock", parse_socket_path),
        ),
    ),
    Group(
        "",
        "Process",
        (
            _v("STATE_DIR", "state_dir", "/var/lib/attestmesh", parse_absolute_path),
            _v("LOG_LEVEL", "log_level", "info", enum_parser(LogLevel)),
            _v("SHUTDOWN_TIMEOUT", "shutdown_timeout", "8.0", parse_seconds, POSITIVE),
        ),
    ),
)
VARIABLES: tuple[Variable, ...] = tuple(v for group in GROUPS for v in group.variables)
KNOWN_NAMES = frozenset(v.name for v in VARIABLES)
