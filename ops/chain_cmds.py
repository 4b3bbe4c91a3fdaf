"""``attestmesh chain status|scrape-targets|allow-compose|disallow-compose|fund|member-app|rotate-csk``:
read a cluster (``scrape-targets``: Prometheus target files of its members and indexer); the owner's day-2
actions.

Owns running each chain verb (one connection, one event loop) and rendering its result (a line saying what
it did, or with ``--json`` the same as a document: ``changed`` and the transaction, null when none was
sent); keys come from ``ATTESTMESH_OWNER_KEY`` / ``ATTESTMESH_FUNDER_KEY`` (``ops.owner``), never from the
command line.
Must not: hold logic of its own (``ops.chainstatus`` and ``ops.owner`` do the work), or show an RPC URL
beyond its scheme, host and port.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ops.amounts import format_eth
from ops.chainstatus import ChainStatus, read_chain_status, utc_time
from ops.connection import on_chain, read_on_chain
from ops.errors import OperatorError
from ops.owner import (
    ComposeAllowlisting,
    ensure_compose_hash_allowed,
    ensure_compose_hash_removed,
    ensure_funded,
    ensure_member_app,
    ensure_rotate_on_remove,
    funder_signer,
    owner_signer,
    rotate_csk,
)
from ops.redact import display_url, scrub
from ops.render import print_table, shell_lines, short
from ops.scrapetargets import INDEXER_TARGETS, NODE_TARGETS, indexer_groups, member_groups, write_file_sd
from sidecar.chain.errors import ChainError
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address, Bytes32

if TYPE_CHECKING:
    from sidecar.chain.rpc import ChainConnection

EXIT_OK, EXIT_FAILED = 0, 1


def print_chain_status(status: ChainStatus) -> None:
    print(f"chain {status.chain_id}  block {status.block} ({utc_time(status.block_timestamp)})")
    print(f"cluster {status.cluster}  owner {status.owner}  mesh {status.mesh_cidr}")
    originator = f"originator {status.originator}" if status.originator is not None else "no originator yet"
    print(f"members {status.member_count}  {originator}")
    commitment = status.csk_commitment
    shown = commitment if commitment is not None else "none (not committed yet)"
    rotation = "; rotates on every removeMember" if status.rotate_csk_on_remove else ""
    print(f"csk epoch {status.csk_epoch}{rotation}\ncsk commitment {shown}")
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
        (short(str(m.member_id)), str(m.app_id), str(m.mesh_ip), m.endpoint, utc_time(m.registered_at))
        for m in status.members
    ]
    print_table(rows)


def _chain_status(args: argparse.Namespace) -> int:
    status = read_on_chain(
        args,
        lambda conn: read_chain_status(
            conn, args.cluster, registry=args.registry, compose_hashes=args.compose_hash
        ),
    )
    if status is None:
        return EXIT_FAILED
    if args.json:
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        print_chain_status(status)
    return EXIT_OK


def _print_json(document: dict[str, object]) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _tx(tx_hash: Bytes32 | None) -> str | None:
    return None if tx_hash is None else str(tx_hash)


def _allow_compose(args: argparse.Namespace) -> int:
    return _compose_allowlist(args, ensure_compose_hash_allowed, ("allowlisted", "already allowlisted"))


def _disallow_compose(args: argparse.Namespace) -> int:
    return _compose_allowlist(
        args, ensure_compose_hash_removed, ("removed from the allowlist", "not allowlisted")
    )


def _compose_allowlist(
    args: argparse.Namespace,
    ensure: Callable[[ChainConnection, TxSubmitter, Address, Bytes32], Awaitable[ComposeAllowlisting]],
    wording: tuple[str, str],
) -> int:
    """``chain allow-compose`` / ``disallow-compose``: one owner transaction at most, and what it did."""
    owner = owner_signer(os.environ)
    result = on_chain(
        args, lambda conn: ensure(conn, TxSubmitter(conn, owner), args.cluster, args.compose_hash)
    )
    if args.json:
        _print_json({"cluster": str(args.cluster), "compose_hash": str(result.compose_hash),
                     "changed": result.changed, "tx": _tx(result.tx_hash)})  # fmt: skip
        return EXIT_OK
    where = f"compose hash {result.compose_hash} on cluster {args.cluster}"
    done, unchanged = wording
    if result.changed:
        print(f"{where}: {done} (tx {result.tx_hash})")
    else:
        print(f"{where}: {unchanged}; nothing changed")
    return EXIT_OK


def _fund(args: argparse.Namespace) -> int:
    signer, variable = funder_signer(os.environ)

    result = on_chain(
        args,
        lambda conn: ensure_funded(
            conn, TxSubmitter(conn, signer), args.to, min_balance=args.min_balance, amount=args.amount
        ),
    )
    floor = format_eth(args.min_balance)
    if args.json:
        _print_json({
            "account": str(result.account), "funder": str(result.funder), "funder_key_variable": variable,
            "balance_before_wei": result.balance_before, "balance_after_wei": result.balance_after,
            "min_balance_wei": args.min_balance, "sent_wei": result.sent, "changed": result.changed,
            "tx": _tx(result.tx_hash),
        })  # fmt: skip
        return EXIT_OK
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

    result = on_chain(
        args,
        lambda conn: ensure_member_app(conn, TxSubmitter(conn, owner), args.factory, args.cluster, args.name),
    )
    if args.shell:
        print(shell_lines([("MEMBER_APP_ID", str(result.app_id))]))
        return EXIT_OK
    if args.json:
        _print_json({
            "name": result.name, "app_id": str(result.app_id),
            "member_id": None if result.member_id is None else str(result.member_id),
            "deploy_tx": _tx(result.deploy_tx), "approve_tx": _tx(result.approve_tx),
            "changed": result.changed,
        })  # fmt: skip
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


def _rotate_csk(args: argparse.Namespace) -> int:
    owner = owner_signer(os.environ)

    if args.on_remove is None:
        result = on_chain(args, lambda conn: rotate_csk(conn, TxSubmitter(conn, owner), args.cluster))
    else:
        rotate = args.on_remove == "on"
        result = on_chain(
            args, lambda conn: ensure_rotate_on_remove(conn, TxSubmitter(conn, owner), args.cluster, rotate)
        )
    if args.json:
        _print_json({
            "cluster": str(args.cluster), "epoch_before": result.epoch_before, "epoch": result.epoch,
            "rotate_csk_on_remove": result.rotate_on_remove, "changed": result.changed,
            "tx": _tx(result.tx_hash),
        })  # fmt: skip
        return EXIT_OK
    where = f"cluster {args.cluster}"
    if args.on_remove is None:
        print(f"{where}: CSK epoch {result.epoch_before} -> {result.epoch} (tx {result.tx_hash})")
    elif result.changed:
        print(f"{where}: removeMember rotates the CSK: {args.on_remove} (tx {result.tx_hash})")
    else:
        print(f"{where}: removeMember rotates the CSK: already {args.on_remove}; nothing changed")
    return EXIT_OK


def _scrape_targets(args: argparse.Namespace) -> int:
    status = on_chain(args, lambda conn: read_chain_status(conn, args.cluster, registry=args.registry))
    cluster = str(status.cluster)
    nodes = member_groups(cluster, status.members, args.gateway_domain)
    indexer = indexer_groups(cluster, status.indexer)
    write_file_sd(args.out_dir / NODE_TARGETS, nodes)
    write_file_sd(args.out_dir / INDEXER_TARGETS, indexer)
    print(f"wrote {len(nodes)} member targets to {args.out_dir / NODE_TARGETS} (block {status.block})")
    print(f"wrote {len(indexer)} indexer targets to {args.out_dir / INDEXER_TARGETS}")
    return EXIT_OK


_CHAIN_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "scrape-targets": _scrape_targets,
    "member-app": _member_app,
    "rotate-csk": _rotate_csk,
    "allow-compose": _allow_compose,
    "disallow-compose": _disallow_compose,
    "fund": _fund,
}


def run_chain(args: argparse.Namespace) -> int:
    if args.verb == "status":
        return _chain_status(args)
    try:
        return _CHAIN_ACTIONS[args.verb](args)
    except (OperatorError, ChainError, OSError) as exc:
        why = scrub(str(exc), args.rpc_url)
        print(f"attestmesh: chain {args.verb} at {display_url(args.rpc_url)}: {why}", file=sys.stderr)
        return EXIT_FAILED
