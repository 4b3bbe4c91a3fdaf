"""Helpers of the mesh e2e tests: what an operator and an application see of a running devnet cluster.

Reads go through the same surfaces users have: ``/healthz`` (via the lab), the app API (its unix socket),
the WireGuard device (UAPI), chain reads (the chain adapter) and the probe inside a node namespace.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from devnet.anvil import DEVNET_DEPLOYER_KEY
from devnet.lab import fetch_healthz
from devnet.wireguard import uapi_get
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address
from tests.e2e.conftest import REPO, LabCli

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``predicate`` until truthy (returned) or fail at the deadline with what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Node:
    """One devnet node as the state file describes it."""

    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def netns(self) -> str:
        return str(self.data["netns"])

    def healthz(self) -> dict[str, Any]:
        body = fetch_healthz(self.data["health_url"], timeout=3.0)
        assert body is not None, f"{self.name}: /healthz does not answer"
        return body

    def healthy(self) -> bool:
        body = fetch_healthz(self.data["health_url"], timeout=3.0)
        return bool(body and body.get("healthy"))

    def metrics(self) -> str:
        url = self.data["health_url"].replace("/healthz", "/metrics")
        with urllib.request.urlopen(url, timeout=3) as response:
            return str(response.read().decode())

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
    return {n["name"]: Node(n) for n in lab.status()["nodes"]}


def wait_all_healthy(lab: LabCli, timeout: float = 60.0) -> dict[str, Node]:
    """Every running node answers healthy (through /healthz)."""
    found = nodes(lab)
    for node in found.values():
        wait_until(node.healthy, timeout, f"{node.name} healthy (last: {_reason(node)})")
    return found


def _reason(node: Node) -> str:
    body = fetch_healthz(node.data["health_url"], timeout=2.0)
    return "no answer" if body is None else f"{body.get('phase')}: {body.get('reason')}"


def lab_state(lab: LabCli) -> dict[str, Any]:
    """The lab's state file as it is now (cheaper than ``status``: no process runs)."""
    data: dict[str, Any] = json.loads(lab.state_file.read_text())
    return data


def chain(lab: LabCli, action: Callable[[ChainConnection, ClusterClient], Awaitable[T]]) -> T:
    """Run ``action`` against the lab's chain with a cluster client owned by the cluster owner."""
    state = lab_state(lab)

    async def run() -> T:
        async with await connect(state["rpc_url"], expected_chain_id=state["chain_id"]) as conn:
            owner = TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY))
            return await action(conn, ClusterClient(conn, Address.from_hex(state["cluster"]), owner))

    return asyncio.run(run())


def log_entries(lab: LabCli, name: str, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON lines of ``<lab>/logs/<name>.log`` (optionally only those of one ``event``), in order.

    Lines that are not JSON objects (a line still being written) are skipped.
    """
    entries = []
    for line in (lab.root / "logs" / f"{name}.log").read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and (event is None or entry.get("event") == event):
            entries.append(entry)
    return entries
