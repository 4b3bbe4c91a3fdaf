"""``attestmesh --help``, ``--version`` and ``health URL`` start without web3, eth_utils or structlog
(issue 10 item 6: they start in well under half a second; bench/cli_start.py measures it), and the command
line without the devnet installed says so and exits 2."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("web3", "eth_utils", "structlog", "sidecar.chain", "devnet.lab")


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def modules_after(argv: list[str], *, hide_devnet: bool = False) -> tuple[int, list[str], str]:
    """Run ``ops.cli.main(argv)`` in a fresh interpreter; its exit status, the heavy modules it loaded, and
    its stderr."""
    script = textwrap.dedent(
        f"""
        import json, sys
        if {hide_devnet!r}:
            sys.modules["devnet"] = None  # as in the image: `import devnet` fails
        from ops.cli import main
        try:
            code = main({argv!r})
        except SystemExit as exc:
            code = exc.code
        loaded = [m for m in {HEAVY!r} if m in sys.modules]
        print(json.dumps([code, loaded]), file=sys.__stdout__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    return code, loaded, done.stderr


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["devnet", "--help"], ["health", "http://127.0.0.1:{port}/healthz"]],
)
def test_fast_commands_load_no_web3_or_structlog(argv: list[str]) -> None:
    port = closed_port()
    code, loaded, _ = modules_after([a.format(port=port) for a in argv])
    assert code == (1 if argv[0] == "health" else 0)
    assert loaded == []


def test_without_the_devnet_devnet_verbs_say_it_is_not_installed() -> None:
    code, _, err = modules_after(["devnet", "up", "--nodes", "1"], hide_devnet=True)
    assert code == 2
    assert "the devnet is not installed" in err and "Traceback" not in err
    code, _, err = modules_after(["-v", "devnet", "status"], hide_devnet=True)
    assert code == 2 and "the devnet is not installed" in err
    code, _, _ = modules_after(["--help"], hide_devnet=True)
    assert code == 0


def test_devnet_node_restart_loads_no_chain_client_kms_or_simulator(tmp_path: Path) -> None:
    """`devnet node restart` is on the timed restart path (issue 13): it runs off ``devnet.workload``."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from ops.cli import main
        try:
            code = main(["devnet", "--lab-dir", {str(tmp_path)!r}, "node", "restart", "node-2"])
        except SystemExit as exc:
            code = exc.code
        heavy = ("web3", "eth_abi", "sidecar.chain", "devnet.lab", "devnet.kms", "devnet.simulator")
        loaded = [m for m in (*heavy, "dstack_sdk") if m in sys.modules]
        print(json.dumps([code, loaded]), file=sys.__stdout__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 1 and "is not running" in done.stderr  # no lab in tmp_path: the same error as before
    assert loaded == []
