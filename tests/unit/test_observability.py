"""sidecar.observability: label sets created at zero, the JSON log line, the secret-dropping processor."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.core.status import NodeStatus
from sidecar.logs import configure_logging, drop_secret_keys
from sidecar.metricvocab import (
    CHAIN_ERROR_KINDS,
    CSK_PULL_RESULTS,
    CSK_REFUSALS,
    EVENT_MODES,
    HEARTBEAT_REJECTIONS,
    HTTP_SURFACES,
    LIVENESS_DIRECTIONS,
    PEER_CHANGES,
    PEER_STATES,
    PHASES,
    PUSH_REJECTIONS,
    RECONCILE_RESULTS,
    REGISTRATION_RESULTS,
    RPC_SOURCES,
    membership_fingerprint,
)
from sidecar.observability import Metrics
from sidecar.rpctally import rpc_tally

LABELLED = [
    ("attestmesh_phase", "phase", PHASES),
    ("attestmesh_peers", "state", PEER_STATES),
    ("attestmesh_peer_changes_total", "change", PEER_CHANGES),
    ("attestmesh_reconcile_passes_total", "result", RECONCILE_RESULTS),
    ("attestmesh_heartbeats_rejected_total", "reason", HEARTBEAT_REJECTIONS),
    ("attestmesh_peer_liveness_transitions_total", "direction", LIVENESS_DIRECTIONS),
    ("attestmesh_csk_requests_refused_total", "reason", CSK_REFUSALS),
    ("attestmesh_csk_pull_attempts_total", "result", CSK_PULL_RESULTS),
    ("attestmesh_http_rejected_total", "surface", HTTP_SURFACES),
    ("attestmesh_http_client_gone_total", "surface", HTTP_SURFACES),
    ("attestmesh_chain_errors_total", "kind", CHAIN_ERROR_KINDS),
    ("attestmesh_registration_attempts_total", "result", REGISTRATION_RESULTS),
    ("attestmesh_push_rejected_total", "reason", PUSH_REJECTIONS),
]
UNLABELLED = [
    "attestmesh_phase_unexpected_transitions_total",
    "attestmesh_heartbeats_sent_total",
    "attestmesh_heartbeats_received_total",
    "attestmesh_csk_requests_served_total",
    "attestmesh_chain_logs_polled_total",
    "attestmesh_chain_logs_pushed_total",
    "attestmesh_push_connected",
]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_label_values_are_the_documented_sets() -> None:
    assert PHASES == ("boot_gate", "register", "mesh", "csk_acquire", "healthy")
    assert HEARTBEAT_REJECTIONS == (
        "malformed", "unknown_sender", "bad_signature", "wrong_source", "stale", "future", "replayed",
    )  # fmt: skip
    assert CSK_REFUSALS == (
        "malformed", "wrong_cluster", "wrong_responder", "not_member", "bad_signature", "stale", "replayed",
        "not_live", "not_held", "rate_limited", "no_proof", "bad_proof", "foreign_app", "untrusted_root",
        "anchors_missing", "no_own_proof", "epoch_not_held",
    )  # fmt: skip
    assert CSK_PULL_RESULTS == ("ok", "refused", "unreachable", "invalid", "unproven")


def test_every_known_label_set_exists_at_zero(registry: CollectorRegistry) -> None:
    Metrics(registry)
    for metric, label, values in LABELLED:
        for value in values:
            assert registry.get_sample_value(metric, {label: value}) == 0.0, (metric, value)
    for metric in UNLABELLED:
        assert registry.get_sample_value(metric) == 0.0, metric


def test_exposition_names_every_metric(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    metrics.rpc_call("eth_blockNumber")
    metrics.record_phase("boot_gate", "register")
    text = generate_latest(registry).decode()
    for metric, _, _ in LABELLED:
        assert f"# TYPE {metric.removesuffix('_total')}" in text
    for metric in [*UNLABELLED, "attestmesh_phase_transitions_total", "attestmesh_rpc_calls_total"]:
        assert f"\n{metric}" in text, metric


def test_record_phase(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    m.record_phase(None, "boot_gate")
    assert registry.get_sample_value("attestmesh_phase", {"phase": "boot_gate"}) == 1
    assert (
        registry.get_sample_value(
            "attestmesh_phase_transitions_total", {"from_phase": "boot_gate", "to_phase": "boot_gate"}
        )
        is None
    )
    m.record_phase("boot_gate", "register", True)
    m.record_phase("register", "healthy", expected=False)
    assert registry.get_sample_value("attestmesh_phase", {"phase": "boot_gate"}) == 0
    assert registry.get_sample_value("attestmesh_phase", {"phase": "healthy"}) == 1
    assert (
        registry.get_sample_value(
            "attestmesh_phase_transitions_total", {"from_phase": "boot_gate", "to_phase": "register"}
        )
        == 1
    )
    assert registry.get_sample_value("attestmesh_phase_unexpected_transitions_total") == 1
    with pytest.raises(ValueError, match="unknown phase"):
        m.set_phase("booting")


def test_bump_methods(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    m.set_peer_counts(desired=3, configured=2, live=1)
    m.peer_changed("added", 2)
    m.reconcile_pass("unchanged")
    m.heartbeat_sent(3)
    m.heartbeat_received()
    m.heartbeat_rejected("replayed")
    m.liveness_changed("down")
    m.csk_served()
    m.csk_refused("not_live")
    m.csk_pull_attempt("unreachable")
    m.http_rejection("peer")
    m.chain_error("transient")
    m.logs_polled(7)
    m.registration_attempt("ok")
    get = registry.get_sample_value
    assert [get("attestmesh_peers", {"state": s}) for s in ("desired", "configured", "live")] == [3, 2, 1]
    assert get("attestmesh_peer_changes_total", {"change": "added"}) == 2
    assert get("attestmesh_reconcile_passes_total", {"result": "unchanged"}) == 1
    assert get("attestmesh_heartbeats_sent_total") == 3
    assert get("attestmesh_heartbeats_received_total") == 1
    assert get("attestmesh_heartbeats_rejected_total", {"reason": "replayed"}) == 1
    assert get("attestmesh_peer_liveness_transitions_total", {"direction": "down"}) == 1
    assert get("attestmesh_csk_requests_served_total") == 1
    assert get("attestmesh_csk_requests_refused_total", {"reason": "not_live"}) == 1
    assert get("attestmesh_csk_pull_attempts_total", {"result": "unreachable"}) == 1
    assert get("attestmesh_http_rejected_total", {"surface": "peer"}) == 1
    assert get("attestmesh_chain_errors_total", {"kind": "transient"}) == 1
    assert get("attestmesh_chain_logs_polled_total") == 7
    assert get("attestmesh_registration_attempts_total", {"result": "ok"}) == 1
    with pytest.raises(ValueError, match="unknown reason"):
        m.csk_refused("because")  # type: ignore[arg-type]


def test_rpc_method_label_never_carries_an_identifier(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    m.rpc_call("eth_getLogs")
    m.rpc_call("0x" + "ab" * 20)
    m.rpc_call("eth_call 0xdeadbeef")
    assert registry.get_sample_value("attestmesh_rpc_calls_total", {"method": "eth_getLogs"}) == 1
    assert registry.get_sample_value("attestmesh_rpc_calls_total", {"method": "other"}) == 2


def test_default_registry_is_private_and_has_process_metrics() -> None:
    a, b = Metrics(), Metrics()  # no duplicate-registration error: each has its own registry
    assert a.registry is not b.registry
    assert "process_cpu_seconds_total" in generate_latest(a.registry).decode()  # Linux: /proc


# --- logging ------------------------------------------------------------------------------------------


@pytest.fixture
def logging_reset() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_line_shape(capsys: pytest.CaptureFixture[str], logging_reset: None) -> None:
    configure_logging("info")
    structlog.contextvars.bind_contextvars(node="n1")
    log = structlog.get_logger().bind(cluster="0xabc")
    log.debug("reconcile.unchanged")
    log.info("phase.changed", from_phase="mesh", to_phase="healthy")
    out = lines(capsys.readouterr().out)
    assert len(out) == 1
    line = out[0]
    assert line["event"] == "phase.changed"
    assert line["level"] == "info"
    assert line["from_phase"] == "mesh" and line["to_phase"] == "healthy"
    assert line["node"] == "n1" and line["cluster"] == "0xabc"
    stamp = str(line["timestamp"])
    assert stamp.endswith("Z") and "T" in stamp


def test_debug_level_and_exceptions(capsys: pytest.CaptureFixture[str], logging_reset: None) -> None:
    configure_logging("DEBUG")
    log = structlog.get_logger()
    log.debug("reconcile.unchanged")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("loop.failed")
    out = lines(capsys.readouterr().out)
    assert [o["event"] for o in out] == ["reconcile.unchanged", "loop.failed"]
    assert out[1]["level"] == "error"
    assert "RuntimeError: boom" in str(out[1]["exception"])


def test_stdlib_logging_is_routed_at_warning(capsys: pytest.CaptureFixture[str], logging_reset: None) -> None:
    configure_logging("debug")
    logging.getLogger("aiohttp.access").info("GET /healthz 200")
    logging.getLogger("web3.providers").warning("provider %s slow", "rpc")
    out = lines(capsys.readouterr().out)
    assert len(out) == 1
    assert out[0]["event"] == "provider rpc slow"
    assert out[0]["level"] == "warning"
    assert out[0]["logger"] == "web3.providers"
    assert "timestamp" in out[0]


def test_unknown_level_is_rejected(logging_reset: None) -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("trace")


def test_secret_keys_are_dropped_from_log_lines(
    capsys: pytest.CaptureFixture[str], logging_reset: None
) -> None:
    configure_logging("info")
    structlog.get_logger().info(
        "identity.derived",
        private_key="0xdeadbeefcafe",
        wg_secret="c2VjcmV0",
        KEY_MATERIAL="zzz",
        nested={"seal_private": "p", "public": "ok", "deeper": [{"secretive": 1}]},
        wg_pub="0x" + "01" * 32,
        raw=b"\x01\x02\x03",
    )
    text = capsys.readouterr().out
    for leaked in ("deadbeefcafe", "c2VjcmV0", "zzz", '"p"', "secretive"):
        assert leaked not in text
    line = lines(text)[0]
    assert line["wg_pub"] == "0x" + "01" * 32
    assert line["nested"] == {"public": "ok", "deeper": [{}]}
    assert line["raw"] == "<3 bytes redacted>"
    assert line["redacted_keys"] == ["KEY_MATERIAL", "private_key", "wg_secret"]


def test_drop_secret_keys_processor_directly() -> None:
    event = {"event": "x", "privateKey": 1, "my_secret_thing": 2, "ok": 3}
    assert drop_secret_keys(None, "info", event) == {
        "event": "x",
        "ok": 3,
        "redacted_keys": ["my_secret_thing", "privateKey"],
    }
    assert drop_secret_keys(None, "info", {"event": "y"}) == {"event": "y"}


def test_the_event_mode_starts_as_poll_and_is_one_hot() -> None:
    metrics = Metrics(CollectorRegistry())
    get = metrics.registry.get_sample_value
    assert [get("attestmesh_event_mode", {"mode": m}) for m in EVENT_MODES] == [0, 1]  # push, poll
    metrics.set_event_mode("push")
    assert [get("attestmesh_event_mode", {"mode": m}) for m in EVENT_MODES] == [1, 0]
    with pytest.raises(ValueError, match="unknown mode"):
        metrics.set_event_mode("pull")  # type: ignore[arg-type]


async def test_rpc_calls_are_tallied_by_the_context_that_made_them() -> None:
    metrics = Metrics()
    outside: list[str] = []

    async def other_task() -> None:  # started before the tally: its calls are not the pass's
        await asyncio.sleep(0)
        metrics.rpc_call("eth_getLogs")
        outside.append("done")

    async def child() -> None:  # started inside the tally (as ChainLink's per-provider reads are)
        metrics.rpc_call("eth_call")

    other = asyncio.create_task(other_task())
    with rpc_tally("pass") as tally:
        metrics.rpc_call("eth_call")
        await asyncio.gather(asyncio.create_task(child()), other)
        metrics.rpc_call("not a method!")
    metrics.rpc_call("eth_blockNumber")  # after the pass: nobody's
    assert outside == ["done"]
    assert tally.calls == {"eth_call": 2, "other": 1} and tally.total == 3
    by_source = {
        s: metrics.registry.get_sample_value("attestmesh_rpc_calls_by_source_total", {"source": s})
        for s in RPC_SOURCES
    }
    assert by_source == {"pass": 3.0, "poll": 0.0, "push": 0.0, "other": 2.0}
    metrics.pass_rpc(tally)
    assert metrics.registry.get_sample_value("attestmesh_reconcile_pass_rpc_calls_sum") == 3


def test_status_gauges_follow_the_status_snapshot(registry: CollectorRegistry) -> None:
    m = Metrics(registry)
    assert math.isnan(registry.get_sample_value("attestmesh_membership_digest_fingerprint") or 0.0)
    assert math.isnan(registry.get_sample_value("attestmesh_signer_balance_ether") or 0.0)
    digest = "0x" + "a1b2c3d4e5f6" + "00" * 26
    m.record_status(
        NodeStatus(
            phase="healthy", healthy=True, reason="", version="t", csk_held=True, chain_reachable=True,
            membership_digest=digest,
        )
    )  # fmt: skip
    assert registry.get_sample_value("attestmesh_csk_held") == 1
    assert registry.get_sample_value("attestmesh_chain_reachable") == 1
    assert registry.get_sample_value("attestmesh_membership_digest_fingerprint") == 0xA1B2C3D4E5F6
    m.record_status(NodeStatus(phase="mesh", healthy=False, reason="x", version="t", chain_reachable=False))
    assert registry.get_sample_value("attestmesh_csk_held") == 0
    assert registry.get_sample_value("attestmesh_chain_reachable") == 0
    assert math.isnan(registry.get_sample_value("attestmesh_membership_digest_fingerprint") or 0.0)
    m.set_signer_balance(25 * 10**15)
    assert registry.get_sample_value("attestmesh_signer_balance_ether") == pytest.approx(0.025)


def test_membership_fingerprint_is_exact_and_distinguishes_digests() -> None:
    a = "0x" + "ff" * 32
    assert membership_fingerprint(a) == 2**48 - 1
    assert float(membership_fingerprint(a)) == membership_fingerprint(a)  # a float64 holds it exactly
    assert membership_fingerprint("0x" + "00" * 5 + "01" + "ff" * 26) == 1
    with pytest.raises(ValueError, match="32 bytes"):
        membership_fingerprint("0x1234")
