"""The UAPI codec of sidecar.wg: set requests from plans, get replies into peers, errnos, no secret leaks.

``UapiModel`` is a small honest model of what wireguard-go does with a ``set=1`` and how it renders
``get=1`` (field order and formats as in wireguard-go's ``IpcGetOperation``); the component tests hold the
codec against the real wireguard-go.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.ids import MemberId, SecretBytes
from sidecar.core.keys import x25519_public_key
from sidecar.core.peerplan import ActualPeer, DesiredPeer, PeerPlan, WgKey, plan_peers
from sidecar.wg.device import (
    InterfaceConfig,
    WgError,
    canonical_endpoint,
    checked_plan,
    format_endpoint,
    parse_endpoint,
)
from sidecar.wg.uapi_codec import (
    GET_REQUEST,
    check_set_reply,
    device_set_request,
    parse_get_reply,
    peer_set_request,
    reply_errno,
)

PRIVATE = SecretBytes(bytes(range(1, 33)))
PRIVATE_HEX = PRIVATE.reveal().hex()
PUBLIC = WgKey(x25519_public_key(PRIVATE))
K1, K2, K3 = (WgKey(bytes([i]) * 32) for i in (0x11, 0x22, 0x33))
ZERO_HEX = "0" * 64


def peer(key: WgKey, endpoint: str | None, *ips: str, keepalive: int = 25) -> DesiredPeer:
    return DesiredPeer(MemberId(key.raw), key, endpoint, tuple(IPv4Network(i) for i in ips), keepalive)


def lines(request: bytes | None) -> list[str]:
    assert request is not None and request.endswith(b"\n\n")
    return request.decode()[:-2].split("\n")


# --- a model of wireguard-go's UAPI ---------------------------------------------------------------------


@dataclass
class ModelPeer:
    endpoint: str | None = None
    keepalive: int = 0
    allowed: list[str] = field(default_factory=list)
    handshake: tuple[int, int] = (0, 0)
    rx: int = 0
    tx: int = 0


@dataclass
class UapiModel:
    private_hex: str | None = None
    listen_port: int = 0
    peers: dict[str, ModelPeer] = field(default_factory=dict)

    def set(self, request: bytes) -> None:
        text = request.decode()
        assert text.startswith("set=1\n") and text.endswith("\n\n")
        current: str | None = None
        for line in text[len("set=1\n") : -2].split("\n"):
            key, _, value = line.partition("=")
            if key == "public_key":
                current = value
                self.peers.setdefault(value, ModelPeer())
            elif current is None:
                if key == "private_key":
                    self.private_hex = value
                elif key == "listen_port":
                    self.listen_port = int(value)
                else:
                    raise AssertionError(f"unexpected device key {key}")
            elif key == "remove":
                assert value == "true"
                del self.peers[current]
                current = None
            elif key == "endpoint":
                self.peers[current].endpoint = value
            elif key == "persistent_keepalive_interval":
                self.peers[current].keepalive = int(value)
            elif key == "replace_allowed_ips":
                assert value == "true"
                self.peers[current].allowed = []
            elif key == "allowed_ip":
                for other in self.peers.values():  # an allowed IP belongs to one peer: adding it moves it
                    if value in other.allowed:
                        other.allowed.remove(value)
                self.peers[current].allowed.append(value)
            else:
                raise AssertionError(f"unexpected peer key {key}")

    def get(self) -> str:
        out = []
        if self.private_hex is not None:
            out.append(f"private_key={self.private_hex}")
        out.append(f"listen_port={self.listen_port}")
        for key, p in self.peers.items():
            out += [f"public_key={key}", f"preshared_key={ZERO_HEX}", "protocol_version=1"]
            if p.endpoint is not None:
                out.append(f"endpoint={p.endpoint}")
            out += [
                f"last_handshake_time_sec={p.handshake[0]}",
                f"last_handshake_time_nsec={p.handshake[1]}",
                f"tx_bytes={p.tx}",
                f"rx_bytes={p.rx}",
                f"persistent_keepalive_interval={p.keepalive}",
            ]
            out += [f"allowed_ip={a}" for a in p.allowed]
        return "".join(f"{line}\n" for line in [*out, "errno=0"]) + "\n"


# --- requests --------------------------------------------------------------------------------------------


def test_get_request() -> None:
    assert GET_REQUEST == b"get=1\n\n"


def test_device_set_request() -> None:
    assert device_set_request() is None
    assert lines(device_set_request(listen_port=51820)) == ["set=1", "listen_port=51820"]
    assert lines(device_set_request(private_key=PRIVATE, listen_port=1)) == [
        "set=1",
        f"private_key={PRIVATE_HEX}",
        "listen_port=1",
    ]


def test_device_set_request_rejects_without_echoing_the_key() -> None:
    short = SecretBytes(PRIVATE.reveal()[:31])
    with pytest.raises(WgError) as info:
        device_set_request(private_key=short)
    assert PRIVATE_HEX[:62] not in str(info.value)
    with pytest.raises(WgError):
        device_set_request(listen_port=65536)


def test_empty_plan_sends_nothing() -> None:
    assert peer_set_request(PeerPlan()) is None


def test_peer_set_request_removes_then_adds_then_updates() -> None:
    plan = PeerPlan(
        add=(peer(K2, "10.216.0.12:51820", "10.16.0.2/32"),),
        remove=(K3,),
        update=(peer(K1, None, "10.16.0.1/32", "10.16.1.0/24", keepalive=0),),
    )
    assert lines(peer_set_request(plan)) == [
        "set=1",
        f"public_key={K3.hex}",
        "remove=true",
        f"public_key={K2.hex}",
        "endpoint=10.216.0.12:51820",
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",
        "allowed_ip=10.16.0.2/32",
        f"public_key={K1.hex}",
        "persistent_keepalive_interval=0",
        "replace_allowed_ips=true",
        "allowed_ip=10.16.0.1/32",
        "allowed_ip=10.16.1.0/24",
    ]


def test_ipv6_endpoint_is_bracketed() -> None:
    request = peer_set_request(PeerPlan(add=(peer(K1, "[2001:db8::1]:51820", "10.16.0.1/32"),)))
    assert "endpoint=[2001:db8::1]:51820" in lines(request)


@pytest.mark.parametrize(
    "endpoint",
    [
        "10.0.0.1:51820\nprivate_key=" + "00" * 32,  # a smuggled line must never reach the socket
        "10.0.0.1:51820\n",
        "node-1.example:51820",
        "10.0.0.1",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "[10.0.0.1]:51820",
        "2001:db8::1:51820",
        "[2001:db8::1]",
        "10.0.0.256:1",
        "",
    ],
)
def test_unusable_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(WgError) as info:
        parse_endpoint(endpoint)
    assert not info.value.transient
    assert "\n" not in str(info.value)
    plan = PeerPlan(add=(peer(K1, endpoint, "10.16.0.1/32"),))
    with pytest.raises(WgError):
        peer_set_request(plan)


def test_checked_plan_keeps_removals_and_valid_peers() -> None:
    bad = peer(K2, "evil\nremove=true", "10.16.0.2/32")
    plan = PeerPlan(
        add=(bad, peer(K1, "10.216.0.11:51820", "10.16.0.1/32")),
        remove=(K3,),
        update=(peer(WgKey(b"\x44" * 32), None, "10.16.0.4/32", keepalive=70000),),
    )
    valid, problems = checked_plan(plan)
    assert valid == PeerPlan(add=(plan.add[1],), remove=(K3,))
    assert len(problems) == 2
    assert all("\n" not in p for p in problems)
    assert any(repr(K2) in p and "endpoint" in p for p in problems)
    assert any("keepalive" in p for p in problems)


def test_plan_naming_a_key_twice_is_refused() -> None:
    with pytest.raises(WgError, match="more than once"):
        checked_plan(PeerPlan(add=(peer(K1, None),), remove=(K1,)))


@pytest.mark.parametrize(
    ("endpoint", "canonical"),
    [("10.216.0.11:51820", "10.216.0.11:51820"), ("[2001:DB8:0::1]:7", "[2001:db8::1]:7")],
)
def test_canonical_endpoint(endpoint: str, canonical: str) -> None:
    assert canonical_endpoint(endpoint) == canonical


# --- replies ---------------------------------------------------------------------------------------------


def _reply(*body: str) -> str:
    return "".join(f"{line}\n" for line in body) + "\n"


def test_parse_full_reply() -> None:
    state = parse_get_reply(
        _reply(
            f"private_key={PRIVATE_HEX}",
            "listen_port=51820",
            "fwmark=7",
            f"public_key={K1.hex}",
            f"preshared_key={'cd' * 32}",
            "protocol_version=1",
            "endpoint=10.216.0.12:51820",
            "last_handshake_time_sec=1700000000",
            "last_handshake_time_nsec=500000000",
            "tx_bytes=92",
            "rx_bytes=180",
            "persistent_keepalive_interval=25",
            "allowed_ip=10.16.0.2/32",
            "allowed_ip=fd00::2/128",
            "allowed_ip=10.16.9.0/24",
            "some_future_key=1",
            f"public_key={K2.hex}",
            "errno=0",
        )
    )
    assert state.public_key == PUBLIC
    assert state.listen_port == 51820
    assert state.peers == (
        ActualPeer(
            public_key=K1,
            endpoint="10.216.0.12:51820",
            allowed_ips=(IPv4Network("10.16.0.2/32"), IPv4Network("10.16.9.0/24")),
            keepalive=25,
            last_handshake=1700000000.5,
            rx_bytes=180,
            tx_bytes=92,
        ),
        ActualPeer(public_key=K2, endpoint=None, allowed_ips=(), keepalive=0),
    )
    assert PRIVATE_HEX not in repr(state) and "cd" * 32 not in repr(state)


def test_parse_empty_device() -> None:
    state = parse_get_reply(_reply("listen_port=0", "errno=0"))
    assert (state.public_key, state.listen_port, state.peers) == (None, 0, ())


@pytest.mark.parametrize(
    "text",
    [
        _reply("listen_port=1"),
        _reply("listen_port=x", "errno=0"),
        _reply("listen_port=99999", "errno=0"),
        _reply("garbage", "errno=0"),
        _reply(f"private_key={PRIVATE_HEX[:-2]}", "errno=0"),
        _reply(f"private_key={PRIVATE_HEX.upper()}", "errno=0"),
        _reply("public_key=zz", "errno=0"),
        _reply(f"public_key={K1.hex}", "endpoint=nowhere", "errno=0"),
        _reply(f"public_key={K1.hex}", "allowed_ip=10.16.0.1/33", "errno=0"),
        _reply(f"public_key={K1.hex}", "rx_bytes=-1", "errno=0"),
        _reply(f"public_key={K1.hex}", f"public_key={K1.hex}", "errno=0"),
        _reply("errno=zero"),
    ],
)
def test_parse_rejects_without_quoting(text: str) -> None:
    with pytest.raises(WgError) as info:
        parse_get_reply(text)
    message = str(info.value)
    assert PRIVATE_HEX[:-2] not in message and PRIVATE_HEX.upper() not in message
    assert not info.value.transient


@pytest.mark.parametrize(
    ("code", "transient"),
    [(-errno.EINVAL, False), (-errno.EPROTO, False), (-errno.EADDRINUSE, True), (-errno.EIO, True)],
)
def test_errno_classification(code: int, transient: bool) -> None:
    for check in (check_set_reply, parse_get_reply):
        with pytest.raises(WgError) as info:
            check(_reply(f"errno={code}"))
        assert info.value.errno == code
        assert info.value.transient is transient
        assert f"errno={code}" in str(info.value)


def test_set_reply_success() -> None:
    check_set_reply("errno=0\n\n")
    assert reply_errno("errno=-22\n\n") == -22


def test_config_repr_hides_the_key() -> None:
    config = InterfaceConfig(private_key=PRIVATE, listen_port=51820, address=IPv4Interface("10.16.0.1/16"))
    assert PRIVATE_HEX not in repr(config) and PRIVATE_HEX not in str(config)
    assert repr(PRIVATE.reveal()) not in repr(config)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"listen_port": 0},
        {"listen_port": 65536},
        {"address": "10.16.0.1/16"},
        {"address_ip": "10.16.0.0/16"},
        {"mtu": 100},
        {"name": "-f"},
        {"name": "a" * 16},
        {"private_key": SecretBytes(b"\x01" * 31)},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "private_key": PRIVATE,
        "listen_port": 51820,
        "address": IPv4Interface("10.16.0.1/16"),
    }
    if "address_ip" in kwargs:
        args["address"] = IPv4Interface(str(kwargs.pop("address_ip")))
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        InterfaceConfig(**args)  # type: ignore[arg-type]
    assert PRIVATE_HEX not in str(info.value)


# --- round trips -----------------------------------------------------------------------------------------

wg_keys = st.binary(min_size=32, max_size=32).map(WgKey)
ports = st.integers(1, 65535)
v4_endpoints = st.builds(lambda a, p: format_endpoint(IPv4Address(a), p), st.integers(0, 2**32 - 1), ports)
v6_endpoints = st.builds(lambda a, p: format_endpoint(IPv6Address(a), p), st.integers(0, 2**128 - 1), ports)
v4_networks = st.builds(
    lambda a, n: IPv4Network((a, n), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)
)
u64 = st.integers(0, 2**64 - 1)


Handshake = tuple[int, int]  # (sec, nsec) as the device reports it


@st.composite
def device_peers(draw: st.DrawFn) -> list[tuple[ActualPeer, Handshake]]:
    out = []
    for key in draw(st.lists(wg_keys, max_size=6, unique=True)):
        sec, nsec = draw(st.tuples(st.integers(0, 2**40), st.integers(0, 999_999_999)))
        actual = ActualPeer(
            public_key=key,
            endpoint=draw(st.one_of(st.none(), v4_endpoints, v6_endpoints)),
            allowed_ips=tuple(draw(st.lists(v4_networks, max_size=4, unique=True))),
            keepalive=draw(st.integers(0, 65535)),
            last_handshake=None if sec == 0 and nsec == 0 else sec + nsec / 1e9,
            rx_bytes=draw(u64),
            tx_bytes=draw(u64),
        )
        out.append((actual, (sec, nsec)))
    return out


def model_of(peers: list[ActualPeer], handshakes: dict[WgKey, Handshake] | None = None) -> UapiModel:
    model = UapiModel(private_hex=PRIVATE_HEX, listen_port=51820)
    for p in peers:
        model.peers[p.public_key.hex] = ModelPeer(
            endpoint=p.endpoint,
            keepalive=p.keepalive,
            allowed=[str(n) for n in p.allowed_ips],
            handshake=(handshakes or {}).get(p.public_key, (0, 0)),
            rx=p.rx_bytes,
            tx=p.tx_bytes,
        )
    return model


@given(device_peers())
def test_get_reply_round_trip(drawn: list[tuple[ActualPeer, Handshake]]) -> None:
    peers = [p for p, _ in drawn]
    state = parse_get_reply(model_of(peers, {p.public_key: hs for p, hs in drawn}).get())
    assert state.public_key == PUBLIC
    assert state.listen_port == 51820
    assert list(state.peers) == sorted(peers, key=lambda p: p.public_key)


mesh_keys = st.integers(1, 12).map(lambda i: WgKey(bytes([i]) * 32))
stale_keys = st.integers(13, 16).map(lambda i: WgKey(bytes([i]) * 32))
keepalives = st.sampled_from([0, 25])


@st.composite
def meshes(draw: st.DrawFn) -> tuple[list[DesiredPeer], list[ActualPeer]]:
    """A desired mesh (one unique /32 per peer) and a device state that overlaps it arbitrarily."""
    keys = draw(st.lists(mesh_keys, unique=True))
    hosts = draw(st.lists(st.integers(1, 250), min_size=len(keys), max_size=len(keys), unique=True))
    desired = [
        peer(key, draw(st.one_of(st.none(), v4_endpoints)), f"10.16.0.{host}/32", keepalive=draw(keepalives))
        for key, host in zip(keys, hosts, strict=True)
    ]
    on_device = [k for k in keys if draw(st.booleans())] + draw(st.lists(stale_keys, unique=True))
    held: dict[WgKey, list[IPv4Network]] = {k: [] for k in on_device}
    if on_device:  # the device's allowed IPs, each held by one peer, possibly one the mesh gives to another
        for host in draw(st.lists(st.integers(1, 250), unique=True, max_size=8)):
            held[draw(st.sampled_from(on_device))].append(IPv4Network(f"10.16.0.{host}/32"))
    actual = [
        ActualPeer(k, draw(st.one_of(st.none(), v4_endpoints)), tuple(held[k]), draw(keepalives))
        for k in on_device
    ]
    return desired, actual


@given(meshes())
def test_applying_the_request_converges(mesh: tuple[list[DesiredPeer], list[ActualPeer]]) -> None:
    desired, actual = mesh
    model = model_of(actual)
    previous: dict[WgKey, DesiredPeer] = {}  # first pass: every chain endpoint counts as changed
    plan = plan_peers(desired, parse_get_reply(model.get()).peers, previous)
    request = peer_set_request(plan)
    assert (request is None) == plan.empty
    if request is not None:
        model.set(request)
    after = parse_get_reply(model.get()).peers
    assert plan_peers(desired, after, {p.public_key: p for p in desired}).empty
    by_key = {p.public_key: p for p in after}
    assert set(by_key) == {d.public_key for d in desired}
    old = {p.public_key: p for p in actual}
    for d in desired:
        got = by_key[d.public_key]
        assert frozenset(got.allowed_ips) == frozenset(d.allowed_ips)
        assert got.keepalive == d.keepalive
        kept = old[d.public_key].endpoint if d.public_key in old else None
        assert got.endpoint == (d.endpoint if d.endpoint is not None else kept)


@given(st.text(max_size=80))
def test_parse_never_quotes_what_it_rejects(value: str) -> None:
    secret = "f" * 64
    for text in (
        _reply(f"private_key={value}{secret}", "errno=0"),
        _reply(f"public_key={K1.hex}", f"endpoint={value}{secret}", "errno=0"),
        _reply(f"{value}{secret}", "errno=0"),
    ):
        try:
            parse_get_reply(text)
        except WgError as exc:
            assert secret not in str(exc)
