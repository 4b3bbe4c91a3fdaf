"""The e2e tier: the devnet lab driven through the ``attestmesh`` command line, as an operator would.

Every test gets its own lab directory and tears the lab down on success and on failure. The test lab uses
its own name and prefixes (``amte``, 10.215.0.0/24, mesh 10.15.0.0/16; a second xdist worker ``amte1``,
10.218.0.0/24, mesh 10.18.0.0/16) so it never collides with a demo lab on the same machine. A missing
prerequisite fails the test: CI must not skip the e2e tier. The helpers live in the toolkit
(``tests.e2e.lab``, ``tests.e2e.mesh``); this file holds only the fixtures.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.lab import REPO, LabCli, lab_dir


@pytest.fixture(scope="session", autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "root (network namespaces)")
    for tool in ("ip", "wireguard-go", "ping"):
        require(shutil.which(tool) is not None, tool)
    require((REPO / "tools/node_modules/.bin/anvil").exists(), "anvil in tools/node_modules")
    require(Path("/dev/net/tun").exists(), "/dev/net/tun")


@pytest.fixture
def lab() -> Iterator[LabCli]:
    with lab_dir() as cli:
        yield cli
