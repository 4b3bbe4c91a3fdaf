"""The command-line conventions (README, "Command-line conventions"), checked over the whole parser tree:
every verb that reports takes ``--json``, every other verb is a write verb that says what it did (the list
below is the audit: a new verb must be placed in one or the other); and ``compose node --output`` says what
it wrote. The behaviour of each ``--json`` is tested with its verb (component and e2e tiers)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ops.cli import build_parser, devnet_verbs
from ops.compose_cmd import run_compose

#: Verbs whose output is a report: each takes --json (some print JSON always and accept it for uniformity).
REPORTING = {
    "chain status", "cluster status", "health", "indexer status", "indexer verify",
    "devnet status", "devnet env", "devnet node prepare", "devnet gateway limits",
    # write verbs whose outcome a script reads
    "chain allow-compose", "chain disallow-compose", "chain fund", "chain member-app", "chain rotate-csk",
    "indexer register",
}  # fmt: skip
#: Write verbs: one line on stdout saying what they did (or "nothing changed"), no --json.
WRITING = {
    "compose node", "devnet up", "devnet down", "devnet node add", "devnet node start", "devnet node stop",
    "devnet node restart", "devnet node reboot", "devnet node update", "devnet node remove",
    "devnet indexer start", "devnet indexer update", "devnet indexer stop", "devnet indexer rotate-key",
    "devnet gateway start", "devnet gateway stop",
    "devnet node exec",  # runs a command: its output and exit status are the command's
    # on main since this branch began (issue 14's other items): write verbs too
    "chain scrape-targets", "compose pin", "devnet compose",
}  # fmt: skip


def leaves(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every verb of the parser tree (``"chain status"``, ``"devnet node add"``, …) and its parser."""
    found: dict[str, argparse.ArgumentParser] = {}
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return {prefix.strip(): parser}
    for action in subparsers:
        for name, child in action.choices.items():
            found |= leaves(child, f"{prefix} {name}")
    return found


def test_every_verb_is_reporting_with_json_or_writing() -> None:
    verbs = leaves(build_parser(devnet_verbs()))
    assert set(verbs) - (REPORTING | WRITING) == set(), "a verb neither reporting nor writing"
    assert set(verbs) >= REPORTING
    for name in REPORTING:
        assert "--json" in verbs[name]._option_string_actions, f"{name} has no --json"


def test_compose_node_output_says_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "node.yaml"
    cluster = "0x" + "ab" * 20
    anchors = ("--chain-id", "8453", "--cluster", cluster, "--member-app-factory", "0x" + "cd" * 20,
               "--kms-roots", "0x" + "12" * 20)  # fmt: skip
    # The verb itself (``main`` would configure structlog onto this test's captured stderr for later tests).
    args = build_parser(devnet_verbs()).parse_args(["compose", "node", *anchors, "--output", str(out)])
    assert run_compose(args) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and cluster in out.read_text().lower()
    assert (
        printed.startswith(f"compose node: wrote {out} (cluster ") and "trust anchors as literals" in printed
    )


def test_compose_pin_output_says_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "node-pinned.yaml"
    image = "ghcr.io/attestmesh/attestmesh-sidecar@sha256:" + "ab" * 32
    args = build_parser(devnet_verbs()).parse_args(["compose", "pin", "--image", image, "--output", str(out)])
    assert run_compose(args) == 0
    assert f"image: {image}" in out.read_text()
    assert (
        capsys.readouterr().out == f"compose pin: wrote {out} (the template with the sidecar image {image})\n"
    )
