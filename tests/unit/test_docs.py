"""The docs show what the code does: the phase diagram in docs/sidecar.md is generated from the table."""

from __future__ import annotations

from pathlib import Path

from sidecar.core.phases import mermaid_diagram

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_phase_diagram_in_the_docs_is_the_transition_table() -> None:
    text = (DOCS / "sidecar.md").read_text()
    start = text.index("<!-- phase-diagram:start -->")
    end = text.index("<!-- phase-diagram:end -->")
    block = text[start:end]
    body = block[block.index("```mermaid\n") + len("```mermaid\n") : block.rindex("```")]
    assert body == mermaid_diagram()
