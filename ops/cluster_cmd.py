"""``attestmesh cluster status``: every member of a cluster, from the chain and from its own ``/healthz``.

Owns running the verb (one chain session, one event loop) and rendering its result: a table (member, app
id, phase, reason, live peers, transport, membership digest and CSK commitment each against the chain,
version, signer balance) and the summary line, or the JSON document (``--json``, ``ops.clusterview``).
Exit 0 only when every member is healthy and agrees; 1 otherwise (the summary names each failing member)
or when the chain cannot be read; 2 for a CA file that cannot be loaded.
Must not: hold logic of its own (``ops.clusterview`` decides, ``ops.clusterhealth`` reads), or show an RPC
URL beyond its scheme, host and port.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys

from ops.amounts import format_eth
from ops.clusterhealth import GatewayAccess, read_cluster
from ops.clusterview import Agreement, ClusterView, MemberVerdict, clean, version_cell
from ops.connection import read_on_chain
from ops.render import print_table, short, transport_cell

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_REASON_CELL = 48  # the table's cut; the summary and --json keep more
# The table shows balances to 4 decimals (rounded down: never more than the signer holds); --json has wei.

_AGREEMENT_CELL = {
    Agreement.CHAIN: "agrees",
    Agreement.MAJORITY: "MAJORITY ONLY",
    Agreement.DIFFERS: "DIFFERS",
    Agreement.UNKNOWN: "-",
}


def _row(v: MemberVerdict) -> tuple[str, ...]:
    m, f = v.member, v.answer.facts
    balance = "-" if m.balance_wei is None else f"{format_eth(m.balance_wei // 10**14 * 10**14)} ETH"
    if f is None:
        error = clean(v.answer.error or "no answer", _REASON_CELL)
        return (short(m.member_id), m.app_id, "-", error, "-", "-", "-", "-", "-", balance)
    live, desired = ("-" if n is None else str(n) for n in (f.peers_live, f.peers_desired))
    phase = f.phase if v.answer.healthy else f"{f.phase} (HTTP {v.answer.status})"
    return (
        short(m.member_id),
        m.app_id,
        phase,
        clean(f.reason or "", _REASON_CELL),
        f"{live}/{desired}",
        transport_cell(f.transport, "-"),
        _AGREEMENT_CELL[v.digest],
        _AGREEMENT_CELL[v.csk],
        version_cell(f),
        balance,
    )


def print_cluster(view: ClusterView) -> None:
    c = view.chain
    commitment = c.csk_commitment or "none (not committed yet)"
    print(f"chain {c.chain_id}  block {c.block}  cluster {c.cluster}  members {len(view.members)}")
    print(f"membership digest {c.membership_digest}  csk epoch {c.csk_epoch} commitment {commitment}")
    if view.members:
        header = ("member", "app id", "phase", "reason", "live peers", "transport", "membership digest",
                  "csk commitment", "version", "signer balance")  # fmt: skip
        print()
        print_table([header, *(_row(v) for v in view.members)])
        print()
    print(view.summary())


def run_cluster(args: argparse.Namespace) -> int:
    access = GatewayAccess(
        domain=args.gateway_domain,
        ca_file=args.ca_file,
        connect_to=args.connect_to,
        port=args.health_port,
        timeout=args.health_timeout,
    )
    try:
        access.tls()  # a CA file that cannot be loaded is a usage error, found before anything is sent
    except (OSError, ssl.SSLError) as exc:
        print(
            f"attestmesh: --ca-file {args.ca_file}: cannot load it as PEM CA certificates: {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    view = read_on_chain(
        args, lambda conn: read_cluster(conn, args.cluster, access, min_balance_wei=args.min_balance)
    )
    if view is None:
        return EXIT_FAILED
    if args.json:
        print(json.dumps(view.to_json(), indent=2, sort_keys=True))
    else:
        print_cluster(view)
    return EXIT_OK if view.ok else EXIT_FAILED
