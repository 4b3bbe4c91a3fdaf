"""Compiled contract artifacts: ABI and bytecode of our contracts, as the contracts build wrote them.

Owns: locating the artifacts directory and parsing ``<Name>.json`` into an ``Artifact`` (cached). The
directory is, first match wins: ``$ATTESTMESH_ARTIFACTS_DIR`` (a development override -- the sidecar's
settings reject it as an unknown variable, so it is never set in a node's environment); ``compiled/`` next
to this module, which an installed (non-editable) package carries because the build copies the committed
artifacts there (setup.py); the checkout's ``contracts/artifacts`` (a source tree or an editable install).

Must not: compile anything, talk to a node, or guess an ABI: the committed artifacts are the only source
of truth for what the contracts accept and revert with.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARTIFACTS_ENV = "ATTESTMESH_ARTIFACTS_DIR"

#: The contracts the adapter binds to and the devnet deploys.
CONTRACT_NAMES = (
    "Cluster",
    "ClusterMemberApp",
    "ClusterMemberAppFactory",
    "ClusterFactory",
    "IndexerRegistry",
)


class ArtifactError(RuntimeError):
    """An artifact is missing or malformed (a build problem, never a chain problem)."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: tuple[dict[str, Any], ...] = field(repr=False)
    bytecode: bytes = field(repr=False)
    deployed_bytecode: bytes = field(repr=False)
    compiler: str = ""
    source_hash: str = ""
    #: solc's ``storageLayout`` (``{"storage": [...], "types": {...}}``; empty when the artifact has none).
    #: Only test and devnet tooling reads it (``devnet/chainpoke.py``); the sidecar never writes storage.
    storage_layout: dict[str, Any] = field(default_factory=dict, repr=False, hash=False, compare=False)

    def abi_list(self) -> list[dict[str, Any]]:
        """Return a fresh list copy of the ABI."""
        return [dict(entry) for entry in self.abi]

    def entries(self, kind: str) -> list[dict[str, Any]]:
        """Return the ABI entries of one ``type`` (``"function"``, ``"event"``, ``"error"``...)."""
        return [entry for entry in self.abi if entry.get("type") == kind]


#: Where an installed package carries its copy of the artifacts (written by setup.py's build step).
PACKAGED_DIR = Path(__file__).resolve().parent / "compiled"
#: The committed artifacts of a checkout (``contracts/build.py`` writes them).
SOURCE_TREE_DIR = Path(__file__).resolve().parents[2] / "contracts" / "artifacts"


def artifacts_dir() -> Path:
    """Return the artifacts directory: the override, the installed package's copy, or the checkout's."""
    override = os.environ.get(ARTIFACTS_ENV)
    if override:
        return Path(override)
    if PACKAGED_DIR.is_dir():
        return PACKAGED_DIR
    return SOURCE_TREE_DIR


def _hex_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ArtifactError(f"{what} must be a hex string")
    body = value[2:] if value.startswith("0x") else value
    if "__$" in body:
        raise ArtifactError(f"{what} has unlinked library placeholders")
    try:
        return bytes.fromhex(body)
    except ValueError:
        raise ArtifactError(f"{what} is not hexadecimal") from None


@functools.lru_cache(maxsize=64)
def _load(directory: Path, name: str) -> Artifact:
    path = directory / f"{name}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"no artifact {path} (run `make contracts`)") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc}") from None
    abi = raw.get("abi")
    if not isinstance(abi, list) or not all(isinstance(entry, dict) for entry in abi):
        raise ArtifactError(f"artifact {path} has no ABI list")
    return Artifact(
        name=str(raw.get("contractName", name)),
        abi=tuple(abi),
        bytecode=_hex_bytes(raw.get("bytecode", ""), f"{name}.bytecode"),
        deployed_bytecode=_hex_bytes(raw.get("deployedBytecode", ""), f"{name}.deployedBytecode"),
        compiler=str(raw.get("compiler", "")),
        source_hash=str(raw.get("sourceHash", "")),
        storage_layout=dict(raw.get("storageLayout") or {}),
    )


def load_artifact(name: str) -> Artifact:
    """Load (once per directory) the artifact of contract ``name``."""
    return _load(artifacts_dir(), name)


def available_artifacts() -> list[Artifact]:
    """Load every ``*.json`` artifact in the directory, sorted by name."""
    directory = artifacts_dir()
    return [_load(directory, path.stem) for path in sorted(directory.glob("*.json"))]
