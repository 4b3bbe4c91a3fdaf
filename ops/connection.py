"""One chain session per command: connect to the chain the command's options name, run, disconnect.

Owns ``on_chain`` and ``read_on_chain`` (a read verb's session: a failure becomes one scrubbed line on
stderr). Must not: retry, or show the RPC URL beyond what ``ops.redact.display_url`` keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ops.errors import OperatorError
from ops.redact import display_url, scrub
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection, connect

T = TypeVar("T")


def on_chain(args: argparse.Namespace, action: Callable[[ChainConnection], Awaitable[T]]) -> T:
    """Run ``action`` on a connection to ``--rpc-url`` (``--chain-id`` checked, ``--timeout`` per call)."""

    async def session() -> T:
        async with await connect(args.rpc_url, timeout=args.timeout, expected_chain_id=args.chain_id) as conn:
            return await action(conn)

    return asyncio.run(session())


def read_on_chain(args: argparse.Namespace, action: Callable[[ChainConnection], Awaitable[T]]) -> T | None:
    """``on_chain`` for a read verb: on a failure, print ``attestmesh: cannot read the chain at …`` (the
    URL as ``display_url`` shows it, the error scrubbed of it) and return None."""
    try:
        return on_chain(args, action)
    except (OperatorError, ChainError, OSError) as exc:
        where, why = display_url(args.rpc_url), scrub(str(exc), args.rpc_url)
        print(f"attestmesh: cannot read the chain at {where}: {why}", file=sys.stderr)
        return None
