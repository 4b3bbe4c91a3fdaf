"""The gateway stand-in's pure rules: the route table (instance id first, then app id with up to three
instances, fail-closed port policy, every file problem listed), the configuration (defaults, every problem
listed), the idle watchdog's sampling (dstack's four checks per window) and the per-app connection slots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devnet.gateway.config import ConfigError, GatewayConfig
from devnet.gateway.metrics import ActiveConnections, GatewayMetrics
from devnet.gateway.relay import IdleWatch
from devnet.gateway.routes import Candidates, Instance, RouteRefused, RoutesError, RouteTable
from sidecar.envkit import HostPort

APP_A, APP_B = "a1" * 20, "b2" * 20
I1, I2, I3, I4, I5 = (f"{n}" * 40 for n in "12345")


def entry(app: str, address: str, ports: list[Any] | None) -> dict[str, Any]:
    return {"app_id": app, "address": address, "ports": ports}


TABLE = RouteTable.from_json(
    {
        "instances": {
            I1: entry(APP_A, "10.213.0.11", [51900, 9090]),
            I2.upper(): entry(APP_A.upper(), "10.213.0.12", [51900]),
            I3: entry(APP_A, "10.213.0.13", None),
            I4: entry(APP_A, "10.213.0.14", [51900]),
            I5: entry(APP_B, "10.213.0.15", None),
        }
    }
)


def test_an_instance_id_routes_to_that_instance_only() -> None:
    found = TABLE.resolve(I2, 51900)
    assert found == Candidates(APP_A, (Instance(I2, APP_A, "10.213.0.12", frozenset({51900})),))
    assert TABLE.resolve(I1.upper(), 9090) == Candidates(APP_A, (TABLE.instances[I1],))


def test_an_app_id_races_its_first_three_instances_that_allow_the_port() -> None:
    found = TABLE.resolve(APP_A, 51900)
    assert isinstance(found, Candidates)
    assert [i.instance_id for i in found.instances] == [I1, I2]  # I3's policy is unknown, I4 is the fourth
    found = TABLE.resolve(APP_A, 9090)
    assert isinstance(found, Candidates)
    assert [i.instance_id for i in found.instances] == [I1]


@pytest.mark.parametrize(
    ("route_id", "port", "reason"),
    [
        ("c3" * 20, 51900, "unknown_route"),
        (I3, 51900, "port_policy_unknown"),
        (APP_B, 51900, "port_policy_unknown"),
        (I2, 9090, "port_not_allowed"),
        (APP_A, 22, "port_policy_unknown"),  # one of the three candidates may still allow it
        (I1, 22, "port_not_allowed"),
    ],
)
def test_refusals_fail_closed(route_id: str, port: int, reason: str) -> None:
    refused = TABLE.resolve(route_id, port)
    assert isinstance(refused, RouteRefused)
    assert refused.reason == reason


def test_an_empty_table_routes_nothing() -> None:
    assert RouteTable.from_json({"instances": {}}) == RouteTable()
    assert isinstance(RouteTable().resolve(I1, 443), RouteRefused)


def test_every_problem_of_a_routes_file_is_listed() -> None:
    with pytest.raises(RoutesError) as caught:
        RouteTable.from_json(
            {
                "instances": {
                    "0x" + I1[2:]: entry(APP_A, "10.0.0.1", [1]),
                    I2: entry("nothex", "10.0.0.1.5", [0, "80", True]),
                    I3: {"app_id": APP_A, "address": "10.0.0.1"},
                    I4: {**entry(APP_A, "10.0.0.1", []), "pp": True},
                    I5: "10.0.0.1",
                },
                "version": 2,
            }
        )
    problems = caught.value.problems
    assert len(problems) == 8, problems
    assert any("unknown top-level keys ['version']" in p for p in problems)
    assert any("40 hex digits" in p and "0x" in p for p in problems)
    assert any("address must be an IPv4 address" in p for p in problems)
    assert any(".ports must be null or a list" in p for p in problems)
    assert any("lacks ['ports']" in p for p in problems)
    assert any("unknown keys ['pp']" in p for p in problems)
    assert any("must be an object" in p for p in problems)
    with pytest.raises(RoutesError):
        RouteTable.from_json([])
    with pytest.raises(RoutesError, match="twice"):
        RouteTable.from_json(
            {"instances": {APP_B: entry(APP_A, "10.0.0.1", []), APP_B.upper(): entry(APP_A, "10.0.0.2", [])}}
        )


def test_the_config_defaults_are_dstacks_and_relative_paths_follow_the_file(tmp_path: Path) -> None:
    config = GatewayConfig.from_json(
        {
            "listen": "10.213.0.3:443",
            "domain": "AMLAB.gw.test",
            "cert_file": "gateway.pem",
            "key_file": "/etc/lab/gateway.key",
            "routes_file": "routes.json",
        },
        tmp_path,
    )
    assert config == GatewayConfig(
        listen=HostPort("10.213.0.3", 443),
        domain="amlab.gw.test",
        cert_file=tmp_path / "gateway.pem",
        key_file=Path("/etc/lab/gateway.key"),
        routes_file=tmp_path / "routes.json",
        metrics_listen=None,
        connect_timeout=5.0,
        handshake_timeout=5.0,
        idle_timeout=600.0,
        idle_checks_per_window=4,
        lifetime=18000.0,
        max_connections_per_app=0,
        route_poll_interval=0.2,
    )


def test_every_config_problem_is_listed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        GatewayConfig.from_json(
            {
                "listen": "gateway.lab:443",
                "domain": "*.amlab.gw.test",
                "cert_file": "",
                "metrics_listen": "10.213.0.3:99999",
                "connect_timeout": 0,
                "idle_timeout": True,
                "lifetime": float("inf"),
                "idle_checks_per_window": 0,
                "max_connections_per_app": -1,
                "route_poll_interval": "0.2",
                "idel_timeout": 5,
            },
            tmp_path,
        )
    problems = caught.value.problems
    assert problems[0] == "unknown key 'idel_timeout'"
    assert "key_file is required" in problems and "routes_file is required" in problems
    assert len(problems) == 13, problems


def test_the_idle_watch_samples_four_times_per_window_and_resets_on_progress() -> None:
    watch = IdleWatch(idle=2.0, checks=4)
    assert (watch.tick, watch.max_idle_ticks) == (0.5, 4)
    assert [watch.stalled(0) for _ in range(4)] == [False, False, False, True]
    watch = IdleWatch(idle=2.0, checks=4)
    assert [watch.stalled(p) for p in (0, 0, 0, 1, 1, 1, 1, 1)] == [False] * 7 + [True]
    tiny = IdleWatch(idle=0.001, checks=4)  # the sampling floor: one sample per floor period
    assert (tiny.tick, tiny.max_idle_ticks) == (0.01, 1)


def test_app_slots_count_every_instance_and_kind_of_an_app() -> None:
    metrics = GatewayMetrics()
    active = ActiveConnections(metrics, max_per_app=2)
    assert active.reserve(APP_A) and active.reserve(APP_A)
    assert not active.reserve(APP_A)
    assert active.reserve(APP_B)
    active.opened(APP_A, "passthrough")
    active.opened(APP_A, "terminate")
    assert active.snapshot() == [
        {"app_id": APP_A, "kind": "passthrough", "count": 1},
        {"app_id": APP_A, "kind": "terminate", "count": 1},
    ]
    assert (
        metrics.registry.get_sample_value(
            "attestmesh_gateway_active_connections", {"kind": "passthrough", "app_id": APP_A}
        )
        == 1
    )
    active.closed(APP_A, "terminate")
    active.release(APP_A)
    assert active.reserve(APP_A)
    assert (
        metrics.registry.get_sample_value(
            "attestmesh_gateway_active_connections", {"kind": "terminate", "app_id": APP_A}
        )
        == 0
    )
    unlimited = ActiveConnections(metrics, max_per_app=0)
    assert all(unlimited.reserve(APP_A) for _ in range(100))
