"""``attestmesh``: the operator command line.

Owns argument parsing, human and JSON output, and exit codes (0 done, 1 failed, 2 bad usage). Today it
drives the devnet (``attestmesh devnet up|status|down|node ...``); the work itself is in ``devnet.lab``.
Logs (structlog, one line per step) go to stderr; results go to stdout. Must not hold logic of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from devnet.lab import Devnet, DevnetError, LabStatus, plan_for
from devnet.netns import LabError
from devnet.procs import ProcError, WaitTimeout
from devnet.topology import DEFAULT_LAB, DEFAULT_MESH, DEFAULT_UNDERLAY, TopologyError
from sidecar.chain.errors import ChainError
from sidecar.dstack.agent import GuestAgentError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
    status = verbs.add_parser("status", help="what the lab is made of and what is running")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--wait-healthy", type=float, default=None, metavar="SECONDS", help="wait until every node is healthy"
    )
    verbs.add_parser("down", help="remove every namespace, process, mount, route and socket of the lab")
    node = verbs.add_parser("node", help="node verbs")
    node_verbs = node.add_subparsers(dest="node_verb", required=True)
    add = node_verbs.add_parser("add", help="add a node: app contract, approved app id, compose, boot gate")
    add.add_argument("name")
    add.add_argument("--compose-file", type=Path, default=None, help="app-compose.json to measure and boot")
    start = node_verbs.add_parser("start", help="re-run the KMS boot gate and start the node if allowed")
    start.add_argument("name")
    node_verbs.add_parser("stop", help="stop the node (workload, wireguard-go, guest agent)").add_argument(
        "name"
    )
    node_verbs.add_parser("restart", help="restart the node's workload (the sidecar)").add_argument("name")
    node_verbs.add_parser("remove", help="evict the node's member on chain (cluster owner)").add_argument(
        "name"
    )
    return parser


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
            "simulator": h.simulator,
            "wireguard": h.wireguard,
            "sidecar": h.sidecar,
            "dstack_socket": h.dstack_socket,
            "wg_socket": h.wg_socket,
        }
        node["healthz"] = h.healthz
    return data


def _print_status(status: LabStatus) -> None:
    s = status.state
    chain = f"head block {status.head_block}" if status.chain_reachable else "UNREACHABLE"
    anvil = "up" if status.anvil else "down"
    print(f"lab {s.lab}  rpc {s.rpc_url}  chain {s.chain_id}  ({chain}; anvil {anvil})")
    print(f"cluster {s.cluster}  members {status.member_count}  mesh {s.mesh_cidr}")
    print(f"indexer registry {s.indexer_registry}  cluster factory {s.cluster_factory}")
    print(f"member app factory {s.member_app_factory}  kms root {s.kms_root}")
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
    result = lab.up(args.nodes, args.block_time, sidecars=not args.no_sidecar)
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
    elif verb == "start":
        node = lab.start_node(args.name)
        print(f"node {node.name}: boot {node.boot}")
    elif verb == "stop":
        print(f"node {lab.stop_node(args.name).name}: stopped")
    elif verb == "restart":
        print(f"node {lab.restart_node(args.name).name}: workload restarted")
    else:
        print(f"node {args.name}: member {lab.remove_node(args.name)} removed on chain")
    return EXIT_OK


_VERBS: dict[str, Callable[[Devnet, argparse.Namespace], int]] = {
    "up": _up,
    "status": _status,
    "down": _down,
    "node": _node,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
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
