"""The gateway stand-in's routes file: where each CVM of the lab lives and which ports its compose publishes.

What the real dstack gateway learns from a CVM's registration, the lab writes here as its CVMs boot and stop:
``{"instances": {"<instance id>": {"app_id": "<app id>", "address": "<underlay ip>", "ports": [...]}}}``
(ids as 40 lowercase hex digits without ``0x``). ``ports: null`` means the port policy is not known yet (a
CVM that booted but whose workload has not started: the gateway refuses its routes, as dstack's fails
closed); a CVM that is off has no entry.
Owns the schema (``Route``, ``encode``/``decode``) and the file's updates (``RoutesFile``): atomic (temp
file, fsync, rename), each one advancing the file's mtime, which is how the gateway notices a change.
Must not: decide when a CVM boots or stops (``devnet.boot``, ``devnet.labindexer``), or write anything but
this one file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

_HEX40 = re.compile(r"[0-9a-f]{40}")


def bare_hex(value: str) -> str:
    """An app or instance id as the gateway names it: 40 lowercase hex digits, no ``0x``."""
    text = value.lower().removeprefix("0x")
    if not _HEX40.fullmatch(text):
        raise ValueError(f"not a 20-byte hex id: {value!r}")
    return text


@dataclass(frozen=True, slots=True)
class Route:
    """One instance's route: its app, its underlay address, and its published ports (None: not known yet)."""

    app_id: str
    address: str
    ports: tuple[int, ...] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "address": self.address,
            "ports": None if self.ports is None else list(self.ports),
        }


def route(app_id: str, address: str, ports: Sequence[int] | None) -> Route:
    """A validated route (ids normalised to bare hex, an IPv4 address, ports in 1..65535)."""
    if ports is not None and not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
        raise ValueError(f"bad ports {ports!r}")
    return Route(
        app_id=bare_hex(app_id),
        address=str(IPv4Address(address)),
        ports=None if ports is None else tuple(ports),
    )


def encode(routes: Mapping[str, Route]) -> str:
    """The routes file's text (sorted, so equal tables give equal files)."""
    table = {bare_hex(instance): r.to_json() for instance, r in sorted(routes.items())}
    return json.dumps({"instances": table}, indent=2, sort_keys=True) + "\n"


def decode(text: str) -> dict[str, Route]:
    """Parse a routes file; ``ValueError`` when it is not one."""
    data = json.loads(text)
    instances = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(instances, dict):
        raise ValueError("a routes file holds an object with an 'instances' object")
    table = {}
    for instance, entry in instances.items():
        if not isinstance(entry, dict):
            raise ValueError(f"route of {instance!r} is not an object")
        table[bare_hex(instance)] = route(
            str(entry.get("app_id")), str(entry.get("address")), entry.get("ports")
        )
    return table


class RoutesFile:
    """The routes file at ``path``; every method reads it anew and writes it whole."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Route]:
        """The table now on disk (empty when there is no file)."""
        try:
            return decode(self.path.read_text())
        except FileNotFoundError:
            return {}

    def write(self, routes: Mapping[str, Route]) -> None:
        """Replace the file with ``routes`` atomically; its mtime always moves forward."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        before = self.path.stat().st_mtime_ns if self.path.exists() else 0
        fd, tmp = tempfile.mkstemp(prefix=".routes.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(encode(routes))
                fh.flush()
                os.fsync(fh.fileno())
            if os.stat(tmp).st_mtime_ns <= before:
                # Two writes within one timestamp tick would look like none to a reader polling the mtime.
                os.utime(tmp, ns=(before + 1, before + 1))
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def announce(self, instance_id: str, entry: Route) -> None:
        """Add or replace the route of ``instance_id`` (no write when it is already exactly that)."""
        routes = self.read()
        key = bare_hex(instance_id)
        if routes.get(key) != entry or not self.path.exists():
            self.write({**routes, key: entry})

    def withdraw(self, instance_id: str) -> None:
        """Remove the route of ``instance_id`` (no write when it has none)."""
        routes = self.read()
        key = bare_hex(instance_id)
        if key in routes:
            del routes[key]
            self.write(routes)
