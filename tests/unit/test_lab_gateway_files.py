"""Gateway mode's files and values: the routes file, the gateway's config and limits, the URLs through the
gateway, the state file's new fields, and a gateway-mode node's sidecar environment (no lab needed)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devnet.boot import GATEWAY_INGRESS_PORT, NODE_PUBLISHED_PORTS, sidecar_env
from devnet.gateway.labca import LabCa
from devnet.labdir import DevnetError
from devnet.labgateway import GatewayLimits, gateway_config, service_url
from devnet.labreach import LabReach
from devnet.labroutes import Route, RoutesFile, bare_hex, decode, encode, route
from devnet.state import DevnetState, GatewayState, NodeState
from sidecar.settings import load_settings

APP = "0x" + "Ab" * 20
ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
INSTANCE = "cd" * 20
GATEWAY = GatewayState(
    domain="amtg.gw.test",
    address="10.219.0.3",
    ca_file="/lab/gateway/ca/ca.pem",
    health_url="http://10.219.0.3:9443/metrics",
    routes_file="/lab/gateway/routes.json",
    config_file="/lab/gateway/config.json",
)


def test_routes_file_schema() -> None:
    table = {
        INSTANCE: route(APP, "10.219.0.11", NODE_PUBLISHED_PORTS),
        "ef" * 20: route(APP, "10.219.0.5", None),
    }
    data = json.loads(encode(table))
    assert data == {
        "instances": {
            INSTANCE: {"app_id": "ab" * 20, "address": "10.219.0.11", "ports": [51900, 9090]},
            "ef" * 20: {"app_id": "ab" * 20, "address": "10.219.0.5", "ports": None},
        }
    }
    assert decode(encode(table)) == table


@pytest.mark.parametrize(
    "bad",
    [
        '{"instances": []}',
        '{"instances": {"xyz": {"app_id": "00", "address": "10.0.0.1", "ports": null}}}',
        json.dumps({"instances": {"a" * 40: {"app_id": "b" * 40, "address": "nowhere", "ports": None}}}),
        json.dumps({"instances": {"a" * 40: {"app_id": "b" * 40, "address": "10.0.0.1", "ports": [0]}}}),
    ],
)
def test_routes_file_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        decode(bad)


def test_bare_hex() -> None:
    assert bare_hex(APP) == "ab" * 20 and bare_hex(INSTANCE) == INSTANCE
    for bad in ("0x12", "zz" * 20, "ab" * 21):
        with pytest.raises(ValueError):
            bare_hex(bad)


def test_announce_and_withdraw_move_the_mtime_forward(tmp_path: Path) -> None:
    routes = RoutesFile(tmp_path / "gateway" / "routes.json")
    assert routes.read() == {}
    routes.announce(INSTANCE, route(APP, "10.219.0.11", None))
    first = routes.path.stat().st_mtime_ns
    os.utime(routes.path, ns=(first + 10**12, first + 10**12))  # a clock that jumped: never go back
    routes.announce(INSTANCE, route(APP, "10.219.0.11", NODE_PUBLISHED_PORTS))
    second = routes.path.stat().st_mtime_ns
    assert second > first + 10**12
    assert routes.read() == {INSTANCE: Route("ab" * 20, "10.219.0.11", (51900, 9090))}
    routes.announce(INSTANCE, route(APP, "10.219.0.11", NODE_PUBLISHED_PORTS))  # the same: no write
    assert routes.path.stat().st_mtime_ns == second
    routes.withdraw(INSTANCE)
    assert routes.read() == {} and routes.path.stat().st_mtime_ns > second
    routes.withdraw(INSTANCE)  # absent: a no-op
    assert [p.name for p in routes.path.parent.iterdir()] == ["routes.json"]  # no temp file left


@given(st.lists(st.sampled_from(["announce-null", "announce-ports", "withdraw"]), max_size=8))
def test_every_write_is_seen_by_an_mtime_poller(
    tmp_path_factory: pytest.TempPathFactory, ops: list[str]
) -> None:
    routes = RoutesFile(tmp_path_factory.mktemp("routes") / "routes.json")
    routes.write({})
    seen = routes.path.stat().st_mtime_ns
    for op in ops:
        before = routes.read()
        if op == "withdraw":
            routes.withdraw(INSTANCE)
        else:
            routes.announce(INSTANCE, route(APP, "10.219.0.11", None if op == "announce-null" else (51900,)))
        now = routes.path.stat().st_mtime_ns
        assert (now > seen) == (routes.read() != before)  # changed exactly when the table changed
        seen = now


def test_gateway_config_and_limits() -> None:
    ca = LabCa(
        ca_cert=Path("/ca.pem"),
        ca_key=Path("/ca.key"),
        cert=Path("/cert.pem"),
        key=Path("/key.pem"),
        domain="amtg.gw.test",
    )
    config = gateway_config(
        address=IPv4Address("10.219.0.3"),
        domain="amtg.gw.test",
        ca=ca,
        routes_file=Path("/routes.json"),
        limits=GatewayLimits().with_overrides({"lifetime": "20", "max_connections_per_app": "3"}),
    )
    assert config == {
        "listen": "10.219.0.3:443",
        "domain": "amtg.gw.test",
        "cert_file": "/cert.pem",
        "key_file": "/key.pem",
        "routes_file": "/routes.json",
        "metrics_listen": "10.219.0.3:9443",
        "connect_timeout": 5.0,
        "handshake_timeout": 5.0,
        "idle_timeout": 600.0,
        "idle_checks_per_window": 4,
        "lifetime": 20.0,
        "max_connections_per_app": 3,
        "route_poll_interval": 0.2,
    }
    assert isinstance(config["max_connections_per_app"], int)
    for bad in ({"lifetimes": "1"}, {"lifetime": "soon"}, {"lifetime": "0"}, {"idle_timeout": "-1"}):
        with pytest.raises(DevnetError):
            GatewayLimits().with_overrides(bad)
    assert GatewayLimits().with_overrides({"max_connections_per_app": "0"}) == GatewayLimits()


def test_urls_through_the_gateway() -> None:
    assert service_url("https", APP, 9090, "amtg.gw.test", "/healthz") == (
        f"https://{'ab' * 20}-9090.amtg.gw.test/healthz"
    )
    reach = LabReach(GATEWAY)
    assert reach.through_gateway(f"https://{'ab' * 20}-9090.amtg.gw.test/healthz")
    assert reach.through_gateway("https://amtg.gw.test/")
    assert not reach.through_gateway("https://xamtg.gw.test/") and not reach.through_gateway(
        "http://10.219.0.11/"
    )
    assert not LabReach().through_gateway(f"https://{'ab' * 20}-9090.amtg.gw.test/healthz")


def _node() -> NodeState:
    return NodeState(
        name="node-1", index=1, netns="amtg-node-1", app_id=APP, instance_id=INSTANCE,
        compose_hash="0x" + "ef" * 32, compose_path="/lab/nodes/node-1/app-compose.json",
        underlay_ip="10.219.0.11",
        dstack_socket="/lab/nodes/node-1/dstack.sock", wg_uapi_dir="/lab/nodes/node-1/wg",
        wg_socket="/lab/nodes/node-1/wg/attestmesh0.sock", health_url="http://10.219.0.11:9090/healthz",
        gateway_health_url=f"https://{'ab' * 20}-9090.amtg.gw.test/healthz",
    )  # fmt: skip


def test_state_round_trip_and_an_old_state_file_is_a_direct_lab() -> None:
    state = DevnetState(
        lab="amtg", underlay="10.219.0.0/24", mesh_cidr="10.19.0.0/16", transport="gateway", gateway=GATEWAY,
        nodes=(_node(),),
    )  # fmt: skip
    data = json.loads(json.dumps(state.to_json()))
    assert data["transport"] == "gateway"
    assert {k: data["gateway"][k] for k in ("domain", "address", "ca_file", "health_url")} == {
        "domain": "amtg.gw.test",
        "address": "10.219.0.3",
        "ca_file": "/lab/gateway/ca/ca.pem",
        "health_url": "http://10.219.0.3:9443/metrics",
    }
    assert data["nodes"][0]["gateway_health_url"] == f"https://{'ab' * 20}-9090.amtg.gw.test/healthz"
    assert DevnetState.from_json(data) == state and state.gateway_mode
    for key in ("transport", "gateway"):
        del data[key]
    del data["nodes"][0]["gateway_health_url"]
    old = DevnetState.from_json(data)
    assert old.transport == "direct" and old.gateway is None and not old.gateway_mode
    assert old.nodes[0].gateway_health_url == ""


def test_sidecar_env_by_transport() -> None:
    node = _node()
    direct = DevnetState(
        lab="amtg", underlay="10.219.0.0/24", mesh_cidr="10.19.0.0/16", transport="direct", chain_id=31337,
        cluster=ADDRESS, member_app_factory=ADDRESS, kms_root=ADDRESS,
    )  # fmt: skip
    env = sidecar_env(direct, node)
    assert env["ATTESTMESH_ENDPOINT"] == "10.219.0.11:51820"
    assert not {"ATTESTMESH_GATEWAY_DOMAIN", "ATTESTMESH_GATEWAY_PORT", "ATTESTMESH_CA_FILE"} & set(env)
    gateway = replace(direct, transport="gateway", gateway=GATEWAY)
    env = sidecar_env(gateway, node)
    assert "ATTESTMESH_ENDPOINT" not in env
    assert env["ATTESTMESH_GATEWAY_DOMAIN"] == "amtg.gw.test"
    assert env["ATTESTMESH_GATEWAY_PORT"] == str(GATEWAY_INGRESS_PORT) == "51900"
    assert env["ATTESTMESH_CA_FILE"] == GATEWAY.ca_file
    with pytest.raises(DevnetError, match="no gateway"):
        sidecar_env(replace(gateway, gateway=None), node)


def test_a_gateway_mode_sidecar_env_is_one_the_sidecar_accepts(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(
        "-----BEGIN CERTIFICATE-----\n"
    )  # the sidecar checks the file is readable, not its contents
    state = DevnetState(
        lab="amtg", underlay="10.219.0.0/24", mesh_cidr="10.19.0.0/16", rpc_url="http://10.219.0.2:8545",
        chain_id=31337, cluster=ADDRESS, indexer_registry=ADDRESS, member_app_factory=ADDRESS,
        kms_root=ADDRESS, transport="gateway", gateway=replace(GATEWAY, ca_file=str(ca)),
    )  # fmt: skip
    env = {k: v for k, v in sidecar_env(state, _node()).items() if k.startswith(("ATTESTMESH_", "DSTACK_"))}
    settings = load_settings(env)
    assert settings.mesh.gateway_domain == "amtg.gw.test" and settings.mesh.endpoint is None
    assert settings.mesh.gateway_port == 51900 and settings.events.ca_file == ca
