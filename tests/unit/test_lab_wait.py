"""``devnet status --wait-healthy`` is never silent: each node's phase change, as the wait sees it, is one
line (``devnet.labhealth.phase_changes``), reported as it happens and only once; the wait ends when every
running node is healthy or fails at its deadline (fake clock: no real waiting)."""

from __future__ import annotations

from typing import Any

import pytest

from devnet.labdir import DevnetError
from devnet.labhealth import LabStatus, NodeHealth, phase_changes, wait_healthy


def node(name: str, phase: str | None, *, healthy: bool = False, reason: str | None = None) -> NodeHealth:
    """``phase`` None: the workload runs but /healthz does not answer; ``"off"``: it does not run."""
    healthz: dict[str, Any] | None = (
        None if phase in (None, "off") else {"phase": phase, "healthy": healthy, "reason": reason}
    )
    return NodeHealth(
        name=name, boot="allowed", simulator=True, wireguard=True, sidecar=phase != "off",
        dstack_socket=True, wg_socket=True, healthz=healthz,
    )  # fmt: skip


def test_each_change_is_one_line_and_a_steady_node_none() -> None:
    seen, lines = phase_changes({}, [node("node-1", None), node("node-2", "off")])
    assert lines == ["node-1: - -> no answer", "node-2: - -> not running"]
    seen, lines = phase_changes(
        seen, [node("node-1", "register", reason="waiting for the chain"), node("node-2", "off")]
    )
    assert lines == ["node-1: no answer -> register (waiting for the chain)"]
    seen, lines = phase_changes(
        seen, [node("node-1", "register", reason="another reason"), node("node-2", "off")]
    )
    assert lines == []  # the reason alone is not a phase change
    seen, lines = phase_changes(seen, [node("node-1", "healthy", healthy=True), node("node-2", "boot_gate")])
    assert lines == ["node-1: register -> healthy", "node-2: not running -> boot_gate"]


def test_wait_reports_changes_as_seen_and_returns_when_all_are_healthy() -> None:
    frames = [
        [node("node-1", None), node("node-2", None)],
        [node("node-1", "mesh", reason="peers 0/1 live"), node("node-2", None)],
        [node("node-1", "mesh", reason="peers 0/1 live"), node("node-2", "csk_acquire")],
        [node("node-1", "healthy", healthy=True), node("node-2", "healthy", healthy=True)],
    ]
    now = [0.0]
    reads = iter(frames)

    def read() -> LabStatus:  # the wait reads only the nodes: no lab state behind it
        return LabStatus(None, True, True, 1, 2, tuple(next(reads)))  # type: ignore[arg-type]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    lines: list[str] = []
    status = wait_healthy(read, "amtu", 60, lines.append, clock=lambda: now[0], sleep=sleep)
    assert all(n.healthz and n.healthz["healthy"] for n in status.nodes)
    assert lines == [
        "  0.0 s  node-1: - -> no answer",
        "  0.0 s  node-2: - -> no answer",
        "  0.5 s  node-1: no answer -> mesh (peers 0/1 live)",
        "  1.0 s  node-2: no answer -> csk_acquire",
        "  1.5 s  node-1: mesh -> healthy",
        "  1.5 s  node-2: csk_acquire -> healthy",
    ]


def test_wait_fails_at_its_deadline_naming_who_is_not_healthy() -> None:
    now = [0.0]

    def read() -> LabStatus:
        nodes = (node("node-1", "mesh", reason="peers 0/1 live"), node("node-2", "healthy", healthy=True))
        return LabStatus(None, True, True, 1, 2, nodes)  # type: ignore[arg-type]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    lines: list[str] = []
    with pytest.raises(DevnetError, match=r"not healthy after 3 s: \{'node-1': 'peers 0/1 live'\}"):
        wait_healthy(read, "amtu", 3, lines.append, clock=lambda: now[0], sleep=sleep)
    assert lines == ["  0.0 s  node-1: - -> mesh (peers 0/1 live)", "  0.0 s  node-2: - -> healthy"]
