"""The cluster's membership rules and CSK epochs against a real anvil running the compiled contracts.

App ids: only member apps the cluster's own member-app factory deployed for this very cluster can be approved
or register (another cluster's app, an app of a copycat factory, an EOA are each refused by name). Public
keys: a WireGuard, identity or seal key one member holds cannot be registered by another, and eviction frees
them. Endpoints: a malformed one reverts in register and in setEndpoint (the grammar itself, against the
sidecar's parser: test_endpoint_grammar.py). CSK epochs: one commitment per epoch, by the originator, only for
the current epoch; rotation by the owner, and on eviction when asked.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from eth_utils.crypto import keccak

from devnet.deployment import Deployment, deploy_member_app, deploy_stack
from devnet.kms import DevnetKms, get_key
from sidecar.chain.contracts import ClusterClient, ClusterFactoryClient
from sidecar.chain.errors import (
    CskCommitmentAlreadySet,
    ForeignApp,
    InvalidEndpoint,
    InvalidMemberAppFactory,
    KeyInUse,
    NotMemberApp,
    NotOriginator,
    OwnableUnauthorizedAccount,
    WrongEpoch,
)
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.keys import KeyPath, key_path
from sidecar.core.model import ClusterConfig, MemberKeys, MeshCidr, TxReceipt, member_id_for
from sidecar.core.sigchain import build_proof
from tests.component.toolkit import CHAIN_ID, Chain, Node, NodeFactory

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

C1, C2, C3 = (Bytes32(keccak(b"csk epoch %d" % i)) for i in (1, 2, 3))


async def register(node: Node, cluster: ClusterClient) -> MemberId:
    _, member_id = await node.client(cluster).register(node.proof, node.keys, node.endpoint)
    return member_id


# --- app ids: this cluster's member apps only -------------------------------------------------------------


async def test_another_clusters_app_id_is_refused_by_name(
    cluster: ClusterClient, nodes: NodeFactory, chain: Chain
) -> None:
    other = await chain.cluster()  # a second cluster with the same member-app factory
    theirs = await nodes.node("theirs", cluster=other)  # approved on its own cluster
    with pytest.raises(ForeignApp) as approving:
        await cluster.add_allowed_app_id(theirs.app_id)
    assert approving.value.args == (theirs.app_id, other)
    assert not await cluster.allowed_app_id(theirs.app_id)

    with pytest.raises(ForeignApp) as registering:  # a valid KMS chain for that app id changes nothing
        await register(theirs, cluster)
    assert registering.value.args == (theirs.app_id, other)
    assert await cluster.member_count() == 0
    # ... while at home the same node registers: the refusal is about whose app it is, nothing else.
    assert await register(theirs, ClusterClient(cluster.connection, other)) == member_id_for(
        other, theirs.app_id
    )


async def test_an_app_of_a_copycat_factory_is_refused(
    conn: ChainConnection, deployer: TxSubmitter, kms: DevnetKms, cluster: ClusterClient
) -> None:
    """The same ClusterMemberApp code, naming this cluster, but deployed by a factory the cluster does not
    trust: its app id is not this cluster's member app."""
    copycat = await deploy_stack(conn, deployer, kms_roots=(kms.root_address,), compose_hashes=())
    app = await deploy_member_app(conn, deployer, copycat.member_app_factory, cluster.address, "copy")
    with pytest.raises(NotMemberApp) as caught:
        await cluster.add_allowed_app_id(app)
    assert caught.value.args == (app,)


async def test_an_eoa_or_another_contract_is_refused(
    conn: ChainConnection, cluster: ClusterClient, stack: Deployment, kms: DevnetKms, deployer: TxSubmitter
) -> None:
    strangers = (Address(os.urandom(20)), stack.cluster_factory, stack.member_app_factory, cluster.address)
    for stranger in strangers:
        with pytest.raises(NotMemberApp) as caught:
            await cluster.add_allowed_app_id(stranger)
        assert caught.value.args == (stranger,)
    # Registering under an EOA app id with a genuine KMS chain for it: refused by name as well.
    eoa = Address(os.urandom(20))
    key, sigchain = get_key(
        kms, eoa, key_path(KeyPath.SIGNER, CHAIN_ID, cluster.address), KeyPath.SIGNER.purpose
    )
    proof = build_proof(eoa, key, sigchain)
    await deployer.send(proof.signer, b"", value=10**18)
    signer = TxSubmitter(conn, LocalSigner(key), receipt_timeout=20.0, poll_interval=0.05)
    keys = MemberKeys(Bytes32(b"\x51" * 32), Bytes32(b"\x52" * 32), Bytes32(b"\x53" * 32))
    with pytest.raises(NotMemberApp) as caught:
        await cluster.with_submitter(signer).register(proof, keys, "10.0.0.1:51820")
    assert caught.value.args == (eoa,)


async def test_a_cluster_needs_a_member_app_factory(
    conn: ChainConnection, deployer: TxSubmitter, stack: Deployment
) -> None:
    factory = ClusterFactoryClient(conn, stack.cluster_factory, deployer)
    for bad in (Address(bytes(20)), Address(os.urandom(20))):  # zero, and an address without code
        config = ClusterConfig(deployer.address, MeshCidr.parse("10.78.0.0/24"), member_app_factory=bad)
        with pytest.raises(InvalidMemberAppFactory) as caught:
            await factory.deploy_cluster(config, Bytes32(os.urandom(32)))
        assert caught.value.args == (bad,)


# --- public keys: unique across members, freed on eviction ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "kind"), [("wg_pub", "wireguard"), ("identity_pub", "identity"), ("seal_pub", "seal")]
)
async def test_a_key_another_member_holds_is_refused(
    cluster: ClusterClient, nodes: NodeFactory, field: str, kind: str
) -> None:
    victim = await nodes.node("victim")
    victim_id = await register(victim, cluster)
    stolen = getattr(victim.keys, field)
    thief = await nodes.node("thief")
    thief = dataclasses.replace(thief, keys=dataclasses.replace(thief.keys, **{field: stolen}))
    with pytest.raises(KeyInUse) as caught:
        await register(thief, cluster)
    assert caught.value.args == (kind, stolen, victim_id)
    assert caught.value.fields["holder"] == victim_id
    assert await cluster.member_count() == 1
    honest = dataclasses.replace(thief, keys=(await nodes.node("spare")).keys)  # its own keys: fine
    await register(honest, cluster)


async def test_eviction_frees_the_keys_for_a_re_registration(
    cluster: ClusterClient, nodes: NodeFactory
) -> None:
    node = await nodes.node("comeback")
    member_id = await register(node, cluster)
    await cluster.remove_member(member_id)
    await cluster.add_allowed_app_id(node.app_id)
    assert await register(node, cluster) == member_id  # the same deterministic keys, accepted again
    record = await cluster.member_by_id(member_id)
    assert record is not None and record.keys == node.keys
    # ... and still held: a newcomer cannot take them over.
    newcomer = await nodes.node("newcomer", keys=node.keys)
    with pytest.raises(KeyInUse):
        await register(newcomer, cluster)


# --- endpoints ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["x", "localhost:51820", "10.0.0.1", "10.0.0.1:0", "udp://host.example:1", "tls://1.2.3.4:443", ""]
)
async def test_a_malformed_endpoint_reverts_in_register_and_set_endpoint(
    cluster: ClusterClient, nodes: NodeFactory, bad: str
) -> None:
    node = await nodes.node("node-1")
    with pytest.raises(InvalidEndpoint) as caught:
        await node.client(cluster).register(node.proof, node.keys, bad)
    assert caught.value.args == (bad,)
    member_id = await register(node, cluster)
    with pytest.raises(InvalidEndpoint) as caught:
        await node.client(cluster).set_endpoint(bad)
    assert caught.value.args == (bad,)
    record = await cluster.member_by_id(member_id)
    assert record is not None and record.endpoint == node.endpoint  # unchanged


# --- CSK epochs -----------------------------------------------------------------------------------------


def rotated(cluster: ClusterClient, receipt: TxReceipt) -> list[int]:
    return [int(e["epoch"]) for e in cluster.events(receipt, "CskRotated")]


async def test_one_commitment_per_epoch_by_the_originator(cluster: ClusterClient, nodes: NodeFactory) -> None:
    first, second = await nodes.node("first"), await nodes.node("second")
    originator = await register(first, cluster)
    await register(second, cluster)
    assert await cluster.csk_epoch() == 1

    with pytest.raises(WrongEpoch) as wrong:
        await first.client(cluster).set_csk_commitment(2, C1)
    assert wrong.value.args == (1, 2)
    receipt = await first.client(cluster).set_csk_commitment(1, C1)
    (event,) = cluster.events(receipt, "CskCommitmentSet")
    assert (event["originator"], event["epoch"], event["commitment"]) == (originator, 1, C1)

    assert rotated(cluster, await cluster.rotate_csk()) == [2]
    assert await cluster.csk_epoch() == 2
    assert await cluster.csk_commitment() is None  # the current epoch's: not committed yet
    assert await cluster.csk_commitment_of(1) == C1  # the previous one stays readable
    with pytest.raises(WrongEpoch) as late:  # a commitment computed before the rotation cannot land in it
        await first.client(cluster).set_csk_commitment(1, C2)
    assert late.value.args == (2, 1)
    with pytest.raises(NotOriginator):
        await second.client(cluster).set_csk_commitment(2, C2)

    await first.client(cluster).set_csk_commitment(2, C2)
    assert (await cluster.csk_commitment(), await cluster.csk_commitment_of(2)) == (C2, C2)
    assert await cluster.csk_commitment_of(1) == C1
    with pytest.raises(CskCommitmentAlreadySet) as twice:
        await first.client(cluster).set_csk_commitment(2, C3)
    assert twice.value.args == (2, C2)


async def test_rotation_is_the_owners(
    cluster: ClusterClient, nodes: NodeFactory, outsider: TxSubmitter
) -> None:
    member = await nodes.node("member")
    await register(member, cluster)
    for as_other in (cluster.with_submitter(outsider), member.client(cluster)):
        with pytest.raises(OwnableUnauthorizedAccount):
            await as_other.rotate_csk()
        with pytest.raises(OwnableUnauthorizedAccount):
            await as_other.set_rotate_csk_on_remove(True)
    assert await cluster.csk_epoch() == 1 and not await cluster.rotate_csk_on_remove()
    # Rotating an epoch that was never committed is allowed: that epoch simply never gets a key.
    await cluster.rotate_csk()
    await cluster.rotate_csk()
    assert await cluster.csk_epoch() == 3
    await member.client(cluster).set_csk_commitment(3, C3)
    assert await cluster.csk_commitment_of(2) is None and await cluster.csk_commitment() == C3


async def test_rotate_on_remove(cluster: ClusterClient, nodes: NodeFactory) -> None:
    first, second, third = [await nodes.node(n) for n in ("first", "second", "third")]
    ids = [await register(node, cluster) for node in (first, second, third)]
    await first.client(cluster).set_csk_commitment(1, C1)

    receipt = await cluster.remove_member(ids[2])  # off by default: the epoch stays
    assert rotated(cluster, receipt) == [] and await cluster.csk_epoch() == 1

    switched = await cluster.set_rotate_csk_on_remove(True)
    (event,) = cluster.events(switched, "RotateCskOnRemoveSet")
    assert event["rotateCskOnRemove"] is True and await cluster.rotate_csk_on_remove()
    assert cluster.events(await cluster.set_rotate_csk_on_remove(True), "RotateCskOnRemoveSet") == []

    receipt = await cluster.remove_member(ids[0])  # the originator goes: the next one commits epoch 2
    assert [e.name for e in cluster.events(receipt)][-1] == "CskRotated"
    assert rotated(cluster, receipt) == [2] and await cluster.csk_epoch() == 2
    assert await cluster.csk_commitment() is None
    assert await cluster.originator() == ids[1]
    with pytest.raises(NotOriginator):
        await first.client(cluster).set_csk_commitment(2, C2)  # evicted: no say over the new epoch
    await second.client(cluster).set_csk_commitment(2, C2)
    assert await cluster.csk_commitment() == C2 and await cluster.csk_commitment_of(1) == C1

    await cluster.set_rotate_csk_on_remove(False)
    assert rotated(cluster, await cluster.remove_member(ids[1])) == []
    assert await cluster.csk_epoch() == 2
