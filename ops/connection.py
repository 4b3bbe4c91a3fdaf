"""One chain session per command: connect to the chain the command's options name, run, disconnect.

Owns ``on_chain``. Must not: retry, or show the RPC URL (the commands scrub their errors).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sidecar.chain.rpc import ChainConnection, connect

T = TypeVar("T")


def on_chain(args: argparse.Namespace, action: Callable[[ChainConnection], Awaitable[T]]) -> T:
    """Run ``action`` on a connection to ``--rpc-url`` (``--chain-id`` checked, ``--timeout`` per call)."""

    async def session() -> T:
        async with await connect(args.rpc_url, timeout=args.timeout, expected_chain_id=args.chain_id) as conn:
            return await action(conn)

    return asyncio.run(session())
