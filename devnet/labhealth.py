"""What of a devnet lab runs now: processes, sockets, the chain head and member count, each /healthz.

Owns the read-only status of a lab (``devnet status``) and the wait for every running node to say healthy.
Every ``/healthz`` and ``/status`` is read the way the lab's transport allows (``devnet.labreach``): in
gateway mode through the gateway with the lab CA, as an operator reads a CVM. Must not change anything: no
process is started or stopped, no transaction is sent, no file is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from devnet import procs
from devnet.boot import alive, node_running
from devnet.labdir import DevnetError, run_async
from devnet.labindexer import status_url
from devnet.labreach import LabReach
from devnet.labroutes import RoutesFile
from devnet.state import DevnetState, GatewayState, IndexerState, NodeState
from ops.jsonget import Unreachable
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import connect
from sidecar.core.ids import Address

log = structlog.get_logger("devnet.health")


@dataclass(frozen=True, slots=True)
class NodeHealth:
    name: str
    boot: str
    simulator: bool
    wireguard: bool
    sidecar: bool
    dstack_socket: bool
    wg_socket: bool
    healthz: dict[str, Any] | None  # the node's /healthz body (None when it does not answer)
    running: bool = False  # allowed at its last boot and every process of it alive (powered on)


@dataclass(frozen=True, slots=True)
class IndexerHealth:
    simulator: bool
    indexer: bool
    healthz: dict[str, Any] | None  # the indexer's /healthz body (None when it does not answer)
    status: dict[str, Any] | None  # its /status body
    registered_key: str | None  # IndexerRegistry.current().pubKey ("" when nothing is registered)


@dataclass(frozen=True, slots=True)
class GatewayHealth:
    """The gateway stand-in and the lab DNS (gateway mode): running or not, and the routes announced."""

    gateway: bool
    dns: bool
    routes: int  # instances in the routes table
    routes_with_ports: int  # of which the port policy is known (their workload runs)


@dataclass(frozen=True, slots=True)
class LabStatus:
    state: DevnetState
    anvil: bool
    chain_reachable: bool
    head_block: int | None
    member_count: int | None
    nodes: tuple[NodeHealth, ...]
    indexer: IndexerHealth | None = None
    gateway: GatewayHealth | None = None
    monitoring: bool = False  # the lab's Prometheus process is alive (``up --monitoring``)


def fetch_healthz(url: str, timeout: float = 1.0, reach: LabReach | None = None) -> dict[str, Any] | None:
    """GET a /healthz (or /status) through the lab (200 and 503 both carry the JSON body); None when silent.

    ``reach`` (``LabReach.of(state)``) is needed for a URL behind the lab's gateway; without it the URL is
    read directly."""
    try:
        data = (reach or LabReach()).get_json(url, timeout).data
    except Unreachable:
        return None
    return data if isinstance(data, dict) else None


def health_url(state: DevnetState, node: NodeState) -> str:
    """Where the lab reads node ``node``'s /healthz: through the gateway in gateway mode."""
    return node.gateway_health_url if state.gateway_mode else node.health_url


def node_health(node: NodeState, state: DevnetState | None = None) -> NodeHealth:
    """What of one node is running now, and its /healthz (when its workload runs), read the way the lab
    ``state`` allows (None: directly)."""
    url, reach = (
        (health_url(state, node), LabReach.of(state)) if state is not None else (node.health_url, None)
    )
    return NodeHealth(
        name=node.name,
        boot=node.boot,
        simulator=alive(node, "simulator"),
        wireguard=alive(node, "wireguard"),
        sidecar=alive(node, "sidecar"),
        dstack_socket=Path(node.dstack_socket).is_socket(),
        wg_socket=Path(node.wg_socket).is_socket(),
        healthz=fetch_healthz(url, reach=reach) if alive(node, "sidecar") else None,
        running=node.allowed and node_running(node),
    )


def _chain_readout(state: DevnetState) -> tuple[int, int | None, str | None]:
    """One chain session: head, member count and the registered indexer key ("" = none)."""

    async def read() -> tuple[int, int | None, str | None]:
        async with await connect(state.rpc_url, timeout=2.0, expected_chain_id=state.chain_id) as conn:
            head = await conn.block_number()
            cluster = ClusterClient(conn, Address.from_hex(state.cluster)) if state.cluster else None
            count = await cluster.member_count() if cluster is not None else None
            registered = None
            if state.indexer is not None and state.indexer_registry:
                record = await IndexerRegistryClient(conn, Address.from_hex(state.indexer_registry)).current()
                registered = str(record.pub_key) if record.registered else ""
            return head, count, registered

    return run_async(read)


def _indexer_health(state: DevnetState, idx: IndexerState, registered: str | None) -> IndexerHealth:
    running = {k: rec is not None and procs.is_alive(rec) for k, rec in idx.processes.items()}
    reach = LabReach.of(state)
    health = idx.gateway_health_url if state.gateway_mode else idx.health_url
    return IndexerHealth(
        simulator=running.get("simulator", False),
        indexer=running.get("indexer", False),
        healthz=fetch_healthz(health, reach=reach) if running.get("indexer") else None,
        status=fetch_healthz(status_url(state, idx), reach=reach) if running.get("indexer") else None,
        registered_key=registered,
    )


def _gateway_health(state: DevnetState, gateway: GatewayState) -> GatewayHealth:
    running = {k: procs.is_alive(rec) for k, rec in state.processes.items()}
    try:
        routes = RoutesFile(Path(gateway.routes_file)).read()
    except ValueError:
        routes = {}
    return GatewayHealth(
        gateway=running.get("gateway", False),
        dns=running.get("dns", False),
        routes=len(routes),
        routes_with_ports=sum(1 for r in routes.values() if r.ports is not None),
    )


def lab_status(state: DevnetState) -> LabStatus:
    """What is running now (processes, sockets, chain head, member count) of the lab ``state`` describes."""
    anvil = state.processes.get("anvil")
    anvil_alive = anvil is not None and procs.is_alive(anvil)
    head: int | None = None
    count: int | None = None
    registered: str | None = None
    if anvil_alive and state.rpc_url:
        try:
            head, count, registered = _chain_readout(state)
        except Exception as exc:
            log.warning("devnet.chain_unreachable", error=str(exc))
    nodes = tuple(node_health(n, state) for n in state.nodes)
    indexer = _indexer_health(state, state.indexer, registered) if state.indexer is not None else None
    gateway = _gateway_health(state, state.gateway) if state.gateway is not None else None
    prometheus = state.processes.get("prometheus")
    monitoring = prometheus is not None and procs.is_alive(prometheus)
    return LabStatus(state, anvil_alive, head is not None, head, count, nodes, indexer, gateway, monitoring)


def observed_phase(node: NodeHealth) -> str:
    """What ``devnet status --wait-healthy`` follows of a node: its /healthz phase (``healthy`` only when it
    says so), or ``no answer`` while its workload runs silent, or ``not running``."""
    if not node.sidecar:
        return "not running"
    if node.healthz is None:
        return "no answer"
    phase = str(node.healthz.get("phase") or "?")
    return (
        "healthy" if node.healthz.get("healthy") is True else ("unhealthy" if phase == "healthy" else phase)
    )


def phase_changes(
    previous: Mapping[str, str], nodes: Sequence[NodeHealth]
) -> tuple[dict[str, str], list[str]]:
    """Each node's observed phase now, and one line per node whose phase is new or changed since
    ``previous`` (``node-1: register -> mesh (reason)``); a node not seen before starts from ``-``."""
    current = {n.name: observed_phase(n) for n in nodes}
    lines = []
    for node in nodes:
        before, now = previous.get(node.name), current[node.name]
        if before == now:
            continue
        reason = (node.healthz or {}).get("reason") if now != "healthy" else None
        lines.append(f"{node.name}: {before or '-'} -> {now}" + (f" ({reason})" if reason else ""))
    return current, lines


def wait_healthy(
    read: Callable[[], LabStatus | None],
    lab: str,
    timeout: float,
    report: Callable[[str], None] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LabStatus:
    """Poll ``read()`` (a ``LabStatus`` or None) until every running node is healthy; ``DevnetError`` at
    the deadline. ``report`` gets a line for each node's phase change as it is seen (seconds since the
    wait started first), so a long wait is never silent."""
    started = clock()
    deadline = started + timeout
    phases: dict[str, str] = {}
    while True:
        status = read()
        if status is None:
            raise DevnetError(f"lab {lab!r} is not running")
        phases, lines = phase_changes(phases, status.nodes)
        if report is not None:
            for line in lines:
                report(f"{clock() - started:5.1f} s  {line}")
        running = [n for n in status.nodes if n.sidecar]
        if running and all(n.healthz and n.healthz.get("healthy") for n in running):
            return status
        if clock() >= deadline:
            waiting = {
                n.name: (n.healthz or {}).get("reason", "no answer")
                for n in running
                if not (n.healthz or {}).get("healthy")
            }
            raise DevnetError(f"not healthy after {timeout:g} s: {waiting}")
        sleep(0.5)
