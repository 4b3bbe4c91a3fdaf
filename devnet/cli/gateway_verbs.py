"""``attestmesh devnet gateway start|stop|limits``: the lab's gateway stand-in (gateway mode).

Owns running these verbs and rendering their results. Must not: hold lab logic (``devnet.lab`` does it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from devnet.lab import Devnet

EXIT_OK, EXIT_USAGE = 0, 2


def run_gateway(lab: Devnet, args: argparse.Namespace) -> int:
    verb = args.gateway_verb
    if verb == "start":
        limits: dict[str, str] = {}
        for item in args.limits:
            name, sep, value = item.partition("=")
            if not sep or not name:
                print(f"attestmesh: --set takes NAME=VALUE, got {item!r}", file=sys.stderr)
                return EXIT_USAGE
            limits[name.strip()] = value.strip()
        chosen = lab.gateway_start(limits, defaults=args.defaults)
        shown = " ".join(f"{k}={v:g}" for k, v in asdict(chosen).items())
        print(f"gateway: started ({shown})")
    elif verb == "stop":
        lab.gateway_stop()
        print("gateway: stopped (every route through it is down until `gateway start`)")
    else:
        print(json.dumps(asdict(lab.gateway_limits()), indent=2, sort_keys=True))
    return EXIT_OK
