"""``attestmesh cluster status``'s pure rules (``ops.clusterview``): which answers are health documents, how
each member's membership digest and CSK commitment compare with the chain's and the majority's, which
members fail and why, the summary line and the JSON document; and the command's argument types."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.args import connect_to_arg, domain_arg
from ops.clusterview import (
    SCHEMA,
    Agreement,
    ChainFacts,
    ChainMember,
    NodeAnswer,
    NotAHealthDocument,
    assess,
    clean,
    majority,
    read_health_document,
    version_cell,
)
from sidecar.core.status import NodeStatus, healthz_body

DIGEST = "0x" + "d1" * 32
OTHER_DIGEST = "0x" + "d2" * 32
COMMITMENT = "0x" + "cc" * 32
CHAIN = ChainFacts(
    chain_id=31337,
    block=120,
    cluster="0x" + "c1" * 20,
    membership_digest=DIGEST,
    csk_epoch=1,
    csk_commitment=COMMITMENT,
)


def body(**changes: Any) -> dict[str, Any]:
    """A healthy node's real ``/healthz`` body (the sidecar's own ``healthz_body``), with ``changes``."""
    status = NodeStatus(
        phase="healthy",
        healthy=True,
        reason=None,
        version="0.1.0",
        peers_desired=2,
        peers_live=2,
        peers_transport={"gateway": {"up": 2, "down": 0}},
        csk_held=True,
        csk_commitment=COMMITMENT,
        membership_digest=DIGEST,
    )
    return {**healthz_body(status), **changes}


def member(n: int, balance: int | None = 10**18) -> ChainMember:
    return ChainMember(
        member_id="0x" + f"{n:02x}" * 32,
        app_id="0x" + f"{n:02x}" * 20,
        signer="0x" + f"{n + 0x50:02x}" * 20,
        mesh_ip=f"10.13.0.{n}",
        health_url=f"https://{n:02x}-9090.gw.example/healthz",
        balance_wei=balance,
    )


def answer(status: int = 200, **changes: Any) -> NodeAnswer:
    return NodeAnswer(status, read_health_document(body(**changes)))


def test_a_real_healthz_body_reads_as_its_facts() -> None:
    facts = read_health_document(body())
    assert (facts.phase, facts.healthy, facts.reason, facts.version) == ("healthy", True, None, "0.1.0")
    assert (facts.peers_live, facts.peers_desired) == (2, 2)
    assert facts.transport == {"gateway": {"up": 2, "down": 0}}
    assert facts.membership_digest == DIGEST and facts.csk_commitment == COMMITMENT


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ([], "not a JSON object"),
        ("healthy", "not a JSON object"),
        (body(phase="dancing"), "phase"),
        (body(phase=None), "phase"),
        (body(healthy="yes"), "healthy"),
        (body(phase="mesh"), "healthy in a phase"),  # healthy: true but not in the healthy phase
        ({k: v for k, v in body().items() if k != "reason"}, "reason"),
        (body(reason=["x"]), "reason"),
        (body(version=7), "version"),
        (body(build="0435bab"), "build is not an object"),
        (body(build={"commit": 12}), "build.commit"),
        (body(peers="2/2"), "peers is not an object"),
        (body(peers={"live": -1}), "peers.live"),
        (body(peers={"live": True}), "peers.live"),
        (body(peers={"live": 10**40}), "peers.live"),
        (body(peers={"transport": {"gateway": "up"}}), "peers.transport"),
        (body(peers={"transport": {str(i): {} for i in range(100)}}), "peers.transport"),
        (body(membership_digest="0x1234"), "membership_digest"),
        (body(membership_digest=12), "membership_digest"),
        (body(csk={"commitment": "zz" * 33}), "csk.commitment"),
    ],
)
def test_what_is_not_a_health_document_is_named_without_its_values(data: object, why: str) -> None:
    with pytest.raises(NotAHealthDocument, match=why) as raised:
        read_health_document(data)
    assert "dancing" not in str(raised.value) and "0x1234" not in str(raised.value)


def test_the_version_cell_names_the_build_commit_after_a_roll() -> None:
    commit = "0435babc600d34ff3ed02f8e630c4a083e4f96ca"
    built = read_health_document(body(build={"version": "0.1.0", "commit": commit, "source": "image"}))
    assert built.commit == commit and version_cell(built) == "0.1.0 0435bab"
    unknown = read_health_document(body())  # a status without a build commit says "unknown"
    assert unknown.commit == "unknown" and version_cell(unknown) == "0.1.0"
    hostile = read_health_document(body(build={"commit": "\x1b[2J" + "a" * 100}))
    assert hostile.commit is not None and "\x1b" not in hostile.commit and version_cell(hostile) == "0.1.0"
    older = read_health_document({k: v for k, v in body().items() if k != "build"})  # before builds
    assert older.commit is None and version_cell(older) == "0.1.0"


def test_strings_from_a_node_are_cleaned_of_escapes_and_capped() -> None:
    hostile = "\x1b[2J\x1b]0;owned\x07" + "r" * 1000 + "\u202e"
    facts = read_health_document(body(phase="mesh", healthy=False, reason=hostile, version="\x1b[31m9"))
    assert facts.reason is not None and "\x1b" not in facts.reason and "\x07" not in facts.reason
    assert "\u202e" not in facts.reason and len(facts.reason) == 240 and facts.reason.endswith("…")
    assert facts.version == "?[31m9"


@given(st.text(max_size=300), st.integers(min_value=2, max_value=200))
def test_clean_leaves_no_control_character_and_respects_the_limit(text: str, limit: int) -> None:
    out = clean(text, limit)
    assert len(out) <= limit
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out)


def test_a_healthy_agreeing_cluster_is_ok_and_says_so() -> None:
    view = assess(CHAIN, [member(1), member(2), member(3)], [answer(), answer(), answer()])
    assert view.ok and view.failing == ()
    assert all(v.digest is Agreement.CHAIN and v.csk is Agreement.CHAIN for v in view.members)
    assert (
        view.summary()
        == f"cluster {CHAIN.cluster} at block 120: OK: all 3 members healthy and agreeing with the chain"
    )


def test_each_kind_of_failure_names_the_member_and_why() -> None:
    members = [member(n) for n in range(1, 7)]
    answers = [
        answer(),  # fine
        NodeAnswer(error="did not answer within 5 s"),
        answer(503, phase="csk_acquire", healthy=False, reason="csk: no live peer answered"),
        answer(membership_digest=OTHER_DIGEST),  # a minority digest
        answer(csk={"commitment": "0x" + "ee" * 32}),
        answer(membership_digest=None, csk={"commitment": None}),
    ]
    view = assess(CHAIN, members, answers)
    assert not view.ok
    assert [v.member.member_id for v in view.failing] == [m.member_id for m in members[1:]]
    why = {v.member.app_id: v.failures for v in view.members}
    assert why[members[0].app_id] == ()
    assert why[members[1].app_id] == ("did not answer within 5 s",)
    assert why[members[2].app_id] == (
        "not healthy (phase csk_acquire, HTTP 503): csk: no live peer answered",
    )
    assert why[members[3].app_id] == ("membership digest differs from the chain's",)
    assert why[members[4].app_id] == ("CSK commitment differs from the chain's",)
    assert why[members[5].app_id] == ("no membership digest", "no CSK commitment")
    summary = view.summary()
    assert summary.startswith(f"cluster {CHAIN.cluster} at block 120: FAILING: 5 of 6 members: ")
    for m in members[1:]:
        assert f"app {m.app_id} (member {m.member_id[:12]}…)" in summary
    assert members[0].app_id not in summary


def test_a_node_healthy_in_its_body_but_not_200_is_not_healthy() -> None:
    view = assess(CHAIN, [member(1)], [answer(503)])
    assert view.members[0].failures == ("not healthy (phase healthy, HTTP 503)",)


def test_the_majority_digest_is_told_apart_from_the_chain_s() -> None:
    """Every member agrees with the others but not with the chain (the chain moved on, or the members missed
    an event): each is 'majority', and fails."""
    moved = [answer(membership_digest=OTHER_DIGEST) for _ in range(3)]
    view = assess(CHAIN, [member(1), member(2), member(3)], moved)
    assert view.majority_digest == OTHER_DIGEST
    assert all(v.digest is Agreement.MAJORITY and not v.ok for v in view.members)
    split = assess(CHAIN, [member(1), member(2)], [answer(), answer(membership_digest=OTHER_DIGEST)])
    assert split.majority_digest is None and split.members[1].digest is Agreement.DIFFERS


def test_majority_is_more_than_half_of_all_members() -> None:
    assert majority(["a", "a", None], 3) == "a"
    assert majority(["a", None, None], 3) is None  # the silent count against it
    assert majority(["a", "b"], 2) is None
    assert majority([], 0) is None


def test_no_commitment_on_chain_fails_every_member() -> None:
    chain = ChainFacts(**{**_facts(CHAIN), "csk_commitment": None})
    view = assess(chain, [member(1)], [answer()])
    assert view.members[0].failures == ("no CSK commitment on chain",)
    assert view.members[0].csk is Agreement.DIFFERS


def test_the_balance_floor_is_checked_only_when_given() -> None:
    poor, unknown = member(1, balance=10**15), member(2, balance=None)
    assert assess(CHAIN, [poor, unknown], [answer(), answer()]).ok
    floor = ChainFacts(**{**_facts(CHAIN), "min_balance_wei": 5 * 10**16})
    view = assess(floor, [poor, unknown, member(3)], [answer(), answer(), answer()])
    assert view.members[0].failures == ("signer balance 0.001 ETH below 0.05",)
    assert view.members[1].failures == ("signer balance unknown",)
    assert view.members[2].ok


def test_a_cluster_without_members_is_not_ok() -> None:
    view = assess(CHAIN, [], [])
    assert not view.ok and view.summary().endswith("FAILING: the chain lists no members")


def test_the_json_document_is_stable() -> None:
    view = assess(
        CHAIN,
        [member(1), member(2)],
        [answer(), NodeAnswer(200, error="not a health document: HTTP 200, the body is not JSON")],
    )
    doc = json.loads(json.dumps(view.to_json()))
    assert set(doc) == {
        "schema",
        "ok",
        "chain",
        "majority_membership_digest",
        "members",
        "failing",
        "summary",
    }
    assert doc["schema"] == SCHEMA and doc["ok"] is False
    assert doc["chain"] == {
        "chain_id": 31337, "block": 120, "cluster": CHAIN.cluster, "member_count": 2,
        "membership_digest": DIGEST, "csk_epoch": 1, "csk_commitment": COMMITMENT, "min_balance_wei": None,
    }  # fmt: skip
    one, two = doc["members"]
    assert one == {
        "member_id": member(1).member_id, "app_id": member(1).app_id, "signer": member(1).signer,
        "mesh_ip": "10.13.0.1", "health_url": member(1).health_url, "signer_balance_wei": 10**18,
        "http_status": 200, "error": None, "phase": "healthy", "healthy": True, "reason": None,
        "peers": {"live": 2, "desired": 2, "transport": {"gateway": {"up": 2, "down": 0}}},
        "membership_digest": DIGEST, "membership_digest_agrees": "chain",
        "csk_commitment": COMMITMENT, "csk_commitment_agrees": "chain",
        "version": "0.1.0", "commit": "unknown",
        "ok": True, "failures": [],
    }  # fmt: skip
    assert two["phase"] is None and two["peers"] is None and two["healthy"] is False
    assert two["membership_digest_agrees"] == "unknown" and two["ok"] is False
    assert doc["failing"] == [member(2).member_id] and doc["summary"] == view.summary()


def _facts(chain: ChainFacts) -> dict[str, Any]:
    return {name: getattr(chain, name) for name in chain.__dataclass_fields__}


def test_gateway_domain_and_connect_to_arguments() -> None:
    assert domain_arg("Lab.GW.test.") == "lab.gw.test"
    assert connect_to_arg("10.9.0.1") == ("10.9.0.1", None)
    assert connect_to_arg("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert connect_to_arg("[::1]:8443") == ("::1", 8443)
    assert connect_to_arg("gw.example") == ("gw.example", None)
    for bad in ("gw example", "-x.test", "a..b", "", "x" * 300):
        with pytest.raises(argparse.ArgumentTypeError):
            domain_arg(bad)
    for bad in ("10.9.0.1:0", "10.9.0.1:99999", "host:port", "a b", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            connect_to_arg(bad)
