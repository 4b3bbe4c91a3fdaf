"""The sidecar's configuration: every ``ATTESTMESH_*`` environment variable, parsed and validated at start-up.

Owns: ``load_settings`` (environment mapping → ``Settings``), the grouped frozen settings objects, and the
checks of one variable against another (timeouts, backoff bounds, distinct ports). The variables are
declared once in ``sidecar.variables`` (name, field, default, parser); parsing, the unknown-variable check
and the defaults here all come from that table, with the generic kit of ``sidecar.envkit``. Every problem
is collected into one ``SettingsError``, so an operator fixes a compose file in one round. A blank value
counts as unset (compose templates often render ``VAR=``): it takes the default, or is reported missing
when the variable is required. Unknown ``ATTESTMESH_*`` names are problems too, so a typo cannot silently
fall back to a default.

Must not: read ``os.environ`` itself (the caller passes the mapping), do I/O, or echo a value that may carry
a credential (the RPC URL can embed an API key; an unknown variable may be a misnamed secret).
``DSTACK_SIMULATOR_ENDPOINT`` belongs to the dstack SDK and is deliberately not parsed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.core.ids import Address
from sidecar.envkit import (
    EXIT_BAD_CONFIGURATION,
    MAX_UNIX_SOCKET_PATH,
    MAX_VALUE_ECHO,
    EnvReader,
    HostPort,
    LogLevel,
    SettingsError,
    Variable,
    enum_parser,
    parse_absolute_path,
    parse_address,
    parse_host_port,
    parse_http_url,
    parse_int,
    parse_port,
    parse_rate,
    parse_seconds,
    parse_socket_path,
)
from sidecar.variables import (
    GROUPS,
    KNOWN_NAMES,
    MAX_INTERFACE_NAME,
    PREFIX,
    VARIABLES,
    WgBackend,
    parse_endpoint,
    parse_interface,
)

__all__ = [
    "DEFAULT_EVENT_SETTINGS",
    "EXIT_BAD_CONFIGURATION",
    "GROUPS",
    "KNOWN_NAMES",
    "MAX_INTERFACE_NAME",
    "MAX_UNIX_SOCKET_PATH",
    "MAX_VALUE_ECHO",
    "PREFIX",
    "VARIABLES",
    "ChainSettings",
    "EnvReader",
    "EventSettings",
    "HostPort",
    "HttpSettings",
    "LogLevel",
    "MeshSettings",
    "Settings",
    "SettingsError",
    "Variable",
    "WgBackend",
    "enum_parser",
    "load_settings",
    "parse_absolute_path",
    "parse_address",
    "parse_endpoint",
    "parse_host_port",
    "parse_http_url",
    "parse_int",
    "parse_interface",
    "parse_port",
    "parse_rate",
    "parse_seconds",
    "parse_socket_path",
]

_BY_KEY = {group.key: group for group in GROUPS}


def _fields(key: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of one group's settings object, from the values read by variable name."""
    return {v.field: values[v.name] for v in _BY_KEY[key].variables}


def _defaults(key: str) -> dict[str, Any]:
    variables = _BY_KEY[key].variables
    return _fields(key, {v.name: v.parse(v.default) if v.parse and v.default else None for v in variables})


def default_quorum(providers: int) -> int:
    """A majority of the providers (at least 1): 1 of 1, 2 of 2, 2 of 3, 3 of 4, 3 of 5."""
    return max(1, providers // 2 + 1)


@dataclass(frozen=True, slots=True)
class ChainSettings:
    """The chain: its JSON-RPC providers (``rpc_urls``, index = the provider number shown in /healthz and
    metrics; the URLs themselves are secret), how many must agree (``rpc_quorum``), the trust anchors and
    the polling and timeout knobs."""

    rpc_urls: tuple[str, ...]
    chain_id: int
    cluster: Address
    indexer_registry: Address | None
    member_app_factory: Address  # the ClusterMemberAppFactory whose CREATE2 apps are members (measured)
    kms_roots: tuple[Address, ...]  # the dstack KMS roots whose signature chains are trusted (measured)
    confirmations: int
    poll_interval: float
    resync_interval: float
    max_log_range: int
    rpc_timeout: float
    receipt_timeout: float
    max_fee_wei: int = 10 * 10**9  # the most a transaction pays per gas (maxFeePerGas), whatever the RPC says
    max_priority_fee_wei: int = 2 * 10**9  # the most tip per gas (maxPriorityFeePerGas)
    rpc_quorum: int = 1  # how many providers must agree on a snapshot (1 ≤ quorum ≤ len(rpc_urls))
    rpc_allow_http: bool = False  # http:// providers accepted (the devnet, private networks)

    @property
    def rpc_url(self) -> str:
        """The first provider (transactions and event polling start there)."""
        return self.rpc_urls[0]

    def __repr__(self) -> str:  # the URLs may carry API keys
        return (
            f"ChainSettings(rpc_urls=<{len(self.rpc_urls)} redacted>, rpc_quorum={self.rpc_quorum}, "
            f"rpc_allow_http={self.rpc_allow_http}, chain_id={self.chain_id}, cluster={self.cluster}, "
            f"indexer_registry={self.indexer_registry}, confirmations={self.confirmations}, "
            f"poll_interval={self.poll_interval}, resync_interval={self.resync_interval}, "
            f"max_log_range={self.max_log_range}, rpc_timeout={self.rpc_timeout}, "
            f"receipt_timeout={self.receipt_timeout}, max_fee_wei={self.max_fee_wei}, "
            f"max_priority_fee_wei={self.max_priority_fee_wei}, "
            f"member_app_factory={self.member_app_factory}, "
            f"kms_roots={self.kms_roots})"
        )


@dataclass(frozen=True, slots=True)
class EventSettings:
    """The event source: push from the registered indexer, polling as the floor (DESIGN §4 "Events")."""

    poll_interval_pushed: float  # the slow safety poll while push is healthy
    resync_interval_pushed: float  # the slow resync pass while push is healthy (pushes wake on changes)
    registry_refresh: float  # how often IndexerRegistry.current() is re-read while subscribed
    push_crosscheck: float  # probability in [0, 1] of checking a pushed log against eth_getLogs
    push_backoff_min: float
    push_backoff_max: float
    ca_file: Path | None = None  # extra trusted CA (PEM) for TLS to the indexer; None: the system roots


DEFAULT_EVENT_SETTINGS = EventSettings(**_defaults("events"))


@dataclass(frozen=True, slots=True)
class MeshSettings:
    interface: str
    backend: WgBackend
    uapi_dir: Path
    listen_port: int
    endpoint: str | None  # direct transport: validated "host:port" ("[v6]:port"), as advertised on chain
    gateway_domain: str | None  # gateway transport: the dstack gateway's wildcard domain
    gateway_port: int  # gateway transport: the TLS listener the gateway's passthrough route reaches
    heartbeat_port: int
    peer_api_port: int
    heartbeat_interval: float
    liveness_misses: int
    csk_parallelism: int
    csk_request_timeout: float
    csk_grace: float  # seconds the previous epoch's key stays served after the epoch changes


@dataclass(frozen=True, slots=True)
class HttpSettings:
    health_addr: HostPort
    app_socket: Path


@dataclass(frozen=True, slots=True)
class Settings:
    chain: ChainSettings
    mesh: MeshSettings
    http: HttpSettings
    state_dir: Path
    log_level: LogLevel
    shutdown_timeout: float
    events: EventSettings = DEFAULT_EVENT_SETTINGS


def _check_together(r: EnvReader, values: Mapping[str, Any]) -> None:
    """Record the problems of one variable against another (one that did not parse is already reported)."""
    for longer, shorter in (("RECEIPT_TIMEOUT", "RPC_TIMEOUT"), ("PUSH_BACKOFF_MAX", "PUSH_BACKOFF_MIN")):
        low, high = values[PREFIX + shorter], values[PREFIX + longer]
        if low is not None and high is not None and high < low:
            r.problem(f"{PREFIX}{longer} must not be shorter than {PREFIX}{shorter}")
    for pushed, polled in (
        ("POLL_INTERVAL_PUSHED", "POLL_INTERVAL"),
        ("RESYNC_INTERVAL_PUSHED", "RESYNC_INTERVAL"),
    ):
        # push mode exists to read less: its intervals are never shorter than poll mode's (a default that
        # is shorter than a configured poll-mode interval is raised to it instead, see ``load_settings``)
        low, high = values[PREFIX + polled], values[PREFIX + pushed]
        if r.env.get(PREFIX + pushed, "").strip() and low is not None and high is not None and high < low:
            r.problem(f"{PREFIX}{pushed} must not be shorter than {PREFIX}{polled}")
    tip, fee = values[PREFIX + "MAX_PRIORITY_FEE_GWEI"], values[PREFIX + "MAX_FEE_GWEI"]
    if tip is not None and fee is not None and tip > fee:
        r.problem(f"{PREFIX}MAX_PRIORITY_FEE_GWEI must not exceed {PREFIX}MAX_FEE_GWEI")
    endpoint, domain = values[PREFIX + "ENDPOINT"], values[PREFIX + "GATEWAY_DOMAIN"]
    if endpoint is not None and domain is not None:
        r.problem(
            f"{PREFIX}ENDPOINT and {PREFIX}GATEWAY_DOMAIN are both set; set one: ENDPOINT for the direct "
            "transport (peers send WireGuard UDP to it), GATEWAY_DOMAIN for the gateway transport"
        )
    elif not (r.raw("ENDPOINT") or r.raw("GATEWAY_DOMAIN")):
        r.problem(
            f"{PREFIX}ENDPOINT or {PREFIX}GATEWAY_DOMAIN must be set: ENDPOINT=ip:port for the direct "
            "transport, GATEWAY_DOMAIN=<the dstack gateway's domain> for the gateway transport (a CVM)"
        )
    health: HostPort | None = values[PREFIX + "HEALTH_ADDR"]
    seen: dict[int, str] = {}
    for name, port in (
        (PREFIX + "WG_LISTEN_PORT", values[PREFIX + "WG_LISTEN_PORT"]),
        (PREFIX + "HEARTBEAT_PORT", values[PREFIX + "HEARTBEAT_PORT"]),
        (PREFIX + "PEER_API_PORT", values[PREFIX + "PEER_API_PORT"]),
        (PREFIX + "GATEWAY_PORT", values[PREFIX + "GATEWAY_PORT"]),
        (PREFIX + "HEALTH_ADDR", None if health is None else health.port),
    ):
        if port is None:
            continue
        if port in seen:
            r.problem(f"{name} uses port {port}, already used by {seen[port]}; the ports must differ")
        else:
            seen[port] = name


def _providers(r: EnvReader, values: Mapping[str, Any]) -> dict[str, Any]:
    """The chain settings' provider fields: ``RPC_URLS`` (or the one-element ``RPC_URL``), the quorum (default
    a majority) and the https rule. Problems name variables and item numbers, never a URL."""
    urls_set = bool(r.env.get(PREFIX + "RPC_URLS", "").strip())
    url_set = bool(r.env.get(PREFIX + "RPC_URL", "").strip())
    urls: tuple[str, ...] | None = values[PREFIX + "RPC_URLS"]
    if urls_set and url_set:
        r.problem(
            f"{PREFIX}RPC_URLS and {PREFIX}RPC_URL are both set; set one: RPC_URLS (comma-separated, "
            "one or more providers) replaces RPC_URL"
        )
    elif url_set:
        single = values[PREFIX + "RPC_URL"]
        urls = None if single is None else (single,)
    elif not urls_set:
        r.problem(f"{PREFIX}RPC_URLS (or {PREFIX}RPC_URL) is required but not set")
    quorum: int | None = values[PREFIX + "RPC_QUORUM"]
    allow_http: bool | None = values[PREFIX + "RPC_ALLOW_HTTP"]
    if urls is not None:
        if quorum is None:
            quorum = default_quorum(len(urls))
        elif quorum > len(urls):
            r.problem(f"{PREFIX}RPC_QUORUM={quorum} is more than the {len(urls)} configured provider(s)")
        plain = [n for n, url in enumerate(urls) if urlsplit(url).scheme != "https"]
        if plain and allow_http is False:
            what = (
                f"{PREFIX}RPC_URL is"
                if url_set
                else f"{PREFIX}RPC_URLS item {', '.join(str(n + 1) for n in plain)} "
                + ("is" if len(plain) == 1 else "are")
            )
            r.problem(
                f"{what} not https:// (an http:// provider can be read and altered on the way); use "
                f"https://, or set {PREFIX}RPC_ALLOW_HTTP=true on a private network (the devnet does)"
            )
    return {"rpc_urls": urls or (), "rpc_quorum": quorum or 1, "rpc_allow_http": bool(allow_http)}


def load_settings(env: Mapping[str, str]) -> Settings:
    """Parse and validate every ``ATTESTMESH_*`` variable; raise ``SettingsError`` listing all problems."""
    r = EnvReader(env, VARIABLES, PREFIX)
    r.reject_unknown("AttestMesh variable", suggest=True)
    values = r.read_all()
    _check_together(r, values)
    chain = _fields("chain", values)
    for name in ("rpc_url", "rpc_urls", "rpc_quorum", "rpc_allow_http"):
        chain.pop(name)
    chain.update(_providers(r, values))
    if r.problems:
        raise SettingsError(r.problems)
    events = _fields("events", values)
    for pushed, polled in (
        ("poll_interval_pushed", "poll_interval"),
        ("resync_interval_pushed", "resync_interval"),
    ):
        events[pushed] = max(events[pushed], chain[polled])
    return Settings(
        chain=ChainSettings(**chain),
        mesh=MeshSettings(**_fields("mesh", values)),
        http=HttpSettings(**_fields("http", values)),
        events=EventSettings(**events),
        **_fields("", values),
    )
