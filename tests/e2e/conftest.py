"""The e2e tier: the devnet lab driven through the ``attestmesh`` command line, as an operator would.

Every test gets its own lab directory and tears the lab down on success and on failure. The test lab uses
its own name and prefixes (``amte``, 10.215.0.0/24, mesh 10.15.0.0/16; a second xdist worker ``amte1``,
10.218.0.0/24, mesh 10.18.0.0/16) so it never collides with a demo lab on the same machine. A missing
prerequisite fails the test: CI must not skip the e2e tier.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from devnet.netns import LabNetwork
from devnet.topology import LabPlan
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
#: Under ``pytest -n N`` (pytest-xdist; `make test` runs this tier with 2 workers) each worker is ``gwK``
#: and gets its own lab: name suffixed with K, both prefixes' second octet moved up by 3K.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def _shifted(network: str) -> str:
    net = IPv4Network(network)
    return str(IPv4Network((int(net.network_address) + (3 * WORKER << 16), net.prefixlen)))


# Overridable so that two e2e runs (for example while developing) can share a machine; CI uses the defaults.
LAB = os.environ.get("ATTESTMESH_E2E_LAB", "amte") + (str(WORKER) if WORKER else "")
UNDERLAY = _shifted(os.environ.get("ATTESTMESH_E2E_UNDERLAY", "10.215.0.0/24"))
MESH = _shifted(os.environ.get("ATTESTMESH_E2E_MESH", "10.15.0.0/16"))
PLAN = LabPlan(LAB, IPv4Network(UNDERLAY), IPv4Network(MESH))


@pytest.fixture(scope="session", autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "root (network namespaces)")
    for tool in ("ip", "wireguard-go", "ping"):
        require(shutil.which(tool) is not None, tool)
    require((REPO / "tools/node_modules/.bin/anvil").exists(), "anvil in tools/node_modules")
    require(Path("/dev/net/tun").exists(), "/dev/net/tun")


@dataclass
class LabCli:
    """Runs ``attestmesh devnet …`` against one lab directory."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ATTESTMESH_DEVNET_DIR=str(self.root),
            ATTESTMESH_LAB=LAB,
            ATTESTMESH_LAB_UNDERLAY=UNDERLAY,
            ATTESTMESH_LAB_MESH=MESH,
        )
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "devnet.cli", "devnet", *args]

    def run(self, *args: str, check: bool = True, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args),
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"`attestmesh devnet {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr[-4000:]}"
            )
        return proc

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("status", "--json").stdout)
        return data

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"


@pytest.fixture
def lab() -> Iterator[LabCli]:
    # A short path: unix socket paths (simulator, UAPI) must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix=f"{LAB}-", dir="/tmp"))
    cli = LabCli(root)
    try:
        yield cli
    finally:
        cli.run("down", check=False)
        LabNetwork(PLAN).destroy()  # belt and braces: the sweep by prefix
        shutil.rmtree(root, ignore_errors=True)
