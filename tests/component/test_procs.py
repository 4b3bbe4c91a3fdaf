"""Process records: JSON round trip, identity by start time, bounded termination, polling."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devnet import procs
from devnet.procs import ProcRecord

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[ProcRecord]:
    rec = procs.spawn(["sleep", "30"], name="sleeper", netns=None, log_path=tmp_path / "sleep.log")
    try:
        yield rec
    finally:
        procs.terminate(rec, timeout=2.0)
        assert not procs.is_alive(rec)


def test_record_json_round_trip() -> None:
    rec = ProcRecord(name="anvil", pid=4242, start_time=123456)
    assert ProcRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"name": "", "pid": 1, "start_time": 1},
        {"name": "x", "pid": 0, "start_time": 1},
        {"name": "x", "pid": -3, "start_time": 1},
        {"name": "x", "pid": "12", "start_time": 1},
        {"name": "x", "pid": True, "start_time": 1},
        {"name": "x", "pid": 12},
    ],
)
def test_record_from_json_rejects(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ProcRecord.from_json(data)


def test_spawn_records_start_time_and_logs(tmp_path: Path) -> None:
    log = tmp_path / "echo.log"
    rec = procs.spawn(["sh", "-c", "echo out; echo err >&2"], name="echo", netns=None, log_path=log)
    assert rec.start_time > 0
    procs.wait_for(lambda: not procs.is_alive(rec), 5.0, what="echo to exit")
    assert log.read_text().split() == ["out", "err"]


def test_spawn_env_and_cwd(tmp_path: Path) -> None:
    log = tmp_path / "env.log"
    rec = procs.spawn(
        ["sh", "-c", 'echo "$GREETING" "$(pwd)"'],
        name="env",
        netns=None,
        log_path=log,
        env={"GREETING": "hi", "PATH": os.environ["PATH"]},
        cwd=tmp_path,
    )
    procs.wait_for(lambda: not procs.is_alive(rec), 5.0, what="env to exit")
    assert log.read_text().split() == ["hi", str(tmp_path)]


def test_spawn_missing_program_raises(tmp_path: Path) -> None:
    with pytest.raises(procs.ProcError):
        procs.spawn(["/nonexistent/program"], name="missing", netns=None, log_path=tmp_path / "m.log")


def test_own_session(sleeper: ProcRecord) -> None:
    assert os.getsid(sleeper.pid) == sleeper.pid


def test_terminate_refuses_a_pid_with_another_start_time(sleeper: ProcRecord) -> None:
    impostor = ProcRecord(name="impostor", pid=sleeper.pid, start_time=sleeper.start_time + 1)
    assert procs.is_alive(sleeper)
    assert not procs.is_alive(impostor)
    procs.terminate(impostor, timeout=0.5)
    assert procs.is_alive(sleeper)


def test_terminate_stops_the_process(sleeper: ProcRecord) -> None:
    started = time.monotonic()
    procs.terminate(sleeper, timeout=2.0)
    assert time.monotonic() - started < 1.0  # sleep exits on SIGTERM: no SIGKILL deadline spent
    assert not procs.is_alive(sleeper)
    assert procs.read_start_time(sleeper.pid) is None  # reaped, not a zombie
    procs.terminate(sleeper)  # gone: a no-op


def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    rec = procs.spawn(
        # An ignored signal stays ignored across exec: this sleep shrugs off SIGTERM, with no helper child.
        ["sh", "-c", "trap '' TERM; echo ready; exec sleep 30"],
        name="stubborn",
        netns=None,
        log_path=tmp_path / "stubborn.log",
    )
    try:
        procs.wait_for(lambda: "ready" in (tmp_path / "stubborn.log").read_text(), 5.0, what="trap installed")
        started = time.monotonic()
        procs.terminate(rec, timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 2.0
        assert not procs.is_alive(rec)
    finally:
        procs.terminate(rec, timeout=0.3)


def test_wait_for_returns_the_value_and_times_out() -> None:
    values = iter([0, None, "", "done"])
    assert procs.wait_for(lambda: next(values), 1.0, 0.001, what="a value") == "done"
    started = time.monotonic()
    with pytest.raises(procs.WaitTimeout, match="never"):
        procs.wait_for(lambda: False, 0.1, 0.01, what="never")
    assert 0.1 <= time.monotonic() - started < 0.5
