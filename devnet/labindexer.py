"""The devnet's indexer: its namespace, guest agent and process, its registration, and its verbs.

Owns creating the lab's indexer (a stock dstack app of its own, not a cluster member: a fixed app id per lab),
its environment (what its CVM's sealed env and compose file would give it), (re)starting it until ``/status``
shows the expected signing key, registering it in the IndexerRegistry as the registry owner, and the ``indexer
start|update|stop|rotate-key`` verbs. In gateway mode the indexer is a CVM behind the gateway like the nodes:
its namespace admits the gateway only, its registered endpoint is
``wss://<app_id>-8080.<domain>/v1/subscribe``, the lab reads its ``/status`` through the gateway, and its
route is announced as it starts (port policy unknown, then port 8080) and withdrawn when it stops. Must not
take the lab lock or check that the lab runs (the ``Devnet`` facade does), nor touch the nodes.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from devnet import procs
from devnet.anvil import DEVNET_DEPLOYER_KEY
from devnet.boot import START_TIMEOUT, lab_free_env, socket_ready, start_simulator
from devnet.compose import INDEXER_COMPOSE_BYTES, compose_hash
from devnet.kms import DevnetKms, derive_key
from devnet.labdir import DevnetError, LabDir, run_async
from devnet.labgateway import announce_route, enclose, service_url, withdraw_route
from devnet.labreach import LabReach
from devnet.netns import LabNetwork
from devnet.nodes import write_simulator_config
from devnet.sealedenv import plan_indexer_env
from devnet.state import DevnetState, IndexerState
from indexer.service import key_path as indexer_key_path
from ops.errors import OperatorError
from ops.indexers import RegistryUpdate, ensure_indexer_registered
from ops.jsonget import Unreachable
from sidecar.chain.rpc import connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32
from sidecar.core.keys import ed25519_public_key

log = structlog.get_logger("devnet.indexer")

INDEXER_PORT = 8080
#: The ports the indexer's compose publishes (WebSocket, /healthz and /status share one): its port policy.
INDEXER_PUBLISHED_PORTS = (INDEXER_PORT,)
INDEXER_POLL_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class IndexerChange:
    """The outcome of ``indexer start`` / ``indexer update``: the indexer afterwards, and whether it was
    (re)started."""

    indexer: IndexerState
    changed: bool  # False: it already ran with this key version and these values; nothing was touched


def require_indexer(state: DevnetState) -> IndexerState:
    if state.indexer is None:
        raise DevnetError(f"lab {state.lab!r} runs without an indexer (it was made with --no-indexer)")
    return state.indexer


def indexer_running(idx: IndexerState) -> bool:
    return bool(idx.processes) and all(procs.is_alive(p) for p in idx.processes.values())


def indexer_current(idx: IndexerState) -> bool:
    """Running, with the key version and sealed-env values it is meant to run with."""
    return (
        indexer_running(idx)
        and idx.running_key_version == idx.key_version
        and idx.running_env == idx.sealed_env
    )


def indexer_env(state: DevnetState, idx: IndexerState) -> dict[str, str]:
    """The indexer's environment: what its CVM's sealed env and compose file would give it."""
    env = lab_free_env()
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
            # as deep as the sidecars' default: a push then lands in the snapshot its wake-up reads
            f"{prefix}CONFIRMATIONS": "2",
            f"{prefix}REGISTRY_CHECK_INTERVAL": "2",
            **idx.sealed_env,  # never a lab-owned name or KEY_VERSION (devnet.sealedenv)
            "DSTACK_SIMULATOR_ENDPOINT": idx.dstack_socket,
        }
    )
    return env


def status_url(state: DevnetState, idx: IndexerState) -> str:
    """Where the lab reads the indexer's ``/status``: through the gateway in gateway mode."""
    return idx.gateway_status_url if state.gateway_mode else idx.status_url


def read_public_key(state: DevnetState, idx: IndexerState, timeout: float = 3.0) -> Bytes32:
    """The signing key the running indexer shows on ``/status``; ``OperatorError`` when it shows none."""
    url = status_url(state, idx)
    try:
        answer = LabReach.of(state).get_json(url, timeout)
    except Unreachable as exc:
        raise OperatorError(f"{url} did not answer: {exc}") from None
    key = answer.data.get("public_key") if answer.ok and isinstance(answer.data, dict) else None
    if not isinstance(key, str):
        raise OperatorError(f"{url} answered {answer.status} without a public key (still starting?)")
    try:
        return Bytes32.from_hex(key)
    except ValueError:
        raise OperatorError(f"{url}: the public key is not 32 bytes of hex") from None


def indexer_public_key(idx: IndexerState, version: int) -> Bytes32:
    """The Ed25519 public key of key ``version``: what the indexer's guest agent derives (devnet KMS)."""
    kms = DevnetKms()
    seed = derive_key(kms.app_key(Address.from_hex(idx.app_id)), indexer_key_path(version))
    return Bytes32(ed25519_public_key(seed))


class LabIndexer:
    """The indexer of one lab; every method takes the running lab's state and saves what it changes."""

    def __init__(self, files: LabDir, network: LabNetwork) -> None:
        self.files = files
        self.network = network

    def _save(self, state: DevnetState, idx: IndexerState) -> DevnetState:
        return self.files.save(replace(state, indexer=idx))

    # --- creation, in steps that let ``up`` do other work meanwhile: begin, (contracts deployed), launch,
    # register_planned, finish ------------------------------------------------------------------------

    def begin(self, state: DevnetState) -> DevnetState:
        """The indexer's namespace and files, and its guest agent spawned (not waited for: ``launch`` does,
        so the lab can deploy the contracts meanwhile). The state, saved."""
        net = self.network.add_indexer()
        enclose(state, net.ns)
        directory = self.files.indexer_dir
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "app-compose.json").write_bytes(INDEXER_COMPOSE_BYTES)
        # Code id = app id left-aligned in 32 bytes (the registry's convention).
        lab = self.network.plan.name
        app_id = Address(hashlib.sha256(f"attestmesh-devnet-indexer-app:{lab}".encode()).digest()[:20])
        instance_id = hashlib.sha256(f"attestmesh-devnet-indexer-instance:{lab}".encode()).digest()[:20]
        write_simulator_config(directory, app_id, instance_id, "attestmesh-indexer")
        base = f"{net.ip}:{INDEXER_PORT}"
        via = state.gateway.domain if state.gateway_mode and state.gateway is not None else None
        idx = IndexerState(
            netns=net.ns,
            ip=str(net.ip),
            app_id=str(app_id),
            instance_id=instance_id.hex(),
            code_id=str(Bytes32(app_id.raw + bytes(12))),
            compose_hash=str(compose_hash(INDEXER_COMPOSE_BYTES)),
            dstack_socket=str(directory / "dstack.sock"),
            # A terminated route: the gateway holds the TLS, the indexer serves plain WebSocket on 8080.
            url=(
                service_url("wss", app_id.hex, INDEXER_PORT, via, "/v1/subscribe")
                if via
                else f"ws://{base}/v1/subscribe"
            ),
            health_url=f"http://{base}/healthz",
            status_url=f"http://{base}/status",
            gateway_health_url=service_url("https", app_id.hex, INDEXER_PORT, via, "/healthz") if via else "",
            gateway_status_url=service_url("https", app_id.hex, INDEXER_PORT, via, "/status") if via else "",
        )
        state = self._save(state, idx)
        return self._save(state, self._spawn_simulator(state, idx))

    def launch(self, state: DevnetState) -> DevnetState:
        """Once its guest agent answers, the indexer process (not waited for). The state, saved."""
        idx = require_indexer(state)
        return self._save(state, self._spawn_indexer(state, idx))

    def register_planned(self, state: DevnetState) -> DevnetState:
        """Register the indexer's endpoint, code id and the key its guest agent derives (the devnet KMS is
        deterministic) before it runs, so sidecars started meanwhile find it at their first registry read;
        ``finish`` then checks that the running indexer shows exactly this key. The state, saved."""
        idx = require_indexer(state)
        public_key = indexer_public_key(idx, idx.key_version)
        run_async(lambda: self._ensure_registered(state, idx, public_key))
        return self._save(state, replace(idx, public_key=str(public_key)))

    def finish(self, state: DevnetState) -> DevnetState:
        """Wait until the running indexer shows the key ``register_planned`` registered."""
        idx = require_indexer(state)
        self._wait_started(state, idx)
        log.info("devnet.indexer_created", netns=idx.netns, url=idx.url, app_id=idx.app_id)
        return state

    def restart(self, state: DevnetState, idx: IndexerState) -> IndexerState:
        """(Re)start the indexer's guest agent and process; return once ``/status`` shows its key.

        Each process is written to the state file as soon as it runs: a command killed meanwhile leaves it
        known, so the next start stops it instead of a second indexer failing to bind the port."""
        idx = self._spawn_simulator(state, idx)
        idx = self._spawn_indexer(state, idx)
        self._wait_started(state, idx)
        return idx

    def _spawn_simulator(self, state: DevnetState, idx: IndexerState) -> IndexerState:
        """Stop what runs, then spawn the guest agent (recorded at once)."""
        procs.terminate_all(idx.processes.values())
        withdraw_route(state, idx.instance_id)
        idx = replace(idx, processes={}, running_key_version=0, running_env={})
        self._save(state, idx)
        # its CVM boots: known to the gateway, its port policy not yet
        announce_route(state, idx.instance_id, idx.app_id, idx.ip, None)
        simulator = start_simulator(
            self.files.indexer_dir / "simulator.json",
            Path(idx.dstack_socket),
            name="simulator@indexer",
            netns=idx.netns,
            log_path=self.files.logs / "indexer-simulator.log",
        )
        idx = replace(idx, processes={"simulator": simulator})
        self._save(state, idx)
        return idx

    def _spawn_indexer(self, state: DevnetState, idx: IndexerState) -> IndexerState:
        """Once the guest agent's socket is there, spawn the indexer (recorded at once)."""
        simulator = idx.processes["simulator"]
        socket = Path(idx.dstack_socket)
        try:
            procs.wait_for(lambda: socket_ready(socket, simulator), START_TIMEOUT, what="indexer simulator")
            indexer = procs.spawn(
                [sys.executable, "-m", "indexer"],
                name="indexer",
                netns=idx.netns,
                log_path=self.files.logs / "indexer.log",
                env=indexer_env(state, idx),
            )
        except BaseException:
            procs.terminate(simulator)
            raise
        announce_route(state, idx.instance_id, idx.app_id, idx.ip, INDEXER_PUBLISHED_PORTS)
        idx = replace(
            idx,
            processes={"simulator": simulator, "indexer": indexer},
            running_key_version=idx.key_version,
            running_env=dict(idx.sealed_env),
        )
        self._save(state, idx)
        return idx

    def _wait_started(self, state: DevnetState, idx: IndexerState) -> None:
        indexer = idx.processes["indexer"]
        try:
            self._wait_for_key(state, idx, indexer)
        except BaseException:
            procs.terminate_all(idx.processes.values())
            raise
        log.info("devnet.indexer_started", pid=indexer.pid, key_version=idx.key_version, url=idx.url)

    def _wait_for_key(self, state: DevnetState, idx: IndexerState, indexer: procs.ProcRecord) -> None:
        expected = indexer_public_key(idx, idx.key_version)

        def key_shown() -> bool:
            if not procs.is_alive(indexer):
                raise DevnetError(
                    f"the indexer exited during start-up; see {self.files.logs / 'indexer.log'}"
                )
            try:
                return read_public_key(state, idx, timeout=1.0) == expected
            except OperatorError:
                return False

        procs.wait_for(key_shown, START_TIMEOUT, interval=0.1, what="the indexer's signing key on /status")

    def register(self, state: DevnetState, idx: IndexerState) -> IndexerState:
        """Write the running indexer's endpoint, code id and key (read from its /status) to the registry."""
        public_key = read_public_key(state, idx)
        run_async(lambda: self._ensure_registered(state, idx, public_key))
        return replace(idx, public_key=str(public_key))

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

    # --- verbs -------------------------------------------------------------------------------------

    def start(self, state: DevnetState, *, register: bool = True) -> IndexerChange:
        """Start the indexer (a no-op when it runs with the current key and values) and, unless ``register``
        is False, make the registry name it."""
        idx = require_indexer(state)
        started = not indexer_current(idx)
        if started:
            idx = self.restart(state, idx)
            state = self._save(state, idx)
        else:
            log.info("devnet.indexer_start_skipped", reason="already running")
        if register:
            idx = self.register(state, idx)
            self._save(state, idx)
        return IndexerChange(idx, changed=started)

    def update(self, state: DevnetState, values: Mapping[str, str]) -> IndexerChange:
        """Apply a sealed env file's values and restart the indexer with them, without registering it; a
        no-op when it already runs with them. ``EnvFileError`` (nothing changed) when they cannot apply."""
        idx = require_indexer(state)
        plan = plan_indexer_env(values, indexer_env(state, replace(idx, sealed_env={})))
        public_key = indexer_public_key(idx, plan.key_version)
        idx = replace(idx, key_version=plan.key_version, sealed_env=plan.values, public_key=str(public_key))
        state = self._save(state, idx)
        if indexer_current(idx):
            log.info("devnet.indexer_update_skipped", reason="already running with these values")
            return IndexerChange(idx, changed=False)
        idx = self.restart(state, idx)
        self._save(state, idx)
        log.info("devnet.indexer_updated", key_version=idx.key_version, values=sorted(idx.sealed_env))
        return IndexerChange(idx, changed=True)

    def stop(self, state: DevnetState) -> IndexerState:
        """Stop the indexer process and its guest agent; the registry keeps naming it (an outage)."""
        idx = require_indexer(state)
        procs.terminate_all(idx.processes.values())
        withdraw_route(state, idx.instance_id)
        idx = replace(idx, processes={}, running_key_version=0)
        self._save(state, idx)
        log.info("devnet.indexer_stopped")
        return idx

    def rotate_key(self, state: DevnetState, *, restart: bool = True) -> IndexerState:
        """Register the indexer's next signing key on chain, then (unless ``restart`` is False) restart it."""
        idx = require_indexer(state)
        version = idx.key_version + 1
        public_key = indexer_public_key(idx, version)
        update = run_async(lambda: self._ensure_registered(state, idx, public_key))
        idx = replace(idx, key_version=version, public_key=str(public_key))
        state = self._save(state, idx)
        log.info("devnet.indexer_key_rotated", key_version=version, public_key=str(public_key),
                 tx=str(update.tx_hash))  # fmt: skip
        if restart:
            idx = self.restart(state, idx)
            self._save(state, idx)
        return idx
