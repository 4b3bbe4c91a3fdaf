"""The sidecar's configuration: every ``ATTESTMESH_*`` environment variable, parsed and validated at start-up.

Owns: ``load_settings`` (environment mapping → ``Settings``), the grouped frozen settings objects and
``SettingsError``, which carries *every* problem found, so an operator fixes a compose file in one round.
A blank value counts as unset (compose templates often render ``VAR=``): it takes the default, or is reported
missing when the variable is required. Unknown ``ATTESTMESH_*`` names are problems too, so a typo cannot
silently fall back to a default.

Must not: read ``os.environ`` itself (the caller passes the mapping), do I/O, or echo a value that may carry
a credential (the RPC URL can embed an API key; an unknown variable may be a misnamed secret).
``DSTACK_SIMULATOR_ENDPOINT`` belongs to the dstack SDK and is deliberately not parsed here.
"""

from __future__ import annotations

import difflib
import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from eth_utils.address import to_checksum_address

from sidecar.core.ids import Address

PREFIX = "ATTESTMESH_"
EXIT_BAD_CONFIGURATION = 2
"""Process exit code when the configuration is invalid (distinct from a crash, so supervisors can tell)."""

MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
MAX_INTERFACE_NAME = 15  # IFNAMSIZ - 1
MAX_VALUE_ECHO = 64

T = TypeVar("T")


class SettingsError(Exception):
    """The configuration is invalid; ``problems`` names each variable and what is wrong with it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class WgBackend(enum.StrEnum):
    """How the WireGuard device is driven: netlink (kernel), wireguard-go's UAPI, or detect."""

    USERSPACE = "userspace"
    KERNEL = "kernel"
    AUTO = "auto"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class HostPort:
    """A ``host:port`` pair; IPv6 hosts are written in brackets (``[::1]:9090``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ChainSettings:
    rpc_url: str
    chain_id: int
    cluster: Address
    indexer_registry: Address | None
    confirmations: int
    poll_interval: float
    resync_interval: float
    max_log_range: int
    rpc_timeout: float
    receipt_timeout: float

    def __repr__(self) -> str:  # the URL may carry an API key
        return (
            f"ChainSettings(rpc_url=<redacted>, chain_id={self.chain_id}, cluster={self.cluster}, "
            f"indexer_registry={self.indexer_registry}, confirmations={self.confirmations}, "
            f"poll_interval={self.poll_interval}, resync_interval={self.resync_interval}, "
            f"max_log_range={self.max_log_range}, rpc_timeout={self.rpc_timeout}, "
            f"receipt_timeout={self.receipt_timeout})"
        )


@dataclass(frozen=True, slots=True)
class EventSettings:
    """The event source: push from the registered indexer, polling as the floor (DESIGN §4 "Events")."""

    poll_interval_pushed: float  # the slow safety poll while push is healthy
    registry_refresh: float  # how often IndexerRegistry.current() is re-read while subscribed
    push_crosscheck: float  # probability in [0, 1] of checking a pushed log against eth_getLogs
    push_backoff_min: float
    push_backoff_max: float


DEFAULT_EVENT_SETTINGS = EventSettings(
    poll_interval_pushed=30.0,
    registry_refresh=60.0,
    push_crosscheck=0.0,
    push_backoff_min=1.0,
    push_backoff_max=60.0,
)


@dataclass(frozen=True, slots=True)
class MeshSettings:
    interface: str
    backend: WgBackend
    uapi_dir: Path
    listen_port: int
    endpoint: str  # validated "host:port" ("[v6]:port"), exactly as advertised on chain
    heartbeat_port: int
    peer_api_port: int
    heartbeat_interval: float
    liveness_misses: int
    csk_parallelism: int
    csk_request_timeout: float


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


@dataclass(frozen=True, slots=True)
class Variable:
    """One documented variable: its name, default as written in the environment (None = required)."""

    name: str
    default: str | None
    secret: bool = False


def _v(suffix: str, default: str | None, *, secret: bool = False) -> Variable:
    return Variable(PREFIX + suffix, default, secret)


VARIABLES: tuple[Variable, ...] = (
    _v("RPC_URL", None, secret=True),
    _v("CHAIN_ID", None),
    _v("CLUSTER", None),
    _v("INDEXER_REGISTRY", ""),
    _v("CONFIRMATIONS", "0"),
    _v("POLL_INTERVAL", "2.0"),
    _v("POLL_INTERVAL_PUSHED", "30.0"),
    _v("REGISTRY_REFRESH", "60.0"),
    _v("PUSH_CROSSCHECK", "0"),
    _v("PUSH_BACKOFF_MIN", "1.0"),
    _v("PUSH_BACKOFF_MAX", "60.0"),
    _v("RESYNC_INTERVAL", "30.0"),
    _v("MAX_LOG_RANGE", "2000"),
    _v("RPC_TIMEOUT", "5.0"),
    _v("RECEIPT_TIMEOUT", "60.0"),
    _v("WG_INTERFACE", "attestmesh0"),
    _v("WG_BACKEND", "auto"),
    _v("WG_UAPI_DIR", "/run/wireguard"),
    _v("WG_LISTEN_PORT", "51820"),
    _v("ENDPOINT", None),
    _v("HEARTBEAT_PORT", "51821"),
    _v("PEER_API_PORT", "51822"),
    _v("HEARTBEAT_INTERVAL", "2.0"),
    _v("LIVENESS_MISSES", "3"),
    _v("CSK_PARALLELISM", "4"),
    _v("CSK_TIMEOUT", "2.0"),
    _v("HEALTH_ADDR", "0.0.0.0:9090"),
    _v("APP_SOCKET", "/run/attestmesh/agent.sock"),
    _v("STATE_DIR", "/var/lib/attestmesh"),
    _v("LOG_LEVEL", "info"),
    _v("SHUTDOWN_TIMEOUT", "8.0"),
)
KNOWN_NAMES = frozenset(v.name for v in VARIABLES)

_INT = re.compile(r"[0-9]+", re.ASCII)
_FLOAT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
_INTERFACE = re.compile(r"[A-Za-z0-9_.\-]+", re.ASCII)


def parse_int(text: str) -> int:
    """Parse a plain ASCII decimal integer (no sign, no underscores, no other digit scripts)."""
    if not _INT.fullmatch(text):
        raise ValueError("must be a whole number written in decimal digits")
    return int(text)


def parse_seconds(text: str) -> float:
    """Parse a non-negative finite decimal number of seconds (``2``, ``0.5``, ``1e1``)."""
    if not _FLOAT.fullmatch(text):
        raise ValueError("must be a number of seconds such as 2 or 0.5")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("must be a finite number of seconds")
    return value


def parse_rate(text: str) -> float:
    """Parse a probability from 0 to 1 written as a plain decimal (``0``, ``0.25``, ``1``)."""
    if not _FLOAT.fullmatch(text):
        raise ValueError("must be a number from 0 to 1 such as 0.1")
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a number from 0 to 1 such as 0.1")
    return value


def parse_port(text: str) -> int:
    port = parse_int(text)
    if not 1 <= port <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return port


def _is_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.removesuffix(".").split(".")
    return all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)


def parse_host_port(text: str, *, ip_only: bool = False) -> HostPort:
    """Parse ``host:port`` or ``[v6]:port``; with ``ip_only`` the host must be an IP literal or localhost."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("must be host:port (IPv6 as [addr]:port)")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            if not isinstance(ip_address(host), IPv6Address):
                raise ValueError
        except ValueError:
            raise ValueError("brackets must hold an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("must be host:port")
        if ":" in host:
            raise ValueError("an IPv6 host must be written in brackets: [addr]:port")
        try:
            IPv4Address(host)
        except ValueError:
            if ip_only and host != "localhost":
                raise ValueError("host must be an IP address (or localhost)") from None
            if not _is_hostname(host):
                raise ValueError("host is neither an IP address nor a valid DNS name") from None
    return HostPort(host, parse_port(port_text))


def parse_endpoint(text: str) -> str:
    """The WireGuard endpoint a node advertises on chain: an IP literal and a port (peers' devices take
    IP literals only; a name would have to be resolved by every peer, and WireGuard does not)."""
    endpoint = parse_host_port(text, ip_only=True)
    if endpoint.host == "localhost":
        raise ValueError("must be an IP address other peers can reach, not localhost")
    return str(endpoint)


def parse_address(text: str) -> Address:
    """Parse a 20-byte hex address; a mixed-case address must carry a valid EIP-55 checksum."""
    address = Address.from_hex(text)
    body = text[2:] if text[:2] in ("0x", "0X") else text
    if body != body.lower() and body != body.upper() and "0x" + body != to_checksum_address(address.raw):
        raise ValueError("has a mixed-case EIP-55 checksum that does not match (typo?)")
    return address


def parse_http_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    return text


def parse_absolute_path(text: str) -> Path:
    if "\x00" in text:
        raise ValueError("must not contain a NUL byte")
    path = Path(text)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def parse_socket_path(text: str) -> Path:
    path = parse_absolute_path(text)
    if len(text.encode()) > MAX_UNIX_SOCKET_PATH:
        raise ValueError(f"is longer than the {MAX_UNIX_SOCKET_PATH} bytes a unix socket path may have")
    if path.name == "":
        raise ValueError("must name a socket file, not a directory")
    return path


def parse_interface(text: str) -> str:
    if len(text) > MAX_INTERFACE_NAME or not _INTERFACE.fullmatch(text) or text in (".", ".."):
        raise ValueError(f"must be 1..{MAX_INTERFACE_NAME} characters from A-Z a-z 0-9 _ . -")
    return text


def _enum_parser(kind: type[enum.StrEnum]) -> Callable[[str], enum.StrEnum]:
    def parse(text: str) -> enum.StrEnum:
        try:
            return kind(text.lower())
        except ValueError:
            raise ValueError("must be one of " + "|".join(m.value for m in kind)) from None

    return parse


class EnvReader:
    """Reads one component's environment variables, collecting problems instead of stopping at the first.

    Shared by the sidecar's and the indexer's settings: ``variables`` are the component's specs and
    ``prefix`` its variable-name prefix (``suffix`` arguments are names without it).
    """

    def __init__(
        self, env: Mapping[str, str], variables: Sequence[Variable] | None = None, prefix: str = PREFIX
    ) -> None:
        self.env = env
        self.prefix = prefix
        self.problems: list[str] = []
        self._spec = {v.name: v for v in (VARIABLES if variables is None else variables)}

    def raw(self, suffix: str) -> str | None:
        """The stripped value, or the default when unset or blank; None when required and missing."""
        spec = self._spec[self.prefix + suffix]
        value = self.env.get(spec.name, "").strip()
        if value:
            return value
        if spec.default is None:
            self.problems.append(f"{spec.name} is required but not set")
        return spec.default

    def get(
        self, suffix: str, parse: Callable[[str], T], check: Callable[[T], bool] | None = None, rule: str = ""
    ) -> T | None:
        """The parsed value; None (and a recorded problem) when missing, unparsable or failing ``check``."""
        spec = self._spec[self.prefix + suffix]
        text = self.raw(suffix)
        if text is None:
            return None
        try:
            value = parse(text)
        except ValueError as exc:
            self.problems.append(f"{spec.name}{self._shown(spec, text)} {exc}")
            return None
        if check is not None and not check(value):
            self.problems.append(f"{spec.name}{self._shown(spec, text)} must be {rule}")
            return None
        return value

    def bounded(
        self, suffix: str, parse: Callable[[str], T], check: Callable[[T], bool], rule: str
    ) -> T | None:
        return self.get(suffix, parse, check, rule)

    def optional(self, suffix: str, parse: Callable[[str], T]) -> T | None:
        """None when unset or blank (the default is blank), else the parsed value or a problem."""
        if not self.raw(suffix):
            return None
        return self.get(suffix, parse)

    def peek(self, suffix: str, parse: Callable[[str], T]) -> T | None:
        """The parsed value, or None when unset-and-required or invalid; records no problem."""
        spec = self._spec[self.prefix + suffix]
        text = self.env.get(spec.name, "").strip() or spec.default
        if not text:
            return None
        try:
            return parse(text)
        except ValueError:
            return None

    def problem(self, text: str) -> None:
        self.problems.append(text)

    @staticmethod
    def _shown(spec: Variable, text: str) -> str:
        if spec.secret:
            return " (value not shown)"
        shown = text if len(text) <= MAX_VALUE_ECHO else text[:MAX_VALUE_ECHO] + "…"
        return f"={shown!r}"


def _positive(value: float) -> bool:
    return value > 0


def _chain_settings(r: EnvReader) -> ChainSettings | None:
    rpc_url = r.get("RPC_URL", parse_http_url)
    chain_id = r.bounded("CHAIN_ID", parse_int, lambda v: v >= 1, "a chain id of at least 1")
    cluster = r.bounded("CLUSTER", parse_address, lambda a: not a.is_zero, "a non-zero address")
    indexer_registry: Address | None = None
    if r.raw("INDEXER_REGISTRY"):
        indexer_registry = r.bounded("INDEXER_REGISTRY", parse_address, lambda a: not a.is_zero, "non-zero")
    confirmations = r.get("CONFIRMATIONS", parse_int)
    poll_interval = r.bounded("POLL_INTERVAL", parse_seconds, _positive, "greater than 0")
    resync_interval = r.bounded("RESYNC_INTERVAL", parse_seconds, _positive, "greater than 0")
    max_log_range = r.bounded("MAX_LOG_RANGE", parse_int, lambda v: v >= 1, "at least 1")
    rpc_timeout = r.bounded("RPC_TIMEOUT", parse_seconds, _positive, "greater than 0")
    receipt_timeout = r.bounded("RECEIPT_TIMEOUT", parse_seconds, _positive, "greater than 0")
    if rpc_timeout is not None and receipt_timeout is not None and receipt_timeout < rpc_timeout:
        r.problem(f"{PREFIX}RECEIPT_TIMEOUT must not be shorter than {PREFIX}RPC_TIMEOUT")
    if (
        rpc_url is None
        or chain_id is None
        or cluster is None
        or confirmations is None
        or poll_interval is None
        or resync_interval is None
        or max_log_range is None
        or rpc_timeout is None
        or receipt_timeout is None
    ):
        return None
    return ChainSettings(
        rpc_url=rpc_url,
        chain_id=chain_id,
        cluster=cluster,
        indexer_registry=indexer_registry,
        confirmations=confirmations,
        poll_interval=poll_interval,
        resync_interval=resync_interval,
        max_log_range=max_log_range,
        rpc_timeout=rpc_timeout,
        receipt_timeout=receipt_timeout,
    )


def _event_settings(r: EnvReader) -> EventSettings | None:
    pushed = r.bounded("POLL_INTERVAL_PUSHED", parse_seconds, _positive, "greater than 0")
    refresh = r.bounded("REGISTRY_REFRESH", parse_seconds, _positive, "greater than 0")
    crosscheck = r.get("PUSH_CROSSCHECK", parse_rate)
    backoff_min = r.bounded("PUSH_BACKOFF_MIN", parse_seconds, _positive, "greater than 0")
    backoff_max = r.bounded("PUSH_BACKOFF_MAX", parse_seconds, _positive, "greater than 0")
    if backoff_min is not None and backoff_max is not None and backoff_max < backoff_min:
        r.problem(f"{PREFIX}PUSH_BACKOFF_MAX must not be shorter than {PREFIX}PUSH_BACKOFF_MIN")
        return None
    if pushed is None or refresh is None or crosscheck is None or backoff_min is None or backoff_max is None:
        return None
    return EventSettings(
        poll_interval_pushed=pushed,
        registry_refresh=refresh,
        push_crosscheck=crosscheck,
        push_backoff_min=backoff_min,
        push_backoff_max=backoff_max,
    )


def _mesh_settings(r: EnvReader) -> MeshSettings | None:
    interface = r.get("WG_INTERFACE", parse_interface)
    backend = r.get("WG_BACKEND", _enum_parser(WgBackend))
    uapi_dir = r.get("WG_UAPI_DIR", parse_absolute_path)
    listen_port = r.get("WG_LISTEN_PORT", parse_port)
    endpoint = r.get("ENDPOINT", parse_endpoint)
    heartbeat_port = r.get("HEARTBEAT_PORT", parse_port)
    peer_api_port = r.get("PEER_API_PORT", parse_port)
    heartbeat_interval = r.bounded("HEARTBEAT_INTERVAL", parse_seconds, _positive, "greater than 0")
    liveness_misses = r.bounded("LIVENESS_MISSES", parse_int, lambda v: v >= 1, "at least 1")
    csk_parallelism = r.bounded("CSK_PARALLELISM", parse_int, lambda v: v >= 1, "at least 1")
    csk_timeout = r.bounded("CSK_TIMEOUT", parse_seconds, _positive, "greater than 0")
    if (
        interface is None
        or not isinstance(backend, WgBackend)
        or uapi_dir is None
        or listen_port is None
        or endpoint is None
        or heartbeat_port is None
        or peer_api_port is None
        or heartbeat_interval is None
        or liveness_misses is None
        or csk_parallelism is None
        or csk_timeout is None
    ):
        return None
    return MeshSettings(
        interface=interface,
        backend=backend,
        uapi_dir=uapi_dir,
        listen_port=listen_port,
        endpoint=endpoint,
        heartbeat_port=heartbeat_port,
        peer_api_port=peer_api_port,
        heartbeat_interval=heartbeat_interval,
        liveness_misses=liveness_misses,
        csk_parallelism=csk_parallelism,
        csk_request_timeout=csk_timeout,
    )


def _http_settings(r: EnvReader) -> HttpSettings | None:
    health_addr = r.get("HEALTH_ADDR", lambda t: parse_host_port(t, ip_only=True))
    app_socket = r.get("APP_SOCKET", parse_socket_path)
    if health_addr is None or app_socket is None:
        return None
    return HttpSettings(health_addr=health_addr, app_socket=app_socket)


def _check_ports_distinct(r: EnvReader) -> None:
    seen: dict[int, str] = {}
    for suffix, parse in (
        ("WG_LISTEN_PORT", parse_port),
        ("HEARTBEAT_PORT", parse_port),
        ("PEER_API_PORT", parse_port),
        ("HEALTH_ADDR", lambda t: parse_host_port(t, ip_only=True).port),
    ):
        port = r.peek(suffix, parse)  # a value that does not parse is already reported
        if port is None:
            continue
        name = PREFIX + suffix
        if port in seen:
            r.problem(f"{name} uses port {port}, already used by {seen[port]}; the ports must differ")
        else:
            seen[port] = name


def load_settings(env: Mapping[str, str]) -> Settings:
    """Parse and validate every ``ATTESTMESH_*`` variable; raise ``SettingsError`` listing all problems."""
    r = EnvReader(env)
    for name in sorted(n for n in env if n.startswith(PREFIX) and n not in KNOWN_NAMES):
        close = difflib.get_close_matches(name, sorted(KNOWN_NAMES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        r.problem(f"{name} is not a known AttestMesh variable{hint}")

    chain = _chain_settings(r)
    mesh = _mesh_settings(r)
    http = _http_settings(r)
    events = _event_settings(r)
    state_dir = r.get("STATE_DIR", parse_absolute_path)
    log_level = r.get("LOG_LEVEL", _enum_parser(LogLevel))
    shutdown_timeout = r.bounded("SHUTDOWN_TIMEOUT", parse_seconds, _positive, "greater than 0")
    _check_ports_distinct(r)

    if (
        r.problems
        or chain is None
        or mesh is None
        or http is None
        or events is None
        or state_dir is None
        or not isinstance(log_level, LogLevel)
        or shutdown_timeout is None
    ):
        raise SettingsError(r.problems)
    return Settings(
        chain=chain,
        mesh=mesh,
        http=http,
        state_dir=state_dir,
        log_level=log_level,
        shutdown_timeout=shutdown_timeout,
        events=events,
    )
