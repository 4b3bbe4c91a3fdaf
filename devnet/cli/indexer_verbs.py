"""``attestmesh devnet indexer start|update|stop|rotate-key``: the lab's shared indexer.

Owns running these verbs and rendering their results. Must not: hold lab logic (``devnet.lab`` does it).
"""

from __future__ import annotations

import argparse
import sys

from devnet.lab import Devnet
from devnet.sealedenv import parse_env_file

EXIT_OK, EXIT_USAGE = 0, 2


def run_indexer(lab: Devnet, args: argparse.Namespace) -> int:
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
