"""How the command line shows values: tables, shell lines, short hex.

Owns ``print_table``, ``shell_lines`` (``KEY=value`` lines, shell-quoted, for a shell's ``eval``),
``short``, ``shown``, ``section`` and ``transport_cell`` (a sub-document of a JSON body, or an empty one).
Must not: hold logic beyond presentation, or import anything heavy.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any


def short(value: str, n: int = 10) -> str:
    return value[: n + 2] + "…" if len(value) > n + 2 else value


def shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def section(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    return value if isinstance(value, Mapping) else {}


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def shell_lines(pairs: Sequence[tuple[str, object]]) -> str:
    """``KEY=value`` lines, shell-quoted; booleans as 1/0, None as empty."""

    def text(value: object) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        return "" if value is None else str(value)

    return "\n".join(f"{key}={shlex.quote(text(value))}" for key, value in pairs)


def transport_cell(counts: object, default: str) -> str:
    """A node's own account of its peers' transports (``peers.transport`` of its /healthz: counts by
    transport and state, e.g. ``gateway up=2,down=0``), or ``default`` when the node gives none."""
    if not isinstance(counts, Mapping) or not counts:
        return default
    cells = []
    for transport, by_state in sorted(counts.items()):
        if isinstance(by_state, Mapping):
            cells.append(f"{transport} " + ",".join(f"{k}={v}" for k, v in sorted(by_state.items())))
        else:
            cells.append(f"{transport}={by_state}")
    return "; ".join(cells)
