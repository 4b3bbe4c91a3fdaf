"""How many calls a snapshot read makes, against a real anvil with our contracts, counted by a real JSON-RPC
proxy in front of it (``devnet.rpcproxy.RpcProxy`` records every request; its calls are decoded by
selector) and by the connection's ``on_rpc`` hook.

A first read of N members costs one ``syncState``, ``ceil(N / page)`` ``membersPage`` calls, one
``isAppAllowed`` and one ``meshCidr``, all pinned to the snapshot block's hash; a read over an unchanged
cluster costs exactly one ``eth_call`` (``syncState``) and returns the same snapshot; after one
registration the next read re-reads every page (and the verdict), after an endpoint change too, after a
policy change only the verdict. ``ChainLink`` does the same through its providers. Counts, not times.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment
from devnet.rpcproxy import Lies, RpcProxy
from sidecar.chain.abi import contract_abi
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import BootInfo
from sidecar.core.snapshot import Snapshot
from sidecar.drivers.snapshotread import SnapshotReader
from tests.component.toolkit import CHAIN_ID, Chain, NodeFactory

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

PAGE = 2
NAMES = {
    "0x" + contract_abi("Cluster").function(name).selector.hex(): name
    for name in ("syncState", "membersPage", "isAppAllowed", "meshCidr", "members")
}
BOOT = BootInfo(
    app_id=Address(b"\xaa" * 20),
    compose_hash=Bytes32(b"\xc0" * 32),
    instance_id=Address(bytes(20)),
    device_id=Bytes32(bytes(32)),
    mr_aggregated=Bytes32(bytes(32)),
    mr_system=Bytes32(bytes(32)),
    os_image_hash=Bytes32(bytes(32)),
    tcb_status="UpToDate",
)


@pytest.fixture
async def proxy(anvil: AnvilProcess, stack: Deployment) -> AsyncIterator[RpcProxy]:
    running = RpcProxy(anvil.rpc_url)
    await running.start()
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def counted(proxy: RpcProxy) -> AsyncIterator[tuple[ChainConnection, Counter[str]]]:
    methods: Counter[str] = Counter()

    def count(method: str) -> None:
        methods[method] += 1

    async with await connect(proxy.url, expected_chain_id=CHAIN_ID, on_rpc=count) as conn:
        yield conn, methods


def eth_calls(proxy: RpcProxy) -> tuple[Counter[str], set[str]]:
    """The eth_calls since the last clear, by function name, and the blocks they were pinned to."""
    names: Counter[str] = Counter()
    pins: set[str] = set()
    for tx, block in proxy.calls("eth_call"):
        names[NAMES.get(str(tx["data"])[:10], str(tx["data"])[:10])] += 1
        pins.add(block["blockHash"] if isinstance(block, dict) else str(block))
    return names, pins


async def join(nodes: NodeFactory, cluster: ClusterClient, count: int) -> None:
    for _ in range(count):
        node = await nodes.node(f"counted-{os.urandom(3).hex()}")
        await node.client(cluster).register(node.proof, node.keys, node.endpoint)


async def read(
    reader: SnapshotReader, conn: ChainConnection, cluster: ClusterClient, proxy: RpcProxy
) -> tuple[Snapshot, Counter[str], set[str]]:
    """One pinned read at the head, counted."""
    header = await conn.block_header("latest")
    proxy.requests.clear()
    snapshot = await reader.read(ClusterClient(conn, cluster.address), header.number, header.hash, BOOT)
    names, pins = eth_calls(proxy)
    assert pins == {str(header.hash)}  # every call pinned to the snapshot block's hash
    return snapshot, names, pins


async def test_a_full_read_pages_and_a_no_change_read_is_one_call(
    counted: tuple[ChainConnection, Counter[str]],
    proxy: RpcProxy,
    cluster: ClusterClient,
    nodes: NodeFactory,
    chain: Chain,
) -> None:
    conn, methods = counted
    await join(nodes, cluster, 5)
    reader = SnapshotReader(page_size=PAGE)

    first, names, _ = await read(reader, conn, cluster, proxy)
    pages = math.ceil(5 / PAGE)
    assert names == Counter(syncState=1, membersPage=pages, isAppAllowed=1, meshCidr=1)
    assert first.members == tuple(await cluster.members())

    await chain.mine(1)  # a new block, nothing changed
    methods.clear()
    again, names, _ = await read(reader, conn, cluster, proxy)
    assert names == Counter(syncState=1)
    assert methods["eth_call"] == 1  # the connection's own count agrees: one eth_call for the pass
    assert again.members == first.members and again.verdict == first.verdict

    await join(nodes, cluster, 1)  # one registration: the next read re-reads every page
    after, names, _ = await read(reader, conn, cluster, proxy)
    assert names == Counter(syncState=1, membersPage=math.ceil(6 / PAGE), isAppAllowed=1)
    assert after.members == tuple(await cluster.members())

    _, names, _ = await read(reader, conn, cluster, proxy)
    assert names == Counter(syncState=1)
    await cluster.add_compose_hash(Bytes32(os.urandom(32)))  # policy only: the verdict, not the members
    _, names, _ = await read(reader, conn, cluster, proxy)
    assert names == Counter(syncState=1, isAppAllowed=1)


async def test_a_count_that_moves_without_the_version_is_re_read(
    counted: tuple[ChainConnection, Counter[str]],
    proxy: RpcProxy,
    cluster: ClusterClient,
    nodes: NodeFactory,
    chain: Chain,
) -> None:
    """Held members answer only for their version *and* count: a provider that starts lying about the
    members (syncState's count and the pages alike, the version untouched) is re-read, so its lie shows in
    its snapshot for the quorum to compare, and re-read again when it stops."""
    conn, _ = counted
    await join(nodes, cluster, 1)
    reader = SnapshotReader(page_size=PAGE)
    truth, _, _ = await read(reader, conn, cluster, proxy)
    fake = {
        "id": "0x" + "f0" * 32, "appId": "0x" + "f1" * 20, "signer": "0x" + "f2" * 20,
        "sealPub": "0x" + "f3" * 32, "wgPub": "0x" + "f4" * 32, "identityPub": "0x" + "f5" * 32,
        "endpoint": "127.0.0.9:51820", "meshIp": "127.0.0.9", "registeredAt": 1,
    }  # fmt: skip
    proxy.lies = Lies(cluster=str(cluster.address), members=(fake,))
    lied, names, _ = await read(reader, conn, cluster, proxy)
    assert names["membersPage"] == 1 and names["syncState"] == 1  # 2 members, page 2
    assert len(lied.members) == 2 and lied.members[:1] == truth.members
    proxy.lies = Lies()
    await chain.mine(1)
    back, names, _ = await read(reader, conn, cluster, proxy)
    assert names["membersPage"] == 1 and back.members == truth.members


async def test_hostile_page_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="page_size"):
        SnapshotReader(page_size=0)
