"""What of a devnet lab runs now: processes, sockets, the chain head and member count, each /healthz.

Owns the read-only status of a lab (``devnet status``) and the wait for every running node to say healthy.
Must not change anything: no process is started or stopped, no transaction is sent, no file is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from devnet import procs
from devnet.boot import alive, node_running
from devnet.labdir import DevnetError, run_async
from devnet.state import DevnetState, IndexerState, NodeState
from ops.jsonget import Unreachable, get_json
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
class LabStatus:
    state: DevnetState
    anvil: bool
    chain_reachable: bool
    head_block: int | None
    member_count: int | None
    nodes: tuple[NodeHealth, ...]
    indexer: IndexerHealth | None = None


def fetch_healthz(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """GET a node's /healthz through the lab (200 and 503 both carry the JSON body); None when silent."""
    try:
        data = get_json(url, timeout).data
    except Unreachable:
        return None
    return data if isinstance(data, dict) else None


def node_health(node: NodeState) -> NodeHealth:
    """What of one node is running now, and its /healthz (when its workload runs)."""
    return NodeHealth(
        name=node.name,
        boot=node.boot,
        simulator=alive(node, "simulator"),
        wireguard=alive(node, "wireguard"),
        sidecar=alive(node, "sidecar"),
        dstack_socket=Path(node.dstack_socket).is_socket(),
        wg_socket=Path(node.wg_socket).is_socket(),
        healthz=fetch_healthz(node.health_url) if alive(node, "sidecar") else None,
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


def _indexer_health(idx: IndexerState, registered: str | None) -> IndexerHealth:
    running = {k: rec is not None and procs.is_alive(rec) for k, rec in idx.processes.items()}
    return IndexerHealth(
        simulator=running.get("simulator", False),
        indexer=running.get("indexer", False),
        healthz=fetch_healthz(idx.health_url) if running.get("indexer") else None,
        status=fetch_healthz(idx.status_url) if running.get("indexer") else None,
        registered_key=registered,
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
    nodes = tuple(node_health(n) for n in state.nodes)
    indexer = _indexer_health(state.indexer, registered) if state.indexer is not None else None
    return LabStatus(state, anvil_alive, head is not None, head, count, nodes, indexer)


def wait_healthy(read: Callable[[], LabStatus | None], lab: str, timeout: float) -> LabStatus:
    """Poll ``read()`` (a ``LabStatus`` or None) until every running node is healthy; ``DevnetError`` at
    the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        status = read()
        if status is None:
            raise DevnetError(f"lab {lab!r} is not running")
        running = [n for n in status.nodes if n.sidecar]
        if running and all(n.healthz and n.healthz.get("healthy") for n in running):
            return status
        if time.monotonic() >= deadline:
            waiting = {
                n.name: (n.healthz or {}).get("reason", "no answer")
                for n in running
                if not (n.healthz or {}).get("healthy")
            }
            raise DevnetError(f"not healthy after {timeout:g} s: {waiting}")
        time.sleep(0.5)
