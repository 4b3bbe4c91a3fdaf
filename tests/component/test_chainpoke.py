"""devnet.chainpoke (TEST-ONLY storage writes) against a real anvil running the compiled Cluster contract:
an endpoint planted by the compiled storage layout reads back through ``memberById`` and ``members()``,
short (< 32 bytes, stored in the slot) and long (stored from keccak256(slot)), the neighbours untouched,
and each poke moves ``membershipVersion`` by one (as a contract write does), its slot's neighbours intact."""

from __future__ import annotations

import dataclasses

import pytest

from devnet.chainpoke import StorageLayout, member_endpoint_location, poke_member_endpoint
from sidecar.chain.contracts import ClusterClient
from tests.component.toolkit import Chain

pytestmark = pytest.mark.component

LONG = "tls://" + "a" * 80 + ".example.org:443"  # 103 bytes: four words after the length slot


async def test_a_planted_endpoint_reads_back_short_and_long(chain: Chain, cluster: ClusterClient) -> None:
    first, second = await chain.member(), await chain.member()
    before = {m.member_id: m for m in await cluster.members()}
    sync = await cluster.sync_state()
    for endpoint in ("x", "udp://[fe80::1%eth0]:51820", LONG, "", "a" * 31, "b" * 32, "10.0.0.9:1"):
        await poke_member_endpoint(chain.conn, cluster.address, first.member_id, endpoint)
        record = await cluster.member_by_id(first.member_id)
        assert record is not None and record.endpoint == endpoint
        listed = {m.member_id: m for m in await cluster.members()}
        assert listed[first.member_id] == dataclasses.replace(before[first.member_id], endpoint=endpoint)
        assert listed[second.member_id] == before[second.member_id]  # the neighbour is untouched
        moved = await cluster.sync_state()
        assert moved.membership_version == sync.membership_version + 1  # a node's next read sees it
        assert dataclasses.replace(moved, membership_version=sync.membership_version) == sync
        sync = moved


async def test_the_slot_comes_from_the_compiled_layout(chain: Chain, cluster: ClusterClient) -> None:
    """A layout whose ``_members`` moved to another slot names another location: nothing is hard-coded."""
    member = await chain.member()
    layout = StorageLayout.of("Cluster")
    moved = StorageLayout(
        [dict(e, slot=str(int(e["slot"]) + 7)) if e["label"] == "_members" else e for e in layout.storage],
        layout.types,
    )
    here, there = (
        member_endpoint_location(layout, member.member_id),
        member_endpoint_location(moved, member.member_id),
    )
    assert here.slot != there.slot
    # the real layout's slot holds the registered endpoint (a short string: bytes, then 2·len in the low byte)
    word = await chain.conn.w3.eth.get_storage_at(str(cluster.address), here.slot)  # type: ignore[arg-type]
    record = await cluster.member_by_id(member.member_id)
    assert record is not None
    encoded = record.endpoint.encode()
    assert bytes(word) == encoded.ljust(31, b"\0") + bytes([2 * len(encoded)])
