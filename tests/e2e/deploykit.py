"""What the e2e tests of ``deploy/node.sh`` share: the routine run against one lab (``Routine``), the
check of its logs (UTC stamps, no secret), the owner's nonce, the lab's node records, the order of a run's
log lines, and polling a run's log for a line while the routine runs (to kill it there).

Must not: start or stop a lab (the tests' ``lab`` fixture does), or assert anything the tests do not ask.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devnet.anvil import DEVNET_DEPLOYER_KEY
from sidecar.chain.rpc import checksum
from sidecar.chain.tx import LocalSigner
from tests.e2e.lab import REPO, LabCli, RoutineRunner, chain, lab_state, log_entries

NODE_SH = REPO / "deploy" / "node.sh"
OWNER_KEY = "0x" + DEVNET_DEPLOYER_KEY.reveal().hex()
OWNER = LocalSigner(DEVNET_DEPLOYER_KEY).address
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
NOTHING_CHANGED = "done: nothing changed (no transaction, no boot, no restart)"


@dataclass
class Routine:
    """Runs ``deploy/node.sh`` against one lab, its logs and state in the test's directory."""

    lab: LabCli
    root: Path
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        defaults = {
            "MESH_VERIFY_TIMEOUT": "120",
            "MESH_VERIFY_INTERVAL": "0.5",
            "ATTESTMESH_OWNER_KEY": OWNER_KEY,  # the devnet provider's default; set so redaction is tested
        }
        self.runner = RoutineRunner(self.lab, self.root, NODE_SH, defaults)

    @property
    def log_dir(self) -> Path:
        return self.runner.log_dir

    def run(
        self, node: str, verb: str, *, check: bool = True, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        proc = self.runner.run(node, verb, timeout=400, **extra)
        self.outputs += [proc.stdout, proc.stderr]
        if check and proc.returncode != 0:
            pytest.fail(f"node.sh {node} {verb} exited {proc.returncode}:\n{proc.stderr[-6000:]}")
        return proc

    def start(self, node: str, verb: str, **extra: str) -> subprocess.Popen[str]:
        """Start the routine in its own process group (so the test can kill it and everything it runs)."""
        return self.runner.start(node, verb, output=subprocess.PIPE, **extra)

    def kill_at(self, node: str, verb: str, pattern: re.Pattern[str], what: str, **extra: str) -> None:
        """Start ``node.sh NODE VERB`` and kill its whole process group once ``pattern`` appears in the
        run's log (a fault mid-operation); fails when the run ended before ``what``."""
        log = self.log_dir / f"node-{node}.log"
        start = log.stat().st_size if log.exists() else 0
        proc = self.start(node, verb, **extra)
        hit = wait_for_line(log, start, pattern, proc)
        if hit:
            os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=30)
        self.outputs.append(output)
        assert hit, f"the run ended before {what}:\n{output}"

    def log(self, node: str) -> str:
        return (self.log_dir / f"node-{node}.log").read_text()

    def last_run(self, node: str) -> str:
        text = self.log(node)
        return text[text.rindex(" run started (") :]


def check_logs(routine: Routine) -> None:
    """Every line of every run log carries a UTC timestamp; no secret is in a log or the routine's output."""
    secrets = (OWNER_KEY, OWNER_KEY[2:], OWNER_KEY[2:].upper())
    logs = sorted(routine.log_dir.glob("*.log"))
    assert logs, "the routine wrote no log"
    for path in logs:
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
        for line in path.read_text().splitlines():
            assert STAMP.match(line), f"{path.name}: line without a UTC timestamp: {line!r}"
    for text in [p.read_text() for p in logs] + routine.outputs:
        for secret in secrets:
            assert secret not in text


def owner_nonce(lab: LabCli) -> int:
    return int(chain(lab, lambda conn, c: conn.w3.eth.get_transaction_count(checksum(OWNER))))


def node_record(lab: LabCli, name: str) -> dict[str, Any]:
    return next(n for n in lab_state(lab)["nodes"] if n["name"] == name)


def processes(lab: LabCli, name: str) -> dict[str, tuple[int, int]]:
    return {k: (p["pid"], p["start_time"]) for k, p in node_record(lab, name)["processes"].items()}


def registrations(lab: LabCli, name: str) -> int:
    return len(log_entries(lab, f"{name}-sidecar", "registration.attempted"))


def steps_in_order(text: str, *markers: str) -> None:
    """Each marker appears in ``text``, each after the one before."""
    at = 0
    for marker in markers:
        found = text.find(marker, at)
        assert found >= 0, f"{marker!r} not found after position {at} in:\n{text}"
        at = found + len(marker)


def wait_for_line(path: Path, start: int, pattern: re.Pattern[str], proc: subprocess.Popen[str]) -> bool:
    """Poll the run log (from byte ``start``) for ``pattern``; False when the routine ended first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = path.read_text()[start:] if path.exists() else ""
        if pattern.search(text):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError(f"{pattern.pattern!r} did not appear in {path}")
