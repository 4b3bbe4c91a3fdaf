"""Acceptance 6 of issue 12: a reorg at cluster bootstrap, with the default confirmations, never produces a
second CSK commitment.

The lab's anvil is started with a one-hour block time, so the head moves only when a transaction is mined
and when the test mines; node-1 (real sidecar, real simulator and WireGuard) registers as the cluster's first
member, the would-be CSK originator. The test lets its sidecar make several passes with the registration
0 and then 1 block deep, checks that no commitment exists even at ``latest``, then reorgs the registration
away (``anvil_reorg``). node-2 joins, interval mining resumes, and the cluster converges with exactly one
commitment ever made: one ``csk.committed`` across the sidecars' logs, one ``CskCommitmentSet`` on chain.
With ``ATTESTMESH_CONFIRMATIONS=0`` node-1 commits in the pass right after registering, before the reorg.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, connect
from tests.e2e.lab import LabCli, chain, lab_state, sidecar_log, wait_until
from tests.e2e.mesh import Node, nodes, wait_all_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CALLS_PER_READ = 1  # at least syncState, pinned to the block hash (a pass that changes nothing: exactly that)


def rpc(lab: LabCli, method: str, *params: Any) -> Any:
    state = lab_state(lab)

    async def run() -> Any:
        async with await connect(state["rpc_url"], expected_chain_id=state["chain_id"]) as conn:
            answer = await conn.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
            assert "error" not in answer, answer
            return answer["result"]

    return asyncio.run(run())


def eth_calls(node: Node) -> float:
    return node.counter("attestmesh_rpc_calls_total", method="eth_call")


def wait_for_reads(node: Node, reads: int) -> None:
    """Wait until the sidecar has made at least ``reads`` more snapshot reads (full passes) from now."""
    start = eth_calls(node)
    wait_until(
        lambda: eth_calls(node) >= start + reads * CALLS_PER_READ, 30, f"{reads} passes of {node.name}"
    )


def commitments_on_chain(lab: LabCli) -> int:
    async def count(conn: ChainConnection, cluster: ClusterClient) -> int:
        topic = cluster.event_topic("CskCommitmentSet")
        logs = await conn.get_logs([cluster.address], 0, await conn.block_number(), [[topic]])
        return len(logs)

    return chain(lab, count)


def test_a_reorg_right_after_the_first_registration_never_makes_a_second_csk_commitment(lab: LabCli) -> None:
    lab.run("up", "--nodes", "1", "--block-time", "3600")
    first = nodes(lab)["node-1"]
    rpc(lab, "anvil_mine", "0x2")  # the node's approval and funding confirmed: it may register now
    wait_until(lambda: sidecar_log(lab, "node-1", "registration.succeeded"), 60, "node-1's registration")
    registered_at = int(sidecar_log(lab, "node-1", "registration.succeeded")[0]["block"])

    # The registration 0 and then 1 block deep: the sidecar passes again and again, and waits.
    wait_for_reads(first, 3)
    assert chain(lab, lambda conn, cluster: cluster.csk_commitment()) is None  # no commitment, even at latest
    assert int(rpc(lab, "eth_blockNumber"), 16) == registered_at  # no transaction at all since
    rpc(lab, "anvil_mine", "0x1")
    wait_for_reads(first, 3)
    body = first.healthz()
    assert (body["phase"], body["reason"]) == ("register", "not registered: registration pending")
    assert chain(lab, lambda conn, cluster: cluster.csk_commitment()) is None  # not even at latest
    assert chain(lab, lambda conn, cluster: cluster.member_count()) == 1
    assert sidecar_log(lab, "node-1", "csk.committed") == []

    # Reorg the registration (and the block on top of it) away.
    rpc(lab, "anvil_reorg", 2, [])
    assert chain(lab, lambda conn, cluster: cluster.member_count()) == 0

    lab.run("node", "add", "node-2")
    rpc(lab, "evm_setIntervalMining", 1)  # the chain moves again: confirmations are reached
    found = wait_all_healthy(lab, timeout=90)

    commitment = chain(lab, lambda conn, cluster: cluster.csk_commitment())
    assert commitment is not None
    assert {n.healthz()["csk"]["commitment"] for n in found.values()} == {str(commitment)}
    committed = [e for name in found for e in sidecar_log(lab, name, "csk.committed")]
    assert len(committed) == 1, committed
    assert commitments_on_chain(lab) == 1
    # the reorg did hit node-1's first registration: it registered again, after node-2 or before it
    assert len(sidecar_log(lab, "node-1", "registration.succeeded")) == 2
    members = chain(lab, lambda conn, cluster: cluster.list_members())
    assert len(members) == 2
    assert {n.healthz()["node"]["member_id"] for n in found.values()} == {str(m) for m in members}
