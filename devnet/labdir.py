"""The lab directory (default ``./.devnet``): its layout, its lock, its state file and its logs.

Owns where every file of a lab lives (``state.json``, ``logs/``, ``nodes/NAME/``, ``indexer/``,
``gateway/``, ``node-app-compose.json``), the file lock that serialises commands on one lab, the state
writes, the rotation that starts each lab's logs fresh (the previous runs' logs kept as ``logs.1/``,
``logs.2/`` …), and the error every lab command raises. Must not start, stop or inspect processes or the
network; the lab modules do that.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from devnet.state import DevnetState, load_state, save_state

T = TypeVar("T")

#: How many previous runs' log directories a lab keeps (``logs.1`` is the latest).
KEPT_LOG_RUNS = 3


class DevnetError(RuntimeError):
    """A lab command could not do what was asked; the message says why and what to run next."""


def run_async(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run one chain session (its own event loop) from the synchronous orchestrator."""

    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


class LabDir:
    """The files of one lab, kept in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    @property
    def indexer_dir(self) -> Path:
        return self.root / "indexer"

    @property
    def node_compose_file(self) -> Path:
        """The lab's node app-compose.json (its cluster's trust anchors as literals)."""
        return self.root / "node-app-compose.json"

    @property
    def gateway_dir(self) -> Path:
        return self.root / "gateway"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self) -> DevnetState | None:
        return load_state(self.state_file)

    def save(self, state: DevnetState) -> DevnetState:
        save_state(self.state_file, state)
        return state

    def fresh_logs(self, keep: int = KEPT_LOG_RUNS) -> None:
        """Start an empty ``logs/``: the previous run's move to ``logs.1/`` (older ones shift up, the oldest
        beyond ``keep`` is removed)."""
        if self.logs.is_dir() and any(self.logs.iterdir()):
            shutil.rmtree(self._rotated(keep), ignore_errors=True)
            for n in range(keep - 1, 0, -1):
                if self._rotated(n).is_dir():
                    self._rotated(n).rename(self._rotated(n + 1))
            self.logs.rename(self._rotated(1))
        self.logs.mkdir(parents=True, exist_ok=True)

    def _rotated(self, n: int) -> Path:
        return self.root / f"logs.{n}"

    def remove_lab_files(self) -> None:
        """Remove the nodes', the indexer's, the gateway's and the monitoring files and the state file (the
        logs stay for reading after ``down``)."""
        lab_files = (
            self.root / "nodes", self.indexer_dir, self.gateway_dir, self.root / "monitoring",
            self.node_compose_file,
        )  # fmt: skip
        for path in (*lab_files, self.state_file):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
