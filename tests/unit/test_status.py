"""sidecar.core.status: the /healthz body shape exactly, nulls before registration, the public views."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sidecar.core.status import (
    MAX_EXCLUDED_LISTED,
    PHASES,
    NodeStatus,
    PeerView,
    SelfView,
    healthz_body,
    peers_body,
)

MEMBER = "0x" + "ab" * 32


def test_phases_are_the_design_order() -> None:
    assert PHASES == ("boot_gate", "register", "mesh", "csk_acquire", "healthy")


def test_initial_body_is_exactly_the_design_shape_with_nulls() -> None:
    body = healthz_body(NodeStatus.initial("1.2.3"))
    assert body == {
        "phase": "boot_gate",
        "healthy": False,
        "reason": "starting: nothing observed yet",
        "node": {
            "app_id": None,
            "instance_id": None,
            "compose_hash": None,
            "member_id": None,
            "mesh_ip": None,
            "signer": None,
        },
        "peers": {
            "desired": 0,
            "configured": 0,
            "live": 0,
            "transport": {},
            "excluded": [],
            "excluded_count": 0,
        },
        "csk": {
            "held": False,
            "epoch": None,
            "previous_epoch": None,
            "commitment": None,
            "source": None,
            "peering_error": None,
        },
        "events": {
            "mode": "poll",
            "indexer_connected": False,
            "cursor_block": None,
            "head_block": None,
            "rejected_pushes": 0,
            "rejected_by_reason": {},
        },
        "chain": {
            "reachable": None,
            "error": None,
            "write_held": None,
            "read_at": None,
            "rpc": {"providers": 1, "quorum": 1, "up": [], "agreeing": [], "dissenting": [], "reason": None},
        },
        "membership_digest": None,
        "version": "1.2.3",
        "build": {"version": "1.2.3", "commit": "unknown", "dirty": None, "source": "unknown"},
    }
    assert list(body) == [
        "phase",
        "healthy",
        "reason",
        "node",
        "peers",
        "csk",
        "events",
        "chain",
        "membership_digest",
        "version",
        "build",
    ]
    json.dumps(body)  # serialisable as is


def test_registered_healthy_body_carries_every_value() -> None:
    status = NodeStatus(
        phase="healthy",
        healthy=True,
        reason=None,
        version="0.1.0",
        app_id="0x" + "11" * 20,
        instance_id="22" * 20,
        compose_hash="0x" + "33" * 32,
        member_id=MEMBER,
        mesh_ip="10.88.0.2",
        signer="0x" + "44" * 20,
        peers_desired=2,
        peers_configured=2,
        peers_live=1,
        peers_transport={"gateway": {"up": 1, "down": 1}},
        peers_excluded=((MEMBER, "bad_endpoint"),),
        csk_held=True,
        csk_epoch=2,
        csk_previous_epoch=1,
        csk_commitment="0x" + "55" * 32,
        csk_source="peer",
        events_mode="push",
        indexer_connected=True,
        cursor_block=120,
        head_block=121,
        rejected_pushes=3,
        rejected_by_reason=(("bad_signature", 2), ("replay", 1)),
        membership_digest="0x" + "66" * 32,
        chain_reachable=True,
        chain_error=None,
        chain_write_held="fee_cap: base fee 50 gwei + tip 2 gwei per gas exceeds the cap of 10 gwei",
        chain_read_at="push",
    )
    body = healthz_body(status)
    assert body["node"] == {
        "app_id": "0x" + "11" * 20,
        "instance_id": "22" * 20,
        "compose_hash": "0x" + "33" * 32,
        "member_id": MEMBER,
        "mesh_ip": "10.88.0.2",
        "signer": "0x" + "44" * 20,
    }
    assert body["peers"] == {
        "desired": 2, "configured": 2, "live": 1, "transport": {"gateway": {"up": 1, "down": 1}},
        "excluded": [{"member_id": MEMBER, "reason": "bad_endpoint"}], "excluded_count": 1,
    }  # fmt: skip
    assert body["csk"] == {
        "held": True,
        "epoch": 2,
        "previous_epoch": 1,
        "commitment": "0x" + "55" * 32,
        "source": "peer",
        "peering_error": None,
    }
    peering = healthz_body(dataclasses.replace(status, csk_peering_error="ATTESTMESH_KMS_ROOTS not set"))
    assert peering["csk"]["peering_error"] == "ATTESTMESH_KMS_ROOTS not set"  # type: ignore[index]
    assert body["events"] == {
        "mode": "push",
        "indexer_connected": True,
        "cursor_block": 120,
        "head_block": 121,
        "rejected_pushes": 3,
        "rejected_by_reason": {"bad_signature": 2, "replay": 1},
    }
    assert body["chain"] == {
        "reachable": True,
        "error": None,
        "write_held": "fee_cap: base fee 50 gwei + tip 2 gwei per gas exceeds the cap of 10 gwei",
        "read_at": "push",
        "rpc": {"providers": 1, "quorum": 1, "up": [], "agreeing": [], "dissenting": [], "reason": None},
    }
    assert (body["phase"], body["healthy"], body["reason"]) == ("healthy", True, None)


def test_unreachable_chain_is_named() -> None:
    status = dataclasses.replace(
        NodeStatus.initial("v"),
        chain_reachable=False,
        chain_error="connection refused",
        reason="chain unreachable",
    )
    assert healthz_body(status)["chain"] == {
        "reachable": False,
        "error": "connection refused",
        "write_held": None,
        "read_at": None,
        "rpc": {"providers": 1, "quorum": 1, "up": [], "agreeing": [], "dissenting": [], "reason": None},
    }


def test_disagreeing_providers_are_named_by_index() -> None:
    status = dataclasses.replace(
        NodeStatus.initial("v"),
        chain_reachable=False,
        chain_error="rpc_disagreement: provider 1 disagrees with provider 0: membership digest …",
        rpc_providers=2,
        rpc_quorum=2,
        rpc_up=(0, 1),
        rpc_agreeing=(0,),
        rpc_dissenting=(1,),
        rpc_reason="rpc_disagreement",
    )
    chain = healthz_body(status)["chain"]
    assert chain == {
        "reachable": False,
        "error": "rpc_disagreement: provider 1 disagrees with provider 0: membership digest …",
        "write_held": None,
        "read_at": None,
        "rpc": {
            "providers": 2,
            "quorum": 2,
            "up": [0, 1],
            "agreeing": [0],
            "dissenting": [1],
            "reason": "rpc_disagreement",
        },
    }


def test_invariants() -> None:
    with pytest.raises(ValueError, match="unknown phase"):
        NodeStatus(phase="booting", healthy=False, reason=None, version="v")
    with pytest.raises(ValueError, match="cannot be healthy"):
        NodeStatus(phase="mesh", healthy=True, reason=None, version="v")
    with pytest.raises(ValueError, match="events mode"):
        NodeStatus(phase="mesh", healthy=False, reason=None, version="v", events_mode="pull")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        NodeStatus.initial("v").phase = "mesh"  # type: ignore[misc]


def test_peer_view_json_and_sorting() -> None:
    a = PeerView(
        member_id="0x" + "02" * 32,
        mesh_ip="10.0.0.3",
        endpoint=None,
        configured=False,
        live=False,
        last_heard_ms_ago=None,
    )
    b = PeerView(
        member_id="0x" + "01" * 32,
        mesh_ip="10.0.0.2",
        endpoint="1.2.3.4:51820",
        configured=True,
        live=True,
        last_heard_ms_ago=1500,
        transport={"kind": "gateway", "up": True, "reconnects": 2},
    )
    assert a.to_json() == {
        "member_id": "0x" + "02" * 32,
        "mesh_ip": "10.0.0.3",
        "endpoint": None,
        "configured": False,
        "live": False,
        "last_heard_ms_ago": None,
        "transport": None,
    }
    assert b.to_json()["transport"] == {"kind": "gateway", "up": True, "reconnects": 2}
    assert peers_body([a, b]) == {"peers": [b.to_json(), a.to_json()]}
    assert peers_body([]) == {"peers": []}


def test_self_view_json_has_public_values_only() -> None:
    me = SelfView(
        cluster="0x" + "aa" * 20,
        member_id=MEMBER,
        app_id="0x" + "bb" * 20,
        instance_id="cc" * 20,
        mesh_ip="10.88.0.2",
        signer="0x" + "dd" * 20,
        wg_pub="0x" + "01" * 32,
        seal_pub="0x" + "02" * 32,
        identity_pub="0x" + "03" * 32,
    )
    assert set(me.to_json()) == {
        "cluster",
        "member_id",
        "app_id",
        "instance_id",
        "mesh_ip",
        "signer",
        "wg_pub",
        "seal_pub",
        "identity_pub",
    }
    assert me.to_json()["mesh_ip"] == "10.88.0.2"


def test_excluded_records_are_listed_up_to_the_bound_with_the_whole_count() -> None:
    excluded = tuple((f"0x{i:064x}", "bad_endpoint" if i % 2 else "duplicate_key") for i in range(40))
    body = healthz_body(dataclasses.replace(NodeStatus.initial("1"), peers_excluded=excluded))
    peers = body["peers"]
    assert isinstance(peers, dict)
    assert peers["excluded_count"] == 40
    assert len(peers["excluded"]) == MAX_EXCLUDED_LISTED == 32
    assert peers["excluded"][0] == {"member_id": "0x" + "0" * 64, "reason": "duplicate_key"}
    assert peers["excluded"][1]["reason"] == "bad_endpoint"
