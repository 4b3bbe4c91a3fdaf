"""The route table: which instances the stand-in can reach, as the devnet announces them in a JSON file.

Owns ``RouteTable`` (pure: the parsed file, and ``resolve`` of an id and port to the instances to race or the
reason to refuse), ``RoutesError`` (every problem in a file) and ``RouteWatcher`` (re-reads the file when its
stat changes, polled every ``route_poll_interval`` seconds: how the stand-in learns routes as nodes boot and
stop). The devnet writes the file atomically (temporary file, then rename)::

    {"instances": {"<instance id: 40 hex, no 0x>": {"app_id": "<40 hex, no 0x>",
                                                     "address": "10.213.0.11",
                                                     "ports": [51900, 9090]}}}

``ports: null`` means the node's port policy is not known yet. Ids are compared in lowercase.

Resolution mirrors dstack-gateway (``main_service.rs`` ``select_top_n_hosts``, ``proxy/port_policy.rs``): the
id is looked up as an instance id first, then as an app id, which selects up to ``CONNECT_TOP_N`` of the
app's instances (the file has no handshake ages: the first ones in file order); then every candidate whose
port policy is unknown or does not list the port is dropped (fail closed); none left → refused.

Must not: tear down anything when the file is missing or invalid (a missing file is an empty table; an
invalid one keeps the previous table), or resolve names (addresses are IPv4 literals).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Final, Literal, get_args

import structlog

from devnet.gateway.metrics import GatewayMetrics

CONNECT_TOP_N: Final = 3
_HEX: Final = frozenset("0123456789abcdef")

RouteRefusal = Literal["unknown_route", "port_policy_unknown", "port_not_allowed"]
ROUTE_REFUSALS: Final[tuple[RouteRefusal, ...]] = get_args(RouteRefusal)

log = structlog.get_logger("devnet.gateway.routes")


class RoutesError(ValueError):
    """The routes file is not valid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Instance:
    """One CVM the gateway can reach: its ids (lowercase hex), address, and the ports its policy allows."""

    instance_id: str
    app_id: str
    address: str
    ports: frozenset[int] | None
    """None: the port policy is not known yet (every port refused)."""


@dataclass(frozen=True, slots=True)
class Candidates:
    """The instances of ``app_id`` to race (one to ``CONNECT_TOP_N``), each allowing the port."""

    app_id: str
    instances: tuple[Instance, ...]


@dataclass(frozen=True, slots=True)
class RouteRefused:
    """Why an id and port do not route; ``reason`` is a metric label."""

    reason: RouteRefusal
    detail: str


def _hex_id(value: object, what: str, problems: list[str]) -> str | None:
    if not isinstance(value, str) or len(value) != 40 or not set(value.lower()) <= _HEX:
        problems.append(f"{what} must be 40 hex digits without 0x")
        return None
    return value.lower()


def _address(value: object, what: str, problems: list[str]) -> str | None:
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(IPv4Address(value))
    except ValueError:
        problems.append(f"{what}.address must be an IPv4 address")
        return None


def _ports(value: object, what: str, problems: list[str]) -> frozenset[int] | None:
    if value is None:
        return None
    items: list[object] = value if isinstance(value, list) else [None]
    ports = [p for p in items if isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535]
    if len(ports) != len(items):
        problems.append(f"{what}.ports must be null or a list of port numbers (1 to 65535)")
        return None
    return frozenset(ports)


def _instance(key: object, value: object, problems: list[str]) -> Instance | None:
    before = len(problems)
    instance_id = _hex_id(key, f"instance id {str(key)[:48]!r}", problems)
    what = f"instances[{str(key)[:48]!r}]"
    if not isinstance(value, dict):
        problems.append(f"{what} must be an object")
        return None
    unknown = sorted(set(value) - {"app_id", "address", "ports"})
    if unknown:
        problems.append(f"{what} has unknown keys {unknown}")
    missing = sorted({"app_id", "address", "ports"} - set(value))
    if missing:
        problems.append(f"{what} lacks {missing}")
        return None
    app_id = _hex_id(value["app_id"], f"{what}.app_id", problems)
    address = _address(value["address"], what, problems)
    ports = _ports(value["ports"], what, problems)
    if len(problems) > before or instance_id is None or app_id is None or address is None:
        return None
    return Instance(instance_id=instance_id, app_id=app_id, address=address, ports=ports)


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The instances the gateway knows, and each app's instances in file order."""

    instances: Mapping[str, Instance] = field(default_factory=dict)
    apps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any) -> RouteTable:
        """Build the table from the parsed routes file; ``RoutesError`` lists every problem."""
        if not isinstance(obj, dict) or not isinstance(obj.get("instances"), dict):
            raise RoutesError(['the routes file must be an object {"instances": {...}}'])
        problems: list[str] = []
        unknown = sorted(set(obj) - {"instances"})
        if unknown:
            problems.append(f"unknown top-level keys {unknown}")
        instances: dict[str, Instance] = {}
        for key, value in obj["instances"].items():
            instance = _instance(key, value, problems)
            if instance is None:
                continue
            if instance.instance_id in instances:
                problems.append(f"instance id {instance.instance_id} appears twice (in another case)")
            instances[instance.instance_id] = instance
        if problems:
            raise RoutesError(problems)
        apps: dict[str, list[str]] = {}
        for instance in instances.values():
            apps.setdefault(instance.app_id, []).append(instance.instance_id)
        return cls(instances=instances, apps={app: tuple(ids) for app, ids in apps.items()})

    def resolve(self, route_id: str, port: int) -> Candidates | RouteRefused:
        """The instances to race for ``route_id`` (instance id first, then app id) on ``port``, or why not."""
        key = route_id.lower()
        instance = self.instances.get(key)
        if instance is not None:
            selected: tuple[Instance, ...] = (instance,)
        elif key in self.apps:
            selected = tuple(self.instances[i] for i in self.apps[key][:CONNECT_TOP_N])
        else:
            return RouteRefused("unknown_route", "no instance or app has this id")
        allowed = tuple(i for i in selected if i.ports is not None and port in i.ports)
        if allowed:
            return Candidates(app_id=allowed[0].app_id, instances=allowed)
        if any(i.ports is None for i in selected):
            return RouteRefused("port_policy_unknown", "the port policy is not known yet")
        return RouteRefused("port_not_allowed", f"port {port} is not in the port policy")


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


class RouteWatcher:
    """Holds the current ``RouteTable`` and re-reads the routes file whenever its stat changes."""

    def __init__(self, path: Path, *, poll_interval: float, metrics: GatewayMetrics) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.table = RouteTable()
        self._metrics = metrics
        self._seen: tuple[int, int, int] | Literal["never"] | None = "never"

    def refresh(self) -> bool:
        """Re-read the file if its stat changed since the last look; tell whether the table changed."""
        key = _stat_key(self.path)
        if key == self._seen:
            return False
        self._seen = key
        if key is None:
            log.warning("gateway.routes_missing", path=str(self.path))
            self._metrics.route_reload("missing")
            return self._install(RouteTable())
        try:
            table = RouteTable.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            self._seen = "never"  # replaced between stat and read: look again next time
            return False
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RoutesError) as exc:
            problems = exc.problems if isinstance(exc, RoutesError) else [f"unreadable: {exc}"]
            log.warning("gateway.routes_rejected", path=str(self.path), problems=problems[:20])
            self._metrics.route_reload("rejected")
            return False
        self._metrics.route_reload("loaded")
        return self._install(table)

    def _install(self, table: RouteTable) -> bool:
        previous, self.table = self.table, table
        if previous == table:
            return False
        added = sorted(set(table.instances) - set(previous.instances))
        removed = sorted(set(previous.instances) - set(table.instances))
        changed = sorted(
            i
            for i in set(table.instances) & set(previous.instances)
            if table.instances[i] != previous.instances[i]
        )
        self._metrics.routes_installed(len(table.instances), table.apps.keys())
        log.info(
            "gateway.routes_loaded",
            instances=len(table.instances),
            apps=len(table.apps),
            added=added,
            removed=removed,
            changed=changed,
        )
        return True

    async def run(self) -> None:
        """Poll the file forever (cancel to stop)."""
        while True:
            self.refresh()
            await asyncio.sleep(self.poll_interval)
