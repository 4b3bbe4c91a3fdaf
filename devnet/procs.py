"""Processes the devnet starts: spawning, identity records, liveness, bounded termination, polling.

Owns: ``spawn`` (optionally inside a network namespace via ``ip netns exec``, which execs so the PID is the
program's; it returns once the child is inside the namespace), ``ProcRecord`` (name, PID and the kernel
start time from ``/proc/PID/stat`` field 22, so a recycled PID is never mistaken for ours; JSON round trip
for the state file), ``is_alive``, ``terminate`` and ``terminate_all`` (SIGTERM, bounded wait, SIGKILL,
through a pidfd so the signal can only reach the recorded process), and ``wait_for`` (poll a condition
against a deadline).
Must not: signal a process whose start time differs from the record, signal process groups or anything
found by name, or stand in for synchronisation with bare sleeps.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

T = TypeVar("T")

#: Children this process spawned, kept so they can be reaped (no zombies, no "still running" warnings).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

_STAT_STATE = 0  # index of field 3 (state) after the ")" closing field 2 (comm)
_STAT_STARTTIME = 19  # index of field 22 (starttime, clock ticks since boot) after the ")"
_GONE_STATES = frozenset({"Z", "X", "x"})
_NETNS_ENTRY_TIMEOUT = 5.0  # seconds for `ip netns exec` to enter the namespace before it execs


class ProcError(RuntimeError):
    """A process could not be started, or did not exit when told to."""


class WaitTimeout(TimeoutError):
    """A polled condition did not hold before its deadline."""


@dataclass(frozen=True, slots=True)
class ProcRecord:
    """Identity of a process we started: PID plus its start time, which a recycled PID cannot share."""

    name: str
    pid: int
    start_time: int

    def to_json(self) -> dict[str, str | int]:
        """Return a JSON-ready mapping (for the devnet state file)."""
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Self:
        """Parse a mapping written by ``to_json``; raise ``ValueError`` on anything else."""
        name, pid, start_time = data.get("name"), data.get("pid"), data.get("start_time")
        if not isinstance(name, str) or not name:
            raise ValueError("process record needs a non-empty string 'name'")
        for key, value in (("pid", pid), ("start_time", start_time)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"process record {key!r} must be a non-negative integer")
        assert isinstance(pid, int) and isinstance(start_time, int)
        if pid == 0:
            raise ValueError("process record 'pid' must be positive")
        return cls(name=name, pid=pid, start_time=start_time)


def _read_stat(pid: int) -> tuple[str, int] | None:
    """Return (state, start_time) of ``pid`` from /proc, or None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: the last ")" ends it.
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[_STAT_STATE].decode(), int(fields[_STAT_STARTTIME])


def read_start_time(pid: int) -> int | None:
    """Return the kernel start time (``/proc/PID/stat`` field 22) of ``pid``, or None if it is gone."""
    stat = _read_stat(pid)
    return None if stat is None else stat[1]


def record_for(pid: int, name: str) -> ProcRecord | None:
    """Record the process now running as ``pid`` under ``name``; None if there is none."""
    stat = _read_stat(pid)
    if stat is None or stat[0] in _GONE_STATES:
        return None
    return ProcRecord(name=name, pid=pid, start_time=stat[1])


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def reap() -> None:
    """Collect the exit status of every child spawned here that has exited."""
    for pid in list(_CHILDREN):
        _reap(pid)


def _matches(rec: ProcRecord) -> bool:
    stat = _read_stat(rec.pid)
    return stat is not None and stat[1] == rec.start_time and stat[0] not in _GONE_STATES


def is_alive(rec: ProcRecord) -> bool:
    """Tell whether the recorded process (same PID and start time) is still running."""
    _reap(rec.pid)
    return _matches(rec)


#: Set in the environment of every process ``spawn`` starts, so a process the lab started can be told from
#: one somebody else runs in the same namespace (an operator's shell, a test's ping) even when no record
#: names it (``spawned_here``). Not an ATTESTMESH_* name: the sidecar refuses variables it does not know.
SPAWN_MARKER = "AMLAB_SPAWNED"


def spawned_here(pid: int) -> bool:
    """Tell whether ``pid`` was started by ``spawn`` (its environment carries ``SPAWN_MARKER``)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return any(entry.startswith(SPAWN_MARKER.encode() + b"=") for entry in environ.split(b"\0"))


def spawn(
    argv: Sequence[str],
    *,
    name: str,
    netns: str | None,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> ProcRecord:
    """Start ``argv`` in its own session (inside ``netns`` if given), output appended to ``log_path``.

    ``env`` replaces the environment, as in ``subprocess`` (None inherits ours); either way the child
    also gets ``SPAWN_MARKER``.
    """
    if not argv:
        raise ProcError(f"{name}: empty argv")
    full = ["ip", "netns", "exec", netns, *argv] if netns is not None else list(argv)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_path.open("ab") as log:
            child = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**(os.environ if env is None else env), SPAWN_MARKER: name},
                cwd=cwd,
            )
    except OSError as exc:
        raise ProcError(f"{name}: cannot start {argv[0]!r}: {exc}") from exc
    _CHILDREN[child.pid] = child
    # Until we reap it the child's /proc entry stays (as a zombie at worst), so this read cannot miss.
    start_time = read_start_time(child.pid)
    if start_time is None:
        raise ProcError(f"{name}: pid {child.pid} vanished before it could be recorded")
    if netns is not None:
        _await_netns(child, netns, name)
    return ProcRecord(name=name, pid=child.pid, start_time=start_time)


def _await_netns(child: subprocess.Popen[bytes], netns: str, name: str) -> None:
    """Return once ``child`` lives in ``netns`` (or has exited), so a sweep of the namespace finds it.

    ``ip netns exec`` enters the namespace a moment after the fork; until then the child is in ours and a
    namespace sweep (``ip netns pids``) would miss it.
    """
    try:
        target = os.stat(f"/run/netns/{netns}")
    except OSError as exc:
        raise ProcError(f"{name}: namespace {netns!r} is not there: {exc}") from exc
    deadline = time.monotonic() + _NETNS_ENTRY_TIMEOUT
    while child.poll() is None:
        try:
            here = os.stat(f"/proc/{child.pid}/ns/net")
        except OSError:
            return  # exited between the poll and the stat
        if (here.st_dev, here.st_ino) == (target.st_dev, target.st_ino):
            return
        if time.monotonic() > deadline:
            raise ProcError(f"{name}: pid {child.pid} did not enter namespace {netns!r}")
        time.sleep(0.001)  # polling the child's namespace link, bounded by the deadline


def _open_verified(rec: ProcRecord) -> int | None:
    """Return a pidfd for the recorded process, or None if the PID is gone or now belongs to another."""
    try:
        fd = os.pidfd_open(rec.pid)
    except ProcessLookupError:
        return None
    # The record's process existed before this pidfd was opened; if the PID still carries its start time
    # now, the pidfd refers to it and signals sent through it cannot reach a successor.
    if not _matches(rec):
        os.close(fd)
        return None
    return fd


def _wait_exits(fds: dict[int, ProcRecord], deadline: float) -> None:
    """Remove from ``fds`` (and close) every pidfd whose process exits before ``deadline``."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for fd, _events in poller.poll(max(1, int(remaining * 1000))):
            poller.unregister(fd)
            os.close(fd)
            _reap(fds.pop(fd).pid)


def _signal_all(fds: dict[int, ProcRecord], sig: signal.Signals) -> None:
    for fd in list(fds):
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            os.close(fd)
            _reap(fds.pop(fd).pid)


def terminate_all(records: Iterable[ProcRecord], timeout: float = 5.0) -> list[ProcRecord]:
    """SIGTERM the recorded processes, SIGKILL those still there after ``timeout``; return any survivors.

    Records whose PID is gone or belongs to another process now are skipped.
    """
    fds: dict[int, ProcRecord] = {}
    for rec in records:
        fd = _open_verified(rec)
        if fd is None:
            _reap(rec.pid)
        else:
            fds[fd] = rec
    try:
        _signal_all(fds, signal.SIGTERM)
        _wait_exits(fds, time.monotonic() + timeout)
        if fds:
            _signal_all(fds, signal.SIGKILL)
            _wait_exits(fds, time.monotonic() + timeout)
        return list(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


def terminate(rec: ProcRecord, timeout: float = 5.0) -> None:
    """Stop the recorded process (SIGTERM, then SIGKILL after ``timeout``); no-op if it is not ours now."""
    survivors = terminate_all([rec], timeout)
    if survivors:
        raise ProcError(f"{rec.name}: pid {rec.pid} did not exit after SIGKILL")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    *,
    what: str,
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or raise ``WaitTimeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(min(interval, remaining))
