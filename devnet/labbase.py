"""What every lab command needs before it does anything: the lab's files, its plan, the lock and the
"is it running" check (``LabBase``), and ``plan_for``.

Owns nothing else, and imports nothing heavy (no chain client, no KMS, no simulator): ``devnet.lab.Devnet``
builds on it for every verb, and ``devnet.workload`` for `devnet node restart`, which loads only this and
the node's power (``devnet.boot``) so a restart costs little more than the process swap. Must not: start,
stop or change anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

from devnet import procs
from devnet.labdir import DevnetError, LabDir
from devnet.netns import LabNetwork
from devnet.state import DevnetState, load_state
from devnet.topology import LabPlan


class LabBase:
    """One lab on this machine, kept in ``root``: its files, plan, lock and running check."""

    def __init__(self, root: Path, plan: LabPlan) -> None:
        self.files = LabDir(root)
        self.root = self.files.root
        self.plan = plan
        self.network = LabNetwork(plan)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return self.files.locked()

    def load(self) -> DevnetState | None:
        return self.files.load()

    def _is_running(self, state: DevnetState) -> bool:
        anvil = state.processes.get("anvil")
        return state.complete and anvil is not None and procs.is_alive(anvil) and self.network.exists()

    def running_state(self) -> DevnetState:
        """The state of the running lab; ``DevnetError`` when it is not running."""
        return self._require_running()

    def _require_running(self) -> DevnetState:
        state = self.load()
        if state is None or not self._is_running(state):
            raise DevnetError(f"lab {self.plan.name!r} is not running; run `attestmesh devnet up` first")
        return state

    @contextlib.contextmanager
    def _running(self) -> Iterator[DevnetState]:
        """The lab lock, held while a verb changes the running lab's state."""
        with self.locked():
            yield self._require_running()


def plan_for(root: Path, lab: str, underlay: str, mesh: str) -> LabPlan:
    """The plan of the lab in ``root``: its state file wins over the given defaults."""
    state = load_state(root / "state.json")
    if state is not None:
        return LabPlan(state.lab, IPv4Network(state.underlay), IPv4Network(state.mesh_cidr))
    return LabPlan(lab, IPv4Network(underlay), IPv4Network(mesh))
