"""The TEST-ONLY member seeder (``devnet.memberseed``, what the 10,000-member benchmark builds its cluster
with) against a real anvil running the compiled Cluster: seeded records read back exactly through
``members()`` and the paged read, in order after real members; the membership version moves; the contract's
own rules see the seeded records (their keys are held, their mesh IPs are never handed out again).
"""

from __future__ import annotations

import pytest

from devnet.anvil import AnvilProcess
from devnet.memberseed import seed_members
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.errors import KeyInUse
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import MemberKeys, MemberRecord, MeshCidr, member_id_for
from tests.component.toolkit import NodeFactory

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]


def records(cluster: ClusterClient, mesh: MeshCidr, count: int, first_host: int) -> list[MemberRecord]:
    out = []
    for i in range(count):
        app = Address(bytes([0xA0, i]) * 10)
        out.append(
            MemberRecord(
                member_id=member_id_for(cluster.address, app),
                app_id=app,
                signer=Address(bytes([0xB0, i]) * 10),
                seal_pub=Bytes32(bytes([0xC0, i]) * 16),
                wg_pub=Bytes32(bytes([0xD0, i]) * 16),
                identity_pub=Bytes32(bytes([0xE0, i]) * 16),
                endpoint=f"udp://10.0.{i}.1:51820" if i % 2 else "tls://" + "n" * 40 + ".example:443",
                mesh_ip=mesh.network.network_address + first_host + i,
                registered_at=1_700_000_000 + i,
            )
        )
    return out


async def test_seeded_records_read_back_in_order_and_count_as_members(
    anvil: AnvilProcess, cluster: ClusterClient, nodes: NodeFactory
) -> None:
    mesh = await cluster.mesh_cidr()
    first = await nodes.node("real-first")
    await first.client(cluster).register(first.proof, first.keys, first.endpoint)
    before = await cluster.sync_state()
    seeded = records(cluster, mesh, 5, first_host=2)
    await seed_members(anvil.rpc_url, cluster.address, seeded, mesh_base=mesh.network.network_address)

    everyone = await cluster.members()
    assert everyone[1:] == seeded and len(everyone) == 6
    assert await cluster.members_paged(page_size=2) == everyone
    state = await cluster.sync_state()
    assert state.member_count == 6 and state.membership_version == before.membership_version + 1
    assert await cluster.member_id_of(seeded[3].app_id) == seeded[3].member_id

    # The contract's rules see them: a seeded key is held, and the next mesh IP follows the seeded ones.
    taken = await nodes.node(
        "copies-a-key", keys=MemberKeys(seeded[0].seal_pub, Bytes32(b"\x01" * 32), Bytes32(b"\x02" * 32))
    )
    with pytest.raises(KeyInUse):
        await taken.client(cluster).register(taken.proof, taken.keys, taken.endpoint)
    late = await nodes.node("real-late")
    await late.client(cluster).register(late.proof, late.keys, late.endpoint)
    last = (await cluster.members())[-1]
    assert last.app_id == late.app_id and int(last.mesh_ip) == int(mesh.network.network_address) + 7
