"""The stand-in's configuration: one JSON file, every limit in it, every problem reported at once.

Owns ``GatewayConfig`` and ``ConfigError``. The file (relative paths are resolved against its directory)::

    {
      "listen": "10.213.0.3:443",          # required; an IP literal; port 0 binds a free port
      "domain": "amlab.gw.test",           # required; the certificate is *.<domain>
      "cert_file": "gateway.pem",          # required; PEM certificate (chain) served on terminated routes
      "key_file": "gateway.key",           # required; its PEM private key
      "routes_file": "routes.json",        # required; see devnet.gateway.routes
      "metrics_listen": "10.213.0.3:9443", # optional (null: no HTTP surface); /metrics and /status
      "connect_timeout": 5,                # seconds to connect to the app (all candidates racing)
      "handshake_timeout": 5,              # seconds for the ClientHello, and again for a TLS handshake
      "idle_timeout": 600,                 # seconds without a byte either way before the connection closes
      "idle_checks_per_window": 4,         # idle samples per idle_timeout (dstack: 4, so up to 25 % late)
      "lifetime": 18000,                   # seconds from accept until a connection is force-closed
      "max_connections_per_app": 0,        # concurrent connections per app, all instances; 0 = unlimited
      "route_poll_interval": 0.2           # seconds between stat() calls on the routes file
    }

Defaults are dstack-gateway's shipped ones (``gateway.toml``; 5 h lifetime, 10 min idle). Unknown keys are
problems (a typo must not pass silently).

Must not: open the certificate or key (``devnet.gateway.service`` loads them), or echo file contents.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Final

from sidecar.envkit import HostPort, split_host_port

_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII)
_REQUIRED: Final = ("listen", "domain", "cert_file", "key_file", "routes_file")
_SECONDS: Final = ("connect_timeout", "handshake_timeout", "idle_timeout", "lifetime", "route_poll_interval")


class ConfigError(ValueError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Where the stand-in listens, what it serves, and every limit it enforces."""

    listen: HostPort
    domain: str
    cert_file: Path
    key_file: Path
    routes_file: Path
    metrics_listen: HostPort | None = None
    connect_timeout: float = 5.0
    handshake_timeout: float = 5.0
    idle_timeout: float = 600.0
    idle_checks_per_window: int = 4
    lifetime: float = 5 * 3600.0
    max_connections_per_app: int = 0
    route_poll_interval: float = 0.2

    @classmethod
    def from_json(cls, obj: Any, base_dir: Path) -> GatewayConfig:
        """Build a config from parsed JSON; ``ConfigError`` lists every problem."""
        if not isinstance(obj, dict):
            raise ConfigError(["the config must be a JSON object"])
        problems: list[str] = []
        known = set(_REQUIRED) | {"metrics_listen", "idle_checks_per_window", "max_connections_per_app"}
        known |= set(_SECONDS)
        problems += [f"unknown key {key!r}" for key in sorted(set(obj) - known)]
        problems += [f"{key} is required" for key in _REQUIRED if key not in obj]
        args: dict[str, Any] = {}
        for key in ("listen", "metrics_listen"):
            if obj.get(key) is not None:
                args[key] = _listen(obj[key], key, problems)
        if "domain" in obj:
            args["domain"] = _domain(obj["domain"], problems)
        for key in ("cert_file", "key_file", "routes_file"):
            if key in obj:
                args[key] = _path(obj[key], key, base_dir, problems)
        for key in _SECONDS:
            if key in obj:
                args[key] = _seconds(obj[key], key, problems)
        if "idle_checks_per_window" in obj:
            args["idle_checks_per_window"] = _integer(
                obj["idle_checks_per_window"], "idle_checks_per_window", 1, problems
            )
        if "max_connections_per_app" in obj:
            args["max_connections_per_app"] = _integer(
                obj["max_connections_per_app"], "max_connections_per_app", 0, problems
            )
        if problems:
            raise ConfigError(problems)
        return cls(**args)

    @classmethod
    def load(cls, path: Path) -> GatewayConfig:
        """Read and validate a config file."""
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError([f"{path} is not JSON: {exc}"]) from None
        return cls.from_json(obj, path.parent)


def _listen(value: object, key: str, problems: list[str]) -> HostPort | None:
    if not isinstance(value, str):
        problems.append(f"{key} must be a string ip:port")
        return None
    try:
        host, port_text = split_host_port(value)
        ip_address(host)
    except ValueError:
        problems.append(f"{key} must be ip:port with an IP literal (IPv6 as [addr]:port)")
        return None
    if not port_text.isdigit() or int(port_text) > 65535:
        problems.append(f"{key} port must be a number from 0 to 65535 (0: a free port)")
        return None
    return HostPort(host, int(port_text))


def _domain(value: object, problems: list[str]) -> str | None:
    if not isinstance(value, str):
        problems.append("domain must be a string")
        return None
    domain = value.lower()
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        problems.append("domain must be a DNS name of at least two labels (letters, digits, '-')")
        return None
    return domain


def _path(value: object, key: str, base_dir: Path, problems: list[str]) -> Path | None:
    if not isinstance(value, str) or not value or "\x00" in value:
        problems.append(f"{key} must be a non-empty path")
        return None
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def _seconds(value: object, key: str, problems: list[str]) -> float | None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        problems.append(f"{key} must be a positive number of seconds")
        return None
    return float(value)


def _integer(value: object, key: str, minimum: int, problems: list[str]) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        problems.append(f"{key} must be an integer of at least {minimum}")
        return None
    return value
