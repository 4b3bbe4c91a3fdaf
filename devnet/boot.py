"""A devnet node's power: the KMS boot gate, then its guest agent, wireguard-go and workload; and power off.

Owns what a CVM's boot does on the devnet (ask the gate; when allowed start the guest-agent simulator,
wireguard-go, fund the node's signer from the cluster owner and start the sidecar with the environment its
sealed env and compose file would give it) — for one node or for several together (``power_on``: their
agents started at once and awaited together, their signers funded in one chain session; ``start_sidecars``)
—, the process journal that records each process as soon as it runs, and power-off; in gateway mode also
the CVM's registration with the gateway as a CVM's boot makes it (its route with an unknown port policy once
it is allowed to boot, the ports its compose publishes once its workload starts, no route while it is off).
Must not decide which node boots or when (``devnet.nodes`` does), nor touch the network or any process it
did not start. The gate, the simulator's config, the guest-agent client and the chain client are imported
where a boot uses them: `devnet node restart` (a workload restart, ``NodePower.restart_workload``) loads
none of them, so it costs little more than the process swap.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import structlog

from devnet import procs
from devnet.anvil import DEVNET_DEPLOYER_KEY
from devnet.compose import NodeAnchors
from devnet.labdir import DevnetError, LabDir, run_async
from devnet.labgateway import announce_route, withdraw_route
from devnet.netns import kill_namespace_processes
from devnet.state import BOOT_ALLOWED, DevnetState, NodeState, boot_denied
from devnet.wireguard import start_wireguard_go
from sidecar.core.ids import Address
from sidecar.core.keys import KeyPath, KeyScope

log = structlog.get_logger("devnet.boot")

START_TIMEOUT = 20.0
SIGNER_FUNDING_WEI = 10 * 10**18
WG_IFNAME = "attestmesh0"
WG_PORT = 51820
HEALTH_PORT = 9090
#: The sidecar's TLS ingress for the gateway transport (ATTESTMESH_GATEWAY_PORT): what peers' streams reach
#: through the gateway's passthrough route ``<app_id>-51900s.<domain>``.
GATEWAY_INGRESS_PORT = 51900
#: The ports a node's compose publishes, i.e. the gateway's port policy for it once its workload runs.
NODE_PUBLISHED_PORTS = (GATEWAY_INGRESS_PORT, HEALTH_PORT)
SIDECAR_POLL_INTERVAL = 1.0
SIDECAR_RESYNC_INTERVAL = 15.0
#: The periodic resync while push is healthy: the same 15 s as in poll mode, so tests see a change no event
#: announces (a storage poke) and a chain outage within seconds; production's default is 600 s, which is
#: what keeps a healthy node under 2 JSON-RPC calls a minute (docs/architecture.md "The RPC budget").
SIDECAR_RESYNC_INTERVAL_PUSHED = 15.0
#: Push-mode knobs of the devnet's sidecars: short enough that tests and demos see a rotated key, an indexer
#: outage and its return within seconds (the production defaults are 60 s, 1-60 s and 30 s).
SIDECAR_REGISTRY_REFRESH = 5.0
SIDECAR_PUSH_BACKOFF_MIN = 0.5
SIDECAR_PUSH_BACKOFF_MAX = 4.0
SIDECAR_POLL_INTERVAL_PUSHED = 10.0
#: Read from the environment of the `attestmesh devnet` command that starts a sidecar (`up`, `node add`,
#: `node start`, `node restart`) and passed on as its ATTESTMESH_PUSH_CROSSCHECK (a rate in [0, 1]; "1"
#: checks every pushed event against eth_getLogs). Unset: the sidecar's default, 0 (no cross-check).
PUSH_CROSSCHECK_ENV = "ATTESTMESH_DEVNET_PUSH_CROSSCHECK"
#: Read from the environment of the `attestmesh devnet` command that starts a sidecar: a JSON object of
#: ``ATTESTMESH_*`` names to values laid over the lab's sidecar environment for the sidecars this command
#: starts (a null value removes a name; setting ATTESTMESH_RPC_URLS removes the lab's ATTESTMESH_RPC_URL).
#: For tests and demos, e.g. one node's providers through ``devnet.rpcproxy``; nothing records it, so the
#: next command that restarts the sidecar without it gives the node its lab environment back.
SIDECAR_ENV_ENV = "ATTESTMESH_DEVNET_SIDECAR_ENV"


def lab_free_env() -> dict[str, str]:
    """This process's environment without the lab-owned ``ATTESTMESH_*`` / ``DSTACK_*`` names."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ATTESTMESH_", "DSTACK_"))}


def sidecar_env(state: DevnetState, node: NodeState) -> dict[str, str]:
    """The node workload's environment: what a CVM's sealed env and compose file would give it.

    Direct mode: the node advertises its underlay address (``ATTESTMESH_ENDPOINT``). Gateway mode: no
    endpoint; the sidecar derives its gateway route from its app id and ``ATTESTMESH_GATEWAY_DOMAIN``,
    listens for peers' streams on ``ATTESTMESH_GATEWAY_PORT`` and verifies the gateway's certificate (the
    indexer's ``wss://``) with the lab CA (``ATTESTMESH_CA_FILE``). The trust anchors are exactly the
    literals of the lab's node compose (``NodeAnchors``), which the sidecar checks against its ``Info``."""
    env = lab_free_env()
    if state.gateway_mode:
        if state.gateway is None:
            raise DevnetError(f"lab {state.lab!r} runs in gateway mode but has no gateway")
        env.update(
            ATTESTMESH_GATEWAY_DOMAIN=state.gateway.domain,
            ATTESTMESH_GATEWAY_PORT=str(GATEWAY_INGRESS_PORT),
            ATTESTMESH_CA_FILE=state.gateway.ca_file,
        )
    else:
        env["ATTESTMESH_ENDPOINT"] = f"{node.underlay_ip}:{WG_PORT}"
    env.update(NodeAnchors.of_lab(state).literals())
    env.update(
        ATTESTMESH_RPC_URL=state.rpc_url,
        ATTESTMESH_RPC_ALLOW_HTTP="true",  # the lab's anvil speaks plain http on a private network
        ATTESTMESH_WG_BACKEND="userspace",
        ATTESTMESH_WG_UAPI_DIR=node.wg_uapi_dir,
        ATTESTMESH_WG_LISTEN_PORT=str(WG_PORT),
        ATTESTMESH_HEALTH_ADDR=f"0.0.0.0:{HEALTH_PORT}",
        ATTESTMESH_APP_SOCKET=node.app_socket,
        ATTESTMESH_STATE_DIR=node.state_dir,
        ATTESTMESH_POLL_INTERVAL=str(SIDECAR_POLL_INTERVAL),
        ATTESTMESH_RESYNC_INTERVAL=str(SIDECAR_RESYNC_INTERVAL),
        ATTESTMESH_RESYNC_INTERVAL_PUSHED=str(SIDECAR_RESYNC_INTERVAL_PUSHED),
        ATTESTMESH_REGISTRY_REFRESH=str(SIDECAR_REGISTRY_REFRESH),
        ATTESTMESH_PUSH_BACKOFF_MIN=str(SIDECAR_PUSH_BACKOFF_MIN),
        ATTESTMESH_PUSH_BACKOFF_MAX=str(SIDECAR_PUSH_BACKOFF_MAX),
        ATTESTMESH_POLL_INTERVAL_PUSHED=str(SIDECAR_POLL_INTERVAL_PUSHED),
        DSTACK_SIMULATOR_ENDPOINT=node.dstack_socket,
    )
    crosscheck = os.environ.get(PUSH_CROSSCHECK_ENV, "").strip()
    if crosscheck:
        env["ATTESTMESH_PUSH_CROSSCHECK"] = crosscheck
    return extra_sidecar_env(env, os.environ.get(SIDECAR_ENV_ENV, ""))


def extra_sidecar_env(env: dict[str, str], extra: str) -> dict[str, str]:
    """``env`` with the JSON object ``extra`` (``SIDECAR_ENV_ENV``) laid over it; ``DevnetError`` naming
    every problem when it is not an object of ``ATTESTMESH_*`` names to strings or null."""
    if not extra.strip():
        return env
    try:
        overrides = json.loads(extra)
    except ValueError:
        raise DevnetError(f"{SIDECAR_ENV_ENV} is not JSON") from None
    if not isinstance(overrides, dict):
        raise DevnetError(f"{SIDECAR_ENV_ENV} must be a JSON object of ATTESTMESH_* names to values")
    problems = [
        f"{name!r}: " + ("not an ATTESTMESH_* name" if not name.startswith("ATTESTMESH_") else "not a string")
        for name, value in overrides.items()
        if not name.startswith("ATTESTMESH_") or not (value is None or isinstance(value, str))
    ]
    if problems:
        raise DevnetError(f"{SIDECAR_ENV_ENV}: " + "; ".join(problems))
    env = dict(env)
    if overrides.get("ATTESTMESH_RPC_URLS"):
        env.pop("ATTESTMESH_RPC_URL", None)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def alive(node: NodeState, key: str) -> bool:
    """Whether the node's process ``key`` (``simulator``, ``wireguard``, ``sidecar``) runs."""
    rec = node.processes.get(key)
    return rec is not None and procs.is_alive(rec)


def node_running(node: NodeState) -> bool:
    """Powered on: it has processes and every one of them runs."""
    return bool(node.processes) and all(procs.is_alive(p) for p in node.processes.values())


def socket_ready(socket: Path, rec: procs.ProcRecord) -> bool:
    """The simulator's socket is there; ``DevnetError`` when the simulator died first."""
    if not procs.is_alive(rec):
        raise DevnetError(f"{rec.name} exited during start-up")
    return socket.is_socket()


def start_simulator(config: Path, socket: Path, *, name: str, netns: str, log_path: Path) -> procs.ProcRecord:
    """Start a guest-agent simulator on ``socket`` (a stale socket file is removed first)."""
    socket.unlink(missing_ok=True)
    return procs.spawn(
        [sys.executable, "-m", "devnet.simulator", "--config", str(config), "--socket", str(socket)],
        name=name,
        netns=netns,
        log_path=log_path,
    )


class NodePower:
    """Boots and powers off the nodes of the lab in ``files``."""

    def __init__(self, files: LabDir) -> None:
        self.files = files

    def boot(self, state: DevnetState, node: NodeState) -> NodeState:
        """The KMS gate, then (when allowed) the guest agent, wireguard-go, the signer's funding and the
        workload."""
        state, (node,) = self.power_on(state, [node])
        if node.allowed and state.sidecars:
            state, (node,) = self.start_sidecars(state, [node])
        return node

    def power_on(self, state: DevnetState, nodes: Sequence[NodeState]) -> tuple[DevnetState, list[NodeState]]:
        """Boot ``nodes`` together up to their workload: each one's KMS gate; for the allowed ones their
        guest agents, then (every agent's socket there) their wireguard-go, then their signers funded in one
        chain session. Independent work of the nodes overlaps: the agents start at once, so the lab waits for
        one Python start-up, not one per node. Every process is in the state file as soon as it runs; the
        state saved and the nodes as they are now (denied ones off, with the reason) are returned."""
        from devnet.kmsgate import boot_info_for, evaluate  # noqa: PLC0415 - see the module docstring
        from devnet.simulator.config import SimulatorConfig  # noqa: PLC0415
        from sidecar.chain.rpc import connect  # noqa: PLC0415

        configs = [SimulatorConfig.load(self.files.node_dir(n.name) / "simulator.json") for n in nodes]
        infos = [boot_info_for(config) for config in configs]

        async def gates() -> list[tuple[bool, str]]:
            async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
                verdicts = [await evaluate(conn, info) for info in infos]
                return [(v.allowed, v.reason) for v in verdicts]

        booting: list[NodeState] = []
        out: dict[str, NodeState] = {}
        for given, info, (allowed, reason) in zip(nodes, infos, run_async(gates), strict=True):
            node = replace(given, compose_hash=str(info.compose_hash))
            _power_down(node)
            withdraw_route(state, node.instance_id)
            if not allowed:
                log.warning("devnet.boot_denied", node=node.name, reason=reason)
                out[node.name] = replace(node, boot=boot_denied(reason), processes={})
                continue
            log.info("devnet.boot_allowed", node=node.name, compose_hash=str(info.compose_hash))
            # booting: the gateway knows the CVM, not yet its port policy
            announce_route(state, node.instance_id, node.app_id, node.underlay_ip, None)
            booting.append(node)
        try:
            for i, off in enumerate(booting):
                simulator = start_simulator(
                    self.files.node_dir(off.name) / "simulator.json",
                    Path(off.dstack_socket),
                    name=f"simulator@{off.name}",
                    netns=off.netns,
                    log_path=self.files.logs / f"{off.name}-simulator.log",
                )
                booting[i] = replace(off, processes={"simulator": simulator})
                state = self._journal(state, booting[i])
            procs.wait_for(
                lambda: all(socket_ready(Path(n.dstack_socket), n.processes["simulator"]) for n in booting),
                START_TIMEOUT,
                what="the simulator sockets of " + ", ".join(n.name for n in booting),
            )
            for i, agent in enumerate(booting):
                wireguard = start_wireguard_go(
                    agent.netns,
                    Path(agent.wg_uapi_dir),
                    ifname=WG_IFNAME,
                    log_path=self.files.logs / f"{agent.name}-wg.log",
                )
                booting[i] = replace(agent, processes={**agent.processes, "wireguard": wireguard})
                state = self._journal(state, booting[i])
        except BaseException:
            procs.terminate_all(p for n in booting for k, p in n.processes.items() if k == "simulator")
            raise
        signers = run_async(lambda: self._fund_signers(state, [Path(n.dstack_socket) for n in booting]))
        for node, signer in zip(booting, signers, strict=True):
            out[node.name] = replace(node, boot=BOOT_ALLOWED, signer=str(signer))
        result = [out[n.name] for n in nodes]
        for node in result:
            state = state.with_node(node)
        return self.files.save(state), result

    def start_sidecars(
        self, state: DevnetState, nodes: Sequence[NodeState]
    ) -> tuple[DevnetState, list[NodeState]]:
        """Start the workload of each of ``nodes`` (powered on), each recorded as soon as it runs."""
        started = []
        for node in nodes:
            sidecar = self.start_sidecar(state, node)
            started.append(replace(node, processes={**node.processes, "sidecar": sidecar}))
            state = self._journal(state, started[-1])
        return state, started

    def _journal(self, state: DevnetState, node: NodeState) -> DevnetState:
        """Record processes as soon as they run: a command killed mid-boot leaves them known, so the next
        power-off stops them instead of a second wireguard-go fighting the first for the interface."""
        return self.files.save(state.with_node(node))

    def start_sidecar(self, state: DevnetState, node: NodeState) -> procs.ProcRecord:
        """Start the node's workload (a process, or a container of the image: ``devnet.container``); in
        gateway mode its compose's ports become the gateway's port policy."""
        if state.workload == "image":
            from devnet.container import sidecar_container  # noqa: PLC0415 - image labs only

            argv, env = sidecar_container(state, node, sidecar_env(state, node))
            sidecar = procs.spawn(
                argv,
                name=f"sidecar@{node.name}",
                netns=None,  # podman joins the node's namespace itself (--network ns:…)
                log_path=self.files.logs / f"{node.name}-sidecar.log",
                env=env,
            )
        else:
            sidecar = procs.spawn(
                [sys.executable, "-m", "sidecar"],
                name=f"sidecar@{node.name}",
                netns=node.netns,
                log_path=self.files.logs / f"{node.name}-sidecar.log",
                env=sidecar_env(state, node),
            )
        announce_route(state, node.instance_id, node.app_id, node.underlay_ip, NODE_PUBLISHED_PORTS)
        return sidecar

    def restart_workload(self, state: DevnetState, name: str) -> NodeState:
        """Restart a running node's workload (the sidecar); the interface and the agent stay up."""
        node = state.node(name)
        if not state.sidecars or not node.allowed or not node_running(node):
            raise DevnetError(f"node {name!r} is not running a workload; use `node start`")
        procs.terminate(node.processes["sidecar"])
        node = replace(node, processes={**node.processes, "sidecar": self.start_sidecar(state, node)})
        self.files.save(state.with_node(node))
        log.info("devnet.node_restarted", node=name)
        return node

    async def _fund_signers(self, state: DevnetState, sockets: Sequence[Path]) -> list[Address]:
        """Learn each node's signer address from its guest agent (GetKey of the cluster-bound signer path,
        as the sidecar derives it; the agents asked at once) and fund the ones short of funds from the owner,
        in one chain session (one account: its sends go one after the other, each mined at once by anvil)."""
        from sidecar.chain.rpc import connect  # noqa: PLC0415 - see the module docstring
        from sidecar.chain.tx import LocalSigner, TxSubmitter  # noqa: PLC0415
        from sidecar.dstack.agent import GuestAgent  # noqa: PLC0415

        scope = KeyScope(state.chain_id, Address.from_hex(state.cluster))

        async def signer_of(socket: Path) -> Address:
            agent = GuestAgent(str(socket))
            try:
                key = await agent.get_key(scope.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
            finally:
                await agent.close()
            return LocalSigner(key.key).address

        signers = list(await asyncio.gather(*(signer_of(socket) for socket in sockets)))
        if not signers:
            return signers
        async with await connect(state.rpc_url, expected_chain_id=state.chain_id) as conn:
            owner = TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY))
            for signer in signers:
                if await conn.get_balance(signer) < SIGNER_FUNDING_WEI // 2:
                    await owner.send(signer, b"", value=SIGNER_FUNDING_WEI)
                log.info("devnet.signer_funded", signer=str(signer))
        return signers

    def power_off(self, state: DevnetState, node: NodeState) -> NodeState:
        """Stop every process of the node and record it as off (its files and state directory stay)."""
        _power_down(node)
        withdraw_route(state, node.instance_id)
        node = replace(node, processes={})
        self.files.save(state.with_node(node))
        return node

    def power_cycle(self, state: DevnetState, node: NodeState) -> NodeState:
        """Power the node off, then boot it through the KMS gate; the new state is saved either way."""
        node = self.power_off(state, node)
        state = state.with_node(node)
        node = self.boot(state, node)
        self.files.save(state.with_node(node))
        return node


def _power_down(node: NodeState) -> None:
    """End what the lab runs in the node: its recorded processes, then any other process the lab spawned in
    its network namespace. A command killed between spawning a process and journalling it (the routines'
    kill tests do that on purpose) leaves one that no record names; the next boot must not run beside it.
    What others run there (an operator's ``node exec``, a test's ping) is theirs and stays."""
    procs.terminate_all(node.processes.values())
    kill_namespace_processes([node.netns], spawned_only=True)
