"""The devnet lab orchestrator: ``up``, ``status``, ``down`` and the node and indexer verbs (``Devnet``).

Owns the order in which a lab is built and torn down, and the facade every lab command goes through: each
verb takes the lab lock, checks the lab runs, and hands over to the module that owns it —
``devnet.nodes`` (a CVM's life cycle) with ``devnet.boot`` (the KMS gate and a node's processes),
``devnet.labindexer`` (the lab's indexer), ``devnet.labgateway`` (gateway mode: the gateway stand-in, the lab
DNS and the CVMs' firewalls), ``devnet.labhealth`` (status), ``devnet.labmonitoring`` (``up --monitoring``:
the lab's Prometheus) and ``devnet.labdir`` (files, lock, state and logs). Below those: ``devnet.netns``
(namespaces, bridge, routes), ``devnet.procs`` and ``devnet.wireguard`` (processes), ``devnet.anvil``
(chain), ``devnet.deployment`` (contracts).

Rules: state is written after every step, so a killed ``up`` leaves a file (``complete: false``) and a
``down`` or the next ``up`` can finish the job; ``down`` also sweeps by the lab's own name prefix, so it
works without any state at all. ``up`` on a running lab changes nothing; a new lab starts fresh logs (the
previous run's kept as ``logs.1``). A file lock serialises commands on one lab directory. The only private
key used here is anvil's published dev key (the cluster owner).
Must not: send traffic anywhere but loopback and the lab (the root namespace reaches the lab through its
veth; blackhole routes keep strays local), or touch processes it did not start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from devnet import procs
from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from devnet.boot import START_TIMEOUT, sidecar_env
from devnet.compose import NodeAnchors, compose_hash, node_compose_bytes
from devnet.container import DEFAULT_IMAGE, WORKLOADS, check_image, remove_lab_containers
from devnet.deployment import deploy_stack
from devnet.kms import DevnetKms
from devnet.labbase import LabBase, plan_for
from devnet.labdir import DevnetError, run_async
from devnet.labgateway import GatewayLimits, LabGateway
from devnet.labhealth import (
    IndexerHealth,
    LabStatus,
    NodeHealth,
    fetch_healthz,
    lab_status,
    node_health,
    wait_healthy,
)
from devnet.labindexer import IndexerChange, LabIndexer, indexer_env
from devnet.labmonitoring import LabMonitoring
from devnet.nodes import ComposePlan, Nodes, NodeUpdate, read_compose
from devnet.state import DevnetState, IndexerState, NodeState
from devnet.topology import DEFAULT_TRANSPORT, LabPlan, validate_node_name, validate_transport
from ops.owner import ensure_compose_hash_allowed
from sidecar.chain.rpc import connect
from sidecar.chain.tx import LocalSigner, TxSubmitter

__all__ = [  # what the CLI and the tests import from here (the facade, its results and its errors)
    "ComposePlan",
    "Devnet",
    "DevnetError",
    "GatewayLimits",
    "IndexerChange",
    "IndexerHealth",
    "LabStatus",
    "NodeHealth",
    "NodeUpdate",
    "UpResult",
    "fetch_healthz",
    "plan_for",
]

log = structlog.get_logger("devnet.lab")

ANVIL_PORT = 8545
CHAIN_ID = 31337
#: Seconds per block when ``up`` is not given one. anvil mines each transaction at once and also an empty
#: block on this interval (``--mixed-mining``): the head keeps moving, so the sidecars' default confirmations
#: (2) are reached within about two seconds, as on a real chain, without slowing any transaction down.
DEFAULT_BLOCK_TIME = 1.0


@dataclass(frozen=True, slots=True)
class UpResult:
    state: DevnetState
    created: bool  # False: the lab was already up and nothing changed


class Devnet(LabBase):
    """One lab on this machine, kept in ``root`` (default ``./.devnet``)."""

    def __init__(self, root: Path, plan: LabPlan) -> None:
        super().__init__(root, plan)
        self.nodes = Nodes(self.files, self.network)
        self.indexer = LabIndexer(self.files, self.network)
        self.gateway = LabGateway(self.files, self.network)
        self.monitoring = LabMonitoring(self.files, self.network)

    # --- paths ---------------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.files.state_file

    @property
    def logs(self) -> Path:
        return self.files.logs

    def node_dir(self, name: str) -> Path:
        return self.files.node_dir(name)

    @property
    def indexer_dir(self) -> Path:
        return self.files.indexer_dir

    @property
    def rpc_url(self) -> str:
        return f"http://{self.plan.hub_ip}:{ANVIL_PORT}"

    # --- up ----------------------------------------------------------------------------------------

    def up(
        self,
        nodes: int,
        block_time: float | None = None,
        *,
        sidecars: bool = True,
        indexer: bool = True,
        transport: str = DEFAULT_TRANSPORT,
        monitoring: bool = False,
        workload: str = "process",
        image: str = "",
    ) -> UpResult:
        """Build the lab with ``nodes`` nodes on ``transport`` (``gateway``: a CVM's network, the default;
        ``direct``: plain UDP between the nodes), with the lab's Prometheus when ``monitoring``; a running
        lab is left as it is."""
        if nodes < 1:
            raise DevnetError("--nodes must be at least 1")
        validate_transport(transport)
        if workload not in WORKLOADS:
            raise DevnetError(f"--workload must be one of {', '.join(WORKLOADS)}, not {workload!r}")
        if workload == "image":
            image = image or DEFAULT_IMAGE
            check_image(image)
        with self.locked():
            existing = self.load()
            if existing is not None and self._is_running(existing):
                log.info("devnet.up_skipped", lab=self.plan.name, reason="already running")
                return UpResult(existing, created=False)
            if existing is not None or self.network.leftovers():
                log.info("devnet.leftovers_swept", lab=self.plan.name)
                self._teardown()
            state = self._build(
                nodes,
                block_time,
                sidecars,
                indexer,
                transport,
                monitoring=monitoring,
                workload=(workload, image),
            )
            return UpResult(state, created=True)

    def _build(
        self,
        nodes: int,
        block_time: float | None,
        sidecars: bool,
        indexer: bool,
        transport: str,
        *,
        monitoring: bool = False,
        workload: tuple[str, str] = ("process", ""),
    ) -> DevnetState:
        self.root.mkdir(parents=True, exist_ok=True)
        self.files.fresh_logs()
        state = self.files.save(
            DevnetState(
                lab=self.plan.name,
                underlay=str(self.plan.underlay),
                mesh_cidr=str(self.plan.mesh),
                sidecars=sidecars,
                transport=transport,
                workload=workload[0],
                image=workload[1] if workload[0] == "image" else "",
            )
        )
        self.network.create()
        log.info("devnet.network_created", lab=self.plan.name, hub=self.plan.hub_ns)
        block_time = DEFAULT_BLOCK_TIME if block_time is None else block_time
        anvil_proc = AnvilProcess(
            host=str(self.plan.hub_ip),
            port=ANVIL_PORT,
            chain_id=CHAIN_ID,
            block_time=block_time,
            mixed_mining=True,
            netns=self.plan.hub_ns,
            log_path=self.logs / "anvil.log",
        ).start(timeout=START_TIMEOUT)
        assert anvil_proc.record is not None
        anvil = anvil_proc.record
        state = self.files.save(
            replace(
                state,
                rpc_url=self.rpc_url,
                chain_id=CHAIN_ID,
                block_time=block_time,
                processes={"anvil": anvil},
            )
        )
        # From here on, work that does not depend on each other overlaps: what waits for a process to start
        # (anvil, the gateway, each guest agent and the indexer are a Python or binary start-up each) runs
        # while the chain work goes on, and the nodes boot together rather than one after the other.
        if state.gateway_mode:  # before any CVM: they resolve through its DNS and announce their routes
            state = self.gateway.create(state)
        if indexer:  # its guest agent starts while the contracts are deployed
            state = self.indexer.begin(state)
        self._wait_for_chain(anvil)
        log.info("devnet.chain_started", rpc_url=self.rpc_url, pid=anvil.pid)
        state = self.files.save(run_async(lambda: self._deploy(state)))
        log.info("devnet.contracts_deployed", cluster=state.cluster, registry=state.indexer_registry)
        if indexer:  # registered before any sidecar starts, so that they start in push mode
            state = self.indexer.register_planned(state)
        compose = node_compose_bytes(NodeAnchors.of_lab(state))
        self.files.node_compose_file.write_bytes(compose)
        names = [(f"node-{index}", index) for index in range(1, nodes + 1)]
        state = self.nodes.create(state, names, compose)
        if indexer:  # its process starts while the nodes are powered on
            state = self.indexer.launch(state)
        if monitoring:  # every target is known now: it sees the bring-up
            state = self.monitoring.start(state)
        state, powered = self.nodes.power.power_on(state, [state.node(name) for name, _ in names])
        if sidecars:
            state, _ = self.nodes.power.start_sidecars(state, [n for n in powered if n.allowed])
        if indexer:  # the running indexer shows the key registered for it
            state = self.indexer.finish(state)
        return self.files.save(replace(state, complete=True))

    async def _deploy(self, state: DevnetState) -> DevnetState:
        """Deploy the contract stack as the cluster owner, then (the bring-up order) render the nodes'
        compose with the cluster's addresses and allowlist its hash; the state with its addresses."""
        kms = DevnetKms()
        owner = LocalSigner(DEVNET_DEPLOYER_KEY)
        async with await connect(self.rpc_url, expected_chain_id=CHAIN_ID) as conn:
            submitter = TxSubmitter(conn, owner)
            deployment = await deploy_stack(
                conn,
                submitter,
                kms_roots=(kms.root_address,),
                compose_hashes=(),
                mesh_cidr=str(self.plan.mesh),
            )
            state = replace(
                state,
                cluster=str(deployment.cluster),
                indexer_registry=str(deployment.indexer_registry),
                cluster_factory=str(deployment.cluster_factory),
                member_app_factory=str(deployment.member_app_factory),
                factory_block=deployment.factory_block,
                kms_root=str(kms.root_address),
                owner=str(owner.address),
            )
            digest = compose_hash(node_compose_bytes(NodeAnchors.of_lab(state)))
            await ensure_compose_hash_allowed(conn, submitter, deployment.cluster, digest)
        return replace(state, initial_compose_hash=str(digest))

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
            return run_async(answers)

        procs.wait_for(ready, START_TIMEOUT, interval=0.1, what=f"anvil at {self.rpc_url}")

    # --- nodes -------------------------------------------------------------------------------------

    def add_node(self, name: str, compose_file: Path | None = None) -> NodeState:
        """Add a node to the running lab (its own app contract, approved app id, compose, boot verdict)."""
        validate_node_name(name)
        with self._running() as state:
            if any(n.name == name for n in state.nodes):
                raise DevnetError(f"node {name!r} already exists")
            index = max((n.index for n in state.nodes), default=0) + 1
            compose = (
                compose_file.read_bytes()
                if compose_file is not None
                else node_compose_bytes(NodeAnchors.of_lab(state))
            )
            added = self.files.save(self.nodes.add(state, name, index, compose))
            if added.monitoring_url:
                self.monitoring.write_targets(added)
            return added.node(name)

    def start_node(self, name: str) -> NodeState:
        """Re-run the KMS boot gate for a node and start it when allowed (no-op when already running)."""
        with self._running() as state:
            return self.nodes.start(state, name)

    def stop_node(self, name: str) -> NodeState:
        """Power the node's CVM off: its workload, wireguard-go and guest agent stop (state dir kept)."""
        with self._running() as state:
            return self.nodes.stop(state, name)

    def restart_node(self, name: str) -> NodeState:
        """Restart the node's workload (the sidecar container); the interface and the agent stay up."""
        with self._running() as state:
            return self.nodes.restart(state, name)

    def reboot_node(self, name: str) -> NodeState:
        """Restart the node's CVM (``phala cvms restart``): power off, then the KMS gate and power on again.

        The state directory is kept, so the identity carries over. Unlike ``restart_node`` (the workload
        only), the guest agent and wireguard-go restart too and the gate is asked again: a node whose compose
        hash left the allowlist stays off (``boot`` says why).
        """
        with self._running() as state:
            return self.nodes.reboot(state, name)

    def prepare_node(self, name: str, compose_file: Path) -> ComposePlan:
        """Measure ``compose_file`` for node ``name``; read whether the cluster allowlists it (no writes)."""
        validate_node_name(name)
        data = read_compose(compose_file)
        state = self._require_running()  # reads only: no lock, so it never waits for a running command
        return self.nodes.prepare(state, name, data)

    def update_node(self, name: str, compose_file: Path) -> NodeUpdate:
        """Apply a new app-compose.json: write it, power the CVM off and boot it again through the KMS gate.

        The state directory is kept (same identity, no new registration). Nothing is allowlisted here: a
        compose hash the cluster does not allow is denied at the gate and the node stays off ("allowlist
        first"). A node that already runs exactly this compose, allowed, is left alone (``changed`` False);
        one that is off or was denied with it is booted again, so a re-run finishes an interrupted update.
        """
        data = read_compose(compose_file)
        with self._running() as state:
            return self.nodes.update(state, name, data)

    def remove_node(self, name: str) -> str:
        """Evict the node's member on chain (cluster owner); the node keeps running and should say why."""
        with self._running() as state:
            return self.nodes.remove(state, name)

    def compose_file(self, state: DevnetState) -> Path:
        """The lab's node app-compose.json: the cluster's trust anchors as literals, its hash allowlisted
        at ``up`` (written again if it went missing)."""
        path = self.files.node_compose_file
        compose = node_compose_bytes(NodeAnchors.of_lab(state))
        if not path.is_file() or path.read_bytes() != compose:
            path.write_bytes(compose)
        return path

    def sidecar_env(self, state: DevnetState, node: NodeState) -> dict[str, str]:
        """The node workload's environment: what a CVM's sealed env and compose file would give it."""
        return sidecar_env(state, node)

    # --- indexer -----------------------------------------------------------------------------------

    def indexer_env(self, state: DevnetState, idx: IndexerState) -> dict[str, str]:
        """The indexer's environment: what its CVM's sealed env and compose file would give it."""
        return indexer_env(state, idx)

    def indexer_start(self, *, register: bool = True) -> IndexerChange:
        """Start the indexer (a no-op when it runs with the current key and values) and, unless ``register``
        is False, make the registry name it."""
        with self._running() as state:
            return self.indexer.start(state, register=register)

    def indexer_update(self, values: Mapping[str, str]) -> IndexerChange:
        """Apply a sealed env file's values (``devnet.sealedenv``: the key version and the tunables) and
        restart the indexer with them, without registering it; a no-op when it already runs with them.

        The values are kept in the state file, so a later ``indexer start`` runs with them too. Raises
        ``EnvFileError`` (nothing changed) when the file cannot be applied.
        """
        with self._running() as state:
            return self.indexer.update(state, values)

    def indexer_stop(self) -> IndexerState:
        """Stop the indexer process and its guest agent; the registry keeps naming it (an outage)."""
        with self._running() as state:
            return self.indexer.stop(state)

    def indexer_rotate_key(self, *, restart: bool = True) -> IndexerState:
        """Register the indexer's next signing key on chain, then (unless ``restart`` is False) restart it.

        In between, the running indexer still signs with the old key, which sidecars now reject: with
        ``restart=False`` the lab stays in that state until ``indexer start``.
        """
        with self._running() as state:
            return self.indexer.rotate_key(state, restart=restart)

    # --- gateway -----------------------------------------------------------------------------------

    def gateway_start(
        self, limits: Mapping[str, str] | None = None, *, defaults: bool = False
    ) -> GatewayLimits:
        """(Re)start the gateway stand-in with the limits it ran with (``defaults``: dstack's defaults), with
        ``limits`` (name -> number as text) set on top; they stay for every later start. The limits now."""
        with self._running() as state:
            base = GatewayLimits() if defaults else self.gateway.limits(state)
            chosen = base.with_overrides(limits or {})
            self.gateway.start(state, chosen)
            return chosen

    def gateway_stop(self) -> None:
        """Stop the gateway stand-in: every route through it is down (DNS, routes and the nodes stay)."""
        with self._running() as state:
            self.gateway.stop(state)

    def gateway_limits(self) -> GatewayLimits:
        """The limits the gateway stand-in runs with (from its config file)."""
        return self.gateway.limits(self._require_running())

    # --- status ------------------------------------------------------------------------------------

    def status(self) -> LabStatus | None:
        """What is running now (processes, sockets, chain head, member count); None when there is no lab."""
        state = self.load()
        return lab_status(state) if state is not None else None

    def node_health(self, node: NodeState, state: DevnetState | None = None) -> NodeHealth:
        """What of one node is running now, and its /healthz (when its workload runs; through the gateway in
        gateway mode)."""
        return node_health(node, state if state is not None else self.load())

    def wait_healthy(self, timeout: float, report: Callable[[str], None] | None = None) -> LabStatus:
        """Poll every running node's /healthz until all are healthy; raise DevnetError at the deadline.
        ``report`` gets a line for each node's phase change while it waits."""
        return wait_healthy(self.status, self.plan.name, timeout, report)

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
        if state is None or state.workload == "image":
            remove_lab_containers(self.plan.name)
        self.network.destroy()  # sweeps every namespace (and the processes inside) by the lab's prefix
        self.files.remove_lab_files()
        log.info("devnet.down_completed", lab=self.plan.name)
