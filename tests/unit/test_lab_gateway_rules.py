"""The gateway mode's pure parts: the firewall ruleset, the dnsmasq command line and the DNS codec."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devnet import firewall, labdns

GW = IPv4Address("10.219.0.3")


def test_ruleset_accepts_only_the_gateway_on_the_underlay() -> None:
    rules = firewall.ruleset(GW)
    lines = [line.strip() for line in rules.splitlines()]
    # Idempotent: the lab's table is declared, deleted and written anew in one nft transaction.
    assert lines[:3] == [
        "table inet attestmesh_lab",
        "delete table inet attestmesh_lab",
        "table inet attestmesh_lab {",
    ]
    assert "type filter hook input priority filter; policy drop;" in lines
    order = [
        'iif "lo" accept',
        "ct state established,related accept",
        'iifname "attestmesh0" accept',
        "meta l4proto { icmp, ipv6-icmp } accept",
        'iifname "eth0" ip saddr 10.219.0.3 accept',
        'meta l4proto udp counter name "udp_dropped" drop',
        'meta l4proto tcp counter name "tcp_dropped" drop',
    ]
    assert [line for line in lines if line in order] == order  # accepts first, then the counted drops
    assert "counter udp_dropped { }" in lines and "counter tcp_dropped { }" in lines
    assert "output" not in rules and "forward" not in rules and "nat" not in rules


def test_dnsmasq_argv_answers_the_domain_and_nothing_else() -> None:
    argv = labdns.dnsmasq_argv(GW, "amtg.gw.test")
    assert argv[0] == "dnsmasq"
    for flag in (
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=10.219.0.3",
        "--port=53",
        "--local=/amtg.gw.test/",
        "--address=/amtg.gw.test/10.219.0.3",
        "--log-facility=-",
    ):
        assert flag in argv, flag
    assert not any(a.startswith(("--server", "--interface", "--resolv-file")) for a in argv)


def _response(query: bytes, rcode: int, answers: list[tuple[int, bytes]]) -> bytes:
    qid = struct.unpack("!H", query[:2])[0]
    header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0)
    body = query[12:]
    for rtype, rdata in answers:  # each answer names the question by a compression pointer
        body += struct.pack("!HHHIH", 0xC00C, rtype, 1, 60, len(rdata)) + rdata
    return header + body


def test_query_round_trip() -> None:
    query = labdns.encode_query("abc-9090.amtg.gw.test", 0x1234)
    assert query[:2] == b"\x12\x34"
    assert b"\x08abc-9090\x04amtg\x02gw\x04test\x00" in query
    response = _response(query, 0, [(1, GW.packed), (28, bytes(16))])
    assert labdns.decode_response(response, 0x1234) == labdns.DnsAnswer(0, (GW,))
    refused = _response(query, labdns.RCODE_REFUSED, [])
    assert labdns.decode_response(refused, 0x1234) == labdns.DnsAnswer(labdns.RCODE_REFUSED, ())


def test_decode_rejects_other_messages() -> None:
    query = labdns.encode_query("x.amtg.gw.test", 7)
    with pytest.raises(labdns.DnsError):
        labdns.decode_response(_response(query, 0, [(1, GW.packed)]), 8)  # another query's id
    with pytest.raises(labdns.DnsError):
        labdns.decode_response(query, 7)  # a query, not a response
    with pytest.raises(labdns.DnsError):
        labdns.decode_response(_response(query, 0, [(1, GW.packed)])[:-2], 7)  # truncated
    with pytest.raises(labdns.DnsError):
        labdns.encode_query("a..b", 1)


@given(st.binary(max_size=80), st.integers(min_value=0, max_value=0xFFFF))
def test_decode_never_crashes_on_garbage(data: bytes, qid: int) -> None:
    with contextlib.suppress(labdns.DnsError):
        labdns.decode_response(data, qid)
