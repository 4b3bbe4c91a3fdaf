"""Peer planning of sidecar.core.peerplan: applying a plan converges, the endpoint rule, "no change"."""

from __future__ import annotations

from ipaddress import IPv4Network

from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.ids import MemberId
from sidecar.core.peerplan import (
    PERSISTENT_KEEPALIVE,
    RECENT_HANDSHAKE_SECONDS,
    ActualPeer,
    DesiredPeer,
    PeerPlan,
    WgKey,
    plan_peers,
)

NOW = 1_700_000_000.0


def apply_plan(actual: list[ActualPeer], plan: PeerPlan) -> list[ActualPeer]:
    """What a device holds after the plan is applied (handshake state survives an update)."""
    removed = set(plan.remove)
    have = {p.public_key: p for p in actual if p.public_key not in removed}
    for d in plan.add:
        have[d.public_key] = ActualPeer(d.public_key, d.endpoint, d.allowed_ips, d.keepalive)
    for d in plan.update:
        old = have[d.public_key]
        have[d.public_key] = ActualPeer(
            d.public_key,
            d.endpoint,
            d.allowed_ips,
            d.keepalive,
            old.last_handshake,
            old.rx_bytes,
            old.tx_bytes,
        )
    return sorted(have.values(), key=lambda p: p.public_key)


keys = st.integers(0, 15).map(lambda i: WgKey(bytes([i]) * 32))
endpoints = st.one_of(
    st.none(), st.sampled_from(["198.51.100.1:51820", "198.51.100.2:51820", "203.0.113.9:4000"])
)
networks = st.integers(2, 40).map(lambda i: IPv4Network(f"10.88.0.{i}/32"))
allowed = st.lists(networks, max_size=3, unique=True).map(tuple)
keepalives = st.sampled_from([0, PERSISTENT_KEEPALIVE])
handshakes = st.one_of(st.none(), st.floats(NOW - 2 * RECENT_HANDSHAKE_SECONDS, NOW))


def desired_peer(
    key: WgKey, endpoint: str | None, ips: tuple[IPv4Network, ...], keepalive: int
) -> DesiredPeer:
    return DesiredPeer(MemberId(key.raw), key, endpoint, ips, keepalive)


desired_sets = st.lists(
    st.builds(desired_peer, keys, endpoints, allowed, keepalives), unique_by=lambda p: p.public_key
)
actual_sets = st.lists(
    st.builds(ActualPeer, keys, endpoints, allowed, keepalives, handshakes), unique_by=lambda p: p.public_key
)


def summary(peers: list[ActualPeer]) -> dict[WgKey, tuple[str | None, frozenset[IPv4Network], int]]:
    return {p.public_key: (p.endpoint, frozenset(p.allowed_ips), p.keepalive) for p in peers}


@given(desired_sets, actual_sets)
def test_applying_the_plan_yields_the_desired_peers(
    desired: list[DesiredPeer], actual: list[ActualPeer]
) -> None:
    plan = plan_peers(desired, actual, previous=None, now=NOW)
    after = apply_plan(actual, plan)
    before = {p.public_key: p for p in actual}

    def expected_endpoint(d: DesiredPeer) -> str | None:
        # A member without a published endpoint cannot clear one the device already holds.
        if d.endpoint is None and d.public_key in before:
            return before[d.public_key].endpoint
        return d.endpoint

    assert summary(after) == {
        d.public_key: (expected_endpoint(d), frozenset(d.allowed_ips), d.keepalive) for d in desired
    }
    assert plan_peers(desired, after, previous=None, now=NOW).empty


@given(desired_sets, actual_sets, st.booleans())
def test_a_second_pass_with_the_previous_state_plans_nothing(
    desired: list[DesiredPeer], actual: list[ActualPeer], chain_unchanged: bool
) -> None:
    previous = {d.public_key: d for d in desired} if chain_unchanged else None
    after = apply_plan(actual, plan_peers(desired, actual, previous=previous, now=NOW))
    assert set(summary(after)) == {d.public_key for d in desired}
    again = plan_peers(desired, after, previous={d.public_key: d for d in desired}, now=NOW)
    assert again.empty
    assert again == PeerPlan()


@given(desired_sets, actual_sets)
def test_plan_parts_are_disjoint_and_sorted(desired: list[DesiredPeer], actual: list[ActualPeer]) -> None:
    plan = plan_peers(desired, actual, now=NOW)
    added = [p.public_key for p in plan.add]
    updated = [p.public_key for p in plan.update]
    assert added == sorted(added) and updated == sorted(updated) and list(plan.remove) == sorted(plan.remove)
    assert not (set(added) & set(updated)) and not (set(added) & set(plan.remove))
    assert plan.describe() == {
        "added": len(plan.add),
        "removed": len(plan.remove),
        "updated": len(plan.update),
    }


KEY = WgKey(b"\x07" * 32)
NET = (IPv4Network("10.88.0.7/32"),)
CHAIN = "198.51.100.7:51820"
ROAMED = "192.0.2.44:61000"


def want(endpoint: str | None = CHAIN) -> DesiredPeer:
    return DesiredPeer(MemberId(KEY.raw), KEY, endpoint, NET)


def have(endpoint: str | None = ROAMED, handshake: float | None = NOW - 10) -> ActualPeer:
    return ActualPeer(KEY, endpoint, NET, PERSISTENT_KEEPALIVE, handshake)


def test_a_recently_roamed_endpoint_is_kept_while_the_chain_endpoint_is_unchanged() -> None:
    assert plan_peers([want()], [have()], previous={KEY: want()}, now=NOW).empty


def test_a_roamed_endpoint_is_replaced_when_the_chain_endpoint_changed() -> None:
    plan = plan_peers([want()], [have()], previous={KEY: want("198.51.100.99:51820")}, now=NOW)
    assert [p.endpoint for p in plan.update] == [CHAIN]
    assert plan_peers([want()], [have()], previous=None, now=NOW).update[0].endpoint == CHAIN


def test_a_stale_handshake_does_not_protect_the_roamed_endpoint() -> None:
    stale = have(handshake=NOW - RECENT_HANDSHAKE_SECONDS)
    assert [p.endpoint for p in plan_peers([want()], [stale], previous={KEY: want()}, now=NOW).update] == [
        CHAIN
    ]
    never = have(handshake=None)
    assert [p.endpoint for p in plan_peers([want()], [never], previous={KEY: want()}, now=NOW).update] == [
        CHAIN
    ]


def test_a_kept_endpoint_still_lets_allowed_ips_change() -> None:
    wider = DesiredPeer(MemberId(KEY.raw), KEY, CHAIN, (*NET, IPv4Network("10.99.0.0/24")))
    plan = plan_peers([wider], [have()], previous={KEY: want()}, now=NOW)
    assert len(plan.update) == 1
    assert plan.update[0].endpoint == ROAMED
    assert frozenset(plan.update[0].allowed_ips) == frozenset(wider.allowed_ips)


def test_a_member_without_an_endpoint_keeps_the_device_endpoint() -> None:
    assert plan_peers([want(None)], [have(handshake=None)], previous=None, now=NOW).empty


def test_removed_and_added_members() -> None:
    other = WgKey(b"\x08" * 32)
    plan = plan_peers([want()], [ActualPeer(other, None, (), 25)], now=NOW)
    assert plan.add == (want(),)
    assert plan.remove == (other,)
    assert plan_peers([], [], now=NOW) == PeerPlan()


def test_wg_key_repr_is_short() -> None:
    assert repr(KEY) == "WgKey(0707070707070707…)"
