"""The devnet's reading of an indexer's sealed env file: what ``attestmesh devnet indexer update --env-file``
may change about the lab's indexer.

Owns the file format (``KEY=value`` lines, ``#`` comments, an optional ``export`` prefix and one layer of
matching quotes: what ``phala deploy -e FILE`` reads) and the rule for the indexer's variables: the lab owns
the ones that wire the indexer into it (chain, contracts, its own endpoint and code id, listen address), so a
file may repeat them only with the lab's value; every other ``ATTESTMESH_INDEXER_*`` value (the key version
and the tunables) is applied, and the whole environment must pass the indexer's own settings check. As in a
CVM, the file is the whole sealed env: a value it leaves out is back to its default (``KEY_VERSION`` to 1).
Must not: do I/O, or echo a value in an error (a production env file carries an RPC URL with an API key).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from indexer.settings import KNOWN_NAMES, PREFIX, SettingsError, load_settings

KEY_VERSION = PREFIX + "KEY_VERSION"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Set by the lab (its chain, contracts, the indexer's namespace address, port and app id): not a sealed-env
#: value the devnet lets a file change.
LAB_OWNED = frozenset(
    PREFIX + name
    for name in (
        "RPC_URL",
        "CHAIN_ID",
        "CLUSTER_FACTORY",
        "CLUSTERS",
        "START_BLOCK",
        "REGISTRY",
        "PUBLIC_URL",
        "CODE_ID",
        "LISTEN_ADDR",
    )
)


class EnvFileError(ValueError):
    """The env file cannot be applied; the message lists every problem, never a value."""


@dataclass(frozen=True, slots=True)
class IndexerEnv:
    """What an env file asks of the lab's indexer: its key version and the other values it sets."""

    key_version: int
    values: dict[str, str]  # ATTESTMESH_INDEXER_* tunables, neither lab-owned nor KEY_VERSION


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines into a mapping (a later line wins); raise ``EnvFileError`` on a malformed line."""
    values: dict[str, str] = {}
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line.removeprefix("export ").lstrip()
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _NAME.fullmatch(name):
            problems.append(f"line {number} is not NAME=value")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    if problems:
        raise EnvFileError("; ".join(problems))
    return values


def plan_indexer_env(values: Mapping[str, str], lab_env: Mapping[str, str]) -> IndexerEnv:
    """Check ``values`` (an env file) against the lab's own indexer environment ``lab_env`` and return what
    to apply; raise ``EnvFileError`` listing every problem."""
    problems = []
    tunables: dict[str, str] = {}
    for name, value in sorted(values.items()):
        if not name.startswith(PREFIX):
            problems.append(f"{name} is not an indexer variable (the compose passes only {PREFIX}*)")
        elif name not in KNOWN_NAMES:
            problems.append(f"{name} is not a known indexer variable")
        elif name in LAB_OWNED:
            if value.strip() and value.strip() != lab_env.get(name, ""):
                problems.append(f"{name} is set by the lab; the file gives another value")
        elif name != KEY_VERSION and value.strip():
            tunables[name] = value.strip()
    merged = {k: v for k, v in lab_env.items() if k.startswith(PREFIX) and k != KEY_VERSION}
    merged.update(tunables)
    version = values.get(KEY_VERSION, "").strip()
    if version:
        merged[KEY_VERSION] = version
    try:
        settings = load_settings(merged)
    except SettingsError as exc:
        problems += exc.problems
    if problems:
        raise EnvFileError("; ".join(problems))
    return IndexerEnv(key_version=settings.key_version, values=tunables)
