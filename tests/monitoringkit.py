"""Reading deploy/monitoring for the tests: the metric names a PromQL expression selects, the expressions of
the alert rules and of the Grafana dashboard, the names a real sidecar and indexer expose, and promtool.

Shared by the unit tests of the rules and the dashboard and by the lab's monitoring e2e test. Must not
import pytest or another test module.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from indexer.metrics import IndexerMetrics
from sidecar.observability import Metrics

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULES = MONITORING / "attestmesh-rules.yml"
RULE_TESTS = MONITORING / "attestmesh-rules.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
#: Series Prometheus makes itself rather than scrapes: the scrape's ``up`` and the alerts' ``ALERTS``.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})
PEER = "10.99.0.2"
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                       "and", "or", "unless", "inf", "nan"})  # fmt: skip


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is missing: `make setup` installs the Debian prometheus package"
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def exposed_names() -> set[str]:
    """Every sample name a real sidecar and a real indexer expose (``_total``, ``_bucket`` … included)."""
    sidecar = Metrics()
    # the transport's per-peer series exist once a peer is on the gateway transport: give it one
    sidecar.transport_peer_added(PEER)
    sidecar.transport_traffic.add_source(lambda: [(PEER, 1, 1, 1, 1)])
    sidecar.set_rpc_providers([True])  # per provider, as the chain link sets them when it is made
    names: set[str] = set()
    for registry in (sidecar.registry, IndexerMetrics().registry):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a scanner, not a parser: label matchers, ranges,
    strings, grouping clauses, function calls and keywords are taken out first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", text):
        name, call = match.group(1), match.group(2)
        if call is None and name not in _KEYWORDS:
            names.add(name)
    return names


def rule_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"])
            assert inner is not None, variable["query"]
            yield f"variable {variable['name']}", inner.group(1)
