"""``attestmesh devnet node restart NAME``, kept off ``devnet.lab``: the restart path is timed (issue 13).

Owns running that one verb through ``devnet.workload.WorkloadLab`` with the same output and exit codes as
the other verbs (``devnet.cli.verbs``: 2 a bad name or lab option, 1 the lab could not do it, one line on
stderr). Must not: hold lab logic, or import ``devnet.lab`` (a chain client, the KMS and the simulator).
"""

from __future__ import annotations

import argparse
import sys

from devnet.labbase import plan_for
from devnet.labdir import DevnetError
from devnet.netns import LabError
from devnet.procs import ProcError, WaitTimeout
from devnet.topology import TopologyError
from devnet.workload import WorkloadLab

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run_restart(args: argparse.Namespace) -> int:
    """Restart node ``args.name``'s workload; its exit status."""
    try:
        plan = plan_for(args.lab_dir, args.lab, args.underlay, args.mesh_cidr)
        node = WorkloadLab(args.lab_dir, plan).restart_node(args.name)
    except (TopologyError, KeyError, ValueError) as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DevnetError, ProcError, WaitTimeout, LabError, OSError) as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"node {node.name}: workload restarted")
    return EXIT_OK
