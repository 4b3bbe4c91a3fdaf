"""The e2e toolkit: a devnet lab driven through the ``attestmesh`` command line, as an operator drives it.

Holds what the e2e tests and the lab benchmarks (``bench/devnet.py``) share: the lab's name and prefixes
(per xdist worker), the CLI wrapper (``LabCli``) and a lab directory that is always brought down again
(``lab_dir``), polling with a deadline, the state file, owner transactions on the lab chain, the lab's log
readers and the deploy-routine runner. Must not import pytest or another test module (the benchmarks use it
outside pytest), nor reach anything but loopback and the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from devnet.anvil import DEVNET_DEPLOYER_KEY
from devnet.netns import LabNetwork
from devnet.state import DevnetState, load_state
from devnet.topology import LabPlan
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
#: How a lab command is run: this interpreter's ``attestmesh``.
CLI = (sys.executable, "-m", "devnet.cli")
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
#: The transport of the labs the e2e tests build (``devnet up --transport``): ``gateway``, like a CVM, unless
#: ``ATTESTMESH_E2E_TRANSPORT=direct``; tests of a transport-specific fact pass ``--transport`` themselves.
TRANSPORT = os.environ.get("ATTESTMESH_E2E_TRANSPORT", "gateway")


class LabCommandError(AssertionError):
    """A lab command exited non-zero; the message carries the command and its stderr tail."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``predicate`` until truthy (returned) or fail at the deadline with what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class LabCli:
    """Runs ``attestmesh devnet …`` against one lab directory."""

    root: Path
    plan: LabPlan = PLAN

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ATTESTMESH_DEVNET_DIR=str(self.root),
            ATTESTMESH_LAB=self.plan.name,
            ATTESTMESH_LAB_UNDERLAY=str(self.plan.underlay),
            ATTESTMESH_LAB_MESH=str(self.plan.mesh),
            ATTESTMESH_LAB_TRANSPORT=TRANSPORT,
        )
        return env

    def argv(self, *args: str) -> list[str]:
        return [*CLI, "devnet", *args]

    def run(
        self, *args: str, check: bool = True, timeout: float = 180.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``attestmesh devnet ARGS`` (with ``env`` added to the lab's environment) and wait for it."""
        proc = subprocess.run(
            self.argv(*args),
            env={**self.env, **(env or {})},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabCommandError(
                f"`attestmesh devnet {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr[-4000:]}"
            )
        return proc

    def spawn(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """Start ``attestmesh devnet ARGS`` without waiting (its output to ``log``)."""
        with log.open("wb") as out:
            return subprocess.Popen(
                self.argv(*args), env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("status", "--json").stdout)
        return data

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def state(self) -> DevnetState:
        """The lab's state file, parsed; ``LabCommandError`` when there is none."""
        state = load_state(self.state_file)
        if state is None:
            raise LabCommandError(f"no lab state in {self.root}")
        return state


@contextlib.contextmanager
def lab_dir(plan: LabPlan = PLAN) -> Iterator[LabCli]:
    """A fresh lab directory; whatever happens, the lab is brought down and the directory removed."""
    # A short path: unix socket paths (simulator, UAPI) must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix=f"{plan.name}-", dir="/tmp"))
    cli = LabCli(root, plan)
    try:
        yield cli
    finally:
        try:
            cli.run("down", check=False)
        finally:
            LabNetwork(plan).destroy()  # the sweep by the lab's prefix, in case `down` could not finish
            shutil.rmtree(root, ignore_errors=True)


def lab_state(lab: LabCli) -> dict[str, Any]:
    """The lab's state file as it is now (cheaper than ``status``: no process runs)."""
    data: dict[str, Any] = json.loads(lab.state_file.read_text())
    return data


# --- the lab chain -------------------------------------------------------------------------------------


def as_owner(state: Mapping[str, Any], action: Callable[[ChainConnection, ClusterClient], Awaitable[T]]) -> T:
    """Run ``action`` on the chain of the lab ``state`` describes (its state file or ``status --json``), with
    a cluster client that sends as the cluster owner (the devnet's deployer)."""

    async def run() -> T:
        async with await connect(state["rpc_url"], expected_chain_id=state["chain_id"]) as conn:
            owner = TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY))
            return await action(conn, ClusterClient(conn, Address.from_hex(state["cluster"]), owner))

    return asyncio.run(run())


def chain(lab: LabCli, action: Callable[[ChainConnection, ClusterClient], Awaitable[T]]) -> T:
    """Run ``action`` against the lab's chain with a cluster client owned by the cluster owner."""
    return as_owner(lab_state(lab), action)


# --- logs ----------------------------------------------------------------------------------------------


def log_entries(lab: LabCli, name: str, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON lines of ``<lab>/logs/<name>.log`` (optionally only those of one ``event``), in order.

    Lines that are not JSON objects (a line still being written) are skipped.
    """
    entries = []
    for line in (lab.root / "logs" / f"{name}.log").read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and (event is None or entry.get("event") == event):
            entries.append(entry)
    return entries


def sidecar_log(lab: LabCli, name: str, event: str) -> list[dict[str, Any]]:
    """The node's sidecar log lines (JSON) of one event."""
    return log_entries(lab, f"{name}-sidecar", event)


# --- deploy routines -----------------------------------------------------------------------------------


@dataclass
class RoutineRunner:
    """Runs a ``deploy/*.sh`` routine as an operator does (a real bash, this venv's ``attestmesh`` and the
    tools on PATH, the lab named by its variables), its logs and state under ``tmp``."""

    lab: LabCli
    tmp: Path
    script: Path
    defaults: dict[str, str] = field(default_factory=dict)  # the routine's own knobs (timeouts, intervals)

    @property
    def log_dir(self) -> Path:
        return self.tmp / "logs"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in self.lab.env.items() if k not in ("ATTESTMESH_OWNER_KEY", "ENV_FILE")}
        path = f"{Path(sys.executable).parent}:{REPO / 'tools' / 'node_modules' / '.bin'}:{env['PATH']}"
        env.update(PATH=path, DEPLOY_LOG_DIR=str(self.log_dir), DEPLOY_STATE_DIR=str(self.tmp / "state"))
        env.update(self.defaults)
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["bash", str(self.script), *args]

    def run(self, *args: str, timeout: float = 300.0, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run the routine with ``args`` to its end (output captured; the caller checks the exit code)."""
        return subprocess.run(
            self.argv(*args), env=self.env(**extra), cwd=REPO, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip

    def start(self, *args: str, output: int = subprocess.DEVNULL, **extra: str) -> subprocess.Popen[str]:
        """Start the routine in its own process group (so a test can kill it and everything it runs)."""
        return subprocess.Popen(
            self.argv(*args), env=self.env(**extra), cwd=REPO, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT if output == subprocess.PIPE else output, text=True,
            start_new_session=True,
        )  # fmt: skip
