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
from typing import TypeVar

from sidecar.core.ids import Address, Bytes32
from sidecar.envkit import (
    EXIT_BAD_CONFIGURATION,
    EnvReader,
    HostPort,
    LogLevel,
    SettingsError,
    Variable,
    enum_parser,
    parse_address,
    parse_host_port,
    parse_http_url,
    parse_int,
    parse_seconds,
    positive,
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

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IndexerSettings:
    rpc_url: str
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


def _v(suffix: str, default: str | None, *, secret: bool = False) -> Variable:
    return Variable(PREFIX + suffix, default, secret)


VARIABLES: tuple[Variable, ...] = (
    _v("RPC_URL", None, secret=True),
    _v("CHAIN_ID", None),
    _v("CLUSTER_FACTORY", ""),
    _v("CLUSTERS", ""),
    _v("START_BLOCK", None),
    _v("REGISTRY", ""),
    _v("REGISTRY_CHECK_INTERVAL", "60.0"),
    _v("PUBLIC_URL", ""),
    _v("CODE_ID", ""),
    _v("KEY_VERSION", "1"),
    _v("LISTEN_ADDR", "0.0.0.0:8080"),
    _v("POLL_INTERVAL", "2.0"),
    _v("CONFIRMATIONS", "2"),
    _v("MAX_LOG_RANGE", "2000"),
    _v("RPC_TIMEOUT", "10.0"),
    _v("QUEUE_BOUND", "256"),
    _v("ACK_TIMEOUT", "30.0"),
    _v("RETAIN_LOGS", "100000"),
    _v("MAX_HEAD_LAG", "10"),
    _v("HELLO_FRESHNESS", "30.0"),
    _v("LOG_LEVEL", "info"),
    _v("SHUTDOWN_TIMEOUT", "8.0"),
)
KNOWN_NAMES = frozenset(v.name for v in VARIABLES)


def parse_bytes32(text: str) -> Bytes32:
    """Parse 32 bytes of 0x-prefixed hex."""
    if not text.startswith(("0x", "0X")):
        raise ValueError("must be 0x-prefixed hex")
    try:
        return Bytes32.from_hex(text)
    except ValueError:
        raise ValueError("must be 32 bytes of hex") from None


def parse_address_list(text: str) -> tuple[Address, ...]:
    """Parse a comma-separated list of distinct non-zero addresses (blank items are ignored)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if len(items) > MAX_CLUSTERS:
        raise ValueError(f"must list at most {MAX_CLUSTERS} addresses")
    out: list[Address] = []
    for index, item in enumerate(items, 1):
        try:
            address = parse_address(item)
        except ValueError as exc:
            raise ValueError(f"item {index} {exc}") from None
        if address.is_zero:
            raise ValueError(f"item {index} is the zero address")
        if address in out:
            raise ValueError(f"item {index} is listed twice")
        out.append(address)
    return tuple(out)


def _nonzero(address: Address) -> bool:
    return not address.is_zero


def load_settings(env: Mapping[str, str]) -> IndexerSettings:
    """Parse and validate the indexer's environment; raise SettingsError listing every problem."""
    r = EnvReader(env, VARIABLES, PREFIX)
    r.reject_unknown("variable")  # by name: the value is never echoed
    rpc_url = r.get("RPC_URL", parse_http_url)
    chain_id = r.get("CHAIN_ID", parse_int, lambda v: v >= 1, "a chain id of at least 1")
    factory = r.optional("CLUSTER_FACTORY", parse_address)
    if factory is not None and factory.is_zero:
        r.problems.append(f"{PREFIX}CLUSTER_FACTORY must be a non-zero address")
        factory = None
    clusters = r.get("CLUSTERS", parse_address_list)
    start_block = r.get("START_BLOCK", parse_int)
    registry = r.optional("REGISTRY", parse_address)
    if registry is not None and not _nonzero(registry):
        r.problems.append(f"{PREFIX}REGISTRY must be a non-zero address")
        registry = None
    registry_check = r.get("REGISTRY_CHECK_INTERVAL", parse_seconds, positive, "greater than 0")
    public_url = r.raw("PUBLIC_URL") or ""
    if public_url and not public_url.startswith(("ws://", "wss://")):
        r.problems.append(f"{PREFIX}PUBLIC_URL must be a ws:// or wss:// URL")
    code_id = r.optional("CODE_ID", parse_bytes32)
    key_version = r.get("KEY_VERSION", parse_int, lambda v: 1 <= v <= MAX_KEY_VERSION, "in 1..1000000")
    listen = r.get("LISTEN_ADDR", lambda t: parse_host_port(t, ip_only=True))
    poll = r.get("POLL_INTERVAL", parse_seconds, positive, "greater than 0")
    confirmations = r.get("CONFIRMATIONS", parse_int)
    max_range = r.get("MAX_LOG_RANGE", parse_int, lambda v: v >= 1, "at least 1")
    rpc_timeout = r.get("RPC_TIMEOUT", parse_seconds, positive, "greater than 0")
    queue_bound = r.get("QUEUE_BOUND", parse_int, lambda v: v >= 1, "at least 1")
    ack_timeout = r.get("ACK_TIMEOUT", parse_seconds, positive, "greater than 0")
    retain = r.get("RETAIN_LOGS", parse_int, lambda v: v >= 1, "at least 1")
    max_lag = r.get("MAX_HEAD_LAG", parse_int)
    freshness = r.get("HELLO_FRESHNESS", parse_seconds, positive, "greater than 0")
    level = r.get("LOG_LEVEL", enum_parser(LogLevel))
    shutdown = r.get("SHUTDOWN_TIMEOUT", parse_seconds, positive, "greater than 0")
    if factory is None and clusters == () and not r.problems:
        r.problems.append(f"set {PREFIX}CLUSTER_FACTORY or {PREFIX}CLUSTERS: there is nothing to follow")
    if r.problems:
        raise SettingsError(r.problems)
    assert rpc_url is not None and chain_id is not None and clusters is not None
    assert start_block is not None and listen is not None and poll is not None and key_version is not None
    assert confirmations is not None and max_range is not None and rpc_timeout is not None
    assert queue_bound is not None and ack_timeout is not None and retain is not None
    assert registry_check is not None
    assert max_lag is not None and freshness is not None and level is not None and shutdown is not None
    return IndexerSettings(
        rpc_url=rpc_url,
        chain_id=chain_id,
        cluster_factory=factory,
        clusters=clusters,
        start_block=start_block,
        indexer_registry=registry,
        registry_check_interval=registry_check,
        public_url=public_url,
        code_id=code_id,
        key_version=key_version,
        listen_addr=listen,
        poll_interval=poll,
        confirmations=confirmations,
        max_log_range=max_range,
        rpc_timeout=rpc_timeout,
        queue_bound=queue_bound,
        ack_timeout=ack_timeout,
        retain_logs=retain,
        max_head_lag=max_lag,
        hello_freshness=freshness,
        log_level=level,
        shutdown_timeout=shutdown,
    )
