"""The lab's Prometheus (``attestmesh devnet up --monitoring``): the shipped rules over every node and the
indexer.

Owns the lab's monitoring files (``<lab dir>/monitoring/``: the Prometheus configuration, the target files,
the TSDB), starting Prometheus (the Debian package's binary, recorded by ``procs.spawn`` and so stopped by
``devnet down``) and waiting until it answers, and writing the target files from the lab's state again
when a node is added. The configuration is ``deploy/monitoring/prometheus.yml`` as shipped, with the lab's
short intervals, the shipped ``attestmesh-rules.yml``, the lab's target files and (gateway mode) the lab
CA put in.

Where it runs: gateway mode (the default) in the gateway's namespace, listening on the gateway's lab
address; the lab DNS is that namespace's resolver, so it scrapes ``https://<app id>-9090.<lab domain>/
metrics`` through the gateway as an operator's Prometheus scrapes a real cluster (the nodes' firewalls admit
nothing else). Direct mode: in the hub's namespace, on the hub's address, scraping the nodes' underlay
addresses over plain HTTP.
Must not: listen anywhere but a lab address, scrape anything but the lab's own services, or take the lab
lock (the ``Devnet`` facade does).
"""

from __future__ import annotations

import shutil
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import structlog
import yaml

from devnet import procs
from devnet.labdir import DevnetError, LabDir
from devnet.netns import LabNetwork, set_resolver
from devnet.state import DevnetState
from ops.jsonget import Unreachable, get_json
from ops.scrapetargets import INDEXER_TARGETS, NODE_TARGETS, target_groups, write_file_sd

log = structlog.get_logger("devnet.monitoring")

SHIPPED: Final = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
PROMETHEUS_PORT: Final = 9095
#: The lab's scrape and rule-evaluation interval (the shipped file says 30 s): alerts follow the lab's
#: faults within a second or two of their ``for`` hold time.
LAB_INTERVAL: Final = "1s"
START_TIMEOUT: Final = 30.0


def lab_prometheus_config(
    shipped: dict[str, Any], *, rules: Path, targets: Path, ca_file: str | None
) -> dict[str, Any]:
    """The shipped configuration with the lab's intervals, rules file, target files and CA (None: the lab
    has no gateway, its services are scraped over plain HTTP)."""
    config = dict(shipped)
    config["global"] = {
        **shipped.get("global", {}),
        "scrape_interval": LAB_INTERVAL,
        "scrape_timeout": LAB_INTERVAL,
        "evaluation_interval": LAB_INTERVAL,
    }
    config["rule_files"] = [str(rules)]
    jobs = []
    for shipped_job in shipped["scrape_configs"]:
        job = dict(shipped_job)
        job["file_sd_configs"] = [
            {**sd, "files": [str(targets / Path(f).name) for f in sd["files"]]}
            for sd in job["file_sd_configs"]
        ]
        if ca_file is None:
            job["scheme"] = "http"
            job.pop("tls_config", None)
        else:
            job["tls_config"] = {**job.get("tls_config", {}), "ca_file": ca_file}
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


def _address(url: str) -> str:
    """``host:port`` of a service URL (``:443`` for ``https`` without a port)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None:
        raise DevnetError(f"no host in {url!r}")
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def lab_targets(state: DevnetState) -> tuple[dict[str, str], dict[str, str]]:
    """The lab's scrape targets, ``instance (app id hex) -> address``: the nodes', the indexer's. Through
    the gateway in gateway mode (the URLs the lab reads health from), else the underlay addresses."""
    gw = state.gateway_mode
    nodes = {
        n.app_id.lower().removeprefix("0x"): _address(n.gateway_health_url if gw else n.health_url)
        for n in state.nodes
    }
    indexer: dict[str, str] = {}
    if state.indexer is not None:
        idx = state.indexer
        url = idx.gateway_health_url if gw else idx.health_url
        indexer[idx.app_id.lower().removeprefix("0x")] = _address(url)
    return nodes, indexer


class LabMonitoring:
    """The Prometheus of one lab; every method takes the lab's state and saves what it changes."""

    def __init__(self, files: LabDir, network: LabNetwork) -> None:
        self.files = files
        self.network = network

    @property
    def directory(self) -> Path:
        return self.files.root / "monitoring"

    def write_targets(self, state: DevnetState) -> None:
        """Write the target files from the lab's state (Prometheus re-reads them)."""
        nodes, indexer = lab_targets(state)
        targets = self.directory / "targets"
        write_file_sd(targets / NODE_TARGETS, target_groups(state.cluster, nodes))
        write_file_sd(targets / INDEXER_TARGETS, target_groups(state.cluster, indexer))

    def start(self, state: DevnetState) -> DevnetState:
        """Write the configuration and the targets, start Prometheus, return once its API answers."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise DevnetError("prometheus is not installed (scripts/setup.sh installs the Debian package)")
        if state.gateway_mode:
            if state.gateway is None:
                raise DevnetError("gateway mode, but the lab has no gateway yet")
            ns, address, ca_file = self.network.plan.gateway.ns, state.gateway.address, state.gateway.ca_file
            set_resolver(ns, self.network.plan.gateway.ip)  # the lab DNS: the gateway names resolve
        else:
            ns, address, ca_file = self.network.plan.hub_ns, str(self.network.plan.hub_ip), None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_targets(state)
        shipped = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
        config = lab_prometheus_config(
            shipped,
            rules=SHIPPED / "attestmesh-rules.yml",
            targets=self.directory / "targets",
            ca_file=ca_file,
        )
        config_file = self.directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        url = f"http://{address}:{PROMETHEUS_PORT}"
        proc = procs.spawn(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address={address}:{PROMETHEUS_PORT}",
            ],
            name="prometheus",
            netns=ns,
            log_path=self.files.logs / "prometheus.log",
        )
        state = self.files.save(
            replace(state, processes={**state.processes, "prometheus": proc}, monitoring_url=url)
        )

        def ready() -> bool:
            if not procs.is_alive(proc):
                raise DevnetError(
                    f"prometheus exited during start-up; see {self.files.logs / 'prometheus.log'}"
                )
            try:
                return get_json(f"{url}/api/v1/status/buildinfo", timeout=0.5).ok
            except Unreachable:
                return False

        procs.wait_for(ready, START_TIMEOUT, interval=0.1, what=f"prometheus at {url}")
        log.info("devnet.monitoring_started", pid=proc.pid, url=url, netns=ns)
        return state
