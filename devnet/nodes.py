"""The devnet node verbs: a CVM's life cycle as ``add``, ``start``, ``stop``, ``restart``, ``reboot``,
``prepare``, ``update`` and ``remove``.

Owns what each verb does to one node of a running lab: creating its namespace, files, app contract and
pre-approved app id (``add``; ``create`` makes several nodes' at once, for ``up``); power through
``devnet.boot`` (``start``, ``stop``, ``reboot``); the workload alone (``restart``); measuring a new
app-compose.json and reading the allowlist, touching nothing (``prepare``); writing it and rebooting, the
state directory and so the identity carried over (``update``); and evicting its member on chain as the
cluster owner (``remove``). Must not take the lab lock or check that the lab runs (the ``Devnet`` facade
does), nor touch anything but the named nodes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from devnet.anvil import DEVNET_DEPLOYER_KEY
from devnet.boot import HEALTH_PORT, WG_IFNAME, NodePower, node_running
from devnet.compose import compose_hash
from devnet.container import check_compose_image
from devnet.labdir import DevnetError, LabDir, run_async
from devnet.labgateway import enclose, service_url
from devnet.netns import LabNetwork
from devnet.state import DevnetState, NodeState
from devnet.wireguard import uapi_socket
from ops.owner import ensure_member_app
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address

log = structlog.get_logger("devnet.nodes")


@dataclass(frozen=True, slots=True)
class ComposePlan:
    """What ``node prepare`` learns without touching the node or the chain: the compose hash the node would
    boot with and whether the cluster allowlists it now."""

    node: str
    exists: bool  # False: no node of that name yet (``node add`` would create it with this compose)
    compose_hash: str
    allowlisted: bool
    current_compose_hash: str | None  # what the node booted with last (None: no such node)

    @property
    def changes(self) -> bool:
        """Whether booting this compose changes the node's compose hash."""
        return self.current_compose_hash != self.compose_hash


@dataclass(frozen=True, slots=True)
class NodeUpdate:
    """The outcome of ``node update``: the node afterwards, and whether anything was done."""

    node: NodeState
    changed: bool  # False: it already ran this compose and was allowed; nothing was touched
    previous_compose_hash: str


class Nodes:
    """The node verbs of one lab; every method takes the running lab's state and saves what it changes."""

    def __init__(self, files: LabDir, network: LabNetwork) -> None:
        self.files = files
        self.network = network
        self.power = NodePower(files)

    def add(self, state: DevnetState, name: str, index: int, compose: bytes) -> DevnetState:
        """Create the node (namespace, files, app contract, approved app id) and boot it through the gate.

        In gateway mode its namespace is a CVM's: the lab DNS resolves for it and only the gateway reaches it.
        """
        check_compose_image(state, compose)
        state = self.create(state, [(name, index)], compose)
        return state.with_node(self.power.boot(state, state.node(name)))

    def create(self, state: DevnetState, names: Sequence[tuple[str, int]], compose: bytes) -> DevnetState:
        """Create the nodes ``(name, index)`` without booting them: namespaces, files, and in one chain
        session each one's app contract and pre-approved app id. The state with them, saved."""
        nets = {}
        for name, index in names:
            nets[name] = net = self.network.add_node(name, index)
            enclose(state, net.ns)
            node_dir = self.files.node_dir(name)
            node_dir.mkdir(parents=True, exist_ok=True)
            (node_dir / "app-compose.json").write_bytes(compose)

        async def create_apps() -> list[Address]:
            # Check before write (a re-run after a crash sends nothing twice): the app contract, then the
            # cold-start rule, its app id pre-approved before its first boot. One owner account, so its
            # transactions go one after the other (each mined at once by anvil) over one connection.
            async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
                owner = TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY))
                factory = Address.from_hex(state.member_app_factory)
                cluster = Address.from_hex(state.cluster)
                return [
                    (await ensure_member_app(conn, owner, factory, cluster, name)).app_id for name, _ in names
                ]

        app_ids = run_async(create_apps)
        lab = self.network.plan.name
        for (name, index), app_id in zip(names, app_ids, strict=True):
            net = nets[name]
            node_dir = self.files.node_dir(name)
            instance_id = hashlib.sha256(f"attestmesh-devnet-instance:{lab}:{name}".encode()).digest()[:20]
            write_simulator_config(node_dir, app_id, instance_id, name)
            wg_dir = node_dir / "wg"
            node = NodeState(
                name=name,
                index=index,
                netns=net.ns,
                app_id=str(app_id),
                instance_id=instance_id.hex(),
                compose_hash=str(compose_hash(compose)),
                compose_path=str(node_dir / "app-compose.json"),
                underlay_ip=str(net.ip),
                dstack_socket=str(node_dir / "dstack.sock"),
                wg_uapi_dir=str(wg_dir),
                wg_socket=str(uapi_socket(wg_dir, WG_IFNAME)),
                health_url=f"http://{net.ip}:{HEALTH_PORT}/healthz",
                gateway_health_url=(
                    service_url("https", str(app_id), HEALTH_PORT, state.gateway.domain, "/healthz")
                    if state.gateway_mode and state.gateway is not None
                    else ""
                ),
                app_socket=str(node_dir / "agent.sock"),
                state_dir=str(node_dir / "state"),
            )
            state = state.with_node(node)
            log.info("devnet.node_created", node=name, netns=net.ns, app_id=str(app_id),
                     underlay_ip=str(net.ip))  # fmt: skip
        return self.files.save(state)

    def start(self, state: DevnetState, name: str) -> NodeState:
        """Re-run the KMS boot gate for a node and start it when allowed (no-op when already running)."""
        node = state.node(name)
        if node.allowed and node_running(node):
            log.info("devnet.node_start_skipped", node=name, reason="already running")
            return node
        state = self.files.save(state.with_node(self.power.boot(state, node)))
        return state.node(name)

    def stop(self, state: DevnetState, name: str) -> NodeState:
        """Power the node's CVM off: its workload, wireguard-go and guest agent stop (state dir kept)."""
        node = self.power.power_off(state, state.node(name))
        log.info("devnet.node_stopped", node=name)
        return node

    def restart(self, state: DevnetState, name: str) -> NodeState:
        """Restart the node's workload (the sidecar container); the interface and the agent stay up."""
        return self.power.restart_workload(state, name)

    def reboot(self, state: DevnetState, name: str) -> NodeState:
        """Power off, then the KMS gate and power on again (the state directory and identity carry over)."""
        node = self.power.power_cycle(state, state.node(name))
        log.info("devnet.node_rebooted", node=name, boot=node.boot)
        return node

    def prepare(self, state: DevnetState, name: str, data: bytes) -> ComposePlan:
        """Measure compose ``data`` for node ``name``; read whether the cluster allowlists it (no writes)."""
        digest = compose_hash(data)
        node = next((n for n in state.nodes if n.name == name), None)

        async def allowlisted() -> bool:
            async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
                return await ClusterClient(conn, Address.from_hex(state.cluster)).allowed_compose_hash(digest)

        plan = ComposePlan(
            node=name,
            exists=node is not None,
            compose_hash=str(digest),
            allowlisted=run_async(allowlisted),
            current_compose_hash=node.compose_hash if node is not None else None,
        )
        log.info("devnet.node_prepared", node=name, compose_hash=plan.compose_hash,
                 allowlisted=plan.allowlisted, changes=plan.changes)  # fmt: skip
        return plan

    def update(self, state: DevnetState, name: str, data: bytes) -> NodeUpdate:
        """Write a new app-compose.json, power the CVM off and boot it again through the KMS gate; a node
        already running exactly this compose, allowed, is left alone."""
        digest = str(compose_hash(data))
        node = state.node(name)
        previous = node.compose_hash
        compose_path = Path(node.compose_path)
        on_disk = compose_path.read_bytes() if compose_path.is_file() else None
        if node.allowed and node_running(node) and previous == digest and on_disk == data:
            log.info("devnet.node_update_skipped", node=name, compose_hash=digest,
                     reason="already running this compose")  # fmt: skip
            return NodeUpdate(node, changed=False, previous_compose_hash=previous)
        check_compose_image(state, data)  # the image workload: the image the compose names is here
        node = self.power.power_off(state, node)
        write_file(compose_path, data)  # what the guest agent and the gate measure from now on
        state = state.with_node(node)
        node = self.power.boot(state, node)
        self.files.save(state.with_node(node))
        log.info("devnet.node_updated", node=name, previous_compose_hash=previous,
                 compose_hash=node.compose_hash, boot=node.boot)  # fmt: skip
        return NodeUpdate(node, changed=True, previous_compose_hash=previous)

    def remove(self, state: DevnetState, name: str) -> str:
        """Evict the node's member on chain (cluster owner); the node keeps running and should say why."""
        node = state.node(name)

        async def evict() -> str:
            async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
                owner = TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY))
                cluster = ClusterClient(conn, Address.from_hex(state.cluster), owner)
                member_id = await cluster.member_id_of(Address.from_hex(node.app_id))
                if member_id is None:
                    raise DevnetError(f"node {name!r} is not a member of the cluster")
                await cluster.remove_member(member_id)
                return str(member_id)

        member_id = run_async(evict)
        log.info("devnet.node_removed", node=name, member_id=member_id)
        return member_id


def write_simulator_config(directory: Path, app_id: Address, instance_id: bytes, app_name: str) -> None:
    """The guest-agent simulator's ``simulator.json`` beside ``app-compose.json`` in ``directory``."""
    (directory / "simulator.json").write_text(
        json.dumps(
            {
                "app_id": app_id.hex,
                "instance_id": instance_id.hex(),
                "app_compose_path": "app-compose.json",
                "app_name": app_name,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )


def read_compose(path: Path) -> bytes:
    """The exact bytes of an app-compose.json (dstack measures them as UTF-8 text)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DevnetError(f"cannot read the compose file {path}: {exc.strerror or exc}") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise DevnetError(f"the compose file {path} is not UTF-8 text") from None
    return data


def write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a temp file in the same directory, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
