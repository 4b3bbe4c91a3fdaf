"""``deploy/indexer.sh`` on the devnet (``PROVIDER=devnet``, the default) — acceptance point 5 of the deploy
issue: ``update``, ``verify`` and ``register`` behave as designed, and sidecars re-discover a re-registered
indexer; and, as for every routine, each step is logged with a UTC timestamp, no secret reaches a log, and
a run killed at each of its steps in turn and run again completes the work without a duplicate transaction.

The routine runs as an operator runs it (a real bash, ``attestmesh`` from the venv on PATH, the lab named by
the e2e lab's variables), with its log and state directories under the test's tmp_path. Assertions go
through what an operator sees: the routine's log and exit code, chain reads (``IndexerRegistry.current()``,
the registry owner's nonce, ``IndexerUpdated`` logs), the indexer's ``/status`` and each node's ``/healthz``,
and the process records of the lab's state file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devnet.anvil import DEVNET_DEPLOYER_KEY
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection, checksum
from sidecar.chain.tx import LocalSigner
from sidecar.core.ids import Address
from sidecar.core.model import IndexerRecord
from tests.e2e.lab import REPO, LabCli, RoutineRunner, chain, lab_state, wait_until
from tests.e2e.mesh import (
    DEADLINE,
    Node,
    in_push_mode,
    indexer_status,
    sidecar_pid,
    subscribers,
    wait_all_healthy,
    wait_for_every,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROUTINE = REPO / "deploy" / "indexer.sh"
NAME = "indexer-1"
OWNER = LocalSigner(DEVNET_DEPLOYER_KEY).address
OWNER_KEY = DEVNET_DEPLOYER_KEY.reveal().hex()  # the devnet's default owner key: it must never be logged
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@dataclass
class Routine:
    """``deploy/indexer.sh NAME VERB`` against the test's lab; logs and state under ``tmp``."""

    lab: LabCli
    tmp: Path
    outputs: list[str] = field(default_factory=list)  # stdout and stderr of every run

    @property
    def log(self) -> Path:
        return self.tmp / "logs" / f"indexer-{NAME}.log"

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def __post_init__(self) -> None:
        defaults = {"VERIFY_TIMEOUT": "60", "VERIFY_INTERVAL": "0.5", "STATUS_TIMEOUT": "60"}
        # TMPDIR: a killed run leaves its scratch directory here
        self.runner = RoutineRunner(self.lab, self.tmp, ROUTINE, {"TMPDIR": str(self.tmp), **defaults})

    def run(self, verb: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.runner.run(NAME, verb, **extra)

    def ok(self, verb: str, **extra: str) -> list[str]:
        """Run VERB; it must succeed. Return the routine-level lines of this run's log (not step output)."""
        start = len(self.text().splitlines())
        done = self.run(verb, **extra)
        assert done.returncode == 0, f"indexer.sh {verb} exited {done.returncode}:\n{done.stderr[-4000:]}"
        self.outputs.append(done.stdout + done.stderr)
        return run_lines(self.text(), start)

    def killed_at(self, verb: str, marker: str | Callable[[], bool], **extra: str) -> None:
        """Start VERB and kill its whole process group (SIGKILL) as soon as ``marker`` appears in the log
        (or, when it is a function, returns true)."""
        start = len(self.text())
        seen = marker if callable(marker) else lambda: marker in self.text()[start:]
        proc = self.runner.start(NAME, verb, **extra)
        try:
            wait_until(
                lambda: seen() or proc.poll() is not None,
                120,
                f"{marker!r} while indexer.sh {verb} runs",
                interval=0.02,
            )
            assert proc.poll() is None, f"indexer.sh {verb} ended before {marker!r} could be killed"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def run_lines(log: str, start: int = 0) -> list[str]:
    """``VERB: message`` of each routine-level line from line ``start`` on (step output left out)."""
    lines = log.splitlines()[start:]
    return [line.split(f" indexer {NAME} ", 1)[1] for line in lines if not re.match(rf"{STAMP}   \| ", line)]


def env_file(tmp: Path, version: int) -> str:
    """The indexer's sealed env: the key version (plus a tunable, as a real file has more than one value)."""
    path = tmp / f"indexer-v{version}.env"
    path.write_text(
        f"# the shared indexer's sealed env\nATTESTMESH_INDEXER_KEY_VERSION={version}\n"
        "ATTESTMESH_INDEXER_LOG_LEVEL=info\n"
    )
    return str(path)


def registry_record(lab: LabCli) -> IndexerRecord:
    registry = Address.from_hex(lab_state(lab)["indexer_registry"])
    return chain(lab, lambda conn, _: IndexerRegistryClient(conn, registry).current())


def owner_nonce(lab: LabCli) -> int:
    return int(chain(lab, lambda conn, _: conn.w3.eth.get_transaction_count(checksum(OWNER))))


def indexer_updates(lab: LabCli) -> int:
    """How many ``IndexerUpdated`` logs the registry has emitted (one per ``setIndexer``)."""
    registry = Address.from_hex(lab_state(lab)["indexer_registry"])

    async def count(conn: ChainConnection, _: ClusterClient) -> int:
        client = IndexerRegistryClient(conn, registry)
        topic = client.event_topic("IndexerUpdated")
        return len(await conn.get_logs([registry], 0, await conn.block_number(), [[topic]]))

    return chain(lab, count)


def indexer_pid(lab: LabCli) -> int:
    return int(lab_state(lab)["indexer"]["processes"]["indexer"]["pid"])


def status_key(lab: LabCli) -> tuple[str, int]:
    status = indexer_status(lab)
    return str(status["public_key"]), int(status["key_version"])


def assert_logs_clean(routine: Routine) -> None:
    """Every line of every deploy log is timestamped in UTC; the owner key (with or without 0x) is in no
    log and in no output of the routine."""
    logs = list((routine.tmp / "logs").iterdir())
    assert logs == [routine.log]
    text = routine.log.read_text()
    for line in text.splitlines():
        assert re.match(rf"{STAMP} ", line), f"a log line without a UTC timestamp: {line!r}"
    for output in (text, *routine.outputs):
        assert OWNER_KEY not in output.lower()  # covers 0x<key> too


def bring_up(lab: LabCli, nodes: int) -> dict[str, Node]:
    lab.run("up", "--nodes", str(nodes))
    found = wait_all_healthy(lab)
    wait_for_every(lab, found.values(), in_push_mode, "push mode after bring-up")
    wait_until(lambda: subscribers(lab) == nodes, DEADLINE, f"{nodes} subscribers on the indexer")
    return found


def every_node_pushed(lab: LabCli, found: dict[str, Node], what: str) -> None:
    """Each node back in push mode (indexer connected, per /healthz), all subscribed on the indexer."""
    wait_for_every(lab, found.values(), in_push_mode, what)
    wait_until(lambda: subscribers(lab) == len(found), DEADLINE, f"{len(found)} subscribers: {what}")


# --- update, register, verify -----------------------------------------------------------------------------


def test_update_register_verify_and_sidecars_rediscover_the_reregistered_indexer(
    lab: LabCli, tmp_path: Path
) -> None:
    found = bring_up(lab, 3)
    routine = Routine(lab, tmp_path)
    updates, nonce = indexer_updates(lab), owner_nonce(lab)

    # 1. A fresh lab: verify passes; register on the registered indexer sends nothing and says so.
    lines = routine.ok("verify")
    assert lines[-3:] == [
        "verify: step verify started",
        "verify: step verify done",
        "verify: done: nothing changed (no transaction, no deploy, no restart)",
    ]
    assert "indexer verified: healthy" in routine.text()
    lines = routine.ok("register")
    assert lines[-1] == "register: done: nothing changed (no transaction, no deploy, no restart)"
    assert "indexer already registered" in routine.text() and "; nothing changed" in routine.text()
    assert (indexer_updates(lab), owner_nonce(lab)) == (updates, nonce)

    # 2. update with key version 2: apply (the indexer restarts with the new key) -> register (one tx)
    #    -> verify; the registry names the key /status shows.
    sidecars = {name: sidecar_pid(node) for name, node in found.items()}
    before = indexer_pid(lab)
    lines = routine.ok("update", ENV_FILE=env_file(tmp_path, 2))
    steps = [line.split(": ", 1)[1] for line in lines if ": step " in line]
    assert steps == [f"step {s} {w}" for s in ("apply", "register", "verify") for w in ("started", "done")]
    assert lines[-1] == "update: done: changed apply,register,restart"
    log = routine.text()
    assert "indexer: restarted with key v2" in log and "indexer registered: " in log
    assert re.search(
        r"indexer registered: \S+ key 0x[0-9a-f]{64} code id 0x[0-9a-f]{64} tx 0x[0-9a-f]{64}", log
    )
    assert "indexer verified: healthy" in log.rsplit("step verify started", 1)[1]
    key2, version = status_key(lab)
    assert version == 2
    record = registry_record(lab)
    assert str(record.pub_key) == key2 and record.endpoint == lab_state(lab)["indexer"]["url"]
    assert (indexer_updates(lab), owner_nonce(lab)) == (updates + 1, nonce + 1)
    assert indexer_pid(lab) != before

    # 3. Every sidecar re-discovers it without a restart: same PIDs, push mode again, all subscribed.
    every_node_pushed(lab, found, "push mode with the re-registered indexer")
    assert {name: sidecar_pid(node) for name, node in found.items()} == sidecars

    # 4. update again: nothing to apply, nothing to register, no restart.
    running = indexer_pid(lab)
    lines = routine.ok("update", ENV_FILE=env_file(tmp_path, 2))
    assert lines[-1] == "update: done: nothing changed (no transaction, no deploy, no restart)"
    assert indexer_pid(lab) == running
    assert (indexer_updates(lab), owner_nonce(lab)) == (updates + 1, nonce + 1)

    # 5. The indexer runs key 3 but nobody registered it: verify fails naming the mismatch ...
    lab.run("indexer", "update", "--env-file", env_file(tmp_path, 3))
    key3, _ = status_key(lab)
    start = len(routine.text().splitlines())
    failed = routine.run("verify", VERIFY_TIMEOUT="3")
    routine.outputs.append(failed.stdout + failed.stderr)
    assert failed.returncode == 1
    log = "\n".join(routine.text().splitlines()[start:])
    assert f"the registry names key {key2} but the indexer signs with {key3} (key v3)" in log
    assert run_lines(routine.text(), start)[-1].startswith(
        "verify: FAILED: verify: the indexer is not healthy"
    )
    # ... and register fixes it (one more tx); every sidecar follows again, still without a restart.
    lines = routine.ok("register")
    assert lines[-1] == "register: done: changed register"
    assert str(registry_record(lab).pub_key) == key3
    routine.ok("verify")
    assert (indexer_updates(lab), owner_nonce(lab)) == (updates + 2, nonce + 2)
    every_node_pushed(lab, found, "push mode after the fix")
    assert {name: sidecar_pid(node) for name, node in found.items()} == sidecars
    lab_indexer: dict[str, Any] = lab.status()["indexer"]
    assert lab_indexer["running"]["registered_key"] == lab_indexer["public_key"] == key3
    assert_logs_clean(routine)


# --- killed at each step, run again -----------------------------------------------------------------------


def test_update_killed_at_each_step_and_run_again_registers_exactly_once(lab: LabCli, tmp_path: Path) -> None:
    """One update (key version 2), killed with its whole process group at the start of each step in turn —
    and once more right after its transaction was mined, before the step finished — then run to the end:
    the work is done (the indexer runs key 2, the registry names it) with exactly one setIndexer. Then one
    (key version 3) killed inside its apply, while the lab starts the new indexer: the run again keeps that
    indexer (the one in its namespace) and registers it once; after an outage, ``all`` starts it again with
    the values that update left (no transaction)."""
    found = bring_up(lab, 1)
    routine = Routine(lab, tmp_path)
    updates, nonce = indexer_updates(lab), owner_nonce(lab)
    file = env_file(tmp_path, 2)
    for marker in (
        "update: step apply started",
        "update: step register started",
        "| indexer registered: ",  # the tx is mined; the step has not finished
        "update: step verify started",
    ):
        routine.killed_at("update", marker, ENV_FILE=file)
    lines = routine.ok("update", ENV_FILE=file)
    assert lines[-1] == "update: done: nothing changed (no transaction, no deploy, no restart)"
    key2, version = status_key(lab)
    assert version == 2 and str(registry_record(lab).pub_key) == key2
    assert (indexer_updates(lab), owner_nonce(lab)) == (updates + 1, nonce + 1)
    # Each killed run left its traces and no more: every step it reached started, none of them twice done.
    log = routine.text()
    # (Whether the run killed at "indexer registered" died before or just after its "step register done"
    # line is a race with the kill; what must hold is one transaction and no step done twice in one run.)
    assert log.count("indexer registered: ") == 1
    runs = log.split("update: run started")[1:]
    assert len(runs) == 5
    for run in runs:
        done = re.findall(r"update: step (\w+) done", run)
        assert len(done) == len(set(done)), done
    assert "update: step register done" in runs[3] and "update: step register done" in runs[4]
    # The lab's indexer is the one process its state records (a second one could not have bound the port).
    status = lab.status()["indexer"]
    assert status["running"]["indexer"] is True and status["healthz"]["healthy"] is True
    every_node_pushed(lab, found, "push mode after the interrupted update")

    # Killed inside the apply: the new indexer process is in the lab's state file, the command waits for
    # its key on /status. The run again finds it running with key 3 (nothing to apply) and registers it.
    file = env_file(tmp_path, 3)
    routine.killed_at("update", lambda: lab_state(lab)["indexer"]["running_key_version"] == 3, ENV_FILE=file)
    lines = routine.ok("update", ENV_FILE=file)
    assert lines[-1] == "update: done: changed register"
    key3, version = status_key(lab)
    assert version == 3 and str(registry_record(lab).pub_key) == key3
    assert (indexer_updates(lab), owner_nonce(lab)) == (updates + 2, nonce + 2)
    idx = lab_state(lab)["indexer"]
    in_namespace = subprocess.run(
        ["ip", "netns", "pids", idx["netns"]], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    assert sorted(map(int, in_namespace)) == sorted(p["pid"] for p in idx["processes"].values())
    every_node_pushed(lab, found, "push mode after the update killed inside its apply")

    # An outage, then `all`: it starts the indexer with the values the update left in the lab's state (key
    # version 3 and the file's other value), which the registry already names: no transaction.
    lab.run("indexer", "stop")
    lines = routine.ok("all")
    assert lines[-1] == "all: done: changed start"
    assert "indexer: started with key v3" in routine.text()
    assert status_key(lab) == (key3, 3)
    idx = lab_state(lab)["indexer"]
    assert idx["sealed_env"] == idx["running_env"] == {"ATTESTMESH_INDEXER_LOG_LEVEL": "info"}
    assert (indexer_updates(lab), owner_nonce(lab)) == (updates + 2, nonce + 2)
    every_node_pushed(lab, found, "push mode after the outage")
    assert_logs_clean(routine)
