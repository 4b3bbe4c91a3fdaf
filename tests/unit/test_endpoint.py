"""Registered endpoints (``sidecar.core.endpoint``): the two transports' forms, the canonical text a
node registers, a bare ``ip:port`` read as direct, the gateway route computed from an app id, and clear
refusals."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.endpoint import (
    EndpointError,
    GatewayEndpoint,
    UdpEndpoint,
    gateway_endpoint,
    parse_endpoint,
    same_endpoint,
)
from sidecar.core.ids import Address

APP = Address(bytes.fromhex("5a" * 20))


def test_direct_endpoints_with_and_without_the_scheme() -> None:
    assert parse_endpoint("10.0.0.2:51820") == UdpEndpoint(IPv4Address("10.0.0.2"), 51820)
    assert parse_endpoint("udp://10.0.0.2:51820") == UdpEndpoint(IPv4Address("10.0.0.2"), 51820)
    assert parse_endpoint("udp://[2001:db8::1]:51820") == UdpEndpoint(IPv6Address("2001:db8::1"), 51820)
    assert str(parse_endpoint("10.0.0.2:51820")) == "udp://10.0.0.2:51820"
    assert str(parse_endpoint("[2001:db8::1]:7")) == "udp://[2001:db8::1]:7"


def test_the_gateway_route_a_node_registers_names_its_own_app_and_port() -> None:
    mine = gateway_endpoint(APP, "Gw.Example.", 51900)
    assert str(mine) == f"tls://{'5a' * 20}-51900s.gw.example:443"
    assert parse_endpoint(str(mine)) == mine
    assert mine.app_id == APP
    assert GatewayEndpoint("node.gw.example").app_id is None  # a name of another shape routes elsewhere


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("node.example:51820", "must be an IP address"),
        ("localhost:51820", "must be an IP address"),
        ("10.0.0.2", "must be ip:port"),
        ("10.0.0.2:0", "from 1 to 65535"),
        ("10.0.0.2:65536", "from 1 to 65535"),
        ("10.0.0.2:x", "from 1 to 65535"),
        ("udp://2001:db8::1:51820", "brackets"),
        ("[10.0.0.2]:51820", "brackets"),
        ("tcp://10.0.0.2:51820", "scheme must be udp:// (direct) or tls://"),
        ("tls://10.0.0.2:443", "DNS name"),
        ("tls://gw-only:443", "DNS name"),
        ("tls://-bad.gw.example:443", "DNS name"),
        ("tls://a.gw.example", "DNS name"),
    ],
)
def test_unusable_endpoints_are_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(EndpointError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_endpoint(text)


def test_a_bad_gateway_domain_or_port_is_refused() -> None:
    with pytest.raises(EndpointError, match="DNS name"):
        gateway_endpoint(APP, "localhost", 51900)
    with pytest.raises(EndpointError, match="from 1 to 65535"):
        gateway_endpoint(APP, "gw.example", 0)


def test_a_bare_record_equals_its_canonical_form_so_no_needless_set_endpoint() -> None:
    assert same_endpoint("10.0.0.2:51820", UdpEndpoint(IPv4Address("10.0.0.2"), 51820))
    assert not same_endpoint("10.0.0.2:51820", UdpEndpoint(IPv4Address("10.0.0.2"), 51821))
    mine = gateway_endpoint(APP, "gw.example", 51900)
    assert not same_endpoint("10.0.0.2:51820", mine)  # moving to the gateway changes the record
    assert same_endpoint(str(mine), mine)
    assert not same_endpoint("garbage", mine)


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_direct_endpoints_round_trip_through_their_text(ip: IPv4Address | IPv6Address, port: int) -> None:
    endpoint = UdpEndpoint(ip, port)
    assert parse_endpoint(str(endpoint)) == endpoint


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_with_an_endpoint_error(text: str) -> None:
    try:
        endpoint = parse_endpoint(text)
    except EndpointError:
        return
    assert parse_endpoint(str(endpoint)) == endpoint
