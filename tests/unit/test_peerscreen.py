"""sidecar.core.peerscreen: which member records become peers, which are excluded and why."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

import pytest

from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import MemberRecord, MeshCidr, member_id_for
from sidecar.core.peerscreen import EXCLUSION_REASONS, Excluded, endpoint_problem, screen_peers

MESH = MeshCidr.parse("10.77.0.0/24")
CLUSTER = Address(b"\xcd" * 20)


def member(n: int, *, registered_at: int | None = None, **changes: object) -> MemberRecord:
    app = Address(bytes([n]) * 20)
    record = MemberRecord(
        member_id=member_id_for(CLUSTER, app),
        app_id=app,
        signer=Address(bytes([0x40 + n]) * 20),
        seal_pub=Bytes32(bytes([0x50 + n]) * 32),
        wg_pub=Bytes32(bytes([0x60 + n]) * 32),
        identity_pub=Bytes32(bytes([0x70 + n]) * 32),
        endpoint=f"10.88.0.{n}:51820",
        mesh_ip=IPv4Address(f"10.77.0.{n}"),
        registered_at=n if registered_at is None else registered_at,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


ME = member(1)


def reasons(members: list[MemberRecord], me: MemberRecord = ME) -> dict[int, str]:
    """Excluded records by their number (the first byte of the app id)."""
    screen = screen_peers(members, me, MESH)
    by_id = {m.member_id: m.app_id.raw[0] for m in members}
    assert {m.member_id for m in screen.usable} | {e.member_id for e in screen.excluded} == {
        m.member_id for m in members if m.member_id != me.member_id
    }
    return {by_id[e.member_id]: e.reason for e in screen.excluded}


def test_good_records_are_all_usable_in_chain_order_and_self_is_not_a_peer() -> None:
    members = [ME, member(3), member(2)]
    screen = screen_peers(members, ME, MESH)
    assert screen.usable == (member(3), member(2)) and screen.excluded == ()
    assert screen.counts() == dict.fromkeys(EXCLUSION_REASONS, 0)


def test_no_endpoint_is_usable_a_bad_one_is_not() -> None:
    assert reasons([ME, member(2, endpoint=""), member(3, endpoint="x")]) == {3: "bad_endpoint"}


@pytest.mark.parametrize(
    "endpoint",
    ["x", "1.2.3.4", "1.2.3.4:0", "host.example:51820", "udp://[fe80::1%eth0]:51820", "ftp://1.2.3.4:1",
     "1.2.3.4:51820\nprivate_key=00", "tls://:443"],
)  # fmt: skip
def test_endpoints_the_device_would_refuse(endpoint: str) -> None:
    problem = endpoint_problem(endpoint)
    assert problem is not None and problem.startswith("endpoint unusable")
    assert "\n" not in problem and "private_key" not in problem  # never echoes the record


@pytest.mark.parametrize(
    "endpoint",
    ["", "1.2.3.4:51820", "udp://1.2.3.4:51820", "udp://[2001:db8::1]:51820", "tls://a-1s.example.org:443"],
)
def test_endpoints_that_are_usable(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is None


def test_a_colliding_key_excludes_the_later_registrant_whatever_the_chain_order() -> None:
    early = member(3, registered_at=5)
    late = member(2, registered_at=9, wg_pub=early.wg_pub)
    assert reasons([ME, late, early]) == {2: "duplicate_key"}
    assert reasons([ME, early, late]) == {2: "duplicate_key"}


def test_same_registration_time_falls_back_to_chain_order() -> None:
    a, b = member(2, registered_at=7), member(3, registered_at=7, wg_pub=member(2).wg_pub)
    assert reasons([ME, a, b]) == {3: "duplicate_key"}
    assert reasons([ME, b, a]) == {2: "duplicate_key"}


def test_a_record_with_our_key_or_mesh_ip_is_excluded_even_when_registered_before_us() -> None:
    late_me = member(1, registered_at=100)
    own_key = member(2, wg_pub=late_me.wg_pub)
    own_ip = member(3, mesh_ip=late_me.mesh_ip)
    assert reasons([own_key, own_ip, late_me], late_me) == {2: "own_key", 3: "own_mesh_ip"}


def test_mesh_ip_collisions_and_addresses_outside_the_cidr() -> None:
    members = [
        ME,
        member(2),
        member(3, mesh_ip=IPv4Address("10.77.0.2")),
        member(4, mesh_ip=IPv4Address("10.78.0.4")),
        member(5, mesh_ip=IPv4Address("10.77.0.255")),
        member(6, mesh_ip=IPv4Address("10.77.0.0")),
    ]
    assert reasons(members) == {3: "duplicate_mesh_ip", 4: "bad_mesh_ip", 5: "bad_mesh_ip", 6: "bad_mesh_ip"}


def test_an_excluded_record_still_claims_its_key_so_the_verdict_is_stable() -> None:
    """The earlier registrant keeps a contested key even when it is excluded for another reason."""
    early = member(2, endpoint="x")
    late = member(3, wg_pub=early.wg_pub)
    assert reasons([ME, early, late]) == {2: "bad_endpoint", 3: "duplicate_key"}


def test_with_excluded_moves_records_and_counts_reasons() -> None:
    screen = screen_peers([ME, member(2), member(3, endpoint="x")], ME, MESH)
    more = screen.with_excluded([Excluded(member(2).member_id, "device_refused", "refused")])
    assert more.usable == ()
    assert [e.reason for e in more.excluded] == ["bad_endpoint", "device_refused"]
    counts = more.counts()
    assert counts["bad_endpoint"] == 1 and counts["device_refused"] == 1 and sum(counts.values()) == 2
    assert screen.with_excluded([]) is screen
