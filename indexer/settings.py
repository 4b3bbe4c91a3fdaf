"""The indexer's configuration: every ``ATTESTMESH_INDEXER_*`` environment variable, parsed and validated.

Owns: ``load_settings`` (environment mapping → ``IndexerSettings``) and the variable table. Every problem is
reported at once in one ``SettingsError`` (exit code 2, ``EXIT_BAD_CONFIGURATION``). A blank value counts as
unset; an unknown ``ATTESTMESH_INDEXER_*`` name is a problem (a typo must not fall back to a default).
The reader and the value parsers are the environment kit's (``sidecar.envkit``), so every service accepts
the same spellings.

Must not: read ``os.environ`` itself, do I/O, or echo a value that may carry a credential (the RPC URL can
embed an API key). Catch-up never starts at genesis by accident: the start block is required (``0`` must
be written explicitly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sidecar import envkit
from sidecar.core.ids import Address, Bytes32
from sidecar.envkit import (
    AT_LEAST_ONE,
    EXIT_BAD_CONFIGURATION,
    POSITIVE,
    Declare,
    EnvReader,
    HostPort,
    LogLevel,
    SettingsError,
    Variable,
    at_least_one,
    enum_parser,
    parse_address,
    parse_http_url,
    parse_int,
    parse_listen_addr,
    parse_seconds,
)

__all__ = [
    "EXIT_BAD_CONFIGURATION",
    "KNOWN_NAMES",
    "PREFIX",
    "VARIABLES",
    "IndexerSettings",
    "SettingsError",
    "load_settings",
    "parse_address_list",
    "parse_bytes32",
]

PREFIX = "ATTESTMESH_INDEXER_"
MAX_CLUSTERS = 1000
MAX_KEY_VERSION = 1_000_000


@dataclass(frozen=True, slots=True)
class IndexerSettings:
    rpc_url: str
    ws_url: str | None  # newHeads subscription (None: poll only); blank setting: derived from rpc_url
    chain_id: int
    cluster_factory: Address | None
    clusters: tuple[Address, ...]  # followed in addition to the factory's clusters
    start_block: int
    indexer_registry: Address | None
    registry_check_interval: float  # the registry read-back is repeated this often (a later setIndexer shows)
    public_url: str  # the endpoint this indexer expects to find in the registry ("" = not compared)
    code_id: Bytes32 | None
    key_version: int  # the signing key is GetKey("attestmesh/indexer/v<key_version>"); bump it to rotate
    listen_addr: HostPort
    poll_interval: float
    confirmations: int
    max_log_range: int
    rpc_timeout: float
    queue_bound: int  # messages sent but not yet acked, per subscriber
    ack_timeout: float  # how long a full queue may stay full before the subscriber is closed "overflow"
    retain_logs: int  # logs kept in memory per cluster (oldest dropped first)
    max_head_lag: int  # /healthz answers 200 only while at most this many confirmed blocks are unindexed
    hello_freshness: float
    log_level: LogLevel
    shutdown_timeout: float

    def __repr__(self) -> str:  # the URL may carry an API key
        return (
            f"IndexerSettings(rpc_url=<redacted>, chain_id={self.chain_id}, "
            f"cluster_factory={self.cluster_factory}, clusters={len(self.clusters)}, "
            f"start_block={self.start_block}, listen_addr={self.listen_addr}, "
            f"confirmations={self.confirmations}, max_log_range={self.max_log_range})"
        )


def parse_bytes32(text: str) -> Bytes32:
    """Parse 32 bytes of 0x-prefixed hex."""
    if not text.startswith(("0x", "0X")):
        raise ValueError("must be 0x-prefixed hex")
    try:
        return Bytes32.from_hex(text)
    except ValueError:
        raise ValueError("must be 32 bytes of hex") from None


def parse_address_list(text: str) -> tuple[Address, ...]:
    """Parse the followed clusters: a comma-separated list of distinct non-zero addresses (blank items are
    ignored), at most ``MAX_CLUSTERS``."""
    return envkit.parse_address_list(text, at_most=MAX_CLUSTERS)


_v = Declare(PREFIX)


def _text(text: str) -> str:
    return text


def ws_url_for(rpc_url: str) -> str:
    """The WebSocket URL of a node whose HTTP RPC is ``rpc_url``: same host, port and path, ws(s) scheme."""
    parts = urlsplit(rpc_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def _ws_url(text: str) -> str:
    """``off``, or a ``ws://`` / ``wss://`` URL that names a host."""
    if text == "off":
        return text
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError('must be a ws:// or wss:// URL, or "off"')
    return text


VARIABLES: tuple[Variable, ...] = (
    _v("RPC_URL", "rpc_url", None, parse_http_url, secret=True),
    _v("WS_URL", "ws_url", "", _ws_url, secret=True),  # blank: derived from RPC_URL; "off": poll only
    _v("CHAIN_ID", "chain_id", None, parse_int, (at_least_one, "a chain id of at least 1")),
    _v("CLUSTER_FACTORY", "cluster_factory", "", parse_address),  # non-zero: checked by load_settings
    _v("CLUSTERS", "clusters", "", parse_address_list),
    _v("START_BLOCK", "start_block", None, parse_int),
    _v("REGISTRY", "indexer_registry", "", parse_address),  # non-zero: checked by load_settings
    _v("REGISTRY_CHECK_INTERVAL", "registry_check_interval", "60.0", parse_seconds, POSITIVE),
    _v("PUBLIC_URL", "public_url", "", _text),  # ws:// or wss://: checked by load_settings
    _v("CODE_ID", "code_id", "", parse_bytes32),
    _v("KEY_VERSION", "key_version", "1", parse_int, (lambda v: 1 <= v <= MAX_KEY_VERSION, "in 1..1000000")),
    _v("LISTEN_ADDR", "listen_addr", "0.0.0.0:8080", parse_listen_addr),
    _v("POLL_INTERVAL", "poll_interval", "2.0", parse_seconds, POSITIVE),
    _v("CONFIRMATIONS", "confirmations", "2", parse_int),
    _v("MAX_LOG_RANGE", "max_log_range", "2000", parse_int, AT_LEAST_ONE),
    _v("RPC_TIMEOUT", "rpc_timeout", "10.0", parse_seconds, POSITIVE),
    _v("QUEUE_BOUND", "queue_bound", "256", parse_int, AT_LEAST_ONE),
    _v("ACK_TIMEOUT", "ack_timeout", "30.0", parse_seconds, POSITIVE),
    _v("RETAIN_LOGS", "retain_logs", "100000", parse_int, AT_LEAST_ONE),
    _v("MAX_HEAD_LAG", "max_head_lag", "10", parse_int),
    _v("HELLO_FRESHNESS", "hello_freshness", "30.0", parse_seconds, POSITIVE),
    _v("LOG_LEVEL", "log_level", "info", enum_parser(LogLevel)),
    _v("SHUTDOWN_TIMEOUT", "shutdown_timeout", "8.0", parse_seconds, POSITIVE),
)
KNOWN_NAMES = frozenset(v.name for v in VARIABLES)


def _check_together(r: EnvReader, values: dict[str, Any]) -> None:
    """Record the rules the table does not hold, adjusting ``values`` (blank ones read as None)."""
    for suffix in ("CLUSTER_FACTORY", "REGISTRY"):
        address = values[PREFIX + suffix]
        if address is not None and address.is_zero:
            r.problem(f"{PREFIX}{suffix} must be a non-zero address")
            values[PREFIX + suffix] = None
    values[PREFIX + "CLUSTERS"] = values[PREFIX + "CLUSTERS"] or ()
    ws_url, rpc_url = values[PREFIX + "WS_URL"], values[PREFIX + "RPC_URL"]
    if ws_url == "off":
        values[PREFIX + "WS_URL"] = None
    elif not ws_url:
        values[PREFIX + "WS_URL"] = ws_url_for(rpc_url) if rpc_url else None
    values[PREFIX + "PUBLIC_URL"] = public_url = values[PREFIX + "PUBLIC_URL"] or ""
    if public_url and not public_url.startswith(("ws://", "wss://")):
        r.problem(f"{PREFIX}PUBLIC_URL must be a ws:// or wss:// URL")
    nothing = values[PREFIX + "CLUSTER_FACTORY"] is None and values[PREFIX + "CLUSTERS"] == ()
    if nothing and not r.problems:
        r.problem(f"set {PREFIX}CLUSTER_FACTORY or {PREFIX}CLUSTERS: there is nothing to follow")


def load_settings(env: Mapping[str, str]) -> IndexerSettings:
    """Parse and validate the indexer's environment; raise SettingsError listing every problem."""
    r = EnvReader(env, VARIABLES, PREFIX)
    r.reject_unknown("variable")  # by name: the value is never echoed
    values = r.read_all()
    _check_together(r, values)
    if r.problems:
        raise SettingsError(r.problems)
    return IndexerSettings(**{v.field: values[v.name] for v in VARIABLES})
