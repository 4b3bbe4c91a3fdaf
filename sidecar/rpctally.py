"""Per-unit counts of JSON-RPC calls: which calls one reconcile pass (or one poll, one push read) made.

Owns ``RpcTally`` (calls by method, and who made them: ``RpcSource``), ``rpc_tally`` (the context that
counts the calls made in it and in the tasks it starts, through a context variable, so the poller's calls
during a pass are not mixed in), ``current_tally`` and ``rpc_method_label`` (a method name, or ``other``
for anything not shaped like one).

Must not: export metrics (``sidecar.observability.Metrics.rpc_call`` counts into the current tally and
its counters), or keep a call's parameters.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar

from sidecar.metricvocab import RpcSource

_RPC_METHOD = re.compile(r"[a-z][A-Za-z0-9_]{0,63}", re.ASCII)


class RpcTally:
    """The JSON-RPC calls one unit of work made (a pass, a poll), by method; see ``rpc_tally``."""

    def __init__(self, source: RpcSource) -> None:
        self.source: RpcSource = source
        self.calls: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1


_TALLY: ContextVar[RpcTally | None] = ContextVar("attestmesh_rpc_tally", default=None)


@contextlib.contextmanager
def rpc_tally(source: RpcSource) -> Iterator[RpcTally]:
    """Count the JSON-RPC calls made in this context (and the tasks it starts) as ``source``'s: the
    tally lives in a context variable, so calls of concurrent tasks (the poller during a pass) are not
    mixed in."""
    tally = RpcTally(source)
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def current_tally() -> RpcTally | None:
    """The tally of the ``rpc_tally`` context this runs in, if any."""
    return _TALLY.get()


def rpc_method_label(method: str) -> str:
    """``method`` when it is shaped like a JSON-RPC method name, else ``other`` (a label stays bounded)."""
    return method if _RPC_METHOD.fullmatch(method) else "other"
