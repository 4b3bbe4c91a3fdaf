"""The docs show what the code does: the phase diagram in docs/sidecar.md is generated from the table, and
docs/configuration.md lists exactly the declared variables (sidecar.variables) with their defaults."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.core.phases import mermaid_diagram
from sidecar.variables import GROUPS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_phase_diagram_in_the_docs_is_the_transition_table() -> None:
    text = (DOCS / "sidecar.md").read_text()
    start = text.index("<!-- phase-diagram:start -->")
    end = text.index("<!-- phase-diagram:end -->")
    block = text[start:end]
    body = block[block.index("```mermaid\n") + len("```mermaid\n") : block.rindex("```")]
    assert body == mermaid_diagram()


def _documented_variables() -> dict[str, list[tuple[str, str]]]:
    """Each section of docs/configuration.md → its rows of ``ATTESTMESH_*`` variables: (name, default)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    title = ""
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if line.startswith("## "):
            title = line[3:]
        row = re.fullmatch(r"\| `(ATTESTMESH_[A-Z0-9_]+)` \| ([^|]+) \|.*\|", line)
        if row:
            sections.setdefault(title, []).append((row[1], row[2].strip()))
    return sections


def _shown_default(default: str | None) -> str:
    if default is None:
        return "**required**"
    return f"`{default}`" if default else "unset"


def test_configuration_docs_list_exactly_the_declared_variables_with_their_defaults() -> None:
    documented = _documented_variables()
    declared: dict[str, list[tuple[str, str]]] = {}
    for group in GROUPS:
        (title,) = (t for t in documented if t == group.title or t.startswith(group.title + " ("))
        declared[title] = [(v.name, _shown_default(v.default)) for v in group.variables]
    assert documented == declared
