"""``attestmesh``: the operator command line.

Owns argument parsing, human, JSON and shell (``KEY=value`` lines for ``eval``) output, and exit codes (0
done, 1 failed, 2 bad usage). Today it drives the devnet (``attestmesh devnet up|status|env|down|node
...|indexer ...``; the work itself is in ``devnet.lab``), registers and checks a shared indexer on any chain
(``attestmesh indexer register|verify``), does the cluster owner's day-2 actions (``attestmesh chain
allow-compose``, ``attestmesh chain fund``; the work is in ``devnet.operator``; keys are read from
``ATTESTMESH_OWNER_KEY`` and ``ATTESTMESH_FUNDER_KEY``, never from the command line), and reads a live
cluster (``attestmesh chain status``, ``attestmesh health URL``; the work is in ``devnet.readouts``). Chain
options default to the sidecar's variables (``ATTESTMESH_RPC_URL``, ``ATTESTMESH_CHAIN_ID``,
``ATTESTMESH_CLUSTER``, ``ATTESTMESH_INDEXER_REGISTRY``).
Logs (structlog, one line per step) go to stderr; results go to stdout. Must not hold logic of its own, or
show an RPC URL beyond its scheme, host and port (it can carry an API key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from devnet.lab import ComposePlan, Devnet, DevnetError, LabStatus, plan_for
from devnet.netns import LabError
from devnet.operator import (
    ComposeAllowlisting,
    Funding,
    IndexerCheck,
    MemberAppSetup,
    OperatorError,
    RegistryUpdate,
    check_indexer,
    ensure_compose_hash_allowed,
    ensure_funded,
    ensure_indexer_registered,
    ensure_member_app,
    fetch_indexer_identity,
    format_eth,
    funder_signer,
    owner_signer,
    parse_eth,
)
from devnet.procs import ProcError, WaitTimeout
from devnet.readouts import (
    HEALTH_TIMEOUT,
    ChainStatus,
    HealthReport,
    display_url,
    fetch_health,
    read_chain_status,
    scrub,
    utc_time,
)
from devnet.sealedenv import parse_env_file
from devnet.state import NodeState
from devnet.topology import DEFAULT_LAB, DEFAULT_MESH, DEFAULT_UNDERLAY, TopologyError, validate_node_name
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import connect
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address, Bytes32
from sidecar.dstack.agent import GuestAgentError
from sidecar.settings import parse_address, parse_http_url, parse_int, parse_seconds

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
RPC_TIMEOUT = 10.0


def _env(name: str) -> str | None:
    """An environment default; blank counts as unset (as for the sidecar)."""
    return os.environ.get(name, "").strip() or None


# argparse ``type`` functions: the message of an ArgumentTypeError is shown as is (no value echoed unless
# the message quotes it; URLs are never quoted).


def _url_arg(text: str) -> str:
    try:
        return parse_http_url(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an http:// or https:// URL with a host") from None


def _address_arg(text: str) -> Address:
    try:
        address = parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address: {exc}") from None
    if address.is_zero:
        raise argparse.ArgumentTypeError("the zero address names no contract")
    return address


def _account_arg(text: str) -> Address:
    try:
        address = parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address: {exc}") from None
    if address.is_zero:
        raise argparse.ArgumentTypeError("refusing to send to the zero address")
    return address


def _eth_arg(text: str) -> int:
    try:
        return parse_eth(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None


def _positive_eth_arg(text: str) -> int:
    wei = _eth_arg(text)
    if wei == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return wei


def _file_arg(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return path


def _bytes32_arg(text: str) -> Bytes32:
    try:
        return Bytes32.from_hex(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _node_name_arg(text: str) -> str:
    try:
        return validate_node_name(text)
    except TopologyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _chain_id_arg(text: str) -> int:
    try:
        value = parse_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("a chain id is at least 1")
    return value


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
    if value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError("must be 0 or more" if zero else "must be greater than 0")
    return value


def _seconds_arg(text: str) -> float:
    return _seconds(text, zero=False)


def _wait_arg(text: str) -> float:
    return _seconds(text, zero=True)


def _from_env(variable: str) -> dict[str, Any]:
    """``default`` (parsed by the option's ``type``) and ``required`` of an option the environment can set."""
    value = _env(variable)
    return {"default": value, "required": value is None}


def _configure_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attestmesh", description="AttestMesh operator command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top = parser.add_subparsers(dest="command", required=True)

    dev = top.add_parser("devnet", help="a local cluster on this machine (anvil, simulators, namespaces)")
    dev.add_argument(
        "--lab-dir",
        type=Path,
        default=Path(os.environ.get("ATTESTMESH_DEVNET_DIR", ".devnet")),
        help="lab directory holding state.json and logs (env ATTESTMESH_DEVNET_DIR; default ./.devnet)",
    )
    dev.add_argument(
        "--lab",
        default=os.environ.get("ATTESTMESH_LAB", DEFAULT_LAB),
        help="lab name: prefix of every namespace and link it makes (env ATTESTMESH_LAB)",
    )
    dev.add_argument(
        "--underlay",
        default=os.environ.get("ATTESTMESH_LAB_UNDERLAY", str(DEFAULT_UNDERLAY)),
        help="the lab's underlay /24 (env ATTESTMESH_LAB_UNDERLAY)",
    )
    dev.add_argument(
        "--mesh-cidr",
        default=os.environ.get("ATTESTMESH_LAB_MESH", str(DEFAULT_MESH)),
        help="the cluster's mesh CIDR (env ATTESTMESH_LAB_MESH)",
    )
    verbs = dev.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="build the lab (a running lab is left as it is)")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    up.add_argument("--block-time", type=float, default=None, help="seconds per block (default: automine)")
    up.add_argument("--no-sidecar", action="store_true", help="boot the nodes without their workload")
    up.add_argument("--no-indexer", action="store_true", help="run no indexer (sidecars poll chain logs)")
    status = verbs.add_parser("status", help="what the lab is made of and what is running")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--wait-healthy", type=float, default=None, metavar="SECONDS", help="wait until every node is healthy"
    )
    env = verbs.add_parser(
        "env",
        help="the lab's chain variables (and one node's facts) as KEY=value lines for a shell's eval",
        description="Print shell-quoted KEY=value lines: ATTESTMESH_RPC_URL, ATTESTMESH_CHAIN_ID, "
        "ATTESTMESH_CLUSTER, ATTESTMESH_INDEXER_REGISTRY and ATTESTMESH_MEMBER_APP_FACTORY (the defaults of "
        "the chain commands), the lab indexer's INDEXER_URL, INDEXER_STATUS_URL, INDEXER_HEALTH_URL and "
        "INDEXER_KEY_VERSION, and with NODE its facts: NODE_NAME, NODE_EXISTS, NODE_APP_ID, "
        "NODE_COMPOSE_HASH, NODE_BOOT, NODE_RUNNING, NODE_SIGNER, "
        "NODE_HEALTH_URL, NODE_HEALTHY, NODE_PHASE, NODE_MEMBER_ID, NODE_MESH_IP (1/0 for yes/no, empty when "
        'unknown). Use: set -a; eval "$(attestmesh devnet env node-1)"; set +a',
    )
    env.add_argument("name", nargs="?", default=None, help="a node (it need not exist: NODE_EXISTS=0)")
    verbs.add_parser("down", help="remove every namespace, process, mount, route and socket of the lab")
    _add_node_parser(verbs)
    idx = verbs.add_parser("indexer", help="the lab's shared indexer")
    idx_verbs = idx.add_subparsers(dest="indexer_verb", required=True)
    start = idx_verbs.add_parser(
        "start", help="start the indexer (restart it if its key or values changed) and register it"
    )
    start.add_argument(
        "--no-register", action="store_true", help="only start it (deploy/indexer.sh registers it itself)"
    )
    update = idx_verbs.add_parser(
        "update",
        help="apply a sealed env file's values (ATTESTMESH_INDEXER_KEY_VERSION and the tunables) and restart "
        "the indexer with them, WITHOUT registering it; a no-op when it already runs with them",
        description="Apply the values of a sealed env file (KEY=value lines, as `phala deploy -e` reads "
        "them) to the lab's indexer and restart it, without registering it (deploy/indexer.sh's register "
        "step does that). The file is the whole sealed env: a value it leaves out is back to its default "
        "(KEY_VERSION 1). Variables the lab sets (RPC_URL, CHAIN_ID, CLUSTER_FACTORY, CLUSTERS, START_BLOCK, "
        "REGISTRY, PUBLIC_URL, CODE_ID, LISTEN_ADDR) may appear only with the lab's value. The values are "
        "kept, so `indexer start` runs with them too. Exit 2 when the file cannot be applied.",
    )
    update.add_argument("--env-file", type=_file_arg, required=True, help="the sealed env file")
    idx_verbs.add_parser("stop", help="stop the indexer (the registry still names it: an outage)")
    rotate = idx_verbs.add_parser("rotate-key", help="register the next signing key, then restart with it")
    rotate.add_argument(
        "--no-restart",
        action="store_true",
        help="only register the new key (the old-key indexer keeps running)",
    )

    op = top.add_parser("indexer", help="operate a shared indexer on a chain")
    op_verbs = op.add_subparsers(dest="verb", required=True)
    reg = op_verbs.add_parser(
        "register",
        help="write the indexer's endpoint, code id and public key (read from its /status) to the registry; "
        "sends nothing when the record already matches. The owner key comes from ATTESTMESH_OWNER_KEY.",
    )
    _registry_options(reg)
    reg.add_argument("--status-url", required=True, help="the indexer's /status URL (public key and code id)")
    reg.add_argument(
        "--endpoint", default=None, help="ws(s):// endpoint to register (default: its public_url)"
    )
    reg.add_argument("--code-id", default=None, help="32-byte hex code id (default: the one on its /status)")
    ver = op_verbs.add_parser(
        "verify",
        help="the indexer's /healthz is healthy and IndexerRegistry.current() names what its /status says "
        "(endpoint, code id, public key); exit 0 iff so (reads only)",
        description="Check that the indexer is healthy and that the registry names it: the key, code id and "
        "endpoint its /status reports (or --endpoint / --code-id, as given to `indexer register`). With "
        "--wait, poll until that holds or SECONDS pass. Exit 0 when verified, 1 (every mismatch named) when "
        "not.",
    )
    _registry_options(ver)
    ver.add_argument("--status-url", required=True, help="the indexer's /status URL")
    ver.add_argument("--health-url", required=True, help="the indexer's /healthz URL")
    ver.add_argument(
        "--endpoint", default=None, help="the endpoint the registry must name (default: its public_url)"
    )
    ver.add_argument(
        "--code-id", type=_bytes32_arg, default=None, help="the code id it must name (default: its /status's)"
    )
    ver.add_argument(
        "--wait", type=_wait_arg, default=0.0, metavar="SECONDS", help="poll this long (default 0: look once)"
    )
    ver.add_argument(
        "--interval", type=_seconds_arg, default=2.0, metavar="SECONDS", help="between looks (default 2)"
    )
    _add_chain_parser(top)
    _add_health_parser(top)
    return parser


Subcommands = argparse._SubParsersAction  # the type of add_subparsers()' result (no public name)


def _add_node_parser(verbs: Subcommands[argparse.ArgumentParser]) -> None:
    node = verbs.add_parser("node", help="node verbs")
    node_verbs = node.add_subparsers(dest="node_verb", required=True)
    add = node_verbs.add_parser(
        "add", help="add a node: app contract, approved app id, compose, boot gate; exit 1 when denied"
    )
    add.add_argument("name")
    add.add_argument("--compose-file", type=Path, default=None, help="app-compose.json to measure and boot")
    start = node_verbs.add_parser(
        "start", help="re-run the KMS boot gate and start the node if allowed; exit 1 when denied"
    )
    start.add_argument("name")
    node_verbs.add_parser("stop", help="stop the node (workload, wireguard-go, guest agent)").add_argument(
        "name"
    )
    node_verbs.add_parser(
        "restart", help="restart the node's workload (the sidecar); the guest agent and interface stay up"
    ).add_argument("name")
    node_verbs.add_parser(
        "reboot",
        help="restart the node's CVM: stop everything of it, then the KMS boot gate and start (state kept); "
        "exit 1 when the gate denies it",
    ).add_argument("name")
    prepare = node_verbs.add_parser(
        "prepare",
        help="the compose hash the node would boot with and whether the cluster allowlists it (reads only)",
    )
    prepare.add_argument("name")
    prepare.add_argument(
        "--compose-file", type=_file_arg, required=True, help="the app-compose.json to measure"
    )
    shape = prepare.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="machine-readable output")
    shape.add_argument("--shell", action="store_true", help="KEY=value lines for a shell's eval")
    update = node_verbs.add_parser(
        "update",
        help="write the node's app-compose.json and reboot it through the KMS gate (identity carried over); "
        "a no-op when it already runs that compose; exit 1 when the gate denies it (allowlist first)",
    )
    update.add_argument("name")
    update.add_argument("--compose-file", type=_file_arg, required=True, help="the new app-compose.json")
    node_verbs.add_parser("remove", help="evict the node's member on chain (cluster owner)").add_argument(
        "name"
    )


def _add_chain_parser(top: Subcommands[argparse.ArgumentParser]) -> None:
    chain = top.add_parser("chain", help="read a cluster; the owner's allowlist and funding actions")
    chain_verbs = chain.add_subparsers(dest="verb", required=True)
    cs = chain_verbs.add_parser(
        "status",
        help="members (mesh IPs, endpoints), CSK commitment, IndexerRegistry.current(), compose allowlist",
        description="Read a cluster at the chain's head. The chain options can come from the sidecar's "
        "environment variables named in their help; the command line wins. The RPC URL is never shown "
        "beyond its scheme, host and port.",
    )
    _chain_options(cs, cluster=True)
    cs.add_argument(
        "--registry",
        type=_address_arg,
        default=_env("ATTESTMESH_INDEXER_REGISTRY"),
        help="IndexerRegistry address; show current() (env ATTESTMESH_INDEXER_REGISTRY)",
    )
    cs.add_argument(
        "--compose-hash",
        type=_bytes32_arg,
        action="append",
        default=[],
        metavar="0xHASH",
        help="say whether this compose hash is allowlisted (repeatable)",
    )
    cs.add_argument("--json", action="store_true", help="machine-readable output with full values")

    allow = chain_verbs.add_parser(
        "allow-compose",
        help="Cluster.addComposeHash, only when the hash is not allowlisted yet (key: ATTESTMESH_OWNER_KEY)",
        description="Allowlist a compose hash on the cluster (the cluster owner's transaction, key from "
        "ATTESTMESH_OWNER_KEY); sends nothing and says so when it is already allowlisted.",
    )
    _chain_options(allow, cluster=True)
    allow.add_argument(
        "--compose-hash", type=_bytes32_arg, required=True, metavar="0xHASH", help="the compose hash"
    )
    app = chain_verbs.add_parser(
        "member-app",
        help="a node's app contract (CREATE2 factory) and its pre-approved app id, each only when missing",
        description="Make node NAME's app contract exist (the member app factory's CREATE2 address for the "
        "cluster and NAME) and its app id pre-approved on the cluster (Cluster.addAllowedAppId; not needed "
        "once the node is a member): the cold-start rule, done before the node's first boot. Sends nothing "
        "and says so when both hold. Key: ATTESTMESH_OWNER_KEY.",
    )
    _chain_options(app, cluster=True)
    app.add_argument(
        "--factory", type=_address_arg,
        help="ClusterMemberAppFactory address (env ATTESTMESH_MEMBER_APP_FACTORY)",
        **_from_env("ATTESTMESH_MEMBER_APP_FACTORY"),
    )  # fmt: skip
    app.add_argument("--name", type=_node_name_arg, required=True, help="the node's name (the CREATE2 salt)")
    app.add_argument("--shell", action="store_true", help="print MEMBER_APP_ID=0x... for a shell's eval")
    fund = chain_verbs.add_parser(
        "fund",
        help="send --amount ETH to an account only while its balance is below --min-balance",
        description="Top up an account (a node's signer): send AMOUNT only when its balance is below "
        "MIN_BALANCE, else send nothing and say so. The funding key is ATTESTMESH_FUNDER_KEY, or "
        "ATTESTMESH_OWNER_KEY when that is not set.",
    )
    _chain_options(fund, cluster=False)
    fund.add_argument("--to", type=_account_arg, required=True, metavar="0xADDRESS", help="the account")
    fund.add_argument(
        "--min-balance", type=_eth_arg, required=True, metavar="ETH", help="fund only below this balance"
    )
    fund.add_argument(
        "--amount",
        type=_positive_eth_arg,
        required=True,
        metavar="ETH",
        help="how much to send (more than 0)",
    )


def _chain_options(parser: argparse.ArgumentParser, *, cluster: bool) -> None:
    """The chain options (and ``--cluster`` when asked), the sidecar's variables as defaults."""
    parser.add_argument(
        "--rpc-url",
        type=_url_arg,
        help="chain JSON-RPC URL; may carry an API key, never printed (env ATTESTMESH_RPC_URL)",
        **_from_env("ATTESTMESH_RPC_URL"),
    )
    parser.add_argument(
        "--chain-id", type=_chain_id_arg, help="expected chain id (env ATTESTMESH_CHAIN_ID)",
        **_from_env("ATTESTMESH_CHAIN_ID"),
    )  # fmt: skip
    if cluster:
        parser.add_argument(
            "--cluster", type=_address_arg, help="Cluster address (env ATTESTMESH_CLUSTER)",
            **_from_env("ATTESTMESH_CLUSTER"),
        )  # fmt: skip
    parser.add_argument(
        "--timeout",
        type=_seconds_arg,
        default=RPC_TIMEOUT,
        metavar="SECONDS",
        help=f"per RPC call (default {RPC_TIMEOUT:g})",
    )


def _registry_options(parser: argparse.ArgumentParser) -> None:
    """The chain options and ``--registry``, the sidecar's variables as defaults."""
    _chain_options(parser, cluster=False)
    parser.add_argument(
        "--registry", type=_address_arg, help="IndexerRegistry address (env ATTESTMESH_INDEXER_REGISTRY)",
        **_from_env("ATTESTMESH_INDEXER_REGISTRY"),
    )  # fmt: skip


def _add_health_parser(top: Subcommands[argparse.ArgumentParser]) -> None:
    health = top.add_parser(
        "health",
        help="a node's /healthz, readable; exit 0 iff healthy",
        description="GET a node's /healthz (for example through the dstack gateway) and print it. Exit 0 "
        "when the node is healthy (HTTP 200), 1 when it is not (the body is still printed), does not answer, "
        "or does not answer with a health document.",
    )
    health.add_argument("url", type=_url_arg, help="the node's /healthz URL")
    health.add_argument("--json", action="store_true", help="print the body exactly as the node sent it")
    health.add_argument(
        "--timeout",
        type=_seconds_arg,
        default=HEALTH_TIMEOUT,
        metavar="SECONDS",
        help=f"to connect, and per read (default {HEALTH_TIMEOUT:g})",
    )


def _short(value: str, n: int = 10) -> str:
    return value[: n + 2] + "…" if len(value) > n + 2 else value


def _status_json(status: LabStatus) -> dict[str, Any]:
    data = status.state.to_json()
    data["running"] = {
        "anvil": status.anvil,
        "chain_reachable": status.chain_reachable,
        "head_block": status.head_block,
        "member_count": status.member_count,
    }
    health = {h.name: h for h in status.nodes}
    for node in data["nodes"]:
        h = health[node["name"]]
        node["running"] = {
            "node": h.running,  # its last boot was allowed and every process of it is alive
            "simulator": h.simulator,
            "wireguard": h.wireguard,
            "sidecar": h.sidecar,
            "dstack_socket": h.dstack_socket,
            "wg_socket": h.wg_socket,
        }
        node["healthz"] = h.healthz
    if status.indexer is not None and data.get("indexer") is not None:
        i = status.indexer
        data["indexer"]["running"] = {
            "simulator": i.simulator,
            "indexer": i.indexer,
            "registered_key": i.registered_key,
        }
        data["indexer"]["healthz"] = i.healthz
        data["indexer"]["status"] = i.status
    return data


def _print_status(status: LabStatus) -> None:
    s = status.state
    chain = f"head block {status.head_block}" if status.chain_reachable else "UNREACHABLE"
    anvil = "up" if status.anvil else "down"
    print(f"lab {s.lab}  rpc {s.rpc_url}  chain {s.chain_id}  ({chain}; anvil {anvil})")
    print(f"cluster {s.cluster}  members {status.member_count}  mesh {s.mesh_cidr}")
    print(f"indexer registry {s.indexer_registry}  cluster factory {s.cluster_factory}")
    print(f"member app factory {s.member_app_factory}  kms root {s.kms_root}")
    if s.indexer is None:
        print("indexer: none (the lab was made with --no-indexer; sidecars poll chain logs)")
    elif status.indexer is not None:
        i, ihz = status.indexer, status.indexer.healthz or {}
        registered = i.registered_key == s.indexer.public_key and bool(i.registered_key)
        state = ("healthy" if ihz.get("healthy") else "unhealthy") if i.indexer else "stopped"
        print(
            f"indexer {s.indexer.url}  {state}  key v{s.indexer.key_version} {_short(s.indexer.public_key)}"
            f"  {'registered' if registered else 'NOT the registered key'}"
            f"  subscribers {(i.status or {}).get('subscribers', '-')}  lag {ihz.get('lag_blocks', '-')}"
        )
    if not s.complete:
        print("state: INCOMPLETE (an `up` did not finish; run `attestmesh devnet down` or `up` again)")
    header = ("node", "netns", "underlay", "app id", "compose", "boot", "agent", "wg")
    rows = [header]
    health = {h.name: h for h in status.nodes}
    for n in s.nodes:
        h = health[n.name]
        rows.append(
            (
                n.name,
                n.netns,
                n.underlay_ip,
                _short(n.app_id),
                _short(n.compose_hash),
                n.boot or "pending",
                "up" if h.simulator and h.dstack_socket else "-",
                "up" if h.wireguard and h.wg_socket else "-",
            )
        )
    _print_table(rows)
    if s.sidecars:
        print()
        health_rows = [
            ("node", "phase", "mesh ip", "live peers", "csk commitment", "membership digest", "reason")
        ]
        for n in s.nodes:
            hz = health[n.name].healthz
            if hz is None:
                health_rows.append((n.name, "-", "-", "-", "-", "-", "no answer"))
                continue
            peers, csk = hz.get("peers") or {}, hz.get("csk") or {}
            health_rows.append(
                (
                    n.name,
                    str(hz.get("phase")),
                    str((hz.get("node") or {}).get("mesh_ip") or "-"),
                    f"{peers.get('live', 0)}/{peers.get('desired', 0)}",
                    _short(str(csk.get("commitment") or "-")),
                    _short(str(hz.get("membership_digest") or "-")),
                    str(hz.get("reason") or ""),
                )
            )
        _print_table(health_rows)


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _up(lab: Devnet, args: argparse.Namespace) -> int:
    result = lab.up(args.nodes, args.block_time, sidecars=not args.no_sidecar, indexer=not args.no_indexer)
    verb = "created" if result.created else "already running; nothing changed"
    print(f"lab {lab.plan.name}: {verb} ({len(result.state.nodes)} nodes, state {lab.state_file})")
    return EXIT_OK


def _status(lab: Devnet, args: argparse.Namespace) -> int:
    status = lab.wait_healthy(args.wait_healthy) if args.wait_healthy is not None else lab.status()
    if status is None:
        if args.json:
            print(json.dumps({"lab": lab.plan.name, "running": None}))
        else:
            print(f"lab {lab.plan.name}: not running (no {lab.state_file})")
    elif args.json:
        print(json.dumps(_status_json(status), indent=2, sort_keys=True))
    else:
        _print_status(status)
    return EXIT_OK


def _down(lab: Devnet, _: argparse.Namespace) -> int:
    left = lab.down()
    if left:
        print(f"lab {lab.plan.name}: could not remove: {', '.join(left)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"lab {lab.plan.name}: removed")
    return EXIT_OK


def _node(lab: Devnet, args: argparse.Namespace) -> int:
    verb = args.node_verb
    if verb == "add":
        node = lab.add_node(args.name, args.compose_file)
        print(f"node {node.name}: app {node.app_id} compose {node.compose_hash} boot {node.boot}")
        return _booted(node)
    elif verb == "start":
        node = lab.start_node(args.name)
        print(f"node {node.name}: boot {node.boot}")
        return _booted(node)
    elif verb == "stop":
        print(f"node {lab.stop_node(args.name).name}: stopped")
    elif verb == "restart":
        print(f"node {lab.restart_node(args.name).name}: workload restarted")
    elif verb == "reboot":
        node = lab.reboot_node(args.name)
        print(f"node {node.name}: rebooted; boot {node.boot}" + ("" if node.allowed else "; the node is off"))
        return _booted(node)
    elif verb == "prepare":
        _print_prepare(lab.prepare_node(args.name, args.compose_file), args)
    elif verb == "update":
        return _update(lab, args)
    else:
        print(f"node {args.name}: member {lab.remove_node(args.name)} removed on chain")
    return EXIT_OK


def _booted(node: NodeState) -> int:
    """Exit 0 when the node runs; 1 (one line on stderr) when the KMS gate denied it."""
    if node.allowed:
        return EXIT_OK
    reason = node.boot.removeprefix("denied: ")
    print(
        f"attestmesh: node {node.name} was denied at the KMS boot gate ({reason}); "
        f"it stays off until its compose hash {node.compose_hash} is allowlisted "
        "(`attestmesh chain allow-compose`) and it boots again",
        file=sys.stderr,
    )
    return EXIT_FAILED


def _update(lab: Devnet, args: argparse.Namespace) -> int:
    result = lab.update_node(args.name, args.compose_file)
    node = result.node
    if not result.changed:
        print(f"node {node.name}: already runs compose {node.compose_hash} (allowed); nothing changed")
        return EXIT_OK
    was = result.previous_compose_hash
    change = node.compose_hash if was == node.compose_hash else f"{was} -> {node.compose_hash}"
    after = "running, state kept" if node.allowed else "the node is off"
    print(f"node {node.name}: updated compose {change}; boot {node.boot}; {after}")
    return _booted(node)


def _shell_lines(pairs: Sequence[tuple[str, object]]) -> str:
    """``KEY=value`` lines, shell-quoted; booleans as 1/0, None as empty."""

    def text(value: object) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        return "" if value is None else str(value)

    return "\n".join(f"{key}={shlex.quote(text(value))}" for key, value in pairs)


def _print_prepare(plan: ComposePlan, args: argparse.Namespace) -> None:
    facts = {
        "node": plan.node,
        "exists": plan.exists,
        "compose_hash": plan.compose_hash,
        "allowlisted": plan.allowlisted,
        "current_compose_hash": plan.current_compose_hash,
        "changes": plan.changes,
    }
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
        return
    if args.shell:
        names = ("NODE_NAME", "NODE_EXISTS", "COMPOSE_HASH", "COMPOSE_ALLOWLISTED", "CURRENT_COMPOSE_HASH",
                 "COMPOSE_CHANGES")  # fmt: skip
        print(_shell_lines(list(zip(names, facts.values(), strict=True))))
        return
    verdict = "allowlisted" if plan.allowlisted else "NOT allowlisted"
    if not plan.exists:
        now = "not in the lab yet"
    elif plan.changes:
        now = f"it now has {plan.current_compose_hash}: an update changes its compose hash"
    else:
        now = "it already has this compose hash"
    print(f"node {plan.node}: compose {plan.compose_hash} {verdict} on the cluster; {now}")


def _lab_env(lab: Devnet, args: argparse.Namespace) -> int:
    state = lab.running_state()
    pairs: list[tuple[str, object]] = [
        ("ATTESTMESH_RPC_URL", state.rpc_url),
        ("ATTESTMESH_CHAIN_ID", state.chain_id),
        ("ATTESTMESH_CLUSTER", state.cluster),
        ("ATTESTMESH_INDEXER_REGISTRY", state.indexer_registry),
        ("ATTESTMESH_MEMBER_APP_FACTORY", state.member_app_factory),
        # The lab's indexer (empty when it runs none), for deploy/indexer.sh.
        ("INDEXER_URL", state.indexer and state.indexer.url),
        ("INDEXER_STATUS_URL", state.indexer and state.indexer.status_url),
        ("INDEXER_HEALTH_URL", state.indexer and state.indexer.health_url),
        ("INDEXER_KEY_VERSION", state.indexer and state.indexer.key_version),
    ]
    if args.name is not None:
        node = next((n for n in state.nodes if n.name == args.name), None)
        health = lab.node_health(node) if node is not None else None
        body = (health.healthz if health is not None else None) or {}
        me = _section(body, "node")
        pairs += [
            ("NODE_NAME", args.name),
            ("NODE_EXISTS", node is not None),
            ("NODE_APP_ID", node and node.app_id),
            ("NODE_COMPOSE_HASH", node and node.compose_hash),
            ("NODE_BOOT", node and node.boot),
            ("NODE_RUNNING", health is not None and health.running),
            ("NODE_SIGNER", node and node.signer),
            ("NODE_HEALTH_URL", node and node.health_url),
            ("NODE_HEALTHY", body.get("healthy") is True),
            ("NODE_PHASE", body.get("phase")),
            ("NODE_MEMBER_ID", me.get("member_id")),
            ("NODE_MESH_IP", me.get("mesh_ip")),
        ]
    print(_shell_lines(pairs))
    return EXIT_OK


def _indexer(lab: Devnet, args: argparse.Namespace) -> int:
    verb = args.indexer_verb
    if verb == "start":
        started = lab.indexer_start(register=not args.no_register)
        idx = started.indexer
        what = f"key v{idx.key_version} {idx.public_key} at {idx.url}"
        if args.no_register:
            then = "not registered (--no-register)" if started.changed else "nothing changed"
        else:
            then = "the registry names it"
        print(f"indexer: {'started' if started.changed else 'already running'} with {what}; {then}")
    elif verb == "update":
        try:
            result = lab.indexer_update(parse_env_file(args.env_file.read_text()))
        except ValueError as exc:  # EnvFileError: the message names variables, never values
            print(f"attestmesh: {args.env_file}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        idx = result.indexer
        what = f"key v{idx.key_version} {idx.public_key} and {len(idx.sealed_env)} other sealed-env value(s)"
        if result.changed:
            print(f"indexer: restarted with {what}; not registered (`attestmesh indexer register` does that)")
        else:
            print(f"indexer: already running with {what}; nothing changed")
    elif verb == "stop":
        lab.indexer_stop()
        print("indexer: stopped (still registered; sidecars poll until it returns)")
    else:
        idx = lab.indexer_rotate_key(restart=not args.no_restart)
        then = "not restarted: `attestmesh devnet indexer start` runs it" if args.no_restart else "restarted"
        print(f"indexer: key v{idx.key_version} {idx.public_key} registered; {then}")
    return EXIT_OK


_VERBS: dict[str, Callable[[Devnet, argparse.Namespace], int]] = {
    "up": _up,
    "status": _status,
    "env": _lab_env,
    "down": _down,
    "node": _node,
    "indexer": _indexer,
}


def _register_indexer(args: argparse.Namespace) -> int:
    identity = fetch_indexer_identity(args.status_url)
    endpoint = args.endpoint or identity.public_url
    if not endpoint:
        raise OperatorError("the indexer's /status has no public_url: pass --endpoint")
    code_id = Bytes32.from_hex(args.code_id) if args.code_id else identity.code_id
    if code_id is None:
        raise OperatorError("the indexer's /status has no code_id: pass --code-id")
    signer = owner_signer(os.environ)

    async def register() -> RegistryUpdate:
        async with await connect(args.rpc_url, timeout=args.timeout, expected_chain_id=args.chain_id) as conn:
            return await ensure_indexer_registered(
                conn,
                TxSubmitter(conn, signer),
                args.registry,
                endpoint=endpoint,
                code_id=code_id,
                public_key=identity.public_key,
            )

    update = asyncio.run(register())
    if update.changed:
        print(
            f"indexer registered: {endpoint} key {identity.public_key} code id {code_id} tx {update.tx_hash}"
        )
    else:
        print(f"indexer already registered: {endpoint} key {identity.public_key}; nothing changed")
    return EXIT_OK


def _print_chain_status(status: ChainStatus) -> None:
    print(f"chain {status.chain_id}  block {status.block} ({utc_time(status.block_timestamp)})")
    print(f"cluster {status.cluster}  owner {status.owner}  mesh {status.mesh_cidr}")
    originator = f"originator {status.originator}" if status.originator is not None else "no originator yet"
    print(f"members {status.member_count}  {originator}")
    commitment = status.csk_commitment
    print(f"csk commitment {commitment if commitment is not None else 'none (not committed yet)'}")
    if status.registry is None:
        print("indexer registry: not given (--registry or ATTESTMESH_INDEXER_REGISTRY)")
    elif status.indexer is None or not status.indexer.registered:
        print(f"indexer registry {status.registry}: no indexer registered (sidecars poll chain logs)")
    else:
        i = status.indexer
        print(f"indexer registry {status.registry}: {i.endpoint}")
        print(f"  key      {i.pub_key}\n  code id  {i.code_id}\n  updated  {utc_time(i.updated_at)}")
    for check in status.compose_hashes:
        verdict = "allowlisted" if check.allowlisted else "NOT allowlisted"
        print(f"compose hash {check.compose_hash}: {verdict}")
    print()
    if not status.members:
        print("no members")
        return
    rows = [("member id", "app id", "mesh ip", "endpoint", "registered (utc)")]
    rows += [
        (_short(str(m.member_id)), str(m.app_id), str(m.mesh_ip), m.endpoint, utc_time(m.registered_at))
        for m in status.members
    ]
    _print_table(rows)


def _chain_status(args: argparse.Namespace) -> int:
    async def read() -> ChainStatus:
        async with await connect(args.rpc_url, timeout=args.timeout, expected_chain_id=args.chain_id) as conn:
            return await read_chain_status(
                conn, args.cluster, registry=args.registry, compose_hashes=args.compose_hash
            )

    try:
        status = asyncio.run(read())
    except (OperatorError, ChainError, OSError) as exc:
        where, why = display_url(args.rpc_url), scrub(str(exc), args.rpc_url)
        print(f"attestmesh: cannot read the chain at {where}: {why}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        _print_chain_status(status)
    return EXIT_OK


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _section(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    return value if isinstance(value, Mapping) else {}


def _print_health(report: HealthReport) -> None:
    body = report.body
    node, peers, csk = _section(body, "node"), _section(body, "peers"), _section(body, "csk")
    events, chain = _section(body, "events"), _section(body, "chain")
    verdict = "HEALTHY" if report.healthy else "UNHEALTHY"
    print(f"{report.url}: {verdict} (HTTP {report.status})")
    connected = "connected" if events.get("indexer_connected") else "not connected"
    rejected = _section(events, "rejected_by_reason")
    by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected.items()))
    if chain.get("reachable") is None:
        chain_text = "not contacted yet"
    else:
        chain_text = "reachable" if chain.get("reachable") else f"UNREACHABLE: {_shown(chain.get('error'))}"
    held = f"held (source {_shown(csk.get('source'))})" if csk.get("held") else "not held"
    rows = [
        ("phase", _shown(body.get("phase"))),
        ("reason", _shown(body.get("reason"))),
        ("member id", _shown(node.get("member_id"))),
        ("app id", _shown(node.get("app_id"))),
        ("instance id", _shown(node.get("instance_id"))),
        ("compose hash", _shown(node.get("compose_hash"))),
        ("mesh ip", _shown(node.get("mesh_ip"))),
        ("signer", _shown(node.get("signer"))),
        (
            "peers",
            f"desired {_shown(peers.get('desired'))}  configured {_shown(peers.get('configured'))}"
            f"  live {_shown(peers.get('live'))}",
        ),
        ("csk", f"{held}  commitment {_shown(csk.get('commitment'))}"),
        (
            "events",
            f"mode {_shown(events.get('mode'))}  indexer {connected}"
            f"  cursor {_shown(events.get('cursor_block'))}  head {_shown(events.get('head_block'))}",
        ),
        ("rejected pushes", _shown(events.get("rejected_pushes")) + (f" ({by_reason})" if by_reason else "")),
        ("chain", chain_text),
        ("membership digest", _shown(body.get("membership_digest"))),
        ("version", _shown(body.get("version"))),
    ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")


def _health(args: argparse.Namespace) -> int:
    try:
        report = fetch_health(args.url, args.timeout)
    except OperatorError as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(report.text.rstrip("\n"))
    else:
        _print_health(report)
    return EXIT_OK if report.healthy else EXIT_FAILED


def _verify_indexer(args: argparse.Namespace) -> int:
    async def verify() -> IndexerCheck:
        async with await connect(args.rpc_url, timeout=args.timeout, expected_chain_id=args.chain_id) as conn:
            deadline = time.monotonic() + args.wait
            shown: tuple[str, ...] = ()
            while True:
                check = await check_indexer(
                    conn, args.registry, status_url=args.status_url, health_url=args.health_url,
                    endpoint=args.endpoint, code_id=args.code_id,
                )  # fmt: skip
                left = deadline - time.monotonic()
                if check.ok or left <= 0:
                    return check
                if check.problems != shown:  # say what it waits for, once per change
                    print(f"waiting: {scrub('; '.join(check.problems), args.rpc_url)}", flush=True)
                    shown = check.problems
                await asyncio.sleep(min(args.interval, left))

    started = time.monotonic()
    check = asyncio.run(verify())
    if not check.ok:
        after = f" after {time.monotonic() - started:.0f}s" if args.wait else ""
        why = scrub("; ".join(check.problems), args.rpc_url)
        print(f"attestmesh: indexer not verified{after}: {why}", file=sys.stderr)
        return EXIT_FAILED
    assert check.record is not None and check.identity is not None
    record, version = check.record, check.identity.key_version
    print(
        f"indexer verified: healthy; the registry names it: {record.endpoint} key {record.pub_key}"
        + ("" if version is None else f" (v{version})")
        + f" code id {record.code_id}"
    )
    return EXIT_OK


def _operator(args: argparse.Namespace) -> int:
    try:
        if args.verb == "verify":
            return _verify_indexer(args)
        return _register_indexer(args)
    except ValueError as exc:  # a malformed address or code id
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OperatorError, ChainError, OSError) as exc:
        print(f"attestmesh: {scrub(str(exc), args.rpc_url)}", file=sys.stderr)
        return EXIT_FAILED


def _allow_compose(args: argparse.Namespace) -> int:
    owner = owner_signer(os.environ)

    async def allow() -> ComposeAllowlisting:
        async with await connect(args.rpc_url, timeout=args.timeout, expected_chain_id=args.chain_id) as conn:
            return await ensure_compose_hash_allowed(
                conn, TxSubmitter(conn, owner), args.cluster, args.compose_hash
            )

    result = asyncio.run(allow())
    where = f"compose hash {result.compose_hash} on cluster {args.cluster}"
    if result.changed:
        print(f"{where}: allowlisted (tx {result.tx_hash})")
    else:
        print(f"{where}: already allowlisted; nothing changed")
    return EXIT_OK


def _fund(args: argparse.Namespace) -> int:
    signer, variable = funder_signer(os.environ)

    async def fund() -> Funding:
        async with await connect(args.rpc_url, timeout=args.timeout, expected_chain_id=args.chain_id) as conn:
            return await ensure_funded(
                conn, TxSubmitter(conn, signer), args.to, min_balance=args.min_balance, amount=args.amount
            )

    result = asyncio.run(fund())
    floor = format_eth(args.min_balance)
    if not result.changed:
        print(
            f"{result.account} has {format_eth(result.balance_before)} ETH (at least {floor}); nothing sent"
        )
        return EXIT_OK
    print(
        f"funded {result.account} with {format_eth(result.sent)} ETH from {result.funder} ({variable}) "
        f"(tx {result.tx_hash}): balance {format_eth(result.balance_before)} -> "
        f"{format_eth(result.balance_after)} ETH"
        + (f" (still below {floor})" if result.balance_after < args.min_balance else "")
    )
    return EXIT_OK


def _member_app(args: argparse.Namespace) -> int:
    owner = owner_signer(os.environ)

    async def ensure() -> MemberAppSetup:
        async with await connect(args.rpc_url, timeout=args.timeout, expected_chain_id=args.chain_id) as conn:
            return await ensure_member_app(
                conn, TxSubmitter(conn, owner), args.factory, args.cluster, args.name
            )

    result = asyncio.run(ensure())
    if args.shell:
        print(_shell_lines([("MEMBER_APP_ID", str(result.app_id))]))
        return EXIT_OK
    app = f"node {result.name}: app {result.app_id}"
    deployed = f"deployed (tx {result.deploy_tx})" if result.deploy_tx else "already deployed"
    if result.member_id is not None:
        approved = f"a member ({result.member_id})"
    else:
        approved = (
            f"app id approved (tx {result.approve_tx})" if result.approve_tx else "app id already approved"
        )
    print(f"{app} {deployed}; {approved}" + ("" if result.changed else "; nothing changed"))
    return EXIT_OK


_CHAIN_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "member-app": _member_app,
    "allow-compose": _allow_compose,
    "fund": _fund,
}


def _chain(args: argparse.Namespace) -> int:
    if args.verb == "status":
        return _chain_status(args)
    try:
        return _CHAIN_ACTIONS[args.verb](args)
    except (OperatorError, ChainError, OSError) as exc:
        why = scrub(str(exc), args.rpc_url)
        print(f"attestmesh: chain {args.verb} at {display_url(args.rpc_url)}: {why}", file=sys.stderr)
        return EXIT_FAILED


_OPERATOR_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "indexer": _operator,
    "chain": _chain,
    "health": _health,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    if args.command in _OPERATOR_COMMANDS:
        return _OPERATOR_COMMANDS[args.command](args)
    try:
        plan = plan_for(args.lab_dir, args.lab, args.underlay, args.mesh_cidr)
    except (TopologyError, ValueError) as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _VERBS[args.verb](Devnet(args.lab_dir, plan), args)
    except (TopologyError, KeyError) as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DevnetError, ProcError, WaitTimeout, LabError, ChainError, GuestAgentError, OSError) as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
