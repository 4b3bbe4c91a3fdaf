"""``attestmesh health URL``: a node's ``/healthz``, readable; exit 0 iff healthy.

Owns the rendering of a health report. Must not: import web3 or structlog (it starts fast).
"""

from __future__ import annotations

import argparse
import sys

from ops.errors import OperatorError
from ops.health import HealthReport, fetch_health
from ops.render import section, shown

EXIT_OK, EXIT_FAILED = 0, 1


def print_health(report: HealthReport) -> None:
    body = report.body
    node, peers, csk = section(body, "node"), section(body, "peers"), section(body, "csk")
    events, chain = section(body, "events"), section(body, "chain")
    print(f"{report.url}: {'HEALTHY' if report.healthy else 'UNHEALTHY'} (HTTP {report.status})")
    connected = "connected" if events.get("indexer_connected") else "not connected"
    rejected = section(events, "rejected_by_reason")
    by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected.items()))
    if chain.get("reachable") is None:
        chain_text = "not contacted yet"
    else:
        chain_text = "reachable" if chain.get("reachable") else f"UNREACHABLE: {shown(chain.get('error'))}"
    held = f"held (source {shown(csk.get('source'))})" if csk.get("held") else "not held"
    rpc = section(chain, "rpc")
    up = rpc.get("up")
    providers_up = sum(1 for flag in up if flag) if isinstance(up, list) else None
    reads = (
        f"at {shown(chain.get('read_at'))}  providers up {shown(providers_up)}/{shown(rpc.get('providers'))}"
        f"  quorum {shown(rpc.get('quorum'))}"
        + (f"  ({shown(rpc.get('reason'))})" if rpc.get("reason") else "")
    )
    rows = [
        ("phase", shown(body.get("phase"))),
        ("reason", shown(body.get("reason"))),
        ("member id", shown(node.get("member_id"))),
        ("app id", shown(node.get("app_id"))),
        ("instance id", shown(node.get("instance_id"))),
        ("compose hash", shown(node.get("compose_hash"))),
        ("mesh ip", shown(node.get("mesh_ip"))),
        ("signer", shown(node.get("signer"))),
        (
            "peers",
            f"desired {shown(peers.get('desired'))}  configured {shown(peers.get('configured'))}"
            f"  live {shown(peers.get('live'))}",
        ),
        ("csk", f"{held}  commitment {shown(csk.get('commitment'))}"),
        (
            "events",
            f"mode {shown(events.get('mode'))}  indexer {connected}"
            f"  cursor {shown(events.get('cursor_block'))}  head {shown(events.get('head_block'))}",
        ),
        ("rejected pushes", shown(events.get("rejected_pushes")) + (f" ({by_reason})" if by_reason else "")),
        ("chain", chain_text),
        ("chain reads", reads),
        ("membership digest", shown(body.get("membership_digest"))),
        ("version", shown(body.get("version"))),
    ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")


def run_health(args: argparse.Namespace) -> int:
    try:
        report = fetch_health(args.url, args.timeout, args.ca_file, args.connect_to)
    except OperatorError as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(report.text.rstrip("\n"))
    else:
        print_health(report)
    return EXIT_OK if report.healthy else EXIT_FAILED
