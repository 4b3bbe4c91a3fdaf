"""``attestmesh devnet node exec``'s mount step for real: in a private mount namespace (``unshare -m``, as
``ip netns exec`` gives one; no network namespace is made here), the node's WireGuard directory is what the
command sees at /run/wireguard, and the command's exit status comes back unchanged. The whole verb, with
``wg show`` listing a node's peers, is in tests/e2e/test_devnet_verbs.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devnet.nodeexec import with_wg_dir_argv
from devnet.wireguard import WG_RUN_DIR
from tests.conftest import require

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]


def test_the_command_sees_the_node_wg_dir_at_run_wireguard_and_its_status_passes_through(
    tmp_path: Path,
) -> None:
    require(os.geteuid() == 0, "root (a mount namespace)")
    require(shutil.which("unshare") is not None, "unshare")
    WG_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    wg_dir = tmp_path / "wg"
    wg_dir.mkdir()
    (wg_dir / "attestmesh0.sock").write_text("")  # stands in for the node's UAPI socket
    script = f"ls {WG_RUN_DIR}; exit 7"
    argv = ["unshare", "-m", "--propagation", "private", *with_wg_dir_argv(str(wg_dir), ["sh", "-c", script])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 7, done.stderr
    assert done.stdout.split() == ["attestmesh0.sock"]
    # The bind mount lived in the command's mount namespace only.
    assert "attestmesh0.sock" not in os.listdir(WG_RUN_DIR)
