"""The devnet's state file (``.devnet/state.json``): what a running lab is made of, for operators and tests.

Owns the schema, its JSON encoding and the atomic write. It holds public data only (addresses, hashes,
paths, PIDs): never a private key. Must not start, stop or inspect anything; the lab does that.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from devnet.procs import ProcRecord
from devnet.topology import TRANSPORT_DIRECT, TRANSPORT_GATEWAY

STATE_VERSION = 1
BOOT_ALLOWED = "allowed"


def boot_denied(reason: str) -> str:
    """The ``boot`` field of a node the KMS gate refused (reason as the contract gave it)."""
    return f"denied: {reason or 'no reason given'}"


def _records_to_json(records: dict[str, ProcRecord]) -> dict[str, Any]:
    return {k: v.to_json() for k, v in records.items()}


def _records_from_json(data: dict[str, Any]) -> dict[str, ProcRecord]:
    return {k: ProcRecord.from_json(v) for k, v in data.get("processes", {}).items()}


def _known_fields(fields: Mapping[str, object], data: dict[str, Any]) -> dict[str, Any]:
    """The values of ``data`` the record has a field for (an older or newer state file may differ)."""
    return {k: v for k, v in data.items() if k in fields and k != "processes"}


@dataclass(frozen=True, slots=True)
class NodeState:
    name: str
    index: int
    netns: str
    app_id: str
    instance_id: str
    compose_hash: str
    compose_path: str
    underlay_ip: str
    dstack_socket: str
    wg_uapi_dir: str
    wg_socket: str
    health_url: str = ""  # on the underlay: reachable in direct mode only
    #: ``https://<app_id hex>-9090.<gateway domain>/healthz`` (gateway mode; "" in direct mode): how an
    #: operator reads a CVM's health, through the gateway, verified with the lab CA.
    gateway_health_url: str = ""
    app_socket: str = ""
    state_dir: str = ""
    boot: str = ""
    signer: str = ""
    processes: dict[str, ProcRecord] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.boot == BOOT_ALLOWED

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "processes": _records_to_json(self.processes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(**_known_fields(cls.__dataclass_fields__, data), processes=_records_from_json(data))


@dataclass(frozen=True, slots=True)
class IndexerState:
    """The lab's shared indexer: its namespace, its own guest agent and app id, and what is registered."""

    netns: str
    ip: str
    app_id: str
    instance_id: str
    code_id: str  # the app id left-aligned in 32 bytes, as registered on chain
    compose_hash: str
    dstack_socket: str
    url: str  # the WebSocket endpoint written to IndexerRegistry (wss:// through the gateway in gateway mode)
    health_url: str  # on the underlay: reachable in direct mode only
    status_url: str
    key_version: int = 1  # the key version to run (registered on chain unless `indexer update` skipped that)
    running_key_version: int = 0  # the key version of the running process (0: not running)
    public_key: str = ""  # the public key of key_version ("" until first registered)
    #: Sealed-env values applied over the lab's own (``devnet indexer update --env-file``), kept for every
    #: later start; and those the running process was started with.
    sealed_env: dict[str, str] = field(default_factory=dict)
    running_env: dict[str, str] = field(default_factory=dict)
    #: Its ``/healthz`` and ``/status`` through the gateway (gateway mode; "" in direct mode).
    gateway_health_url: str = ""
    gateway_status_url: str = ""
    processes: dict[str, ProcRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "processes": _records_to_json(self.processes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(**_known_fields(cls.__dataclass_fields__, data), processes=_records_from_json(data))


@dataclass(frozen=True, slots=True)
class GatewayState:
    """The lab's gateway stand-in (gateway mode): its domain and address, the lab CA that signed its
    wildcard certificate, its metrics URL, and the files it runs from."""

    domain: str  # ``<lab>.gw.test``: the gateway's wildcard certificate and the lab DNS zone
    address: str  # the gateway's underlay address: the only one a node accepts inbound traffic from
    ca_file: str  # the lab CA (PEM): what verifies every ``https://``/``wss://`` URL under ``domain``
    health_url: str  # the gateway's own metrics, on its metrics listener
    routes_file: str = ""  # instance id -> app id, underlay address, published ports (the lab writes it)
    config_file: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(**_known_fields(cls.__dataclass_fields__, data))


@dataclass(frozen=True, slots=True)
class DevnetState:
    lab: str
    underlay: str
    mesh_cidr: str
    rpc_url: str = ""
    chain_id: int = 0
    block_time: float | None = None
    cluster: str = ""
    indexer_registry: str = ""
    cluster_factory: str = ""
    member_app_factory: str = ""
    factory_block: int = 0
    kms_root: str = ""
    owner: str = ""
    initial_compose_hash: str = ""
    sidecars: bool = True  # false: the lab runs no node workload (`up --no-sidecar`)
    #: ``process`` (the sidecar as a Python process in the node's namespace) or ``image`` (a podman
    #: container of ``image``, as dstack's compose runs it: ``devnet.container``).
    workload: str = "process"
    image: str = ""
    #: ``gateway`` (a CVM's network: inbound only through the gateway) or ``direct`` (plain UDP between the
    #: nodes). A state file from before transports existed describes a direct lab.
    transport: str = TRANSPORT_DIRECT
    gateway: GatewayState | None = None  # set in gateway mode once the gateway's files exist
    indexer: IndexerState | None = None  # None: the lab runs without an indexer (`up --no-indexer`)
    #: The lab's Prometheus API (``up --monitoring``; "" without): on a lab address, see devnet.labmonitoring.
    monitoring_url: str = ""
    processes: dict[str, ProcRecord] = field(default_factory=dict)
    nodes: tuple[NodeState, ...] = ()
    complete: bool = False  # false while `up` is still building the lab (a killed `up` leaves it false)
    version: int = STATE_VERSION

    @property
    def gateway_mode(self) -> bool:
        return self.transport == TRANSPORT_GATEWAY

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r} in lab {self.lab!r}")

    def with_node(self, node: NodeState) -> DevnetState:
        """Return a copy with ``node`` added or replacing the node of the same name."""
        others = tuple(n for n in self.nodes if n.name != node.name)
        return replace(self, nodes=tuple(sorted((*others, node), key=lambda n: n.index)))

    def to_json(self) -> dict[str, Any]:
        data = {**asdict(self), "processes": _records_to_json(self.processes)}
        data["nodes"] = [n.to_json() for n in self.nodes]
        data["indexer"] = None if self.indexer is None else self.indexer.to_json()
        data["gateway"] = None if self.gateway is None else self.gateway.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported devnet state version {data.get('version')!r}")
        procs = _records_from_json(data)
        nodes = tuple(NodeState.from_json(n) for n in data.get("nodes", []))
        indexer = IndexerState.from_json(data["indexer"]) if data.get("indexer") else None
        gateway = GatewayState.from_json(data["gateway"]) if data.get("gateway") else None
        known = {f for f in cls.__dataclass_fields__ if f not in ("processes", "nodes", "indexer", "gateway")}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            processes=procs,
            nodes=nodes,
            indexer=indexer,
            gateway=gateway,
        )


def load_state(path: Path) -> DevnetState | None:
    """Read the state file; None when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return DevnetState.from_json(json.loads(text))


def save_state(path: Path, state: DevnetState) -> None:
    """Write the state file atomically (temp file in the same directory, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(state.to_json(), fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
