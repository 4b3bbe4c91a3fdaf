"""sidecar.settings: every variable's default and validation, all problems at once, no secret echoed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.ids import Address
from sidecar.settings import (
    EXIT_BAD_CONFIGURATION,
    KNOWN_NAMES,
    VARIABLES,
    HostPort,
    LogLevel,
    Settings,
    SettingsError,
    WgBackend,
    load_settings,
    parse_host_port,
    parse_int,
    parse_seconds,
)

CLUSTER_HEX = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # the EIP-55 reference vector
REQUIRED = {
    "ATTESTMESH_RPC_URL": "http://127.0.0.1:8545",
    "ATTESTMESH_RPC_ALLOW_HTTP": "true",
    "ATTESTMESH_CHAIN_ID": "31337",
    "ATTESTMESH_CLUSTER": CLUSTER_HEX,
    "ATTESTMESH_MEMBER_APP_FACTORY": "0x" + "fa" * 20,
    "ATTESTMESH_KMS_ROOTS": "0x" + "12" * 20,
    "ATTESTMESH_ENDPOINT": "10.88.0.2:51820",
}


def load(**overrides: str) -> Settings:
    return load_settings({**REQUIRED, **{f"ATTESTMESH_{k}": v for k, v in overrides.items()}})


def problems(**overrides: str) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load(**overrides)
    return info.value.problems


def test_defaults() -> None:
    s = load()
    assert s.chain.rpc_url == "http://127.0.0.1:8545"
    assert (s.chain.rpc_urls, s.chain.rpc_quorum, s.chain.rpc_allow_http) == (
        ("http://127.0.0.1:8545",),
        1,
        True,
    )
    assert s.chain.chain_id == 31337
    assert s.chain.cluster == Address.from_hex(CLUSTER_HEX)
    assert s.chain.indexer_registry is None
    assert s.chain.confirmations == 2
    assert s.chain.poll_interval == 2.0
    assert s.chain.resync_interval == 30.0
    assert s.chain.max_log_range == 2000
    assert s.chain.rpc_timeout == 5.0
    assert s.chain.receipt_timeout == 60.0
    assert s.mesh.interface == "attestmesh0"
    assert s.mesh.backend is WgBackend.AUTO
    assert s.mesh.uapi_dir == Path("/run/wireguard")
    assert s.mesh.listen_port == 51820
    assert s.mesh.endpoint == "10.88.0.2:51820"
    assert s.mesh.heartbeat_port == 51821
    assert s.mesh.peer_api_port == 51822
    assert s.mesh.heartbeat_interval == 2.0
    assert s.mesh.liveness_misses == 3
    assert s.mesh.csk_parallelism == 4
    assert s.mesh.csk_request_timeout == 2.0
    assert s.http.health_addr == HostPort("0.0.0.0", 9090)
    assert s.http.app_socket == Path("/run/attestmesh/agent.sock")
    assert s.state_dir == Path("/var/lib/attestmesh")
    assert s.log_level is LogLevel.INFO
    assert s.shutdown_timeout == 8.0


def test_settings_are_frozen() -> None:
    s = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.chain.chain_id = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.log_level = LogLevel.DEBUG  # type: ignore[misc]


def test_every_variable_is_overridable() -> None:
    s = load(
        INDEXER_REGISTRY="0x" + "22" * 20,
        CONFIRMATIONS="12",
        POLL_INTERVAL="0.5",
        RESYNC_INTERVAL="120",
        MAX_LOG_RANGE="500",
        RPC_TIMEOUT="1.5",
        RECEIPT_TIMEOUT="1e2",
        WG_INTERFACE="wg-test.0",
        WG_BACKEND="Kernel",
        WG_UAPI_DIR="/var/run/wireguard",
        WG_LISTEN_PORT="40000",
        HEARTBEAT_PORT="40001",
        PEER_API_PORT="40002",
        HEARTBEAT_INTERVAL="1",
        LIVENESS_MISSES="5",
        CSK_PARALLELISM="2",
        CSK_TIMEOUT="0.25",
        HEALTH_ADDR="[::1]:8080",
        APP_SOCKET="/tmp/a.sock",
        STATE_DIR="/data",
        LOG_LEVEL="DEBUG",
        SHUTDOWN_TIMEOUT="3",
    )
    assert s.chain.indexer_registry == Address(b"\x22" * 20)
    assert (s.chain.confirmations, s.chain.poll_interval, s.chain.resync_interval) == (12, 0.5, 120.0)
    assert (s.chain.max_log_range, s.chain.rpc_timeout, s.chain.receipt_timeout) == (500, 1.5, 100.0)
    assert (s.mesh.interface, s.mesh.backend, s.mesh.uapi_dir) == (
        "wg-test.0",
        WgBackend.KERNEL,
        Path("/var/run/wireguard"),
    )
    assert (s.mesh.listen_port, s.mesh.heartbeat_port, s.mesh.peer_api_port) == (40000, 40001, 40002)
    assert (s.mesh.heartbeat_interval, s.mesh.liveness_misses) == (1.0, 5)
    assert (s.mesh.csk_parallelism, s.mesh.csk_request_timeout) == (2, 0.25)
    assert s.http.health_addr == HostPort("::1", 8080)
    assert str(s.http.health_addr) == "[::1]:8080"
    assert s.http.app_socket == Path("/tmp/a.sock")
    assert s.state_dir == Path("/data")
    assert s.log_level is LogLevel.DEBUG
    assert s.shutdown_timeout == 3.0


def test_blank_values_count_as_unset() -> None:
    s = load(CONFIRMATIONS="", INDEXER_REGISTRY="  ", LOG_LEVEL="")
    assert s.chain.confirmations == 2
    assert s.chain.indexer_registry is None
    assert s.log_level is LogLevel.INFO
    found = problems(CHAIN_ID=" ")
    assert found == ["ATTESTMESH_CHAIN_ID is required but not set"]


def test_missing_required_all_reported() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({})
    found = info.value.problems
    required = ("CHAIN_ID", "CLUSTER", "MEMBER_APP_FACTORY", "KMS_ROOTS")
    assert sorted(found[:4]) == sorted(f"ATTESTMESH_{name} is required but not set" for name in required)
    assert len(found) == 6
    assert found[4].startswith("ATTESTMESH_ENDPOINT or ATTESTMESH_GATEWAY_DOMAIN must be set")
    assert found[5] == "ATTESTMESH_RPC_URLS (or ATTESTMESH_RPC_URL) is required but not set"
    assert "ATTESTMESH_RPC_URL" in str(info.value)


def test_gateway_transport_instead_of_an_endpoint() -> None:
    env = {k: v for k, v in REQUIRED.items() if k != "ATTESTMESH_ENDPOINT"}
    s = load_settings({**env, "ATTESTMESH_GATEWAY_DOMAIN": "Dstack-Prod5.Phala.Network."})
    assert (s.mesh.endpoint, s.mesh.gateway_domain, s.mesh.gateway_port) == (
        None, "dstack-prod5.phala.network", 51900,
    )  # fmt: skip
    assert load(ENDPOINT="", GATEWAY_DOMAIN="gw.test", GATEWAY_PORT="443").mesh.gateway_port == 443


def test_gateway_transport_problems_are_all_reported() -> None:
    both = problems(GATEWAY_DOMAIN="gw.test")
    assert len(both) == 1 and "ATTESTMESH_ENDPOINT and ATTESTMESH_GATEWAY_DOMAIN are both set" in both[0]
    found = problems(ENDPOINT="", GATEWAY_DOMAIN="not a domain", GATEWAY_PORT="51821", CA_FILE="relative.pem")
    assert any(p.startswith("ATTESTMESH_GATEWAY_DOMAIN='not a domain' the gateway domain") for p in found)
    assert any("ATTESTMESH_GATEWAY_PORT uses port 51821" in p for p in found)
    assert any(p.startswith("ATTESTMESH_CA_FILE='relative.pem' must be an absolute path") for p in found)
    assert not any("must be set" in p for p in found)  # a domain was given, it just does not parse


def test_ca_file_must_be_readable(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    (found,) = problems(CA_FILE=str(missing))
    assert found.startswith("ATTESTMESH_CA_FILE=") and found.endswith(" is not a readable file")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load(CA_FILE=str(ca)).events.ca_file == ca


def test_all_problems_at_once() -> None:
    found = problems(
        CHAIN_ID="abc",
        CONFIRMATIONS="-1",
        POLL_INTERVAL="0",
        WG_BACKEND="ebpf",
        LOG_LEVEL="verbose",
        HEALTH_ADDR="nowhere",
        STATE_DIR="relative/dir",
        LIVENESS_MISSES="0",
    )
    named = {p.split("=")[0].split(" ")[0] for p in found}
    assert named == {
        "ATTESTMESH_CHAIN_ID",
        "ATTESTMESH_CONFIRMATIONS",
        "ATTESTMESH_POLL_INTERVAL",
        "ATTESTMESH_WG_BACKEND",
        "ATTESTMESH_LOG_LEVEL",
        "ATTESTMESH_HEALTH_ADDR",
        "ATTESTMESH_STATE_DIR",
        "ATTESTMESH_LIVENESS_MISSES",
    }
    assert len(found) == 8


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("RPC_URL", "ws://127.0.0.1:8546", "http:// or https://"),
        ("RPC_URL", "http://", "must name a host"),
        ("RPC_URL", "http://host:notaport", "not a valid URL"),
        ("CHAIN_ID", "0", "at least 1"),
        ("CHAIN_ID", "0x7a69", "decimal digits"),
        ("CLUSTER", "0x1234", "20 bytes"),
        ("CLUSTER", "0x" + "00" * 20, "non-zero"),
        ("CLUSTER", CLUSTER_HEX.replace("a", "A", 1), "checksum"),
        ("INDEXER_REGISTRY", "zz", "20 bytes"),
        ("CONFIRMATIONS", "1.5", "whole number"),
        ("POLL_INTERVAL", "-2", "number of seconds"),
        ("POLL_INTERVAL", "inf", "number of seconds"),
        ("RESYNC_INTERVAL", "0.0", "greater than 0"),
        ("MAX_LOG_RANGE", "0", "at least 1"),
        ("RPC_TIMEOUT", "0", "greater than 0"),
        ("RECEIPT_TIMEOUT", "1", "must not be shorter than ATTESTMESH_RPC_TIMEOUT"),
        ("WG_INTERFACE", "this-name-is-too-long", "characters"),
        ("WG_INTERFACE", "wg 0", "characters"),
        ("WG_BACKEND", "netlink", "userspace|kernel|auto"),
        ("WG_UAPI_DIR", "run/wireguard", "absolute"),
        ("WG_LISTEN_PORT", "0", "between 1 and 65535"),
        ("WG_LISTEN_PORT", "70000", "between 1 and 65535"),
        ("ENDPOINT", "10.0.0.1", "host:port"),
        ("ENDPOINT", "::1:51820", "brackets"),
        ("ENDPOINT", "bad_host!:51820", "IP address"),
        ("ENDPOINT", "node-1.example.com:443", "IP address"),
        ("ENDPOINT", "localhost:51820", "not localhost"),
        ("ENDPOINT", "[fe80::1%eth0]:51820", "IPv6 zone"),
        ("HEARTBEAT_PORT", "x", "decimal digits"),
        ("PEER_API_PORT", "65536", "between 1 and 65535"),
        ("HEARTBEAT_INTERVAL", "0", "greater than 0"),
        ("LIVENESS_MISSES", "0", "at least 1"),
        ("CSK_PARALLELISM", "0", "at least 1"),
        ("CSK_TIMEOUT", "0", "greater than 0"),
        ("HEALTH_ADDR", "example.com:9090", "IP address"),
        ("HEALTH_ADDR", "0.0.0.0:0", "between 1 and 65535"),
        ("APP_SOCKET", "/" + "s" * 120, "unix socket path"),
        ("APP_SOCKET", "agent.sock", "absolute"),
        ("STATE_DIR", "state", "absolute"),
        ("LOG_LEVEL", "trace", "debug|info|warning|error"),
        ("SHUTDOWN_TIMEOUT", "0", "greater than 0"),
    ],
)
def test_each_validation(name: str, value: str, fragment: str) -> None:
    found = problems(**{name: value})
    assert len(found) == 1, found
    assert found[0].startswith(f"ATTESTMESH_{name}") or f"ATTESTMESH_{name}" in found[0]
    assert fragment in found[0]


def test_valid_endpoint_forms() -> None:
    assert load(ENDPOINT="10.0.0.7:51820").mesh.endpoint == "10.0.0.7:51820"
    assert load(ENDPOINT="[fd00::1]:51820").mesh.endpoint == "[fd00::1]:51820"
    assert load(HEALTH_ADDR="localhost:9091").http.health_addr == HostPort("localhost", 9091)


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("localhost:51820", "localhost"),
        ("LOCALHOST:51820", "localhost"),
        ("localhost.:51820", "localhost"),
        ("node-1.example.com:51820", "a host name"),
        ("bad_host!:51820", "a host name"),
    ],
)
def test_a_named_endpoint_is_refused_with_one_message_that_says_what_to_write(value: str, what: str) -> None:
    # It used to read "host must be an IP address (or localhost)", then "…, not localhost" for localhost.
    (found,) = problems(ENDPOINT=value)
    assert found.startswith(f"ATTESTMESH_ENDPOINT={value!r} must be an IP address, not {what} ")
    assert found.endswith(
        "write the IP address and port the other peers reach this node at, such as 10.0.0.2:51820"
    )
    assert "(or localhost)" not in found
    assert "DNS name" not in found


def test_lowercase_and_uppercase_addresses_need_no_checksum() -> None:
    lower = load(CLUSTER=CLUSTER_HEX.lower()).chain.cluster
    upper = load(CLUSTER="0x" + CLUSTER_HEX[2:].upper()).chain.cluster
    assert lower == upper == Address.from_hex(CLUSTER_HEX)


@pytest.mark.parametrize(
    "clash",
    [
        {"HEARTBEAT_PORT": "51820"},
        {"PEER_API_PORT": "51821"},
        {"HEALTH_ADDR": "0.0.0.0:51822"},
        {"GATEWAY_PORT": "9090"},
    ],
)
def test_ports_must_differ(clash: dict[str, str]) -> None:
    found = problems(**clash)
    assert len(found) == 1
    assert "the ports must differ" in found[0]


def test_port_clash_reported_alongside_other_problems() -> None:
    found = problems(HEARTBEAT_PORT="51820", ENDPOINT="")
    assert len(found) == 2
    assert any("ports must differ" in p for p in found)
    assert any(p.startswith("ATTESTMESH_ENDPOINT or ATTESTMESH_GATEWAY_DOMAIN must be set") for p in found)


def test_unknown_prefixed_variables_are_problems_with_a_hint() -> None:
    found = problems(CHIAN_ID="1", SOMETHING_ELSE="x")
    assert (
        "ATTESTMESH_CHIAN_ID is not a known AttestMesh variable (did you mean ATTESTMESH_CHAIN_ID?)" in found
    )
    assert any(p.startswith("ATTESTMESH_SOMETHING_ELSE is not a known") for p in found)


def test_other_variables_are_ignored() -> None:
    s = load_settings(
        {**REQUIRED, "PATH": "/bin", "DSTACK_SIMULATOR_ENDPOINT": "http://x", "attestmesh_x": "1"}
    )
    assert s.chain.chain_id == 31337


def test_secrets_are_never_echoed() -> None:
    url_secret = "sk-live-0123456789abcdef"
    wallet_secret = "0x" + "ab" * 32
    found = problems(
        RPC_URL=f"wss://user:{url_secret}@rpc.example/v2/{url_secret}", PRIVATE_KEY=wallet_secret
    )
    text = "\n".join(found)
    assert url_secret not in text
    assert wallet_secret not in text
    assert "ATTESTMESH_RPC_URL (value not shown)" in text
    assert "ATTESTMESH_PRIVATE_KEY is not a known AttestMesh variable" in text
    s = load(RPC_URL=f"https://rpc.example/v2/{url_secret}")
    assert url_secret not in repr(s)
    assert url_secret not in repr(s.chain)


def test_non_secret_values_are_echoed_truncated() -> None:
    found = problems(WG_BACKEND="x" * 200)
    assert "ATTESTMESH_WG_BACKEND='" + "x" * 64 + "…'" in found[0]


def test_variable_table_matches_known_names_and_docs() -> None:
    assert len(KNOWN_NAMES) == len(VARIABLES) == 43
    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for variable in VARIABLES:
        assert f"`{variable.name}`" in docs, variable.name
    assert "DSTACK_SIMULATOR_ENDPOINT" in docs
    assert EXIT_BAD_CONFIGURATION == 2


# --- numeric parsing -------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**30))
def test_parse_int_roundtrip(value: int) -> None:
    assert parse_int(str(value)) == value


@given(st.text(max_size=12))
def test_parse_int_accepts_only_ascii_digits(text: str) -> None:
    try:
        value = parse_int(text)
    except ValueError:
        assert not (text.isascii() and text.isdigit())
    else:
        assert text.isascii() and text.isdigit() and value == int(text)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_parse_seconds_roundtrip(value: float) -> None:
    assert parse_seconds(repr(value)) == value


@given(st.text(max_size=12))
def test_parse_seconds_never_crashes_and_is_finite(text: str) -> None:
    try:
        value = parse_seconds(text)
    except ValueError:
        return
    assert value >= 0
    assert value == float(text)
    assert text.isascii()


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_port_range(port: int) -> None:
    try:
        parsed = parse_host_port(f"127.0.0.1:{port}").port
    except ValueError:
        assert not 1 <= port <= 65535
    else:
        assert parsed == port and 1 <= port <= 65535


@given(st.dictionaries(st.sampled_from(sorted(KNOWN_NAMES)), st.text(max_size=30), max_size=26))
def test_load_settings_only_raises_settings_error(env: dict[str, str]) -> None:
    try:
        load_settings(env)
    except SettingsError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.startswith("ATTESTMESH_")


# --- the event source ------------------------------------------------------------------------------------


def test_event_settings_defaults_and_overrides() -> None:
    ev = load().events
    assert (ev.poll_interval_pushed, ev.registry_refresh, ev.push_crosscheck) == (300.0, 300.0, 0.0)
    assert ev.resync_interval_pushed == 600.0
    assert (ev.push_backoff_min, ev.push_backoff_max) == (1.0, 60.0)
    ev = load(
        POLL_INTERVAL_PUSHED="10", REGISTRY_REFRESH="5", PUSH_CROSSCHECK="0.25", PUSH_BACKOFF_MAX="2"
    ).events
    assert (ev.poll_interval_pushed, ev.registry_refresh, ev.push_crosscheck) == (10.0, 5.0, 0.25)
    assert ev.push_backoff_max == 2.0


def test_push_mode_intervals_are_never_shorter_than_poll_modes() -> None:
    found = problems(
        POLL_INTERVAL="5", POLL_INTERVAL_PUSHED="4", RESYNC_INTERVAL="60", RESYNC_INTERVAL_PUSHED="0"
    )
    assert "ATTESTMESH_POLL_INTERVAL_PUSHED must not be shorter than ATTESTMESH_POLL_INTERVAL" in found
    assert any(p.startswith("ATTESTMESH_RESYNC_INTERVAL_PUSHED='0' must be") for p in found)
    # a default shorter than a configured poll-mode interval is raised to it, not reported
    s = load(POLL_INTERVAL="600", RESYNC_INTERVAL="900")
    assert (s.events.poll_interval_pushed, s.events.resync_interval_pushed) == (600.0, 900.0)
    s = load(RESYNC_INTERVAL="60", RESYNC_INTERVAL_PUSHED="60")
    assert s.events.resync_interval_pushed == 60.0


def test_event_settings_are_validated_together() -> None:
    found = problems(PUSH_CROSSCHECK="1.5", REGISTRY_REFRESH="0", PUSH_BACKOFF_MIN="5", PUSH_BACKOFF_MAX="1")
    assert any("ATTESTMESH_PUSH_CROSSCHECK='1.5' must be a number from 0 to 1" in p for p in found)
    assert any(p.startswith("ATTESTMESH_REGISTRY_REFRESH") for p in found)
    assert any("ATTESTMESH_PUSH_BACKOFF_MAX must not be shorter" in p for p in found)


def test_fee_caps_are_gwei_decimals_in_wei_and_the_tip_cap_fits_under_the_fee_cap() -> None:
    s = load()
    assert (s.chain.max_fee_wei, s.chain.max_priority_fee_wei) == (10 * 10**9, 2 * 10**9)
    s = load(MAX_FEE_GWEI="0.05", MAX_PRIORITY_FEE_GWEI=".000000001")
    assert (s.chain.max_fee_wei, s.chain.max_priority_fee_wei) == (50_000_000, 1)
    found = problems(MAX_FEE_GWEI="1e3", MAX_PRIORITY_FEE_GWEI="0")
    assert any(p.startswith("ATTESTMESH_MAX_FEE_GWEI='1e3' must be an amount in gwei") for p in found)
    assert any(p.startswith("ATTESTMESH_MAX_PRIORITY_FEE_GWEI") and "greater than 0" in p for p in found)
    assert any("must not exceed" in p for p in problems(MAX_FEE_GWEI="1", MAX_PRIORITY_FEE_GWEI="2"))
    assert problems(MAX_FEE_GWEI="0.0000000001")  # a tenth of a wei: more than 9 decimals


def providers(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in REQUIRED.items() if k not in ("ATTESTMESH_RPC_URL", "ATTESTMESH_RPC_ALLOW_HTTP")}
    return {**env, **{f"ATTESTMESH_{k}": v for k, v in overrides.items()}}


def test_several_providers_with_a_majority_quorum_by_default() -> None:
    urls = ("https://a.example/v2/k1", "https://b.example/k2", "https://c.example")
    for count, quorum in ((1, 1), (2, 2), (3, 2)):
        s = load_settings(providers(RPC_URLS=" , ".join(urls[:count]).replace(" , ", ",")))
        assert (s.chain.rpc_urls, s.chain.rpc_quorum, s.chain.rpc_allow_http) == (urls[:count], quorum, False)
        assert s.chain.rpc_url == urls[0]
    s = load_settings(providers(RPC_URLS=",".join(urls), RPC_QUORUM="3"))
    assert s.chain.rpc_quorum == 3
    s = load_settings(providers(RPC_URL=urls[1]))  # the legacy single-provider form
    assert (s.chain.rpc_urls, s.chain.rpc_quorum) == ((urls[1],), 1)


def test_provider_problems_are_all_named_and_no_url_is_echoed() -> None:
    key = "sk-live-secret-123"
    cases = [
        (providers(RPC_URLS=f"https://a/{key},https://b/{key}", RPC_URL=f"https://a/{key}"), "are both set"),
        (providers(RPC_URLS=f"https://a/{key},https://b/{key}", RPC_QUORUM="3"), "RPC_QUORUM=3 is more than"),
        (providers(RPC_URLS=f"https://a/{key},https://a/{key}"), "item 2 repeats item 1"),
        (providers(RPC_URLS=f"https://a/{key},,https://b"), "item 2 is empty"),
        (providers(RPC_URLS=f"https://a/{key},ws://b/{key}"), "item 2 must be an http:// or https:// URL"),
        (providers(RPC_URLS=f"https://a/{key},http://b/{key}"), "ATTESTMESH_RPC_URLS item 2 is not https://"),
        (providers(RPC_URL=f"http://a/{key}"), "ATTESTMESH_RPC_URL is not https://"),
        (providers(RPC_URLS="https://a", RPC_ALLOW_HTTP="perhaps"), "RPC_ALLOW_HTTP='perhaps' must be true"),
        (providers(RPC_URLS="https://a", RPC_QUORUM="0"), "RPC_QUORUM='0' must be at least 1"),
        (providers(), "ATTESTMESH_RPC_URLS (or ATTESTMESH_RPC_URL) is required"),
    ]
    for env, expected in cases:
        with pytest.raises(SettingsError) as info:
            load_settings(env)
        text = "\n".join(info.value.problems)
        assert expected in text, (expected, text)
        assert key not in text and "a/" not in text


def test_http_providers_need_the_explicit_opt_out() -> None:
    env = providers(RPC_URLS="https://a.example,http://10.0.0.2:8545", RPC_ALLOW_HTTP="true")
    s = load_settings(env)
    assert (s.chain.rpc_allow_http, s.chain.rpc_quorum) == (True, 2)
    assert "10.0.0.2" not in repr(s) and "a.example" not in repr(s)
