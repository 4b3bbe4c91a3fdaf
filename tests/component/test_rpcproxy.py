"""``devnet.rpcproxy``, the lab's lying JSON-RPC provider, rewrites exactly what its rules say.

Real parts only: anvil with our contracts and a registered member, our own chain adapter reading through the
proxy (in-process, and ``python -m devnet.rpcproxy`` as a process with a rules file and its control
endpoint). What the chain really holds is read from anvil directly. Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import aiohttp
import pytest

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment
from devnet.rpcproxy import Lies, RpcProxy, RulesError
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.core.ids import Address, Bytes32, MemberId
from tests.component.toolkit import CHAIN_ID, DEADLINE, HOST, REPO, Chain, closed_port

pytestmark = [pytest.mark.component, pytest.mark.timeout(90)]

FAKE = {
    "id": "0x" + "f0" * 32, "appId": "0x" + "f1" * 20, "signer": "0x" + "f2" * 20,
    "sealPub": "0x" + "f3" * 32, "wgPub": "0x" + "f4" * 32, "identityPub": "0x" + "f5" * 32,
    "endpoint": "", "meshIp": "10.77.0.250", "registeredAt": 7,
}  # fmt: skip
FAKE_COMMITMENT = "0x" + "c0" * 32


@pytest.fixture
async def proxy(anvil: AnvilProcess) -> AsyncIterator[RpcProxy]:
    running = RpcProxy(anvil.rpc_url, path="/v2/key")
    await running.start(HOST)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def through(proxy: RpcProxy) -> AsyncIterator[ChainConnection]:
    async with await connect(proxy.url, timeout=10.0, expected_chain_id=CHAIN_ID) as conn:
        yield conn


async def test_members_gain_the_injected_record_at_latest_and_at_a_pinned_block_hash(
    proxy: RpcProxy, through: ChainConnection, conn: ChainConnection, stack: Deployment, chain: Chain
) -> None:
    real = await chain.member()
    lying = ClusterClient(through, stack.cluster)
    honest = ClusterClient(conn, stack.cluster)
    proxy.lies = Lies(cluster=str(stack.cluster), members=(FAKE,))
    pinned = (await conn.block_header("latest")).hash
    for block in (None, pinned):
        records = await lying.members(block=block)
        assert [r.member_id for r in records] == [real.member_id, MemberId.from_hex(FAKE["id"])]
        fake = records[1]
        assert fake.app_id == Address.from_hex(FAKE["appId"]) and fake.endpoint == ""
        assert fake.mesh_ip == IPv4Address("10.77.0.250") and fake.registered_at == 7
        assert fake.wg_pub == Bytes32.from_hex(FAKE["wgPub"])
    assert [r.member_id for r in await honest.members()] == [real.member_id]  # the chain: one member
    assert await lying.member_count() == 1  # only members() lies
    assert [p[1] for p in proxy.calls("eth_call")].count({"blockHash": str(pinned), "requireCanonical": True})

    # The paged read sees the same lie on every page size: the count grows, the record ends the last page.
    expected = [real.member_id, MemberId.from_hex(FAKE["id"])]
    for size in (1, 2, 5):
        assert [r.member_id for r in await lying.members_paged(block=pinned, page_size=size)] == expected
    assert (await lying.sync_state(block=pinned)).member_count == 2
    assert (await honest.sync_state(block=pinned)).member_count == 1

    proxy.lies = Lies(cluster="0x" + "99" * 20, members=(FAKE,))  # another contract's members() only
    assert [r.member_id for r in await lying.members()] == [real.member_id]


async def test_the_commitment_views_and_block_hashes_say_what_the_rules_say(
    proxy: RpcProxy, through: ChainConnection, conn: ChainConnection, stack: Deployment
) -> None:
    lying = ClusterClient(through, stack.cluster)
    assert await lying.csk_commitment() is None
    proxy.lies = Lies(cluster=str(stack.cluster), csk_commitment=FAKE_COMMITMENT)
    assert await lying.csk_commitment() == Bytes32.from_hex(FAKE_COMMITMENT)
    assert await lying.csk_commitment_of(1) == Bytes32.from_hex(FAKE_COMMITMENT)
    assert await lying.csk_epoch() == 1  # the epoch is the truth
    assert (await lying.sync_state()).csk_commitment == Bytes32.from_hex(FAKE_COMMITMENT)
    assert await ClusterClient(conn, stack.cluster).csk_commitment() is None

    proxy.lies = Lies(block_hash="0x" + "ab" * 32, base_fee=7)
    header = await through.block_header("latest")
    assert str(header.hash) == "0x" + "ab" * 32
    assert (await conn.block_header(header.number)).hash != header.hash
    assert proxy.calls("eth_getBlockByNumber")


def test_rules_name_every_problem() -> None:
    with pytest.raises(RulesError, match="unknown rules"):
        Lies.from_json({"member": []})
    with pytest.raises(RulesError, match="exactly the keys"):
        Lies.from_json({"members": [{"id": "0x00"}]})
    assert Lies.from_json({"members": [FAKE]}).members == (FAKE,)


async def test_the_process_rereads_its_rules_file_and_takes_rules_from_its_control_endpoint(
    anvil: AnvilProcess, stack: Deployment, chain: Chain, tmp_path: Path
) -> None:
    real = await chain.member()
    rules = tmp_path / "rules.json"
    port = closed_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devnet.rpcproxy", "--listen", f"{HOST}:{port}", "--upstream", anvil.rpc_url,
        "--rules", str(rules), cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), DEADLINE)
        assert line.decode().strip() == f"rpcproxy listening on http://{HOST}:{port}/"
        async with await connect(f"http://{HOST}:{port}/", timeout=10.0, expected_chain_id=CHAIN_ID) as c:
            lying = ClusterClient(c, stack.cluster)
            assert [r.member_id for r in await lying.members()] == [real.member_id]  # no file: no lies
            rules.write_text(json.dumps({"cluster": str(stack.cluster), "members": [FAKE]}))
            assert len(await lying.members()) == 2
            rules.write_text("{not json")  # a bad file keeps the last lies
            assert len(await lying.members()) == 2
            rules.write_text(json.dumps({"csk_commitment": FAKE_COMMITMENT}))
            assert len(await lying.members()) == 1
            assert await lying.csk_commitment() == Bytes32.from_hex(FAKE_COMMITMENT)
            async with aiohttp.ClientSession() as http:
                put = await http.put(f"http://{HOST}:{port}/_proxy/rules", json={"members": [FAKE]})
                assert put.status == 200
                assert len(await lying.members()) == 2 and await lying.csk_commitment() is None
                bad = await http.put(f"http://{HOST}:{port}/_proxy/rules", json={"nope": 1})
                assert bad.status == 400 and "unknown rules" in (await bad.json())["error"]
                counts = await (await http.get(f"http://{HOST}:{port}/_proxy/calls")).json()
                assert counts["eth_call"] >= 7 and counts["eth_chainId"] >= 1
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
