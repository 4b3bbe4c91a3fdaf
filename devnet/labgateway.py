"""The lab's gateway (gateway mode): the dstack gateway stand-in and the lab DNS in ``<lab>-gw``, and the
CVMs behind it.

Owns the gateway's files (``<lab dir>/gateway/``: the lab CA and the gateway's wildcard certificate made by
``devnet.gateway.labca``, the gateway's config and its routes file), starting and stopping the stand-in
(``python -m devnet.gateway --config FILE``, recorded by ``procs.spawn``) and dnsmasq (``devnet.labdns``)
and waiting until they answer, the limits a lab may set on the gateway (``GatewayLimits``), putting a CVM's
namespace behind the gateway (``enclose``: its resolver is the lab DNS, its firewall admits the gateway
only), and the URLs of a CVM's services through the gateway (``service_url``).
Must not: take the lab lock or check that the lab runs (the ``Devnet`` facade does), decide when a CVM boots
(``devnet.boot``, ``devnet.labindexer`` announce their routes through ``devnet.labroutes``), or reach
anything but the gateway's lab address.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from devnet import firewall, labdns, procs
from devnet.labdir import DevnetError, LabDir
from devnet.labroutes import RoutesFile, bare_hex, route
from devnet.netns import LabNetwork, set_resolver
from devnet.state import DevnetState, GatewayState
from ops.jsonget import Unreachable, get_json

if TYPE_CHECKING:
    from devnet.gateway.labca import LabCa

log = structlog.get_logger("devnet.gateway")

GATEWAY_PORT: Final = 443
METRICS_PORT: Final = 9443
START_TIMEOUT: Final = 20.0


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """The stand-in's limits, dstack-gateway's defaults (seconds; 0 connections: unlimited). A lab may set
    them short (``devnet gateway start --set lifetime=20``) to make a fault happen within a test."""

    connect_timeout: float = 5.0
    handshake_timeout: float = 5.0
    idle_timeout: float = 600.0
    idle_checks_per_window: int = 4
    lifetime: float = 18000.0
    max_connections_per_app: int = 0
    route_poll_interval: float = 0.2

    def with_overrides(self, values: Mapping[str, str]) -> GatewayLimits:
        """These limits with ``values`` (``name -> number`` as text) applied; ``DevnetError`` on an unknown
        name or a bad number."""
        known = {f.name: f.type for f in fields(self)}
        parsed: dict[str, Any] = {}
        for name, text in values.items():
            if name not in known:
                raise DevnetError(f"unknown gateway limit {name!r} (known: {', '.join(sorted(known))})")
            try:
                number: float | int = int(text) if known[name] == "int" else float(text)
            except ValueError:
                raise DevnetError(f"gateway limit {name} must be a number, got {text!r}") from None
            # Only a connection count may be 0 (unlimited); a duration or a check count must be positive.
            if number < 0 or (number == 0 and name != "max_connections_per_app"):
                raise DevnetError(f"gateway limit {name} must be positive, got {text!r}")
            parsed[name] = number
        return replace(self, **parsed)


def gateway_config(
    *, address: IPv4Address, domain: str, ca: LabCa, routes_file: Path, limits: GatewayLimits
) -> dict[str, object]:
    """The stand-in's ``--config`` document."""
    return {
        "listen": f"{address}:{GATEWAY_PORT}",
        "domain": domain,
        "cert_file": str(ca.cert),
        "key_file": str(ca.key),
        "routes_file": str(routes_file),
        "metrics_listen": f"{address}:{METRICS_PORT}",
        **asdict(limits),
    }


def service_url(scheme: str, app_id: str, port: int, domain: str, path: str) -> str:
    """A CVM service's URL through the gateway: ``<scheme>://<app_id hex>-<port>.<domain><path>``."""
    return f"{scheme}://{bare_hex(app_id)}-{port}.{domain}{path}"


def enclose(state: DevnetState, ns: str) -> None:
    """Put a CVM's namespace behind the gateway (gateway mode; a no-op in direct mode): the lab DNS is its
    resolver and its firewall admits inbound traffic from the gateway only."""
    if not state.gateway_mode:
        return
    if state.gateway is None:
        raise DevnetError("gateway mode, but the lab has no gateway yet")
    address = IPv4Address(state.gateway.address)
    set_resolver(ns, address)
    firewall.apply(ns, address)


def routes_of(state: DevnetState) -> RoutesFile | None:
    """The routes file the lab's CVMs announce themselves in (None in direct mode)."""
    return RoutesFile(Path(state.gateway.routes_file)) if state.gateway is not None else None


def announce_route(
    state: DevnetState, instance_id: str, app_id: str, address: str, ports: tuple[int, ...] | None
) -> None:
    """Gateway mode: a CVM's route in the gateway's table (``ports`` None: its port policy not known yet),
    as the real gateway learns it from the CVM's registration. A no-op in direct mode."""
    routes = routes_of(state)
    if routes is not None:
        routes.announce(instance_id, route(app_id, address, ports))


def withdraw_route(state: DevnetState, instance_id: str) -> None:
    """Gateway mode: the CVM is off, so the gateway has no route to it. A no-op in direct mode."""
    routes = routes_of(state)
    if routes is not None:
        routes.withdraw(instance_id)


def _listening(ns: str, address: str, port: int) -> bool:
    """Whether a TCP socket listens on ``address:port`` in ``ns``. Asked of the kernel (``ss``), not by
    connecting: a probe connection would count as a failed client in the gateway's own metrics."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-H", "-ltn", f"src {address}:{port}"],
        capture_output=True, text=True, check=False, timeout=5,
    )  # fmt: skip
    return done.returncode == 0 and bool(done.stdout.strip())


def _answers(url: str) -> bool:
    try:
        return get_json(url, timeout=0.5).ok
    except Unreachable:
        return False


class LabGateway:
    """The gateway and DNS of one lab; every method takes the lab's state and saves what it changes."""

    def __init__(self, files: LabDir, network: LabNetwork) -> None:
        self.files = files
        self.network = network

    @property
    def directory(self) -> Path:
        return self.files.gateway_dir

    def create(self, state: DevnetState) -> DevnetState:
        """The gateway namespace, the lab CA and certificate, an empty route table, dnsmasq, the gateway."""
        net = self.network.add_gateway()
        plan = self.network.plan
        self.directory.mkdir(parents=True, exist_ok=True)
        from devnet.gateway.labca import ensure_lab_ca  # noqa: PLC0415 - not on `node restart`'s path

        ca = ensure_lab_ca(self.directory / "ca", plan.gateway_domain)
        routes = RoutesFile(self.directory / "routes.json")
        routes.write({})
        gateway = GatewayState(
            domain=plan.gateway_domain,
            address=str(net.ip),
            ca_file=str(ca.ca_cert),
            health_url=f"http://{net.ip}:{METRICS_PORT}/metrics",
            routes_file=str(routes.path),
            config_file=str(self.directory / "config.json"),
        )
        state = self.files.save(replace(state, gateway=gateway))
        state = self._start_dns(state)
        state = self.start(state)
        log.info("devnet.gateway_created", netns=net.ns, domain=gateway.domain, address=gateway.address)
        return state

    def _start_dns(self, state: DevnetState) -> DevnetState:
        gateway = _require(state)
        address = IPv4Address(gateway.address)
        dns = labdns.start_dns(
            netns=self.network.plan.gateway.ns,
            listen=address,
            domain=gateway.domain,
            log_path=self.files.logs / "dns.log",
        )
        state = self.files.save(replace(state, processes={**state.processes, "dns": dns}))
        labdns.wait_for_dns(dns, address, gateway.domain, START_TIMEOUT)
        return state

    def start(self, state: DevnetState, limits: GatewayLimits | None = None) -> DevnetState:
        """(Re)start the gateway stand-in with ``limits`` (None: those of its config file, else the
        defaults); return once it accepts connections on :443."""
        gateway = _require(state)
        config_file = Path(gateway.config_file)
        if limits is None:
            limits = self.limits(state)
        self.stop(state)
        from devnet.gateway.labca import ensure_lab_ca  # noqa: PLC0415 - not on `node restart`'s path

        ca = ensure_lab_ca(self.directory / "ca", gateway.domain)
        config = gateway_config(
            address=IPv4Address(gateway.address),
            domain=gateway.domain,
            ca=ca,
            routes_file=Path(gateway.routes_file),
            limits=limits,
        )
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        proc = procs.spawn(
            [sys.executable, "-m", "devnet.gateway", "--config", str(config_file)],
            name="gateway",
            netns=self.network.plan.gateway.ns,
            log_path=self.files.logs / "gateway.log",
        )
        state = self.files.save(replace(state, processes={**state.processes, "gateway": proc}))

        def ready() -> bool:
            if not procs.is_alive(proc):
                raise DevnetError(
                    f"the gateway exited during start-up; see {self.files.logs / 'gateway.log'}"
                )
            ns = self.network.plan.gateway.ns
            return _listening(ns, gateway.address, GATEWAY_PORT) and _answers(gateway.health_url)

        procs.wait_for(ready, START_TIMEOUT, interval=0.05, what=f"the gateway on {gateway.address}:443")
        log.info("devnet.gateway_started", pid=proc.pid, limits=asdict(limits))
        return state

    def stop(self, state: DevnetState) -> DevnetState:
        """Stop the gateway stand-in (routes, DNS and the nodes stay: every route through it is down)."""
        _require(state)
        proc = state.processes.get("gateway")
        if proc is None:
            return state
        procs.terminate(proc)
        processes = {k: v for k, v in state.processes.items() if k != "gateway"}
        log.info("devnet.gateway_stopped", pid=proc.pid)
        return self.files.save(replace(state, processes=processes))

    def limits(self, state: DevnetState) -> GatewayLimits:
        """The limits in the gateway's config file (the defaults when there is none yet)."""
        try:
            config = json.loads(Path(_require(state).config_file).read_text())
        except FileNotFoundError:
            return GatewayLimits()
        names = {f.name for f in fields(GatewayLimits)}
        return replace(GatewayLimits(), **{k: v for k, v in config.items() if k in names})


def _require(state: DevnetState) -> GatewayState:
    if state.gateway is None or not state.gateway_mode:
        raise DevnetError(f"lab {state.lab!r} runs in {state.transport} mode: it has no gateway")
    return state.gateway
