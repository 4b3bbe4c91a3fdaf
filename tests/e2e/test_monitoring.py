"""The lab's Prometheus (``devnet up --monitoring``): the shipped rules and scrape configuration, run by the
Debian package's Prometheus in the gateway's namespace, scraping every node and the indexer through the
lab's gateway. A stopped node's AttestMeshNodeUnhealthy alert fires in Prometheus's HTTP API and resolves
when the node is back; every metric the rules and the dashboard name is scraped from the lab.
"""

from __future__ import annotations

import shutil
import urllib.parse
from typing import Any

import pytest

from devnet import procs
from devnet.netns import netns_pids
from ops.jsonget import get_json
from tests.e2e.lab import PLAN, LabCli, wait_until
from tests.monitoringkit import PROMETHEUS_SERIES, dashboard_exprs, metric_names, rule_exprs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

#: The rule's ``for`` (1m) plus the lab's scrape and evaluation intervals, with room for a busy machine.
FIRING_TIMEOUT = 120.0


def api(url: str, path: str, **params: str) -> Any:
    answer = get_json(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=5.0)
    assert answer.ok, (path, answer.status)
    assert isinstance(answer.data, dict) and answer.data["status"] == "success", answer.data
    return answer.data["data"]


def unhealthy_alerts(url: str) -> dict[str, str]:
    """``instance -> state`` (pending, firing) of the AttestMeshNodeUnhealthy alerts."""
    return {
        alert["labels"]["instance"]: alert["state"]
        for alert in api(url, "/api/v1/alerts")["alerts"]
        if alert["labels"]["alertname"] == "AttestMeshNodeUnhealthy"
    }


def test_a_stopped_node_fires_node_unhealthy_and_it_resolves_when_it_returns(lab: LabCli) -> None:
    assert shutil.which("prometheus") is not None, "prometheus is missing: `make setup` installs it"
    out = lab.run("up", "--nodes", "3", "--monitoring", "--transport", "gateway", timeout=240).stdout
    state = lab.state()
    url = state.monitoring_url
    assert url == f"http://{PLAN.gateway.ip}:9095" and f"prometheus {url}" in out
    prometheus = state.processes["prometheus"]
    assert prometheus.pid in netns_pids(PLAN.gateway.ns)  # in the gateway's namespace, on its address
    lab.run("status", "--wait-healthy", "120")
    apps = {n.name: n.app_id.lower().removeprefix("0x") for n in state.nodes}
    indexer_app = state.indexer.app_id.lower().removeprefix("0x") if state.indexer else ""

    # Every node and the indexer scraped through the gateway, healthy, no node alert.
    def all_up() -> bool:
        targets = api(url, "/api/v1/targets")["activeTargets"]
        return sorted(t["labels"]["instance"] for t in targets if t["health"] == "up") == sorted(
            [*apps.values(), indexer_app]
        )

    wait_until(all_up, 30, "every node and the indexer scraped")
    targets = api(url, "/api/v1/targets")["activeTargets"]
    assert {t["scrapeUrl"] for t in targets if t["labels"]["job"] == "attestmesh-node"} == {
        f"https://{app}-9090.{PLAN.gateway_domain}:443/metrics" for app in apps.values()
    }
    assert all(t["labels"]["cluster"] == state.cluster for t in targets)
    wait_until(lambda: unhealthy_alerts(url) == {}, 10, "no node alert once the lab is healthy")

    # What the rules and the dashboard name is there, scraped from the lab (not only in a registry).
    names = {r["__name__"] for r in api(url, "/api/v1/series", **{"match[]": '{job=~"attestmesh-.*"}'})}
    named = {n for _, e in [*rule_exprs(), *dashboard_exprs()] for n in metric_names(e)} - PROMETHEUS_SERIES
    assert named <= names, sorted(named - names)

    def balances() -> list[float]:
        result = api(url, "/api/v1/query", query="attestmesh_signer_balance_ether >= 0")["result"]
        return [float(b["value"][1]) for b in result]

    read = wait_until(lambda: len(balances()) == 3 and balances(), 30, "every signer's balance read")
    assert all(9 < balance <= 10 for balance in read), read  # each signer is funded with 10 ETH at boot

    # node-2 stops: pending, then firing for node-2 only.
    lab.run("node", "stop", "node-2")
    wait_until(
        lambda: unhealthy_alerts(url).get(apps["node-2"]) == "firing", FIRING_TIMEOUT, "the alert firing"
    )
    assert unhealthy_alerts(url) == {apps["node-2"]: "firing"}

    # node-2 is back and healthy: the alert resolves (no longer listed as pending or firing).
    lab.run("node", "start", "node-2")
    lab.run("status", "--wait-healthy", "120")
    wait_until(lambda: unhealthy_alerts(url) == {}, 30, "the alert resolved")

    # `devnet down` stops the recorded Prometheus.
    lab.run("down")
    assert not procs.is_alive(prometheus)
