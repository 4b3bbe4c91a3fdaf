"""``attestmesh indexer register|verify|status``: a shared indexer's registration on a chain, and its
``/status`` as it answers.

Owns running the three verbs and rendering their results (``--json`` for register and verify; ``status``
prints the indexer's own JSON; ``verify --wait`` says on stderr what it waits for). Must not: hold logic of
its own (``ops.indexers`` does the work), or show an RPC URL beyond its scheme, host and port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from ops.connection import on_chain
from ops.errors import OperatorError
from ops.indexers import (
    STATUS_TIMEOUT,
    IndexerCheck,
    check_indexer,
    ensure_indexer_registered,
    fetch_indexer_identity,
)
from ops.jsonget import Unreachable, get_json
from ops.owner import owner_signer
from ops.redact import scrub
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Bytes32

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _register_indexer(args: argparse.Namespace) -> int:
    identity = fetch_indexer_identity(args.status_url)
    endpoint = args.endpoint or identity.public_url
    if not endpoint:
        raise OperatorError("the indexer's /status has no public_url: pass --endpoint")
    code_id = Bytes32.from_hex(args.code_id) if args.code_id else identity.code_id
    if code_id is None:
        raise OperatorError("the indexer's /status has no code_id: pass --code-id")
    signer = owner_signer(os.environ)

    update = on_chain(
        args,
        lambda conn: ensure_indexer_registered(
            conn,
            TxSubmitter(conn, signer),
            args.registry,
            endpoint=endpoint,
            code_id=code_id,
            public_key=identity.public_key,
        ),
    )
    if args.json:
        print(json.dumps({
            "registry": str(args.registry), "endpoint": endpoint, "public_key": str(identity.public_key),
            "code_id": str(code_id), "changed": update.changed,
            "tx": None if update.tx_hash is None else str(update.tx_hash),
        }, indent=2, sort_keys=True))  # fmt: skip
    elif update.changed:
        print(
            f"indexer registered: {endpoint} key {identity.public_key} code id {code_id} tx {update.tx_hash}"
        )
    else:
        print(f"indexer already registered: {endpoint} key {identity.public_key}; nothing changed")
    return EXIT_OK


def _verify_indexer(args: argparse.Namespace) -> int:
    async def verify(conn: ChainConnection) -> IndexerCheck:
        deadline = time.monotonic() + args.wait
        shown: tuple[str, ...] = ()
        while True:
            check = await check_indexer(
                conn, args.registry, status_url=args.status_url, health_url=args.health_url,
                endpoint=args.endpoint, code_id=args.code_id,
            )  # fmt: skip
            left = deadline - time.monotonic()
            if check.ok or left <= 0:
                return check
            if check.problems != shown:  # say what it waits for, once per change (stderr: progress)
                why = scrub("; ".join(check.problems), args.rpc_url)
                print(f"waiting: {why}", file=sys.stderr, flush=True)
                shown = check.problems
            await asyncio.sleep(min(args.interval, left))

    started = time.monotonic()
    check = on_chain(args, verify)
    if args.json:
        print(json.dumps(_check_json(check, args.rpc_url), indent=2, sort_keys=True))
        return EXIT_OK if check.ok else EXIT_FAILED
    if not check.ok:
        after = f" after {time.monotonic() - started:.0f}s" if args.wait else ""
        why = scrub("; ".join(check.problems), args.rpc_url)
        print(f"attestmesh: indexer not verified{after}: {why}", file=sys.stderr)
        return EXIT_FAILED
    assert check.record is not None and check.identity is not None
    record, version = check.record, check.identity.key_version
    print(
        f"indexer verified: healthy; the registry names it: {record.endpoint} key {record.pub_key}"
        + ("" if version is None else f" (v{version})")
        + f" code id {record.code_id}"
    )
    return EXIT_OK


def _check_json(check: IndexerCheck, rpc_url: str) -> dict[str, object]:
    record, identity = check.record, check.identity
    return {
        "verified": check.ok,
        "problems": [scrub(problem, rpc_url) for problem in check.problems],
        "registry": None if record is None else {
            "registered": record.registered, "endpoint": record.endpoint or None,
            "code_id": str(record.code_id) if record.registered else None,
            "public_key": str(record.pub_key) if record.registered else None,
        },
        "status": None if identity is None else {
            "public_key": str(identity.public_key), "key_version": identity.key_version,
            "code_id": None if identity.code_id is None else str(identity.code_id),
            "public_url": identity.public_url,
        },
    }  # fmt: skip


def _status(url: str) -> int:
    """Print the indexer's ``/status`` body; 0 iff it is a status document with a public key."""
    try:
        fetch_indexer_identity(url)  # raises unless the document shows a public key
        answer = get_json(url, STATUS_TIMEOUT)
    except (OperatorError, Unreachable) as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(answer.text.rstrip("\n"))
    return EXIT_OK


def run_indexer(args: argparse.Namespace) -> int:
    if args.verb == "status":
        return _status(args.url)
    try:
        if args.verb == "verify":
            return _verify_indexer(args)
        return _register_indexer(args)
    except ValueError as exc:  # a malformed address or code id
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OperatorError, ChainError, OSError) as exc:
        print(f"attestmesh: {scrub(str(exc), args.rpc_url)}", file=sys.stderr)
        return EXIT_FAILED
