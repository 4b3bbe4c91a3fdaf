"""``attestmesh health``'s rendering of a node's ``/healthz``: where the chain reads come from (``read_at``:
the pushed position, the poller's cursor or the node's own head) and the providers' standing."""

from __future__ import annotations

import pytest

from ops.health import HealthReport
from ops.health_cmd import print_health


def report(chain: dict[str, object]) -> HealthReport:
    body = {"healthy": True, "phase": "healthy", "chain": chain}
    return HealthReport(url="https://node.example/healthz", status=200, text="", body=body)


def test_the_chain_reads_row_names_the_read_position_and_the_providers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rpc = {"providers": 3, "quorum": 2, "up": [True, False, True], "reason": "provider 2: timed out"}
    print_health(report({"reachable": True, "read_at": "push", "rpc": rpc}))
    out = capsys.readouterr().out
    assert "chain reads" in out
    line = next(row for row in out.splitlines() if "chain reads" in row)
    assert "at push" in line and "providers up 2/3" in line and "quorum 2" in line
    assert "(provider 2: timed out)" in line


def test_a_document_without_the_fields_still_renders(capsys: pytest.CaptureFixture[str]) -> None:
    print_health(report({}))
    line = next(row for row in capsys.readouterr().out.splitlines() if "chain reads" in row)
    assert "providers up" in line and "(" not in line
