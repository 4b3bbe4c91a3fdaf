"""The e2e toolkit's view of a running devnet cluster: what an operator and an application see of its nodes.

Reads go through the same surfaces users have: ``/healthz`` (via the lab: through the gateway, with the lab
CA, when the lab runs in gateway mode), ``/metrics``, the app API (its unix socket), the WireGuard device
(UAPI), the probe inside a node namespace, the indexer's ``/status``; and the checks built on them (healthy,
push or poll mode). Must not import pytest or another test module,
nor change anything in the lab.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from devnet.kms import DevnetKms, get_key
from devnet.lab import fetch_healthz
from devnet.labreach import LabReach
from devnet.state import GatewayState
from devnet.wireguard import uapi_get
from sidecar.core.ids import Address, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, KeyScope
from tests.e2e.lab import REPO, LabCli, lab_state, log_entries, wait_until

#: How long a push-mode change may take to show: generous and bounded (two CPUs, shared with other runs).
DEADLINE = 45.0


def lab_reach(state: Mapping[str, Any]) -> LabReach:
    """How the lab ``state`` (its state file or ``status --json``) is read: via its gateway or directly."""
    gateway = state.get("gateway")
    if state.get("transport") == "gateway" and isinstance(gateway, dict):
        return LabReach(GatewayState.from_json(gateway))
    return LabReach()


@dataclass
class Node:
    """One devnet node as the state file describes it, read the way its lab allows."""

    data: dict[str, Any]
    reach: LabReach = field(default_factory=LabReach)
    scope: KeyScope | None = None  # the lab's chain and cluster, which the node's keys are bound to

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def netns(self) -> str:
        return str(self.data["netns"])

    @property
    def health_url(self) -> str:
        """An operator's /healthz URL: through the gateway in gateway mode, else on the underlay."""
        through = self.data.get("gateway_health_url") if self.reach.gateway is not None else None
        return str(through or self.data["health_url"])

    def healthz(self) -> dict[str, Any]:
        body = fetch_healthz(self.health_url, timeout=3.0, reach=self.reach)
        assert body is not None, f"{self.name}: /healthz does not answer"
        return body

    def healthy(self) -> bool:
        body = fetch_healthz(self.health_url, timeout=3.0, reach=self.reach)
        return bool(body and body.get("healthy"))

    def metrics(self) -> str:
        answer = self.reach.get_json(self.health_url.replace("/healthz", "/metrics"), 3.0)
        assert answer.ok, f"{self.name}: /metrics answered {answer.status}"
        return answer.text

    def counter(self, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        key = f"{name}{{{want}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            metric, _, value = line.rpartition(" ")
            if _normalise(metric) == key:
                return float(value)
        return 0.0

    def device(self) -> dict[str, Any]:
        return dict(uapi_get(Path(self.data["wg_socket"])))

    def device_peers(self) -> dict[str, dict[str, Any]]:
        return dict(self.device()["peers"])

    def app(self, path: str) -> tuple[int, dict[str, Any]]:
        async def get() -> tuple[int, dict[str, Any]]:
            connector = aiohttp.UnixConnector(path=self.data["app_socket"])
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(f"http://node{path}") as resp,
            ):
                return resp.status, await resp.json()

        return asyncio.run(get())

    def probe(self, *args: str) -> dict[str, Any]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "tests.e2e.probe", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def pings(self, ip: str) -> bool:
        return bool(self.probe("ping", ip)["ok"])


def _normalise(metric: str) -> str:
    if "{" not in metric:
        return metric
    name, _, rest = metric.partition("{")
    labels = sorted(part for part in rest.rstrip("}").split(",") if part)
    return f"{name}{{{','.join(labels)}}}"


def nodes(lab: LabCli) -> dict[str, Node]:
    status = lab.status()
    reach = lab_reach(status)
    scope = KeyScope(int(status["chain_id"]), Address.from_hex(status["cluster"]))
    return {n["name"]: Node(n, reach, scope) for n in status["nodes"]}


def wait_all_healthy(lab: LabCli, timeout: float = 60.0) -> dict[str, Node]:
    """Every running node answers healthy (through /healthz)."""
    found = nodes(lab)
    for node in found.values():
        wait_until(node.healthy, timeout, f"{node.name} healthy (last: {_reason(node)})")
    return found


def _reason(node: Node) -> str:
    body = fetch_healthz(node.health_url, timeout=2.0, reach=node.reach)
    return "no answer" if body is None else f"{body.get('phase')}: {body.get('reason')}"


def identity_key(node: Node) -> SecretBytes:
    """The devnet KMS seed is public, so a test can derive any node's identity key (as an attacker could
    on a devnet, never on dstack)."""
    app = Address.from_hex(node.data["app_id"])
    assert node.scope is not None
    return get_key(DevnetKms(), app, node.scope.path(KeyPath.IDENTITY), KeyPath.IDENTITY.purpose)[0]


def member_id(node: Node) -> MemberId:
    return MemberId.from_hex(node.healthz()["node"]["member_id"])


def sidecar_pid(node: Node) -> int:
    return int(node.data["processes"]["sidecar"]["pid"])


def device_key(node: Node) -> str | None:
    """The public key of the node's WireGuard device (None while it has no device or no key)."""
    try:
        key = node.device()["public_key"]
    except OSError:
        return None
    return str(key) if key else None


# --- event source: push or poll ---------------------------------------------------------------------------


def in_push_mode(node: Node) -> bool:
    events = node.healthz()["events"]
    return events["mode"] == "push" and events["indexer_connected"] is True


def in_poll_mode(node: Node) -> bool:
    events = node.healthz()["events"]
    return events["mode"] == "poll" and events["indexer_connected"] is False


def wait_for_every(lab: LabCli, found: Iterable[Node], check: Callable[[Node], object], what: str) -> None:
    """Each node in turn satisfies ``check``; on a timeout the message shows what the node's event source
    logged last (so a failure says why, not only that)."""
    for node in found:
        try:
            wait_until(functools.partial(check, node), DEADLINE, f"{node.name}: {what}")
        except AssertionError as exc:
            recent = [
                e
                for e in log_entries(lab, f"{node.name}-sidecar")
                if str(e.get("event")).startswith("events.")
            ]
            raise AssertionError(f"{exc}; its last event-source log lines: {recent[-12:]}") from None


def indexer_status(lab: LabCli) -> dict[str, Any]:
    state = lab_state(lab)
    reach = lab_reach(state)
    idx = state["indexer"]
    url = idx.get("gateway_status_url") if reach.gateway is not None else None
    body = fetch_healthz(url or idx["status_url"], timeout=3.0, reach=reach)
    return body or {}


def subscribers(lab: LabCli) -> int | None:
    count = indexer_status(lab).get("subscribers")
    return None if count is None else int(count)
