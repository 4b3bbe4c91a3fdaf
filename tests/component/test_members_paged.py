"""Membership at scale against a real anvil running the compiled contracts: the change versions, the paged
read and ``syncState``.

``membershipVersion`` moves with every change to what ``members()`` returns (register, setEndpoint,
removeMember) and with nothing else; ``policyVersion`` with every change to the rest of a sidecar's snapshot
(compose hashes, devices, allow-any-device, the TCB rule, app ids, KMS roots, rotate-on-remove) and not with
no-op admin calls or CSK epochs. ``membersPage`` pages concatenate to ``members()`` in registration order for
every page size; offsets past the end give empty pages; reads pinned by block hash do not move; a bad answer
(no contract, a negative offset) is a clear error.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest
from eth_utils.crypto import keccak

from sidecar.chain.contracts import ClusterClient
from sidecar.chain.errors import UnexpectedChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import MemberRecord, SyncState
from tests.component.toolkit import Chain, Node, NodeFactory

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

C1 = Bytes32(keccak(b"paged csk 1"))


async def joined(nodes: NodeFactory, cluster: ClusterClient, count: int) -> list[tuple[Node, MemberId]]:
    out = []
    for i in range(count):
        node = await nodes.node(f"paged-{i}-{os.urandom(3).hex()}")
        _, member_id = await node.client(cluster).register(node.proof, node.keys, node.endpoint)
        out.append((node, member_id))
    return out


async def versions(cluster: ClusterClient) -> tuple[int, int]:
    state = await cluster.sync_state()
    assert (state.membership_version, state.policy_version) == (
        await cluster.membership_version(),
        await cluster.policy_version(),
    )
    return state.membership_version, state.policy_version


async def test_membership_version_moves_with_every_member_change_and_nothing_else(
    cluster: ClusterClient, nodes: NodeFactory
) -> None:
    node = await nodes.node("mv-a")  # approving it is a policy change
    m0, p0 = await versions(cluster)
    _, member_id = await node.client(cluster).register(node.proof, node.keys, node.endpoint)
    assert await versions(cluster) == (m0 + 1, p0)  # register: membership only
    await node.client(cluster).set_endpoint("127.0.0.1:40000")
    assert await versions(cluster) == (m0 + 2, p0)
    await node.client(cluster).set_csk_commitment(1, C1)  # the commitment is in syncState itself
    await cluster.rotate_csk()
    assert await versions(cluster) == (m0 + 2, p0)
    await cluster.remove_member(member_id)  # eviction also revokes the app id's pre-approval
    assert await versions(cluster) == (m0 + 3, p0 + 1)


async def test_policy_version_moves_with_every_policy_change_and_not_with_no_ops(
    cluster: ClusterClient, nodes: NodeFactory, compose_hash: Bytes32
) -> None:
    other = Bytes32(keccak(b"another compose"))
    device = Bytes32(keccak(b"a device"))
    root = Address.from_hex("0x" + "ab" * 20)
    app = await nodes.app("pv-app")
    any_device = await cluster.allow_any_device()
    steps: list[Callable[[], Awaitable[object]]] = [
        lambda: cluster.add_compose_hash(other),
        lambda: cluster.remove_compose_hash(other),
        lambda: cluster.add_device(device),
        lambda: cluster.remove_device(device),
        lambda: cluster.set_allow_any_device(not any_device),
        lambda: cluster.set_allow_any_device(any_device),
        lambda: cluster.set_require_tcb_up_to_date(True),
        lambda: cluster.add_allowed_app_id(app),
        lambda: cluster.remove_allowed_app_id(app),
        lambda: cluster.add_kms_root(root),
        lambda: cluster.remove_kms_root(root),
        lambda: cluster.set_rotate_csk_on_remove(True),
    ]
    membership, policy = await versions(cluster)
    for step in steps:
        await step()
        policy += 1
        assert await versions(cluster) == (membership, policy)
    no_ops: list[Callable[[], Awaitable[object]]] = [
        lambda: cluster.add_compose_hash(compose_hash),  # already allowed
        lambda: cluster.remove_compose_hash(other),  # already absent
        lambda: cluster.remove_device(device),
        lambda: cluster.set_allow_any_device(any_device),
        lambda: cluster.set_require_tcb_up_to_date(True),
        lambda: cluster.remove_allowed_app_id(app),
        lambda: cluster.remove_kms_root(root),
        lambda: cluster.set_rotate_csk_on_remove(True),
        cluster.rotate_csk,  # the CSK epoch is read from syncState, not through the version
    ]
    for step in no_ops:
        await step()
    assert await versions(cluster) == (membership, policy)


async def test_pages_concatenate_to_members_in_registration_order(
    cluster: ClusterClient, nodes: NodeFactory
) -> None:
    members = await joined(nodes, cluster, 5)
    await cluster.remove_member(members[1][1])  # a hole in the middle: order is kept by shifting
    everyone = await cluster.members()
    assert [m.member_id for m in everyone] == [mid for i, (_, mid) in enumerate(members) if i != 1]
    for size in (1, 2, 3, 4, 5, 7):
        assert await cluster.members_paged(page_size=size) == everyone
        pages: list[MemberRecord] = []
        for offset in range(0, 4, size):
            page, total = await cluster.members_page(offset, size)
            assert total == 4 and len(page) == min(size, 4 - offset)
            pages.extend(page)
        assert pages == everyone


async def test_offsets_past_the_end_and_extreme_limits(cluster: ClusterClient, nodes: NodeFactory) -> None:
    assert await cluster.members_page(0, 10) == ([], 0)
    assert await cluster.members_paged(page_size=3) == []
    await joined(nodes, cluster, 2)
    everyone = await cluster.members()
    assert await cluster.members_page(2, 10) == ([], 2)
    assert await cluster.members_page(3, 1) == ([], 2)
    assert await cluster.members_page(2**256 - 1, 2**256 - 1) == ([], 2)
    assert await cluster.members_page(1, 2**256 - 1) == (everyone[1:], 2)  # no overflow in offset + limit
    assert await cluster.members_page(0, 0) == ([], 2)


async def test_sync_state_fields(cluster: ClusterClient, nodes: NodeFactory, chain: Chain) -> None:
    first = await cluster.sync_state()
    assert first.member_count == 0 and first.csk_epoch == 1 and first.csk_commitment is None
    [(node, _), _] = await joined(nodes, cluster, 2)
    await node.client(cluster).set_csk_commitment(1, C1)
    state = await cluster.sync_state()
    assert state == SyncState(
        membership_version=first.membership_version + 2,
        policy_version=first.policy_version + 2,  # the two approvals
        csk_epoch=1,
        csk_commitment=C1,
        member_count=2,
    )
    await cluster.rotate_csk()
    rotated = await cluster.sync_state()
    assert (rotated.csk_epoch, rotated.csk_commitment) == (2, None)  # the new epoch is not committed yet


async def test_reads_pinned_by_block_hash_do_not_move(
    conn: ChainConnection, cluster: ClusterClient, nodes: NodeFactory
) -> None:
    await joined(nodes, cluster, 3)
    pin = (await conn.block_header("latest")).hash
    before = await cluster.members_paged(page_size=2, block=pin)
    state = await cluster.sync_state(block=pin)
    await joined(nodes, cluster, 1)
    assert await cluster.members_paged(page_size=2, block=pin) == before
    assert await cluster.sync_state(block=pin) == state
    assert await cluster.members(block=pin) == before
    assert len(await cluster.members_paged(page_size=2)) == 4


async def test_bad_arguments_and_answers_are_clear_errors(
    conn: ChainConnection, cluster: ClusterClient
) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        await cluster.members_page(-1, 5)
    with pytest.raises(ValueError, match="page_size"):
        await cluster.members_paged(page_size=0)
    nothing = ClusterClient(conn, Address(os.urandom(20)))  # no code: the call returns no data
    with pytest.raises(UnexpectedChainError):
        await nothing.members_page(0, 5)
    with pytest.raises(UnexpectedChainError):
        await nothing.sync_state()
