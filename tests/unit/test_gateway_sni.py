"""The gateway stand-in's ClientHello reader and name rules (``devnet.gateway.sni``): real ClientHellos made
by Python's ssl parse to their SNI and ALPN from any prefix, fragmentation or trailing bytes; arbitrary and
corrupted bytes raise nothing but ``HelloError``; the size bound holds; ``parse_dst_info`` and ``route_for``
follow dstack-gateway's rules case by case (its own unit-test cases included)."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devnet.gateway.sni import (
    MAX_HELLO_BYTES,
    ClientHello,
    DstInfo,
    HelloError,
    NameRefused,
    parse_client_hello,
    parse_dst_info,
    route_for,
)

DOMAIN = "amlab.gw.test"
APP = "5a" * 20


def client_hello(
    server_name: str | None,
    *,
    alpn: list[str] | None = None,
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> bytes:
    """The first flight of a real Python ssl client (what the gateway reads before routing)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = maximum
    if alpn:
        context.set_alpn_protocols(alpn)
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def refragment(hello: bytes, sizes: list[int]) -> bytes:
    """The same handshake message carried in several handshake records of the given sizes."""
    message = hello[5 : 5 + int.from_bytes(hello[3:5], "big")]
    records = bytearray()
    pos = 0
    for size in [*sizes, len(message)]:
        fragment = message[pos : pos + max(size, 1)]
        if not fragment:
            break
        records += b"\x16\x03\x01" + struct.pack(">H", len(fragment)) + fragment
        pos += len(fragment)
    return bytes(records)


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda label: not label.startswith("xn--")
)
HOSTNAMES = st.lists(_LABEL, min_size=2, max_size=5).map(".".join).filter(lambda name: not name[-1].isdigit())
ALPNS = st.lists(st.sampled_from(["h2", "http/1.1", "attestmesh/1", "x"]), max_size=3, unique=True)


@settings(max_examples=60, deadline=None)
@given(name=HOSTNAMES, alpn=ALPNS, tls12=st.booleans())
def test_real_client_hellos_parse_to_their_server_name_and_alpn(
    name: str, alpn: list[str], tls12: bool
) -> None:
    maximum = ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.MAXIMUM_SUPPORTED
    hello = client_hello(name, alpn=alpn, maximum=maximum)
    assert parse_client_hello(hello) == ClientHello(server_name=name, alpn=tuple(alpn) if alpn else None)


@settings(max_examples=30, deadline=None)
@given(name=HOSTNAMES, cut=st.integers(min_value=0), trailing=st.binary(max_size=64))
def test_every_prefix_needs_more_and_trailing_bytes_are_ignored(name: str, cut: int, trailing: bytes) -> None:
    hello = client_hello(name)
    assert parse_client_hello(hello[: cut % len(hello)]) is None
    assert parse_client_hello(hello + trailing) == ClientHello(server_name=name, alpn=None)


@settings(max_examples=30, deadline=None)
@given(name=HOSTNAMES, sizes=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8))
def test_a_hello_fragmented_over_several_records_parses_the_same(name: str, sizes: list[int]) -> None:
    records = refragment(client_hello(name, alpn=["h2"]), sizes)
    assert parse_client_hello(records) == ClientHello(server_name=name, alpn=("h2",))
    assert parse_client_hello(records[:-1]) is None


def test_a_hello_without_sni_parses_with_no_server_name() -> None:
    assert parse_client_hello(client_hello(None)) == ClientHello(server_name=None, alpn=None)


@settings(max_examples=500)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_raise_nothing_but_hello_error(data: bytes) -> None:
    try:
        result = parse_client_hello(data)
    except HelloError:
        return
    assert result is None or isinstance(result, ClientHello)


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), max_size=4)
)
def test_corrupted_real_hellos_raise_nothing_but_hello_error(flips: list[tuple[int, int]]) -> None:
    hello = bytearray(client_hello(f"{APP}-51900s.{DOMAIN}", alpn=["h2"]))
    for position, mask in flips:
        hello[position % len(hello)] ^= mask
    try:
        result = parse_client_hello(bytes(hello))
    except HelloError:
        return
    assert result is None or isinstance(result, ClientHello)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plaintext HTTP
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x17\x03\x03\x00\x10" + bytes(16),  # application data, not a handshake
        b"\x16\x02\x00\x00\x05\x01\x00\x00\x01\x00",  # not a TLS record version
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
    ],
)
def test_bytes_that_cannot_start_a_client_hello_are_refused_at_once(data: bytes) -> None:
    with pytest.raises(HelloError):
        parse_client_hello(data)


def test_a_hello_larger_than_the_bound_is_refused_from_its_header() -> None:
    header = b"\x16\x03\x01\x40\x00" + b"\x01" + (MAX_HELLO_BYTES).to_bytes(3, "big")
    with pytest.raises(HelloError, match="larger"):
        parse_client_hello(header)
    assert parse_client_hello(header, max_bytes=MAX_HELLO_BYTES + 4) is None


def test_bytes_up_to_the_bound_without_a_complete_hello_are_refused() -> None:
    announced = b"\x01" + (MAX_HELLO_BYTES - 4).to_bytes(3, "big")  # a hello of exactly the bound...
    tiny_records = b"".join(b"\x16\x03\x01\x00\x01" + bytes([octet]) for octet in announced)
    assert parse_client_hello(tiny_records) is None  # ...sent one byte per record
    padding = b"\x16\x03\x01\x00\x01\x00" * (MAX_HELLO_BYTES // 6 + 1)
    with pytest.raises(HelloError, match="within"):
        parse_client_hello(tiny_records + padding)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        # dstack-gateway's own cases (proxy.rs test_parse_destination)
        ("myapp", DstInfo("myapp", 80, "terminate")),
        ("myapp-8080", DstInfo("myapp", 8080, "terminate")),
        ("myapp-443s", DstInfo("myapp", 443, "passthrough")),
        ("myapp-8443s", DstInfo("myapp", 8443, "passthrough")),
        ("myapps", DstInfo("myapps", 80, "terminate")),  # a bare <id>s is the app "<id>s"
        ("myapp-s", DstInfo("myapp", 443, "passthrough")),
        # and the rest of the same rules
        ("myapp-g", DstInfo("myapp", 80, "h2")),
        ("myapp-50051g", DstInfo("myapp", 50051, "h2")),
        ("myapp-", DstInfo("myapp", 80, "terminate")),
        ("myapp-0", DstInfo("myapp", 0, "terminate")),
        ("myapp-+81", DstInfo("myapp", 81, "terminate")),  # Rust's u16 parser takes a leading +
        ("myapp-00443s", DstInfo("myapp", 443, "passthrough")),
        (f"{APP}-51900s", DstInfo(APP, 51900, "passthrough")),
    ],
)
def test_parse_dst_info_routes_like_dstack(label: str, expected: DstInfo) -> None:
    assert parse_dst_info(label) == expected


@pytest.mark.parametrize(
    "label",
    [
        "myapp-443sg",  # s and g together
        "myapp-sg",
        "myapp-443gs",  # g then s: the port text "443g" is not a number
        "myapp-80-1",  # a second '-'
        "my-app-80",
        "-80",  # an empty id
        "",
        "myapp-65536",
        "myapp-8o",
        "myapp-+",
        "myapp-١٢",  # non-ASCII digits are not digits to Rust
    ],
)
def test_parse_dst_info_refuses_what_dstack_refuses(label: str) -> None:
    refused = parse_dst_info(label)
    assert isinstance(refused, NameRefused)
    assert refused.reason == "bad_name"


@given(label=st.text(max_size=40))
def test_parse_dst_info_never_raises_and_ports_stay_in_range(label: str) -> None:
    result = parse_dst_info(label)
    if isinstance(result, DstInfo):
        assert 0 <= result.port <= 65535
        assert result.id and "-" not in result.id


@given(
    route_id=st.from_regex(r"[a-z0-9]{1,40}", fullmatch=True),
    port=st.integers(min_value=0, max_value=65535),
    suffix=st.sampled_from(["", "s", "g"]),
)
def test_a_formatted_label_parses_back(route_id: str, port: int, suffix: str) -> None:
    kinds = {"": "terminate", "s": "passthrough", "g": "h2"}
    assert parse_dst_info(f"{route_id}-{port}{suffix}") == DstInfo(route_id, port, kinds[suffix])  # type: ignore[arg-type]


def test_route_for_splits_at_the_first_dot_and_wants_exactly_the_domain() -> None:
    assert route_for(f"{APP}-51900s.{DOMAIN}", DOMAIN) == DstInfo(APP, 51900, "passthrough")
    assert route_for(f"{APP.upper()}-9090.AMLAB.gw.Test", DOMAIN) == DstInfo(APP, 9090, "terminate")
    assert route_for(f"{APP}-51900s.other.test", DOMAIN) == NameRefused(
        "foreign_domain", "the name is not under the gateway's domain"
    )
    assert isinstance(route_for(f"{APP}-51900s.x.{DOMAIN}", DOMAIN), NameRefused)  # one label only
    assert isinstance(route_for(f"{APP}-51900s.{DOMAIN}.", DOMAIN), NameRefused)
    assert route_for("localhost", DOMAIN) == NameRefused("bad_name", "the name has no dot")
    refused = route_for(f"{APP}-80-1s.{DOMAIN}", DOMAIN)
    assert isinstance(refused, NameRefused)
    assert refused.reason == "bad_name"


@pytest.mark.parametrize(
    ("label", "kind"), [("health", "terminate"), ("gateway-443s", "passthrough"), ("GATEWAY-g", "h2")]
)
def test_the_gateways_own_ids_are_reserved(label: str, kind: str) -> None:
    refused = route_for(f"{label}.{DOMAIN}", DOMAIN)
    assert isinstance(refused, NameRefused)
    assert (refused.reason, refused.kind) == ("reserved_id", kind)
