"""The environment kit: declared variables, their parsers, and a reader that reports every problem at once.

Owns ``Variable`` (one declaration: name, default as written in the environment, whether the value is
secret, its parser and rule, the settings field it fills), ``EnvReader`` (reads declared variables, collecting
problems instead of stopping at the first, and refusing unknown names under a prefix), ``SettingsError``
with ``EXIT_BAD_CONFIGURATION``, the value parsers every AttestMesh service shares (integers, durations,
rates, ports, ``host:port``, addresses, URLs, paths, enums). The sidecar (``sidecar.settings``), the
indexer (``indexer.settings``) and the operator CLI import it, so every service accepts the same spellings.

Must not: know any service's variables, read ``os.environ`` itself (the caller passes the mapping), do I/O,
or echo a value declared secret or an unknown variable's value (it may be a misnamed credential).
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
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sidecar.core.ids import Address

EXIT_BAD_CONFIGURATION = 2
"""Process exit code when the configuration is invalid (distinct from a crash, so supervisors can tell)."""

MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
MAX_VALUE_ECHO = 64

T = TypeVar("T")
E = TypeVar("E", bound=enum.StrEnum)


class SettingsError(Exception):
    """The configuration is invalid; ``problems`` names each variable and what is wrong with it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


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
class Variable:
    """One declared variable: its name and default as written in the environment (None = required, "" =
    optional: unset reads as None), whether its value is secret, how it parses, the rule ``check`` enforces
    (``rule`` completes "must be …") and the settings field it fills."""

    name: str
    default: str | None
    secret: bool = False
    parse: Callable[[str], Any] | None = None
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    field: str = ""


_INT = re.compile(r"[0-9]+", re.ASCII)
_FLOAT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)


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
    """Parse a TCP/UDP port number, 1 to 65535."""
    port = parse_int(text)
    if not 1 <= port <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return port


def is_localhost(host: str) -> bool:
    """Tell whether a host name is ``localhost`` (any case, with or without the root dot)."""
    return host.lower().removesuffix(".") == "localhost"


def _is_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.removesuffix(".").split(".")
    return all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)


def split_host_port(text: str) -> tuple[str, str]:
    """Split ``host:port`` or ``[v6]:port`` into its host (without brackets) and port text."""
    if not text.startswith("["):
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("must be host:port")
        if ":" in host:
            raise ValueError("an IPv6 host must be written in brackets: [addr]:port")
        return host, port_text
    close = text.find("]")
    if close < 0 or text[close + 1 : close + 2] != ":":
        raise ValueError("must be host:port (IPv6 as [addr]:port)")
    host, port_text = text[1:close], text[close + 2 :]
    try:
        if not isinstance(ip_address(host), IPv6Address):
            raise ValueError
    except ValueError:
        raise ValueError("brackets must hold an IPv6 address") from None
    return host, port_text


def parse_host_port(text: str, *, ip_only: bool = False) -> HostPort:
    """Parse ``host:port`` or ``[v6]:port``; with ``ip_only`` the host must be an IP literal or localhost."""
    host, port_text = split_host_port(text)
    if not text.startswith("["):
        try:
            IPv4Address(host)
        except ValueError:
            if ip_only and host != "localhost":
                raise ValueError("host must be an IP address (or localhost)") from None
            if not _is_hostname(host):
                raise ValueError("host is neither an IP address nor a valid DNS name") from None
    return HostPort(host, parse_port(port_text))


def parse_address(text: str) -> Address:
    """Parse a 20-byte hex address; a mixed-case address must carry a valid EIP-55 checksum."""
    address = Address.from_hex(text)
    body = text[2:] if text[:2] in ("0x", "0X") else text
    if body != body.lower() and body != body.upper() and "0x" + body != address.checksum:
        raise ValueError("has a mixed-case EIP-55 checksum that does not match (typo?)")
    return address


def parse_address_list(text: str, *, at_most: int | None = None) -> tuple[Address, ...]:
    """Parse a comma-separated list of distinct non-zero addresses (blank items are ignored), of at most
    ``at_most`` items when given."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if at_most is not None and len(items) > at_most:
        raise ValueError(f"must list at most {at_most} addresses")
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


def parse_http_url(text: str) -> str:
    """Accept an ``http://`` or ``https://`` URL that names a host."""
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
    """Parse an absolute filesystem path."""
    if "\x00" in text:
        raise ValueError("must not contain a NUL byte")
    path = Path(text)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def parse_socket_path(text: str) -> Path:
    """Parse an absolute path a unix socket can be bound at."""
    path = parse_absolute_path(text)
    if len(text.encode()) > MAX_UNIX_SOCKET_PATH:
        raise ValueError(f"is longer than the {MAX_UNIX_SOCKET_PATH} bytes a unix socket path may have")
    if path.name == "":
        raise ValueError("must name a socket file, not a directory")
    return path


def parse_bool(text: str) -> bool:
    """Parse a switch: ``true``/``false`` (also ``1``/``0``, ``yes``/``no``), case-insensitive."""
    value = text.lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError("must be true or false")


def enum_parser(kind: type[E]) -> Callable[[str], E]:
    """Return a case-insensitive parser for one of the enum's values."""

    def parse(text: str) -> E:
        try:
            return kind(text.lower())
        except ValueError:
            raise ValueError("must be one of " + "|".join(m.value for m in kind)) from None

    return parse


def positive(value: float) -> bool:
    """The check of a duration that must be greater than 0."""
    return value > 0


def at_least_one(value: int) -> bool:
    """The check of a count that must be at least 1."""
    return value >= 1


def parse_listen_addr(text: str) -> HostPort:
    """Parse the address a server binds: an IP literal (IPv6 in brackets) or localhost, and a port."""
    return parse_host_port(text, ip_only=True)


Rule = tuple[Callable[[Any], bool], str]  # a check and what it requires ("must be …")
POSITIVE: Rule = (positive, "greater than 0")
AT_LEAST_ONE: Rule = (at_least_one, "at least 1")


@dataclass(frozen=True, slots=True)
class Declare:
    """Declares the variables of one name prefix, one table row each: ``_v = Declare("ATTESTMESH_")``."""

    prefix: str

    def __call__(
        self,
        suffix: str,
        field: str,
        default: str | None,
        parse: Callable[[str], Any],
        must: Rule | None = None,
        *,
        secret: bool = False,
    ) -> Variable:
        """Declare ``prefix + suffix``; ``must`` is the check with its rule (e.g. ``POSITIVE``)."""
        check, rule = must or (None, "")
        return Variable(self.prefix + suffix, default, secret, parse, check, rule, field)


class EnvReader:
    """Reads one component's declared variables, collecting problems instead of stopping at the first.

    ``variables`` are the component's declarations and ``prefix`` its variable-name prefix (``suffix``
    arguments are names without it).
    """

    def __init__(self, env: Mapping[str, str], variables: Sequence[Variable], prefix: str) -> None:
        self.env = env
        self.prefix = prefix
        self.problems: list[str] = []
        self._spec = {v.name: v for v in variables}

    def reject_unknown(self, what: str = "variable", *, suggest: bool = False) -> None:
        """Report every name under the prefix that is not declared (by name only: never its value)."""
        known = sorted(self._spec)
        for name in sorted(n for n in self.env if n.startswith(self.prefix) and n not in self._spec):
            close = difflib.get_close_matches(name, known, n=1) if suggest else []
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.problem(f"{name} is not a known {what}{hint}")

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

    def read(self, variable: Variable) -> Any:
        """The variable parsed and checked as declared; None when optional and unset, or on a problem."""
        if variable.parse is None:
            raise TypeError(f"{variable.name} declares no parser")
        suffix = variable.name.removeprefix(self.prefix)
        if variable.default == "" and not self.raw(suffix):
            return None
        return self.get(suffix, variable.parse, variable.check, variable.rule)

    def read_all(self) -> dict[str, Any]:
        """Every declared variable read in declaration order, by name (None where there is a problem)."""
        return {name: self.read(variable) for name, variable in self._spec.items()}

    def problem(self, text: str) -> None:
        self.problems.append(text)

    @staticmethod
    def _shown(spec: Variable, text: str) -> str:
        if spec.secret:
            return " (value not shown)"
        shown = text if len(text) <= MAX_VALUE_ECHO else text[:MAX_VALUE_ECHO] + "…"
        return f"={shown!r}"
