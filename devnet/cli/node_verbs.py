"""``attestmesh devnet node …``: one node's life cycle, and commands run inside a node.

Owns running the node verbs and rendering their results, and ``node exec`` (a command in the node's network
namespace with the node's WireGuard socket directory mounted at /run/wireguard). Must not: hold lab logic
(``devnet.lab`` does the work).
"""

from __future__ import annotations

import argparse
import json
import sys

from devnet.lab import ComposePlan, Devnet
from devnet.nodeexec import run_in_node
from devnet.state import NodeState
from ops.render import shell_lines

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run_node(lab: Devnet, args: argparse.Namespace) -> int:
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
    elif verb == "exec":
        return _exec(lab, args)
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
        print(shell_lines(list(zip(names, facts.values(), strict=True))))
        return
    verdict = "allowlisted" if plan.allowlisted else "NOT allowlisted"
    if not plan.exists:
        now = "not in the lab yet"
    elif plan.changes:
        now = f"it now has {plan.current_compose_hash}: an update changes its compose hash"
    else:
        now = "it already has this compose hash"
    print(f"node {plan.node}: compose {plan.compose_hash} {verdict} on the cluster; {now}")


def _exec(lab: Devnet, args: argparse.Namespace) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        print("attestmesh: devnet node exec needs a command: node exec NAME -- CMD...", file=sys.stderr)
        return EXIT_USAGE
    return run_in_node(lab.running_state().node(args.name), command)
