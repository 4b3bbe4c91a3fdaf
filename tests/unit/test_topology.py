"""The lab plan: name rules and every derived name and address (pure, no I/O)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devnet.topology import (
    BLACKHOLE_METRIC,
    DEFAULT_TRANSPORT,
    LabPlan,
    TopologyError,
    validate_lab_name,
    validate_node_index,
    validate_node_name,
    validate_transport,
)

IFNAMSIZ = 15
LAB_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def test_default_plan_names_and_addresses() -> None:
    plan = LabPlan()
    assert plan.name == "amlab"
    assert plan.underlay == IPv4Network("10.213.0.0/24")
    assert plan.mesh == IPv4Network("10.13.0.0/16")
    assert plan.hub_ns == "amlab-hub"
    assert plan.bridge == "br0"
    assert plan.hub_ip == IPv4Address("10.213.0.2")
    assert plan.root_veth == "amlab-root"
    assert plan.root_ip == IPv4Address("10.213.0.1")
    assert plan.prefixlen == 24
    assert plan.sweep_prefix == "amlab-"
    assert plan.blackhole_prefixes == (IPv4Network("10.213.0.0/24"), IPv4Network("10.13.0.0/16"))
    assert BLACKHOLE_METRIC == 4242


def test_node_attachment() -> None:
    node = LabPlan().node("node-1", 1)
    assert node.name == "node-1"
    assert node.ns == "amlab-node-1"
    assert node.ip == IPv4Address("10.213.0.11")
    assert node.prefixlen == 24
    assert node.iface == "eth0"
    assert node.hub_port == "v1"
    assert node.veth_temp == "amlab-v1"
    assert LabPlan().node("node-200", 200).ip == IPv4Address("10.213.0.210")


def test_indexer_slot() -> None:
    idx = LabPlan(name="amtc", underlay=IPv4Network("10.214.0.0/24")).indexer
    assert (idx.ns, idx.ip, idx.iface, idx.hub_port) == (
        "amtc-idx",
        IPv4Address("10.214.0.5"),
        "eth0",
        "vidx",
    )


def test_gateway_slot_and_domain() -> None:
    plan = LabPlan(name="amtg", underlay=IPv4Network("10.219.0.0/24"), mesh=IPv4Network("10.19.0.0/16"))
    gw = plan.gateway
    assert (gw.name, gw.ns, gw.ip, gw.iface, gw.hub_port, gw.veth_temp) == (
        "gw",
        "amtg-gw",
        IPv4Address("10.219.0.3"),
        "eth0",
        "vgw",
        "amtg-vgw",
    )
    assert gw.ns.startswith(plan.sweep_prefix)
    assert plan.gateway_domain == "amtg.gw.test"
    assert LabPlan().gateway_domain == "amlab.gw.test"


def test_transports() -> None:
    assert DEFAULT_TRANSPORT == "gateway"
    assert validate_transport("gateway") == "gateway" and validate_transport("direct") == "direct"
    for bad in ("udp", "", "Gateway"):
        with pytest.raises(TopologyError, match="transport"):
            validate_transport(bad)


@pytest.mark.parametrize("index", [0, 201, -1, True])
def test_node_index_out_of_range(index: int) -> None:
    with pytest.raises(TopologyError):
        LabPlan().node_ip(index)


@pytest.mark.parametrize(
    ("underlay", "mesh"),
    [
        ("10.213.0.0/16", "10.13.0.0/16"),  # not a /24
        ("10.13.5.0/24", "10.13.0.0/16"),  # overlaps the mesh
        ("8.8.8.0/24", "10.13.0.0/16"),  # public
        ("10.213.0.0/24", "1.0.0.0/16"),  # public mesh
        ("127.0.0.0/24", "10.13.0.0/16"),  # loopback
        ("169.254.1.0/24", "10.13.0.0/16"),  # link-local
    ],
)
def test_rejected_prefixes(underlay: str, mesh: str) -> None:
    with pytest.raises(TopologyError):
        LabPlan(underlay=IPv4Network(underlay), mesh=IPv4Network(mesh))


def test_plan_is_frozen_and_hashable() -> None:
    plan = LabPlan()
    with pytest.raises(AttributeError):
        plan.name = "other"  # type: ignore[misc]
    assert hash(plan) == hash(LabPlan())


@given(st.text(alphabet=LAB_ALPHABET, min_size=1, max_size=6))
def test_valid_lab_names_fit_interface_names(name: str) -> None:
    plan = LabPlan(name=validate_lab_name(name))
    assert len(plan.root_veth) <= IFNAMSIZ
    assert len(plan.node("n", 200).veth_temp) <= IFNAMSIZ
    assert len(plan.indexer.veth_temp) <= IFNAMSIZ
    assert len(plan.gateway.veth_temp) <= IFNAMSIZ
    assert "-" not in name  # so no lab's sweep prefix is a prefix of another lab's


@given(st.text(max_size=12))
def test_lab_name_rule(name: str) -> None:
    valid = re.fullmatch(r"[a-z0-9]{1,6}", name) is not None
    if valid:
        assert validate_lab_name(name) == name
    else:
        with pytest.raises(TopologyError):
            LabPlan(name=name)


@given(st.text(alphabet=LAB_ALPHABET + "-_.A/ ", max_size=30))
def test_node_name_rule(name: str) -> None:
    valid = (
        re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) is not None
        and len(name) <= 24
        and not name.endswith("-")
        and name not in {"hub", "idx", "root", "gw"}
    )
    if valid:
        assert validate_node_name(name) == name
        assert LabPlan().node_ns(name) == f"amlab-{name}"
    else:
        with pytest.raises(TopologyError):
            validate_node_name(name)


@pytest.mark.parametrize(
    "name", ["hub", "idx", "root", "gw", "-node", "node-", "Node-1", "node_1", "", "a" * 25]
)
def test_rejected_node_names(name: str) -> None:
    with pytest.raises(TopologyError):
        LabPlan().node(name, 1)


@given(st.integers(min_value=1, max_value=200))
def test_node_ips_are_distinct_hosts_in_the_underlay(index: int) -> None:
    plan = LabPlan()
    ip = plan.node_ip(index)
    assert ip in plan.underlay
    assert ip not in {
        plan.root_ip,
        plan.hub_ip,
        plan.gateway.ip,
        plan.indexer.ip,
        plan.underlay.broadcast_address,
    }
    assert validate_node_index(index) == index


@given(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True))
def test_bridge_mac_is_a_stable_locally_administered_unicast(name: str) -> None:
    mac = LabPlan(name).bridge_mac
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac)
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert LabPlan(name).bridge_mac == mac


def test_bridge_macs_differ_between_labs() -> None:
    assert LabPlan("amlab").bridge_mac != LabPlan("amte").bridge_mac
