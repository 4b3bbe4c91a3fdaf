"""``attestmesh devnet …``: the development lab's verbs, registered into the operator CLI (``ops.cli``).

Owns the two things ``ops.cli`` asks of an installed devnet: ``add_parser(top)`` (the ``devnet`` command and
its verbs, ``devnet.cli.parser``) and ``run(args)`` (the verb, with the lab's errors mapped to exit codes: 2
bad usage, 1 failed). The verbs live by subject: ``lab_verbs`` (up, status, env, down), ``node_verbs`` (node
…, node exec), ``indexer_verbs`` (indexer …), ``gateway_verbs`` (gateway …). ``python -m devnet.cli`` runs the
whole ``attestmesh`` command line. Must not: import the lab at module level (``attestmesh --help`` imports
this package), or hold logic of its own (``devnet.lab`` does the work).
"""

from __future__ import annotations

import argparse

from devnet.cli.parser import add_parser

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Run the ``devnet`` verb ``args`` names; its exit status."""
    if args.verb == "node" and args.node_verb == "restart":  # the timed restart path: no chain client
        from devnet.cli.restart_verb import run_restart  # noqa: PLC0415

        return run_restart(args)
    from devnet.cli.verbs import run_verb  # noqa: PLC0415 - the lab (web3, ...) loads only when a verb runs

    return run_verb(args)
