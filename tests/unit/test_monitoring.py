"""deploy/monitoring: the alert rules under promtool, and every metric a rule or a dashboard query names
against what the sidecar's and the indexer's registries really expose.

promtool comes from the Debian ``prometheus`` package (scripts/setup.sh installs it); without it these tests
fail, they do not skip. The metric names are taken from the exposition text of a real ``Metrics`` and a
real ``IndexerMetrics`` (with their process collectors), so renaming a metric fails here until the rules
and the dashboard follow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from devnet.labmonitoring import lab_prometheus_config
from ops.scrapetargets import gateway_target, target_groups, write_file_sd
from tests.monitoringkit import (
    MONITORING,
    PROMETHEUS_SERIES,
    RULE_TESTS,
    RULES,
    dashboard_exprs,
    exposed_names,
    metric_names,
    promtool,
    rule_exprs,
)


def test_the_scanner_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'count by (cluster) (count_values by (cluster) ("fingerprint", attestmesh_a{x="y"} >= 0)) > 1 '
        "or on (instance) histogram_quantile(0.99, sum by (le) (rate(attestmesh_b_bucket[$__rate_interval])))"
        " "
        'and ignoring (state) 60 * attestmesh_c offset 5m unless up{job=~"a.*"} == bool 1e3'
    )
    assert metric_names(expr) == {"attestmesh_a", "attestmesh_b_bucket", "attestmesh_c", "up"}


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in done.stdout


def test_the_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")
    }
    assert fired == {name for name, _ in rule_exprs()}


def test_a_rule_unit_test_fails_when_a_rule_changes(tmp_path: Path) -> None:
    """The promtool tests are not vacuous: the node-unhealthy rule without its down branch fails them."""
    rules = RULES.read_text().replace('min by (cluster, instance) (up{job="attestmesh-node"}) == 0\n', "", 1)
    rules = rules.replace("          or\n          max by (cluster", "          max by (cluster", 1)
    (tmp_path / "attestmesh-rules.yml").write_text(rules)
    (tmp_path / "attestmesh-rules.test.yml").write_text(RULE_TESTS.read_text())
    assert promtool("check", "rules", tmp_path / "attestmesh-rules.yml").returncode == 0
    done = promtool("test", "rules", tmp_path / "attestmesh-rules.test.yml")
    assert done.returncode != 0
    assert "AttestMeshNodeUnhealthy" in done.stdout + done.stderr


@pytest.mark.parametrize(("where", "exprs"), [("rules", rule_exprs), ("dashboard", dashboard_exprs)])
def test_every_metric_named_is_exported(where: str, exprs: Any) -> None:
    exposed = exposed_names() | PROMETHEUS_SERIES
    missing = {(title, name) for title, expr in exprs() for name in metric_names(expr) if name not in exposed}
    assert not missing, f"{where} name metrics nobody exports: {sorted(missing)}"


def test_a_renamed_metric_is_caught() -> None:
    exposed = exposed_names()
    assert "attestmesh_signer_balance_ether" in exposed
    renamed = "min by (cluster, instance) (attestmesh_signer_balance_eth) < 0.05"
    assert metric_names(renamed) - exposed == {"attestmesh_signer_balance_eth"}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule; Grafana's variables substituted)."""
    rules = [
        {
            "record": f"dashboard:query{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$cluster", ".*"),
        }
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_shipped_scrape_configuration_loads(tmp_path: Path) -> None:
    """promtool accepts prometheus.yml with the rules beside it and target files as the command writes."""
    for name in ("prometheus.yml", "attestmesh-rules.yml"):
        (tmp_path / name).write_text((MONITORING / name).read_text())
    app_id = "0x" + "ab" * 20
    groups = target_groups("0x" + "cd" * 20, {app_id[2:]: gateway_target(app_id, 9090, "gw.example")})
    write_file_sd(tmp_path / "targets" / "nodes.json", groups)
    write_file_sd(tmp_path / "targets" / "indexer.json", [])
    done = promtool("check", "config", tmp_path / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "targets" / "nodes.json").read_text()) == [
        {"targets": ["abababababababababababababababababababab-9090.gw.example:443"],
         "labels": {"cluster": "0x" + "cd" * 20, "instance": "ab" * 20}},
    ]  # fmt: skip


def test_the_lab_configuration_is_the_shipped_one_with_the_lab_s_values(tmp_path: Path) -> None:
    """``devnet up --monitoring``'s configuration: the shipped jobs and rules, 1 s intervals, the lab CA in
    gateway mode and plain HTTP in direct mode; promtool loads both."""
    shipped = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    ca = tmp_path / "ca.pem"
    ca.write_text("")  # promtool only checks that the file is there
    targets = tmp_path / "targets"
    write_file_sd(targets / "nodes.json", [])
    write_file_sd(targets / "indexer.json", [])
    for mode, ca_file in (("gateway", str(ca)), ("direct", None)):
        config = lab_prometheus_config(shipped, rules=RULES, targets=targets, ca_file=ca_file)
        assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
        assert config["rule_files"] == [str(RULES)]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert set(jobs) == {"attestmesh-node", "attestmesh-indexer"}
        assert jobs["attestmesh-node"]["file_sd_configs"] == [{"files": [str(targets / "nodes.json")]}]
        if ca_file is None:
            assert all(job["scheme"] == "http" and "tls_config" not in job for job in jobs.values())
        else:
            assert all(
                job["scheme"] == "https" and job["tls_config"] == {"ca_file": ca_file}
                for job in jobs.values()
            )
        path = tmp_path / f"{mode}.yml"
        path.write_text(yaml.safe_dump(config))
        done = promtool("check", "config", path)
        assert done.returncode == 0, done.stdout + done.stderr
