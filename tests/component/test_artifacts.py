"""The committed contract artifacts are exactly what the pinned solcjs makes of contracts/src."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "contracts" / "build.py"
SRC = REPO / "contracts" / "src"
ARTIFACTS = REPO / "contracts" / "artifacts"
EIP170_LIMIT = 24576
EXPECTED = {"Cluster", "ClusterFactory", "ClusterMemberApp", "ClusterMemberAppFactory", "IndexerRegistry"}


def _run_build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BUILD), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_committed_artifacts_are_current() -> None:
    result = _run_build("--check")
    assert result.returncode == 0, f"stale artifacts:\n{result.stdout}{result.stderr}"


def test_check_detects_stale_and_missing_artifacts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SRC, src)
    cluster = src / "Cluster.sol"
    text = cluster.read_text(encoding="utf-8")
    changed = text.replace("uint64 public cskEpoch = 1;", "uint64 public cskEpoch = 2;", 1)
    assert changed != text, "the one-line change no longer applies; pick another line"
    cluster.write_text(changed, encoding="utf-8")
    artifacts = tmp_path / "artifacts"
    shutil.copytree(ARTIFACTS, artifacts)
    (artifacts / "IndexerRegistry.json").unlink()

    result = _run_build("--check", "--src", str(src), "--artifacts", str(artifacts))

    assert result.returncode == 1, result.stdout + result.stderr
    reported = result.stdout.splitlines()
    assert f"stale: {artifacts / 'Cluster.json'}" in reported
    # The factory embeds the cluster's creation code, so it goes stale with it.
    assert f"stale: {artifacts / 'ClusterFactory.json'}" in reported
    assert f"missing: {artifacts / 'IndexerRegistry.json'}" in reported
    # Contracts that do not depend on Cluster.sol are untouched.
    assert not any("ClusterMemberApp" in line for line in reported), reported
    # The real tree was only read.
    assert (ARTIFACTS / "IndexerRegistry.json").is_file()


def test_artifacts_are_complete_and_deployable() -> None:
    found = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in ARTIFACTS.glob("*.json")}
    assert set(found) == EXPECTED
    for name, artifact in found.items():
        assert set(artifact) == {
            "abi",
            "bytecode",
            "compiler",
            "contractName",
            "deployedBytecode",
            "sourceHash",
            "storageLayout",
        }
        assert artifact["contractName"] == name
        assert {"storage", "types"} <= set(artifact["storageLayout"])  # devnet/chainpoke.py addresses by it
        assert artifact["compiler"].startswith("0.8.37+commit.")
        assert len(artifact["sourceHash"]) == 64
        for key in ("bytecode", "deployedBytecode"):
            assert artifact[key].startswith("0x") and len(artifact[key]) > 2, f"{name}.{key} is empty"
            bytes.fromhex(artifact[key][2:])  # fully linked: no __$...$__ placeholders
        size = (len(artifact["deployedBytecode"]) - 2) // 2
        assert size < EIP170_LIMIT, f"{name}: {size} B of deployed bytecode exceeds EIP-170"
