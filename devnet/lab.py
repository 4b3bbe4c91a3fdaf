"""The devnet lab orchestrator: ``up``, ``status``, ``down`` and the node verbs.

Owns the order in which a lab is built and torn down, the per-node files under the lab directory, and the
state file. The node verbs model a CVM's life cycle: ``add``, ``start``/``stop`` (power on through the KMS
gate / off), ``restart`` (the workload only), ``reboot`` (power off, then on through the gate), ``prepare``
(measure a new app-compose.json and read the allowlist, touching nothing) and ``update`` (write it, then
reboot; the state directory and so the identity carry over). It composes the lower layers:
``devnet.netns`` (namespaces, bridge, routes), ``devnet.procs`` and ``devnet.wireguard`` (processes),
``devnet.anvil`` (chain), ``devnet.deployment`` (contracts), ``devnet.kmsgate`` (boot verdicts) and the
sidecar's chain and dstack adapters.

Rules: state is written after every step, so a killed ``up`` leaves a file (``complete: false``) and a
``down`` or the next ``up`` can finish the job; ``down`` also sweeps by the lab's own name prefix, so it
works without any state at all. ``up`` on a running lab changes nothing. A file lock serialises commands
on one lab directory. The only private key used here is anvil's published dev key (the cluster owner).
Must not: send traffic anywhere but loopback and the lab (the root namespace reaches the lab through its
veth; blackhole routes keep strays local), or touch processes it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import structlog

from devnet import procs
from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from devnet.compose import DEFAULT_COMPOSE_BYTES, INDEXER_COMPOSE_BYTES, compose_hash
from devnet.deployment import deploy_stack
from devnet.kms import DevnetKms, derive_key
from devnet.kmsgate import boot_info_for, evaluate
from devnet.netns import LabNetwork
from devnet.operator import (
    OperatorError,
    RegistryUpdate,
    ensure_indexer_registered,
    ensure_member_app,
    fetch_indexer_identity,
)
from devnet.sealedenv import plan_indexer_env
from devnet.simulator.config import SimulatorConfig
from devnet.state import (
    BOOT_ALLOWED,
    DevnetState,
    IndexerState,
    NodeState,
    boot_denied,
    load_state,
    save_state,
)
from devnet.topology import LabPlan, validate_node_name
from devnet.wireguard import start_wireguard_go, uapi_socket
from indexer.service import key_path as indexer_key_path
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32
from sidecar.core.keys import KeyPath, ed25519_public_key
from sidecar.dstack.agent import GuestAgent

log = structlog.get_logger("devnet.lab")

T = TypeVar("T")

ANVIL_PORT = 8545
CHAIN_ID = 31337
SIGNER_FUNDING_WEI = 10 * 10**18
START_TIMEOUT = 20.0
WG_IFNAME = "attestmesh0"
WG_PORT = 51820
HEALTH_PORT = 9090
SIDECAR_POLL_INTERVAL = 1.0
SIDECAR_RESYNC_INTERVAL = 15.0
#: Push-mode knobs of the devnet's sidecars: short enough that tests and demos see a rotated key, an indexer
#: outage and its return within seconds (the production defaults are 60 s, 1-60 s and 30 s).
SIDECAR_REGISTRY_REFRESH = 5.0
SIDECAR_PUSH_BACKOFF_MIN = 0.5
SIDECAR_PUSH_BACKOFF_MAX = 4.0
SIDECAR_POLL_INTERVAL_PUSHED = 10.0
INDEXER_PORT = 8080
INDEXER_POLL_INTERVAL = 0.5
#: Read from the environment of the `attestmesh devnet` command that starts a sidecar (`up`, `node add`,
#: `node start`, `node restart`) and passed on as its ATTESTMESH_PUSH_CROSSCHECK (a rate in [0, 1]; "1"
#: checks every pushed event against eth_getLogs). Unset: the sidecar's default, 0 (no cross-check).
PUSH_CROSSCHECK_ENV = "ATTESTMESH_DEVNET_PUSH_CROSSCHECK"


class DevnetError(RuntimeError):
    """A lab command could not do what was asked; the message says why and what to run next."""


@dataclass(frozen=True, slots=True)
class UpResult:
    state: DevnetState
    created: bool  # False: the lab was already up and nothing changed


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


@dataclass(frozen=True, slots=True)
class IndexerChange:
    """The outcome of ``indexer start`` / ``indexer update``: the indexer afterwards, and whether it was
    (re)started."""

    indexer: IndexerState
    changed: bool  # False: it already ran with this key version and these values; nothing was touched


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


def fetch_healthz(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """GET a node's /healthz through the lab (200 and 503 both carry the JSON body)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - lab http only
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except (urllib.error.URLError, OSError):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


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


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run one chain session (its own event loop) from the synchronous orchestrator."""

    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


class Devnet:
    """One lab on this machine, kept in ``root`` (default ``./.devnet``)."""

    def __init__(self, root: Path, plan: LabPlan) -> None:
        self.root = root.resolve()
        self.plan = plan
        self.network = LabNetwork(plan)

    # --- paths -------------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    @property
    def indexer_dir(self) -> Path:
        return self.root / "indexer"

    @property
    def rpc_url(self) -> str:
        return f"http://{self.plan.hub_ip}:{ANVIL_PORT}"

    # --- locking and state -------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self) -> DevnetState | None:
        return load_state(self.state_file)

    def _save(self, state: DevnetState) -> DevnetState:
        save_state(self.state_file, state)
        return state

    def _is_running(self, state: DevnetState) -> bool:
        anvil = state.processes.get("anvil")
        return state.complete and anvil is not None and procs.is_alive(anvil) and self.network.exists()

    # --- up ----------------------------------------------------------------------------------------

    def up(
        self, nodes: int, block_time: float | None = None, *, sidecars: bool = True, indexer: bool = True
    ) -> UpResult:
        """Build the lab with ``nodes`` nodes; a running lab is left as it is."""
        if nodes < 1:
            raise DevnetError("--nodes must be at least 1")
        with self.locked():
            existing = self.load()
            if existing is not None and self._is_running(existing):
                log.info("devnet.up_skipped", lab=self.plan.name, reason="already running")
                return UpResult(existing, created=False)
            if existing is not None or self.network.leftovers():
                log.info("devnet.leftovers_swept", lab=self.plan.name)
                self._teardown()
            state = self._build(nodes, block_time, sidecars, indexer)
            return UpResult(state, created=True)

    def _build(self, nodes: int, block_time: float | None, sidecars: bool, indexer: bool) -> DevnetState:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        state = self._save(
            DevnetState(
                lab=self.plan.name,
                underlay=str(self.plan.underlay),
                mesh_cidr=str(self.plan.mesh),
                sidecars=sidecars,
            )
        )
        self.network.create()
        log.info("devnet.network_created", lab=self.plan.name, hub=self.plan.hub_ns)
        anvil_proc = AnvilProcess(
            host=str(self.plan.hub_ip),
            port=ANVIL_PORT,
            chain_id=CHAIN_ID,
            block_time=block_time,
            netns=self.plan.hub_ns,
            log_path=self.logs / "anvil.log",
        ).start(timeout=START_TIMEOUT)
        assert anvil_proc.record is not None
        anvil = anvil_proc.record
        state = self._save(
            replace(
                state,
                rpc_url=self.rpc_url,
                chain_id=CHAIN_ID,
                block_time=block_time,
                processes={"anvil": anvil},
            )
        )
        self._wait_for_chain(anvil)
        log.info("devnet.chain_started", rpc_url=self.rpc_url, pid=anvil.pid)

        kms = DevnetKms()
        owner = LocalSigner(DEVNET_DEPLOYER_KEY)

        async def deploy() -> DevnetState:
            async with await connect(self.rpc_url, expected_chain_id=CHAIN_ID) as conn:
                submitter = TxSubmitter(conn, owner)
                deployment = await deploy_stack(
                    conn,
                    submitter,
                    kms_roots=(kms.root_address,),
                    compose_hashes=(compose_hash(DEFAULT_COMPOSE_BYTES),),
                    mesh_cidr=str(self.plan.mesh),
                )
                return replace(
                    state,
                    cluster=str(deployment.cluster),
                    indexer_registry=str(deployment.indexer_registry),
                    cluster_factory=str(deployment.cluster_factory),
                    member_app_factory=str(deployment.member_app_factory),
                    factory_block=deployment.factory_block,
                    kms_root=str(kms.root_address),
                    owner=str(owner.address),
                    initial_compose_hash=str(compose_hash(DEFAULT_COMPOSE_BYTES)),
                )

        state = self._save(_run(deploy))
        log.info("devnet.contracts_deployed", cluster=state.cluster, registry=state.indexer_registry)
        if indexer:  # before the nodes, so that they start in push mode
            state = self._create_indexer(state)
        for index in range(1, nodes + 1):
            state = self._add_node(state, f"node-{index}", index, DEFAULT_COMPOSE_BYTES)
        return self._save(replace(state, complete=True))

    def _wait_for_chain(self, anvil: procs.ProcRecord) -> None:
        async def answers() -> bool:
            try:
                async with await connect(self.rpc_url, timeout=1.0, expected_chain_id=CHAIN_ID):
                    return True
            except Exception:
                return False

        def ready() -> bool:
            if not procs.is_alive(anvil):
                raise DevnetError(f"anvil exited during start-up; see {self.logs / 'anvil.log'}")
            return _run(answers)

        procs.wait_for(ready, START_TIMEOUT, interval=0.1, what=f"anvil at {self.rpc_url}")

    # --- nodes -------------------------------------------------------------------------------------

    def add_node(self, name: str, compose_file: Path | None = None) -> NodeState:
        """Add a node to the running lab (its own app contract, approved app id, compose, boot verdict)."""
        validate_node_name(name)
        with self.locked():
            state = self._require_running()
            if any(n.name == name for n in state.nodes):
                raise DevnetError(f"node {name!r} already exists")
            index = max((n.index for n in state.nodes), default=0) + 1
            compose = compose_file.read_bytes() if compose_file is not None else DEFAULT_COMPOSE_BYTES
            state = self._save(self._add_node(state, name, index, compose))
            return state.node(name)

    def start_node(self, name: str) -> NodeState:
        """Re-run the KMS boot gate for a node and start it when allowed (no-op when already running)."""
        with self.locked():
            state = self._require_running()
            node = state.node(name)
            if node.allowed and self._node_running(node):
                log.info("devnet.node_start_skipped", node=name, reason="already running")
                return node
            state = self._save(state.with_node(self._boot(state, node)))
            return state.node(name)

    def stop_node(self, name: str) -> NodeState:
        """Power the node's CVM off: its workload, wireguard-go and guest agent stop (state dir kept)."""
        with self.locked():
            state = self._require_running()
            node = self._power_off(state, state.node(name))
            log.info("devnet.node_stopped", node=name)
            return node

    def restart_node(self, name: str) -> NodeState:
        """Restart the node's workload (the sidecar container); the interface and the agent stay up."""
        with self.locked():
            state = self._require_running()
            node = state.node(name)
            if not state.sidecars or not node.allowed or not self._node_running(node):
                raise DevnetError(f"node {name!r} is not running a workload; use `node start`")
            procs.terminate(node.processes["sidecar"])
            node = replace(node, processes={**node.processes, "sidecar": self._start_sidecar(state, node)})
            self._save(state.with_node(node))
            log.info("devnet.node_restarted", node=name)
            return node

    def reboot_node(self, name: str) -> NodeState:
        """Restart the node's CVM (``phala cvms restart``): power off, then the KMS gate and power on again.

        The state directory is kept, so the identity carries over. Unlike ``restart_node`` (the workload
        only), the guest agent and wireguard-go restart too and the gate is asked again: a node whose compose
        hash left the allowlist stays off (``boot`` says why).
        """
        with self.locked():
            state = self._require_running()
            node = self._power_cycle(state, state.node(name))
            log.info("devnet.node_rebooted", node=name, boot=node.boot)
            return node

    def prepare_node(self, name: str, compose_file: Path) -> ComposePlan:
        """Measure ``compose_file`` for node ``name``; read whether the cluster allowlists it (no writes)."""
        validate_node_name(name)
        data = _read_compose(compose_file)
        digest = compose_hash(data)
        state = self._require_running()  # reads only: no lock, so it never waits for a running command
        node = next((n for n in state.nodes if n.name == name), None)

        async def allowlisted() -> bool:
            async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
                return await ClusterClient(conn, Address.from_hex(state.cluster)).allowed_compose_hash(digest)

        plan = ComposePlan(
            node=name,
            exists=node is not None,
            compose_hash=str(digest),
            allowlisted=_run(allowlisted),
            current_compose_hash=node.compose_hash if node is not None else None,
        )
        log.info("devnet.node_prepared", node=name, compose_hash=plan.compose_hash,
                 allowlisted=plan.allowlisted, changes=plan.changes)  # fmt: skip
        return plan

    def update_node(self, name: str, compose_file: Path) -> NodeUpdate:
        """Apply a new app-compose.json: write it, power the CVM off and boot it again through the KMS gate.

        The state directory is kept (same identity, no new registration). Nothing is allowlisted here: a
        compose hash the cluster does not allow is denied at the gate and the node stays off ("allowlist
        first"). A node that already runs exactly this compose, allowed, is left alone (``changed`` False);
        one that is off or was denied with it is booted again, so a re-run finishes an interrupted update.
        """
        data = _read_compose(compose_file)
        digest = str(compose_hash(data))
        with self.locked():
            state = self._require_running()
            node = state.node(name)
            previous = node.compose_hash
            compose_path = Path(node.compose_path)
            on_disk = compose_path.read_bytes() if compose_path.is_file() else None
            if node.allowed and self._node_running(node) and previous == digest and on_disk == data:
                log.info("devnet.node_update_skipped", node=name, compose_hash=digest,
                         reason="already running this compose")  # fmt: skip
                return NodeUpdate(node, changed=False, previous_compose_hash=previous)
            node = self._power_off(state, node)
            _write_file(compose_path, data)  # what the guest agent and the gate measure from now on
            state = state.with_node(node)
            node = self._boot(state, node)
            self._save(state.with_node(node))
            log.info("devnet.node_updated", node=name, previous_compose_hash=previous,
                     compose_hash=node.compose_hash, boot=node.boot)  # fmt: skip
            return NodeUpdate(node, changed=True, previous_compose_hash=previous)

    def remove_node(self, name: str) -> str:
        """Evict the node's member on chain (cluster owner); the node keeps running and should say why."""
        with self.locked():
            state = self._require_running()
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

            member_id = _run(evict)
            log.info("devnet.node_removed", node=name, member_id=member_id)
            return member_id

    def _add_node(self, state: DevnetState, name: str, index: int, compose: bytes) -> DevnetState:
        net = self.network.add_node(name, index)
        node_dir = self.node_dir(name)
        node_dir.mkdir(parents=True, exist_ok=True)
        compose_path = node_dir / "app-compose.json"
        compose_path.write_bytes(compose)
        owner = LocalSigner(DEVNET_DEPLOYER_KEY)

        async def create_app() -> Address:
            # Check before write (a re-run after a crash sends nothing twice): the app contract, then the
            # cold-start rule, its app id pre-approved before its first boot.
            async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
                setup = await ensure_member_app(
                    conn,
                    TxSubmitter(conn, owner),
                    Address.from_hex(state.member_app_factory),
                    Address.from_hex(state.cluster),
                    name,
                )
                return setup.app_id

        app_id = _run(create_app)
        instance_id = hashlib.sha256(f"attestmesh-devnet-instance:{self.plan.name}:{name}".encode()).digest()[
            :20
        ]
        sim_config = node_dir / "simulator.json"
        sim_config.write_text(
            json.dumps(
                {
                    "app_id": app_id.hex,
                    "instance_id": instance_id.hex(),
                    "app_compose_path": compose_path.name,
                    "app_name": name,
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
        wg_dir = node_dir / "wg"
        node = NodeState(
            name=name,
            index=index,
            netns=net.ns,
            app_id=str(app_id),
            instance_id=instance_id.hex(),
            compose_hash=str(compose_hash(compose)),
            compose_path=str(compose_path),
            underlay_ip=str(net.ip),
            dstack_socket=str(node_dir / "dstack.sock"),
            wg_uapi_dir=str(wg_dir),
            wg_socket=str(uapi_socket(wg_dir, WG_IFNAME)),
            health_url=f"http://{net.ip}:{HEALTH_PORT}/healthz",
            app_socket=str(node_dir / "agent.sock"),
            state_dir=str(node_dir / "state"),
        )
        state = self._save(state.with_node(node))
        log.info("devnet.node_created", node=name, netns=net.ns, app_id=str(app_id), underlay_ip=str(net.ip))
        return state.with_node(self._boot(state, node))

    def _boot(self, state: DevnetState, node: NodeState) -> NodeState:
        """The KMS gate, then (when allowed) the guest agent, wireguard-go and the signer's funding."""
        config = SimulatorConfig.load(self.node_dir(node.name) / "simulator.json")
        boot_info = boot_info_for(config)

        async def gate() -> tuple[bool, str]:
            async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
                verdict = await evaluate(conn, boot_info)
                return verdict.allowed, verdict.reason

        allowed, reason = _run(gate)
        node = replace(node, compose_hash=str(boot_info.compose_hash))
        if not allowed:
            self._stop_node_processes(node)
            log.warning("devnet.boot_denied", node=node.name, reason=reason)
            return replace(node, boot=boot_denied(reason), processes={})
        log.info("devnet.boot_allowed", node=node.name, compose_hash=str(boot_info.compose_hash))
        self._stop_node_processes(node)
        socket = Path(node.dstack_socket)
        socket.unlink(missing_ok=True)
        simulator = procs.spawn(
            [
                sys.executable,
                "-m",
                "devnet.simulator",
                "--config",
                str(self.node_dir(node.name) / "simulator.json"),
                "--socket",
                str(socket),
            ],
            name=f"simulator@{node.name}",
            netns=node.netns,
            log_path=self.logs / f"{node.name}-simulator.log",
        )
        self._journal(state, node, {"simulator": simulator})
        try:
            procs.wait_for(
                lambda: _socket_ready(socket, simulator),
                START_TIMEOUT,
                what=f"simulator socket of {node.name}",
            )
            wireguard = start_wireguard_go(
                node.netns,
                Path(node.wg_uapi_dir),
                ifname=WG_IFNAME,
                log_path=self.logs / f"{node.name}-wg.log",
            )
        except BaseException:
            procs.terminate(simulator)
            raise
        processes = {"simulator": simulator, "wireguard": wireguard}
        self._journal(state, node, processes)
        signer = _run(lambda: self._fund_signer(state, socket))
        if state.sidecars:
            processes["sidecar"] = self._start_sidecar(state, node)
            self._journal(state, node, processes)
        return replace(node, boot=BOOT_ALLOWED, signer=str(signer), processes=processes)

    def _journal(self, state: DevnetState, node: NodeState, processes: dict[str, procs.ProcRecord]) -> None:
        """Record processes as soon as they run: a command killed mid-boot leaves them known, so the next
        power-off stops them instead of a second wireguard-go fighting the first for the interface."""
        self._save(state.with_node(replace(node, processes=dict(processes))))

    def sidecar_env(self, state: DevnetState, node: NodeState) -> dict[str, str]:
        """The node workload's environment: what a CVM's sealed env and compose file would give it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTESTMESH_", "DSTACK_"))}
        env.update(
            ATTESTMESH_RPC_URL=state.rpc_url,
            ATTESTMESH_CHAIN_ID=str(state.chain_id),
            ATTESTMESH_CLUSTER=state.cluster,
            ATTESTMESH_INDEXER_REGISTRY=state.indexer_registry,
            ATTESTMESH_ENDPOINT=f"{node.underlay_ip}:{WG_PORT}",
            ATTESTMESH_WG_BACKEND="userspace",
            ATTESTMESH_WG_UAPI_DIR=node.wg_uapi_dir,
            ATTESTMESH_WG_LISTEN_PORT=str(WG_PORT),
            ATTESTMESH_HEALTH_ADDR=f"0.0.0.0:{HEALTH_PORT}",
            ATTESTMESH_APP_SOCKET=node.app_socket,
            ATTESTMESH_STATE_DIR=node.state_dir,
            ATTESTMESH_POLL_INTERVAL=str(SIDECAR_POLL_INTERVAL),
            ATTESTMESH_RESYNC_INTERVAL=str(SIDECAR_RESYNC_INTERVAL),
            ATTESTMESH_REGISTRY_REFRESH=str(SIDECAR_REGISTRY_REFRESH),
            ATTESTMESH_PUSH_BACKOFF_MIN=str(SIDECAR_PUSH_BACKOFF_MIN),
            ATTESTMESH_PUSH_BACKOFF_MAX=str(SIDECAR_PUSH_BACKOFF_MAX),
            ATTESTMESH_POLL_INTERVAL_PUSHED=str(SIDECAR_POLL_INTERVAL_PUSHED),
            DSTACK_SIMULATOR_ENDPOINT=node.dstack_socket,
        )
        crosscheck = os.environ.get(PUSH_CROSSCHECK_ENV, "").strip()
        if crosscheck:
            env["ATTESTMESH_PUSH_CROSSCHECK"] = crosscheck
        return env

    def _start_sidecar(self, state: DevnetState, node: NodeState) -> procs.ProcRecord:
        return procs.spawn(
            [sys.executable, "-m", "sidecar"],
            name=f"sidecar@{node.name}",
            netns=node.netns,
            log_path=self.logs / f"{node.name}-sidecar.log",
            env=self.sidecar_env(state, node),
        )

    async def _fund_signer(self, state: DevnetState, socket: Path) -> Address:
        """Learn the node's signer address from its guest agent (GetKey) and fund it from the owner."""
        agent = GuestAgent(str(socket))
        try:
            key = await agent.get_key(KeyPath.SIGNER.path, KeyPath.SIGNER.purpose)
        finally:
            await agent.close()
        signer = LocalSigner(key.key).address
        async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
            if await conn.get_balance(signer) < SIGNER_FUNDING_WEI // 2:
                await TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY)).send(
                    signer, b"", value=SIGNER_FUNDING_WEI
                )
        log.info("devnet.signer_funded", signer=str(signer))
        return signer

    def _power_off(self, state: DevnetState, node: NodeState) -> NodeState:
        """Stop every process of the node and record it as off (its files and state directory stay)."""
        self._stop_node_processes(node)
        node = replace(node, processes={})
        self._save(state.with_node(node))
        return node

    def _power_cycle(self, state: DevnetState, node: NodeState) -> NodeState:
        """Power the node off, then boot it through the KMS gate; the new state is saved either way."""
        node = self._power_off(state, node)
        state = state.with_node(node)
        node = self._boot(state, node)
        self._save(state.with_node(node))
        return node

    def _node_running(self, node: NodeState) -> bool:
        return bool(node.processes) and all(procs.is_alive(p) for p in node.processes.values())

    def _stop_node_processes(self, node: NodeState) -> None:
        procs.terminate_all(node.processes.values())

    def running_state(self) -> DevnetState:
        """The state of the running lab; ``DevnetError`` when it is not running."""
        return self._require_running()

    def _require_running(self) -> DevnetState:
        state = self.load()
        if state is None or not self._is_running(state):
            raise DevnetError(f"lab {self.plan.name!r} is not running; run `attestmesh devnet up` first")
        return state

    # --- indexer -----------------------------------------------------------------------------------

    def indexer_start(self, *, register: bool = True) -> IndexerChange:
        """Start the indexer (a no-op when it runs with the current key and values) and, unless ``register``
        is False, make the registry name it."""
        with self.locked():
            state = self._require_running()
            idx = self._require_indexer(state)
            started = not self._indexer_current(idx)
            if started:
                idx = self._start_indexer(state, idx)
                state = self._save(replace(state, indexer=idx))
            else:
                log.info("devnet.indexer_start_skipped", reason="already running")
            if register:
                idx = self._register_indexer(state, idx)
                self._save(replace(state, indexer=idx))
            return IndexerChange(idx, changed=started)

    def indexer_update(self, values: Mapping[str, str]) -> IndexerChange:
        """Apply a sealed env file's values (``devnet.sealedenv``: the key version and the tunables) and
        restart the indexer with them, without registering it; a no-op when it already runs with them.

        The values are kept in the state file, so a later ``indexer start`` runs with them too. Raises
        ``EnvFileError`` (nothing changed) when the file cannot be applied.
        """
        with self.locked():
            state = self._require_running()
            idx = self._require_indexer(state)
            plan = plan_indexer_env(values, self.indexer_env(state, replace(idx, sealed_env={})))
            public_key = self._indexer_public_key(idx, plan.key_version)
            idx = replace(
                idx, key_version=plan.key_version, sealed_env=plan.values, public_key=str(public_key)
            )
            state = self._save(replace(state, indexer=idx))
            if self._indexer_current(idx):
                log.info("devnet.indexer_update_skipped", reason="already running with these values")
                return IndexerChange(idx, changed=False)
            idx = self._start_indexer(state, idx)
            self._save(replace(state, indexer=idx))
            log.info("devnet.indexer_updated", key_version=idx.key_version, values=sorted(idx.sealed_env))
            return IndexerChange(idx, changed=True)

    def indexer_stop(self) -> IndexerState:
        """Stop the indexer process and its guest agent; the registry keeps naming it (an outage)."""
        with self.locked():
            state = self._require_running()
            idx = self._require_indexer(state)
            procs.terminate_all(idx.processes.values())
            idx = replace(idx, processes={}, running_key_version=0)
            self._save(replace(state, indexer=idx))
            log.info("devnet.indexer_stopped")
            return idx

    def indexer_rotate_key(self, *, restart: bool = True) -> IndexerState:
        """Register the indexer's next signing key on chain, then (unless ``restart`` is False) restart it.

        In between, the running indexer still signs with the old key, which sidecars now reject: with
        ``restart=False`` the lab stays in that state until ``indexer start``.
        """
        with self.locked():
            state = self._require_running()
            idx = self._require_indexer(state)
            version = idx.key_version + 1
            public_key = self._indexer_public_key(idx, version)
            update = _run(lambda: self._ensure_registered(state, idx, public_key))
            idx = replace(idx, key_version=version, public_key=str(public_key))
            state = self._save(replace(state, indexer=idx))
            log.info("devnet.indexer_key_rotated", key_version=version, public_key=str(public_key),
                     tx=str(update.tx_hash))  # fmt: skip
            if restart:
                idx = self._start_indexer(state, idx)
                self._save(replace(state, indexer=idx))
            return idx

    def _require_indexer(self, state: DevnetState) -> IndexerState:
        if state.indexer is None:
            raise DevnetError(
                f"lab {self.plan.name!r} runs without an indexer (it was made with --no-indexer)"
            )
        return state.indexer

    def _indexer_running(self, idx: IndexerState) -> bool:
        return bool(idx.processes) and all(procs.is_alive(p) for p in idx.processes.values())

    def _indexer_current(self, idx: IndexerState) -> bool:
        """Running, with the key version and sealed-env values it is meant to run with."""
        return (
            self._indexer_running(idx)
            and idx.running_key_version == idx.key_version
            and idx.running_env == idx.sealed_env
        )

    def _create_indexer(self, state: DevnetState) -> DevnetState:
        """The indexer's namespace, its own guest agent and app id, the process, and its registration."""
        net = self.network.add_indexer()
        directory = self.indexer_dir
        directory.mkdir(parents=True, exist_ok=True)
        compose_path = directory / "app-compose.json"
        compose_path.write_bytes(INDEXER_COMPOSE_BYTES)
        # A stock dstack app of its own (not a cluster member): a fixed app id per lab, code id = app id
        # left-aligned in 32 bytes (the registry's convention).
        app_id = Address(
            hashlib.sha256(f"attestmesh-devnet-indexer-app:{self.plan.name}".encode()).digest()[:20]
        )
        instance_id = hashlib.sha256(f"attestmesh-devnet-indexer-instance:{self.plan.name}".encode()).digest()
        (directory / "simulator.json").write_text(
            json.dumps(
                {
                    "app_id": app_id.hex,
                    "instance_id": instance_id[:20].hex(),
                    "app_compose_path": compose_path.name,
                    "app_name": "attestmesh-indexer",
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
        base = f"{net.ip}:{INDEXER_PORT}"
        idx = IndexerState(
            netns=net.ns,
            ip=str(net.ip),
            app_id=str(app_id),
            instance_id=instance_id[:20].hex(),
            code_id=str(Bytes32(app_id.raw + bytes(12))),
            compose_hash=str(compose_hash(INDEXER_COMPOSE_BYTES)),
            dstack_socket=str(directory / "dstack.sock"),
            url=f"ws://{base}/v1/subscribe",
            health_url=f"http://{base}/healthz",
            status_url=f"http://{base}/status",
        )
        state = self._save(replace(state, indexer=idx))
        idx = self._start_indexer(state, idx)
        state = self._save(replace(state, indexer=idx))
        idx = self._register_indexer(state, idx)
        log.info("devnet.indexer_created", netns=net.ns, url=idx.url, app_id=str(app_id))
        return self._save(replace(state, indexer=idx))

    def indexer_env(self, state: DevnetState, idx: IndexerState) -> dict[str, str]:
        """The indexer's environment: what its CVM's sealed env and compose file would give it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTESTMESH_", "DSTACK_"))}
        prefix = "ATTESTMESH_INDEXER_"
        env.update(
            {
                f"{prefix}RPC_URL": state.rpc_url,
                f"{prefix}CHAIN_ID": str(state.chain_id),
                f"{prefix}CLUSTER_FACTORY": state.cluster_factory,
                f"{prefix}START_BLOCK": str(state.factory_block),
                f"{prefix}REGISTRY": state.indexer_registry,
                f"{prefix}PUBLIC_URL": idx.url,
                f"{prefix}CODE_ID": idx.code_id,
                f"{prefix}KEY_VERSION": str(idx.key_version),
                f"{prefix}LISTEN_ADDR": f"0.0.0.0:{INDEXER_PORT}",
                f"{prefix}POLL_INTERVAL": str(INDEXER_POLL_INTERVAL),
                f"{prefix}CONFIRMATIONS": "0",
                f"{prefix}REGISTRY_CHECK_INTERVAL": "2",
                **idx.sealed_env,  # never a lab-owned name or KEY_VERSION (devnet.sealedenv)
                "DSTACK_SIMULATOR_ENDPOINT": idx.dstack_socket,
            }
        )
        return env

    def _start_indexer(self, state: DevnetState, idx: IndexerState) -> IndexerState:
        """(Re)start the indexer's guest agent and process; return once ``/status`` shows its key.

        Each process is written to the state file as soon as it runs: a command killed meanwhile leaves it
        known, so the next start stops it instead of a second indexer failing to bind the port."""
        procs.terminate_all(idx.processes.values())
        idx = replace(idx, processes={}, running_key_version=0, running_env={})
        self._save(replace(state, indexer=idx))
        socket = Path(idx.dstack_socket)
        socket.unlink(missing_ok=True)
        simulator = procs.spawn(
            [sys.executable, "-m", "devnet.simulator", "--config", str(self.indexer_dir / "simulator.json"),
             "--socket", str(socket)],
            name="simulator@indexer",
            netns=idx.netns,
            log_path=self.logs / "indexer-simulator.log",
        )  # fmt: skip
        self._save(replace(state, indexer=replace(idx, processes={"simulator": simulator})))
        try:
            procs.wait_for(lambda: _socket_ready(socket, simulator), START_TIMEOUT, what="indexer simulator")
            indexer = procs.spawn(
                [sys.executable, "-m", "indexer"],
                name="indexer",
                netns=idx.netns,
                log_path=self.logs / "indexer.log",
                env=self.indexer_env(state, idx),
            )
        except BaseException:
            procs.terminate(simulator)
            raise
        idx = replace(
            idx,
            processes={"simulator": simulator, "indexer": indexer},
            running_key_version=idx.key_version,
            running_env=dict(idx.sealed_env),
        )
        self._save(replace(state, indexer=idx))
        expected = self._indexer_public_key(idx, idx.key_version)

        def key_shown() -> bool:
            if not procs.is_alive(indexer):
                raise DevnetError(f"the indexer exited during start-up; see {self.logs / 'indexer.log'}")
            try:
                return fetch_indexer_identity(idx.status_url, timeout=1.0).public_key == expected
            except OperatorError:
                return False

        try:
            procs.wait_for(
                key_shown, START_TIMEOUT, interval=0.1, what="the indexer's signing key on /status"
            )
        except BaseException:
            procs.terminate_all((indexer, simulator))
            raise
        log.info("devnet.indexer_started", pid=indexer.pid, key_version=idx.key_version, url=idx.url)
        return idx

    def _indexer_public_key(self, idx: IndexerState, version: int) -> Bytes32:
        """The Ed25519 public key of key ``version``: what the indexer's guest agent derives (devnet KMS)."""
        kms = DevnetKms()
        seed = derive_key(kms.app_key(Address.from_hex(idx.app_id)), indexer_key_path(version))
        return Bytes32(ed25519_public_key(seed))

    def _register_indexer(self, state: DevnetState, idx: IndexerState) -> IndexerState:
        """Write the running indexer's endpoint, code id and key (read from its /status) to the registry."""
        identity = fetch_indexer_identity(idx.status_url)
        _run(lambda: self._ensure_registered(state, idx, identity.public_key))
        return replace(idx, public_key=str(identity.public_key))

    async def _ensure_registered(
        self, state: DevnetState, idx: IndexerState, public_key: Bytes32
    ) -> RegistryUpdate:
        async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
            return await ensure_indexer_registered(
                conn,
                TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY)),
                Address.from_hex(state.indexer_registry),
                endpoint=idx.url,
                code_id=Bytes32.from_hex(idx.code_id),
                public_key=public_key,
            )

    # --- status ------------------------------------------------------------------------------------

    def status(self) -> LabStatus | None:
        """What is running now (processes, sockets, chain head, member count); None when there is no lab."""
        state = self.load()
        if state is None:
            return None
        anvil = state.processes.get("anvil")
        anvil_alive = anvil is not None and procs.is_alive(anvil)

        async def chain() -> tuple[int, int | None, str | None]:
            """One chain session: head, member count and the registered indexer key ("" = none)."""
            async with await connect(state.rpc_url, timeout=2.0, expected_chain_id=state.chain_id) as conn:
                head = await conn.block_number()
                count = (
                    await ClusterClient(conn, Address.from_hex(state.cluster)).member_count()
                    if state.cluster
                    else None
                )
                registered = None
                if state.indexer is not None and state.indexer_registry:
                    registry = IndexerRegistryClient(conn, Address.from_hex(state.indexer_registry))
                    record = await registry.current()
                    registered = str(record.pub_key) if record.registered else ""
                return head, count, registered

        head: int | None = None
        count: int | None = None
        registered: str | None = None
        if anvil_alive and state.rpc_url:
            try:
                head, count, registered = _run(chain)
            except Exception as exc:
                log.warning("devnet.chain_unreachable", error=str(exc))
        nodes = tuple(self.node_health(n) for n in state.nodes)
        indexer = None
        if state.indexer is not None:
            idx = state.indexer
            running = {k: rec is not None and procs.is_alive(rec) for k, rec in idx.processes.items()}
            indexer = IndexerHealth(
                simulator=running.get("simulator", False),
                indexer=running.get("indexer", False),
                healthz=fetch_healthz(idx.health_url) if running.get("indexer") else None,
                status=fetch_healthz(idx.status_url) if running.get("indexer") else None,
                registered_key=registered,
            )
        return LabStatus(state, anvil_alive, head is not None, head, count, nodes, indexer)

    def node_health(self, node: NodeState) -> NodeHealth:
        """What of one node is running now, and its /healthz (when its workload runs)."""
        return NodeHealth(
            name=node.name,
            boot=node.boot,
            simulator=_alive(node, "simulator"),
            wireguard=_alive(node, "wireguard"),
            sidecar=_alive(node, "sidecar"),
            dstack_socket=Path(node.dstack_socket).is_socket(),
            wg_socket=Path(node.wg_socket).is_socket(),
            healthz=fetch_healthz(node.health_url) if _alive(node, "sidecar") else None,
            running=node.allowed and self._node_running(node),
        )

    def wait_healthy(self, timeout: float) -> LabStatus:
        """Poll every running node's /healthz until all are healthy; raise DevnetError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status is None:
                raise DevnetError(f"lab {self.plan.name!r} is not running")
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

    # --- down --------------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything the lab made; return what was still left afterwards (empty on success)."""
        with self.locked():
            self._teardown()
            return self.network.leftovers()

    def _teardown(self) -> None:
        state = self.load()
        if state is not None:
            recorded = [p for n in state.nodes for p in n.processes.values()] + list(state.processes.values())
            if state.indexer is not None:
                recorded = list(state.indexer.processes.values()) + recorded
            procs.terminate_all(recorded)
        self.network.destroy()  # sweeps every namespace (and the processes inside) by the lab's prefix
        for path in (self.root / "nodes", self.indexer_dir, self.state_file):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        log.info("devnet.down_completed", lab=self.plan.name)


def _alive(node: NodeState, key: str) -> bool:
    rec = node.processes.get(key)
    return rec is not None and procs.is_alive(rec)


def _read_compose(path: Path) -> bytes:
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


def _write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a temp file in the same directory, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _socket_ready(socket: Path, rec: procs.ProcRecord) -> bool:
    if not procs.is_alive(rec):
        raise DevnetError(f"{rec.name} exited during start-up")
    return socket.is_socket()


def plan_for(root: Path, lab: str, underlay: str, mesh: str) -> LabPlan:
    """The plan of the lab in ``root``: its state file wins over the given defaults."""
    state = load_state(root / "state.json")
    if state is not None:
        return LabPlan(state.lab, IPv4Network(state.underlay), IPv4Network(state.mesh_cidr))
    return LabPlan(lab, IPv4Network(underlay), IPv4Network(mesh))
