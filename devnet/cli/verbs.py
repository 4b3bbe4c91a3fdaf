"""Runs one ``attestmesh devnet`` verb on the lab the options name.

Owns the verb table and the mapping of the lab's errors to exit codes (2: a bad name or lab option; 1: the
lab could not do it), each said in one line on stderr. Must not: hold logic of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from devnet.cli.gateway_verbs import run_gateway
from devnet.cli.indexer_verbs import run_indexer
from devnet.cli.lab_verbs import run_compose, run_down, run_env, run_status, run_up
from devnet.cli.node_verbs import run_node
from devnet.lab import Devnet, DevnetError, plan_for
from devnet.netns import LabError
from devnet.nodeexec import NodeExecError
from devnet.procs import ProcError, WaitTimeout
from devnet.topology import TopologyError
from sidecar.chain.errors import ChainError
from sidecar.dstack.agent import GuestAgentError

EXIT_FAILED, EXIT_USAGE = 1, 2

_VERBS: dict[str, Callable[[Devnet, argparse.Namespace], int]] = {
    "up": run_up,
    "status": run_status,
    "env": run_env,
    "compose": run_compose,
    "down": run_down,
    "node": run_node,
    "indexer": run_indexer,
    "gateway": run_gateway,
}


def run_verb(args: argparse.Namespace) -> int:
    """Run the verb ``args.verb`` on the lab in ``args.lab_dir``; its exit status."""
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
    except (
        DevnetError, ProcError, WaitTimeout, LabError, ChainError, GuestAgentError, NodeExecError, OSError
    ) as exc:  # fmt: skip
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
