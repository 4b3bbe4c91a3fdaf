"""sidecar.core.quorum: a snapshot is accepted only when a quorum of providers returned it identically."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import BootVerdict, MemberRecord, MeshCidr
from sidecar.core.quorum import (
    RPC_DISAGREEMENT,
    RPC_QUORUM_UNAVAILABLE,
    ProviderAnswer,
    ProviderFailure,
    RpcView,
    agree,
    confirmed_block,
)
from sidecar.core.snapshot import Snapshot
from sidecar.metricvocab import RPC_QUORUM_FAILURES

HASH = Bytes32(b"\x0a" * 32)
OTHER_HASH = Bytes32(b"\x0b" * 32)


def member(n: int, endpoint: str = "") -> MemberRecord:
    return MemberRecord(
        member_id=MemberId(bytes([n]) * 32),
        app_id=Address(bytes([n]) * 20),
        signer=Address(bytes([n + 1]) * 20),
        seal_pub=Bytes32(bytes([n + 2]) * 32),
        wg_pub=Bytes32(bytes([n + 3]) * 32),
        identity_pub=Bytes32(bytes([n + 4]) * 32),
        endpoint=endpoint or f"10.0.0.{n}:51820",
        mesh_ip=IPv4Address(f"10.77.0.{n}"),
        registered_at=n,
    )


def snapshot(members: tuple[MemberRecord, ...] = (), commitment: Bytes32 | None = None) -> Snapshot:
    return Snapshot(8, BootVerdict(True, ""), members, commitment, MeshCidr.parse("10.77.0.0/24"))


def answer(
    provider: int, snap: Snapshot | None = None, block_hash: Bytes32 = HASH, head: int = 10
) -> ProviderAnswer:
    return ProviderAnswer(provider, head, block_hash, snap or snapshot((member(1), member(2))))


def test_the_reasons_are_the_metric_labels() -> None:
    assert (RPC_DISAGREEMENT, RPC_QUORUM_UNAVAILABLE) == RPC_QUORUM_FAILURES


def test_confirmed_block_is_the_quorum_th_highest_head_confirmations_deep() -> None:
    assert confirmed_block([10], 1, 2) == 8
    assert confirmed_block([10, 12, 11], 2, 2) == 9  # two providers have reached 11
    assert confirmed_block([10, 12, 11], 3, 0) == 10
    assert confirmed_block([1], 1, 5) == 0
    assert confirmed_block([10], 2, 2) is None
    with pytest.raises(ValueError, match="quorum"):
        confirmed_block([10], 0, 2)


def test_two_honest_providers_agree() -> None:
    verdict = agree([answer(0), answer(1, head=11)], [], providers=2, quorum=2)
    assert verdict.accepted is not None and verdict.reason == "" and verdict.detail == ""
    assert (verdict.agreeing, verdict.dissenting, verdict.failed, verdict.head) == ((0, 1), (), (), 11)
    assert RpcView.of(verdict) == RpcView(2, 2, (0, 1), (0, 1), (), "")


def test_a_lying_member_list_is_a_named_disagreement_that_accepts_nothing() -> None:
    fake = snapshot((member(1), member(2), member(9)))
    verdict = agree([answer(0), answer(1, fake)], [], providers=2, quorum=2)
    assert verdict.accepted is None and verdict.reason == RPC_DISAGREEMENT
    assert (verdict.agreeing, verdict.dissenting) == ((0,), (1,))
    assert verdict.detail.startswith("provider 1 disagrees with provider 0: membership digest 0x")
    assert verdict.detail.endswith("(quorum 2 of 2)")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda s: dataclasses.replace(s, commitment=Bytes32(b"\x07" * 32)), "CSK commitment"),
        (lambda s: dataclasses.replace(s, members=(member(1), member(2, "10.9.9.9:1"))), "member records"),
        (lambda s: dataclasses.replace(s, mesh=MeshCidr.parse("10.78.0.0/24")), "mesh CIDR"),
        (lambda s: dataclasses.replace(s, verdict=BootVerdict(False, "no")), "boot verdict"),
        (lambda s: dataclasses.replace(s, block=9), "block 8 vs 9"),
    ],
)
def test_every_field_that_decides_a_change_must_agree(change, named) -> None:  # type: ignore[no-untyped-def]
    honest = answer(0)
    other = dataclasses.replace(honest, provider=1, snapshot=change(honest.snapshot))
    verdict = agree([honest, other], [], providers=2, quorum=2)
    assert verdict.accepted is None and verdict.reason == RPC_DISAGREEMENT
    assert named in verdict.detail


def test_a_different_block_hash_disagrees() -> None:
    verdict = agree([answer(0), answer(1, block_hash=OTHER_HASH)], [], providers=2, quorum=2)
    assert verdict.reason == RPC_DISAGREEMENT and "block hash 0x0a0a0a0a…" in verdict.detail


def test_a_quorum_outvotes_one_liar_and_reports_it() -> None:
    liar = answer(1, snapshot((member(1),)))
    verdict = agree([answer(0), liar, answer(2)], [], providers=3, quorum=2)
    assert verdict.accepted is not None and verdict.accepted.snapshot == answer(0).snapshot
    assert (verdict.agreeing, verdict.dissenting, verdict.reason) == ((0, 2), (1,), "")
    assert verdict.detail.startswith("provider 1 disagrees with providers 0, 2")


def test_too_few_answers_is_quorum_unavailable_with_the_errors_by_index() -> None:
    verdict = agree([answer(0)], [ProviderFailure(1, "connection refused")], providers=2, quorum=2)
    assert verdict.accepted is None and verdict.reason == RPC_QUORUM_UNAVAILABLE
    assert verdict.failed == (1,)
    assert verdict.detail == "1 of 2 providers answered, quorum 2; provider 1: connection refused"
    nobody = agree([], [ProviderFailure(0, "x"), ProviderFailure(1, "y")], providers=2, quorum=2)
    assert nobody.reason == RPC_QUORUM_UNAVAILABLE and nobody.detail.startswith("no provider answered")


def test_a_tie_between_two_quorums_accepts_neither() -> None:
    verdict = agree([answer(0), answer(1, block_hash=OTHER_HASH)], [], providers=2, quorum=1)
    assert verdict.accepted is None and verdict.reason == RPC_DISAGREEMENT


def test_the_quorum_must_fit_the_providers() -> None:
    with pytest.raises(ValueError, match="quorum"):
        agree([answer(0)], [], providers=1, quorum=2)


VIEWS = st.sampled_from(
    [
        (HASH, snapshot((member(1), member(2)))),
        (HASH, snapshot((member(1), member(2), member(9)))),
        (OTHER_HASH, snapshot((member(1), member(2)))),
        (HASH, snapshot((member(1), member(2)), Bytes32(b"\x05" * 32))),
    ]
)


@given(
    views=st.lists(st.one_of(st.none(), VIEWS), min_size=1, max_size=6),
    quorum_seed=st.integers(min_value=0, max_value=100),
)
def test_accepted_only_with_a_unique_largest_group_of_at_least_quorum(
    views: list[tuple[Bytes32, Snapshot] | None], quorum_seed: int
) -> None:
    providers = len(views)
    quorum = 1 + quorum_seed % providers
    answers = [ProviderAnswer(i, 10, v[0], v[1]) for i, v in enumerate(views) if v is not None]
    failures = [ProviderFailure(i, "down") for i, v in enumerate(views) if v is None]
    verdict = agree(answers, failures, providers=providers, quorum=quorum)
    counts: dict[int, int] = {}
    for v in views:
        if v is not None:
            key = next(i for i, w in enumerate(views) if w == v)
            counts[key] = counts.get(key, 0) + 1
    sizes = sorted(counts.values(), reverse=True)
    unique_top = bool(sizes) and (len(sizes) == 1 or sizes[0] > sizes[1])
    should_accept = unique_top and sizes[0] >= quorum
    assert (verdict.accepted is not None) == should_accept
    assert sorted((*verdict.agreeing, *verdict.dissenting, *verdict.failed)) == list(range(providers))
    if verdict.accepted is not None:
        assert verdict.reason == ""
        assert all(
            views[i] == (verdict.accepted.block_hash, verdict.accepted.snapshot) for i in verdict.agreeing
        )
        assert len(verdict.agreeing) >= quorum
    else:
        assert verdict.reason in (RPC_DISAGREEMENT, RPC_QUORUM_UNAVAILABLE)
        assert (verdict.reason == RPC_DISAGREEMENT) == (len(sizes) > 1)
        assert "http" not in verdict.detail
