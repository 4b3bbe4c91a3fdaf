"""The simulator's pure parts: hex and report-data parsing, event log and RTMR replay, dev quotes, config,
and the request methods called directly (no server, no event loop)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import struct
import sys
from pathlib import Path

import pytest
from dstack_sdk.dstack_client import replay_rtmr as sdk_replay_rtmr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devnet.kms import DevnetKms, get_key
from devnet.simulator.__main__ import SEED_ENV, kms_from_env
from devnet.simulator.config import ConfigError, SimulatorConfig
from devnet.simulator.quote import (
    DEV_QUOTE_MAGIC,
    RUNTIME_EVENT_TYPE,
    DevQuote,
    DevQuoteError,
    EventLogEntry,
    ReportDataTooLongError,
    boot_event_log,
    boot_time_rtmr3,
    encode_dev_quote,
    pad_report_data,
    parse_dev_quote,
    parse_hex,
    replay_event_log,
    replay_rtmr,
    runtime_event_digest,
)
from devnet.simulator.server import (
    TLS_KEY_UNSUPPORTED,
    BadRequestError,
    Params,
    Simulator,
    json_nesting_depth,
)
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.sigchain import build_proof, verify_proof

APP = "5bb4ff9a3837357f19dc176407a5709c62eb6c56"
INSTANCE = "00000000000000000000000000000000000000a1"
KMS = DevnetKms()
COMPOSE = b'{"name": "demo", "runner": "docker-compose", "note": "caf\xc3\xa9"}\n'


@pytest.fixture
def config(tmp_path: Path) -> SimulatorConfig:
    (tmp_path / "app-compose.json").write_bytes(COMPOSE)
    return SimulatorConfig.from_json(
        {"app_id": "0x" + APP, "instance_id": INSTANCE, "app_compose_path": "app-compose.json"}, tmp_path
    )


@pytest.fixture
def sim(config: SimulatorConfig) -> Simulator:
    return Simulator.from_config(config, DevnetKms())


# --- hex and report data -------------------------------------------------------------------------


@given(st.binary(max_size=80), st.sampled_from(["", "0x", "0X"]), st.booleans())
def test_parse_hex_round_trips_with_optional_prefix(data: bytes, prefix: str, upper: bool) -> None:
    text = data.hex().upper() if upper else data.hex()
    assert parse_hex(prefix + text, "x") == data


@given(st.text(max_size=20))
def test_parse_hex_rejects_or_decodes_without_echoing(text: str) -> None:
    try:
        parse_hex(text, "field 'x'")
    except ValueError as exc:
        assert str(exc) == "field 'x' is not an even-length hex string"


@pytest.mark.parametrize("text", ["abc", "0xg0", "zz", " 00", "0x0", "\uff10\uff10"])
def test_parse_hex_rejects_bad_hex(text: str) -> None:
    with pytest.raises(ValueError, match="not an even-length hex"):
        parse_hex(text, "x")


@given(st.binary(max_size=64))
def test_report_data_is_right_padded(data: bytes) -> None:
    padded = pad_report_data(data)
    assert len(padded) == 64
    assert padded[: len(data)] == data
    assert padded[len(data) :] == bytes(64 - len(data))


@given(st.binary(min_size=65, max_size=200))
def test_report_data_over_64_bytes_is_refused(data: bytes) -> None:
    with pytest.raises(ReportDataTooLongError, match="report data is too long"):
        pad_report_data(data)


# --- event log and RTMR replay -------------------------------------------------------------------


def test_runtime_digest_is_dstack_v1() -> None:
    expected = hashlib.sha384(b"\x01\x00\x00\x08" + b":app-id:" + bytes.fromhex(APP)).digest()
    assert runtime_event_digest("app-id", bytes.fromhex(APP)) == expected
    assert struct.pack("<I", RUNTIME_EVENT_TYPE) == b"\x01\x00\x00\x08"


def test_replay_from_48_zero_bytes() -> None:
    assert replay_rtmr([]) == bytes(48)
    d1, d2 = b"\x01" * 48, b"\x02" * 48
    step1 = hashlib.sha384(bytes(48) + d1).digest()
    assert replay_rtmr([d1]) == step1
    assert replay_rtmr([d1, d2]) == hashlib.sha384(step1 + d2).digest()


@given(st.lists(st.binary(min_size=48, max_size=48), max_size=8))
def test_replay_matches_the_sdk(digests: list[bytes]) -> None:
    assert replay_rtmr(digests).hex() == sdk_replay_rtmr([d.hex() for d in digests])


def boot_log(**overrides: object) -> list[EventLogEntry]:
    args: dict[str, object] = {
        "measurement_seed": "seed",
        "app_id": bytes.fromhex(APP),
        "compose_hash": hashlib.sha256(COMPOSE).digest(),
        "instance_id": bytes.fromhex(INSTANCE),
        "os_image_hash": bytes(32),
        "key_provider": b'{"id":"00","name":"kms"}',
    }
    args.update(overrides)
    return boot_event_log(**args)  # type: ignore[arg-type]


def test_boot_log_has_dstack_order_and_replays() -> None:
    log = boot_log()
    runtime = [e.event for e in log if e.imr == 3]
    assert runtime == [
        "system-preparing",
        "app-id",
        "compose-hash",
        "instance-id",
        "boot-mr-done",
        "os-image-hash",
        "key-provider",
        "storage-fs",
        "system-ready",
    ]
    assert {e.imr for e in log} == {0, 1, 2, 3}
    rtmrs = replay_event_log(log)
    for imr in range(4):
        assert rtmrs[imr] == replay_rtmr([e.digest for e in log if e.imr == imr])
    assert next(e for e in log if e.event == "compose-hash").event_payload == hashlib.sha256(COMPOSE).digest()


def test_boot_log_depends_on_measured_values() -> None:
    base = replay_event_log(boot_log())
    assert replay_event_log(boot_log(measurement_seed="other"))[:3] != base[:3]
    assert replay_event_log(boot_log(compose_hash=bytes(32)))[3] != base[3]
    assert replay_event_log(boot_log(measurement_seed="other"))[3] == base[3]


def test_replay_recomputes_runtime_digests_and_ignores_the_field() -> None:
    log = boot_log()
    stripped = [dataclasses.replace(e, digest=b"") if e.imr == 3 else e for e in log]
    assert replay_event_log(stripped) == replay_event_log(log)
    forged = [
        dataclasses.replace(e, event_payload=bytes(32)) if e.event == "compose-hash" else e for e in log
    ]
    assert replay_event_log(forged)[3] != replay_event_log(log)[3]


def test_boot_time_rtmr3_stops_at_boot_mr_done() -> None:
    log = boot_log()
    prefix = log[: next(i for i, e in enumerate(log) if e.event == "boot-mr-done") + 1]
    assert boot_time_rtmr3(log) == replay_event_log(prefix)[3]
    assert boot_time_rtmr3([*log, EventLogEntry.runtime("late", b"x")]) == boot_time_rtmr3(log)


def test_event_log_entry_json_round_trip() -> None:
    for entry in boot_log():
        assert EventLogEntry.from_json(json.loads(json.dumps(entry.to_json()))) == entry


def test_event_in_an_unknown_imr_is_refused() -> None:
    with pytest.raises(ValueError, match="IMR 4"):
        replay_event_log([EventLogEntry(4, 1, b"", "x", b"")])


# --- development quote ---------------------------------------------------------------------------

mr48 = st.binary(min_size=48, max_size=48)
b32 = st.binary(min_size=32, max_size=32)
b20 = st.binary(min_size=20, max_size=20)
dev_quotes = st.builds(
    DevQuote,
    report_data=st.binary(min_size=64, max_size=64),
    mrtd=mr48,
    rtmr0=mr48,
    rtmr1=mr48,
    rtmr2=mr48,
    rtmr3=mr48,
    app_id=b20,
    compose_hash=b32,
    instance_id=b20,
    device_id=b32,
    os_image_hash=b32,
    tcb_status=st.text(max_size=20),
)


@given(dev_quotes)
def test_dev_quote_round_trip(quote: DevQuote) -> None:
    data = encode_dev_quote(quote)
    assert data.startswith(DEV_QUOTE_MAGIC)
    assert parse_dev_quote(data) == quote
    body = json.loads(data[len(DEV_QUOTE_MAGIC) :])
    assert body["development_only"] is True
    assert data[len(DEV_QUOTE_MAGIC) :] == json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@given(st.binary(max_size=200))
def test_parse_dev_quote_never_crashes(data: bytes) -> None:
    with contextlib.suppress(DevQuoteError):
        parse_dev_quote(data)


@given(dev_quotes, st.data())
def test_tampered_dev_quote_bodies_are_refused(quote: DevQuote, data: st.DataObject) -> None:
    body = json.loads(encode_dev_quote(quote)[len(DEV_QUOTE_MAGIC) :])
    field = data.draw(st.sampled_from(sorted(body)))
    invalid = st.one_of(st.integers(), st.none(), st.just(False))
    if field != "tcb_status":  # any string is a valid status; bytes fields also refuse bad hex and sizes
        invalid = st.one_of(invalid, st.just("zz"), st.just("AB" * 32), st.just("00"))
    body[field] = data.draw(invalid)
    with pytest.raises(DevQuoteError):
        parse_dev_quote(DEV_QUOTE_MAGIC + json.dumps(body).encode())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x04\x00\x02\x00" + bytes(100),
        DEV_QUOTE_MAGIC + b"[]",
        DEV_QUOTE_MAGIC + b"{",
        DEV_QUOTE_MAGIC + b"\xff",
    ],
    ids=["empty", "tdx-header", "array", "truncated", "not-ascii"],
)
def test_non_dev_quotes_are_refused(data: bytes) -> None:
    with pytest.raises(DevQuoteError):
        parse_dev_quote(data)


# --- config --------------------------------------------------------------------------------------


def test_config_defaults(config: SimulatorConfig, tmp_path: Path) -> None:
    assert config.app_id == Address.from_hex(APP)
    assert config.instance_id == bytes.fromhex(INSTANCE)
    assert config.app_compose_path == tmp_path / "app-compose.json"
    assert config.tcb_status == "UpToDate"
    assert config.effective_device_id == Bytes32(
        hashlib.sha256(b"attestmesh-devnet-device:" + bytes.fromhex(INSTANCE)).digest()
    )
    assert config.effective_measurement_seed == config.os_image_hash.hex


def test_config_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(
        json.dumps(
            {
                "app_id": APP,
                "instance_id": "0x" + INSTANCE,
                "app_compose_path": "/abs/app-compose.json",
                "app_name": "n1",
                "device_id": "11" * 32,
                "os_image_hash": "0x" + "22" * 32,
                "measurement_seed": "img",
                "tcb_status": "OutOfDate",
                "version": "0.5.7",
                "rev": "r",
                "cpu_count": 4,
                "memory_size": 1024,
            }
        )
    )
    cfg = SimulatorConfig.load(path)
    assert cfg.app_compose_path == Path("/abs/app-compose.json")
    assert cfg.effective_device_id == Bytes32(b"\x11" * 32)
    assert (cfg.app_name, cfg.tcb_status, cfg.version, cfg.cpu_count) == ("n1", "OutOfDate", "0.5.7", 4)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([], "JSON object"),
        ({"app_id": APP, "instance_id": INSTANCE}, "app_compose_path"),
        ({"app_id": APP, "instance_id": INSTANCE, "app_compose_path": "a", "typo": 1}, "unknown config keys"),
        ({"app_id": APP[:-2], "instance_id": INSTANCE, "app_compose_path": "a"}, "20 bytes"),
        ({"app_id": APP, "instance_id": "00", "app_compose_path": "a"}, "instance_id must be 20 bytes"),
        ({"app_id": 5, "instance_id": INSTANCE, "app_compose_path": "a"}, "must be a string"),
        ({"app_id": APP, "instance_id": INSTANCE, "app_compose_path": "a", "cpu_count": True}, "positive"),
        ({"app_id": APP, "instance_id": INSTANCE, "app_compose_path": "a", "device_id": "zz"}, "hex"),
    ],
)
def test_bad_configs_are_named(obj: object, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        SimulatorConfig.from_json(obj, tmp_path)


def test_unreadable_or_non_json_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        SimulatorConfig.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        SimulatorConfig.load(tmp_path / "bad.json")


def test_kms_seed_from_env() -> None:
    assert kms_from_env({}).root_address == DevnetKms().root_address
    seed = b"a devnet seed of some length"
    assert kms_from_env({SEED_ENV: "0x" + seed.hex()}).root_address == DevnetKms(seed).root_address
    secret_text = "not-hex-secret-value"
    with pytest.raises(ConfigError, match=SEED_ENV) as info:
        kms_from_env({SEED_ENV: secret_text})
    assert secret_text not in str(info.value)
    with pytest.raises(ConfigError, match="at least 16"):
        kms_from_env({SEED_ENV: "00" * 8})


# --- the methods, called directly ----------------------------------------------------------------


def test_info_is_consistent(sim: Simulator) -> None:
    info = sim.info(Params({}))
    tcb = json.loads(info["tcb_info"])
    assert info["compose_hash"] == hashlib.sha256(COMPOSE).hexdigest() == tcb["compose_hash"]
    assert tcb["app_compose"] == COMPOSE.decode()
    assert info["app_name"] == "demo"  # from the compose file when the config has none
    assert info["app_id"] == APP and info["instance_id"] == INSTANCE
    events = [EventLogEntry.from_json(e) for e in tcb["event_log"]]
    rtmrs = replay_event_log(events)
    assert [tcb[f"rtmr{i}"] for i in range(4)] == [r.hex() for r in rtmrs]
    assert json.loads(info["key_provider_info"]) == {"name": "kms", "id": DevnetKms().root_public_key.hex()}
    assert info["cloud_vendor"] == "attestmesh-devnet"


def test_emit_event_extends_rtmr3_but_not_mr_aggregated(sim: Simulator) -> None:
    before = json.loads(sim.info(Params({}))["tcb_info"])
    aggregated = sim.info(Params({}))["mr_aggregated"]
    assert sim.emit_event(Params({"event": "attestmesh.test", "payload": "0x0102"})) == {}
    after = json.loads(sim.info(Params({}))["tcb_info"])
    expected = hashlib.sha384(
        bytes.fromhex(before["rtmr3"]) + runtime_event_digest("attestmesh.test", b"\x01\x02")
    ).digest()
    assert after["rtmr3"] == expected.hex()
    assert after["rtmr0"] == before["rtmr0"]
    assert sim.info(Params({}))["mr_aggregated"] == aggregated
    quote = parse_dev_quote(bytes.fromhex(sim.get_quote(Params({"report_data": "aa"}))["quote"]))
    assert quote.rtmr3 == expected


def test_get_quote_pads_and_carries_measurements(sim: Simulator) -> None:
    resp = sim.get_quote(Params({"report_data": "0xdeadbeef"}))
    assert resp["report_data"] == "deadbeef" + "00" * 60
    quote = parse_dev_quote(bytes.fromhex(resp["quote"]))
    assert quote.report_data == bytes.fromhex(resp["report_data"])
    assert quote.compose_hash == hashlib.sha256(COMPOSE).digest()
    assert quote.app_id == bytes.fromhex(APP) and quote.tcb_status == "UpToDate"
    assert (
        parse_dev_quote(bytes.fromhex(sim.attest(Params({"report_data": "deadbeef"}))["attestation"]))
        == quote
    )
    with pytest.raises(BadRequestError, match="report data is too long"):
        sim.get_quote(Params({"report_data": "00" * 65}))


def test_get_key_chain_verifies(sim: Simulator) -> None:
    resp = sim.get_key(Params({"path": "attestmesh/signer/v1", "purpose": "ethereum"}))
    proof = build_proof(
        Address.from_hex(APP),
        SecretBytes(bytes.fromhex(resp["key"])),
        [bytes.fromhex(s) for s in resp["signature_chain"]],
    )
    verify_proof(proof, {DevnetKms().root_address})
    with pytest.raises(BadRequestError, match="unsupported algorithm"):
        sim.get_key(Params({"path": "p", "algorithm": "rsa"}))


@pytest.mark.parametrize(
    ("method", "fields", "match"),
    [
        ("get_key", {}, "missing field 'path'"),
        ("get_key", {"path": 3}, "must be a string"),
        ("get_quote", {}, "missing field 'report_data'"),
        ("get_quote", {"report_data": "xyz"}, "hex"),
        ("emit_event", {"event": ""}, "must not be empty"),
        ("emit_event", {"event": "e", "payload": ["00"]}, "must be a string"),
        ("sign", {"algorithm": "rsa", "data": "00"}, "unsupported algorithm"),
        ("sign", {"algorithm": "secp256k1_prehashed", "data": "00"}, "exactly 32 bytes"),
        ("verify", {"algorithm": "ed25519", "data": "", "signature": "00", "public_key": "00"}, "32-byte"),
        (
            "verify",
            {"algorithm": "secp256k1", "data": "", "signature": "00" * 64, "public_key": "05" * 33},
            "point",
        ),
        ("get_tls_key", {}, TLS_KEY_UNSUPPORTED),
    ],
)
def test_bad_requests_name_the_field_not_the_value(
    sim: Simulator, method: str, fields: dict[str, object], match: str
) -> None:
    with pytest.raises(BadRequestError, match=match) as info:
        getattr(sim, method)(Params(fields))
    for name, value in fields.items():
        if name != "algorithm" and isinstance(value, str) and len(value) > 2:
            assert value not in str(info.value)


@pytest.mark.parametrize("algorithm", ["ed25519", "secp256k1", "secp256k1_prehashed"])
def test_sign_and_verify(sim: Simulator, algorithm: str) -> None:
    data = ("ab" * 32) if algorithm == "secp256k1_prehashed" else "68656c6c6f"
    signed = sim.sign(Params({"algorithm": algorithm, "data": data}))
    assert signed["signature_chain"][0] == signed["signature"]
    check = {"algorithm": algorithm, "data": data, "public_key": signed["public_key"]}
    assert sim.verify(Params({**check, "signature": signed["signature"]})) == {"valid": True}
    flipped = ("00" if signed["signature"][:2] != "00" else "01") + signed["signature"][2:]
    assert sim.verify(Params({**check, "signature": flipped})) == {"valid": False}
    # The chain covers the signing key: "signing:" + hex(public key) under the app key.
    chain_algorithm = "ed25519" if algorithm == "ed25519" else "secp256k1"
    _, (app_sig, kms_sig) = get_key(DevnetKms(), Address.from_hex(APP), "vms", "signing", chain_algorithm)
    assert signed["signature_chain"][1:] == [app_sig.hex(), kms_sig.hex()]


def test_simulator_repr_hides_keys(sim: Simulator) -> None:
    key = sim.get_key(Params({"path": "attestmesh/signer/v1"}))["key"]
    assert key not in repr(sim)
    assert DevnetKms().app_key(Address.from_hex(APP)).reveal().hex() not in repr(sim)


def test_compose_file_must_be_utf8(tmp_path: Path) -> None:
    (tmp_path / "app-compose.json").write_bytes(b"\xff\xfe")
    cfg = SimulatorConfig.from_json(
        {"app_id": APP, "instance_id": INSTANCE, "app_compose_path": "app-compose.json"}, tmp_path
    )
    with pytest.raises(ConfigError, match="UTF-8"):
        Simulator.from_config(cfg, DevnetKms())


# --- JSON nesting guard ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"", 0),
        (b"{}", 1),
        (b'{"a": "[[[{{{"}', 1),
        (b'{"a": "\\"[[", "b": [[1]]}', 3),
        (b"[[{}], {}]", 3),
        (b'["unterminated', sys.maxsize),
        (b'{"a": "\\\\"}', 1),
    ],
)
def test_json_nesting_depth(body: bytes, depth: int) -> None:
    assert json_nesting_depth(body) == depth


@given(
    st.recursive(st.none() | st.text() | st.integers(), lambda c: st.lists(c) | st.dictionaries(st.text(), c))
)
def test_json_nesting_depth_matches_the_structure(value: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    assert json_nesting_depth(json.dumps(value).encode()) == depth(value)
    assert json_nesting_depth(json.dumps(value, ensure_ascii=False).encode()) == depth(value)


FIELD_NAMES = [
    "path",
    "purpose",
    "algorithm",
    "report_data",
    "event",
    "payload",
    "data",
    "signature",
    "public_key",
]
HEXISH = st.binary(max_size=70).map(bytes.hex) | st.binary(max_size=40).map(lambda b: "0x" + b.hex())
FIELD_VALUES = (
    HEXISH
    | st.sampled_from(["ed25519", "secp256k1", "secp256k1_prehashed", "k256", "", "rsa"])
    | st.text(max_size=10)
    | st.integers()
    | st.none()
    | st.booleans()
    | st.lists(st.text(max_size=3), max_size=2)
)


# The fixture only writes the compose file; every example builds a fresh Simulator.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(
        ["get_key", "get_quote", "attest", "emit_event", "sign", "verify", "info", "version"]
    ),
    fields=st.dictionaries(st.sampled_from(FIELD_NAMES), FIELD_VALUES, max_size=5),
)
def test_methods_answer_or_refuse_any_input(
    config: SimulatorConfig, method: str, fields: dict[str, object]
) -> None:
    sim = Simulator.from_config(config, KMS)
    try:
        result = getattr(sim, method)(Params(fields))
    except BadRequestError as exc:
        assert str(exc)
    else:
        json.dumps(result)
