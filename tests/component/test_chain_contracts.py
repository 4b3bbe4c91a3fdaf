"""The chain adapter against a real anvil running the compiled contracts.

Every read and write goes through sidecar.chain (bindings, submitter, error decoding); keys and signature
chains come from devnet.kms exactly as the guest agent's GetKey would return them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_keys.datatypes import PrivateKey
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3.datastructures import AttributeDict

from devnet.anvil import DEVNET_DEPLOYER_KEY, DEVNET_DEV_KEYS, AnvilError, AnvilProcess
from devnet.deployment import Deployment, deploy_member_app, deploy_stack
from devnet.kms import DevnetKms
from sidecar.chain.contracts import (
    ClusterClient,
    ClusterFactoryClient,
    IndexerRegistryClient,
    MemberAppClient,
    MemberAppFactoryClient,
)
from sidecar.chain.errors import (
    AlreadyRegistered,
    AppIdNotAllowed,
    AppSignatureMismatch,
    ChainIdMismatch,
    ChainUnavailable,
    CskCommitmentAlreadySet,
    EndpointTooLong,
    InsufficientFunds,
    KmsRootNotAllowed,
    KmsSignatureMismatch,
    NoSubmitter,
    NotMember,
    NotMemberApp,
    NotOriginator,
    OwnableUnauthorizedAccount,
    SenderNotDerivedKey,
    TransactionTimeout,
    UnexpectedChainError,
    UnknownMember,
    ZeroCommitment,
)
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import compress_secp256k1
from sidecar.core.model import BootInfo, MemberRecord, TxReceipt, member_id_for
from sidecar.core.sigchain import derived_key_message
from tests.component.toolkit import Node, NodeFactory

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

CHAIN_ID = 31337
COMPOSE_HASH = Bytes32(b"\xc0" * 32)  # the conftest's compose_hash fixture; asserted below
OTHER_KMS_SEED = b"another devnet KMS seed -- PUBLIC, tests only"
ZERO32 = Bytes32(bytes(32))
FUNDING_WEI = 10**18


def assert_our_types(value: Any) -> None:
    """Fail if a web3 type (HexBytes, AttributeDict) hides anywhere inside ``value``."""
    assert not isinstance(value, (HexBytes, AttributeDict)), f"web3 type leaked: {value!r}"
    module = type(value).__module__
    assert not module.startswith(("web3", "hexbytes", "eth_typing")), f"{type(value)} leaked"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            assert_our_types(getattr(value, f.name))
    elif isinstance(value, Mapping):
        for item in value.values():
            assert_our_types(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            assert_our_types(item)


def boot_info(app_id: Address, **changes: Any) -> BootInfo:
    info = BootInfo(
        app_id=app_id,
        compose_hash=COMPOSE_HASH,
        instance_id=Address(b"\x1e" * 20),
        device_id=Bytes32(b"\xde" * 32),
        mr_aggregated=Bytes32(b"\x01" * 32),
        mr_system=Bytes32(b"\x02" * 32),
        os_image_hash=Bytes32(b"\x03" * 32),
        tcb_status="UpToDate",
        advisory_ids=("INTEL-SA-00000",),
    )
    return dataclasses.replace(info, **changes)


async def register(node: Node, cluster: ClusterClient) -> tuple[TxReceipt, MemberId]:
    return await node.client(cluster).register(node.proof, node.keys, node.endpoint)


# --- (a) registration ------------------------------------------------------------------------------------


async def test_three_members_register_with_kms_chains(cluster: ClusterClient, nodes: NodeFactory) -> None:
    members = [await nodes.node(f"node-{i}") for i in (1, 2, 3)]
    assert len({m.app_id for m in members}) == 3
    ids: list[MemberId] = []
    for node in members:
        receipt, member_id = await register(node, cluster)
        assert receipt.succeeded
        assert member_id == member_id_for(cluster.address, node.app_id)
        (event,) = cluster.events(receipt, "MemberRegistered")
        assert event["memberId"] == member_id
        assert event["appId"] == node.app_id
        assert event["signer"] == node.proof.signer
        assert_our_types(receipt)
        ids.append(member_id)
        print(f"gas register({node.name}) = {receipt.gas_used}")

    assert await cluster.member_count() == 3
    assert await cluster.list_members() == ids
    assert await cluster.originator() == ids[0]
    cidr = await cluster.mesh_cidr()
    assert str(cidr) == "10.13.0.0/16"

    records = await cluster.members()
    assert_our_types(records)
    assert [r.member_id for r in records] == ids
    assert records == [await cluster.member_by_id(member_id) for member_id in ids]
    ips = [r.mesh_ip for r in records]
    assert len(set(ips)) == 3
    assert all(ip in cidr for ip in ips)
    for node, record in zip(members, records, strict=True):
        assert isinstance(record, MemberRecord)
        assert record.app_id == node.app_id
        assert record.signer == node.proof.signer
        assert record.keys == node.keys
        assert record.endpoint == node.endpoint
        assert record.registered_at > 0
        assert await cluster.member_id_of(node.app_id) == record.member_id
        assert await cluster.member_id_of_signer(node.proof.signer) == record.member_id
        assert await cluster.mesh_ip_of(record.member_id) == record.mesh_ip
        assert await cluster.compute_member_id(node.app_id) == member_id_for(cluster.address, node.app_id)


async def test_logs_and_block_headers(
    conn: ChainConnection, cluster: ClusterClient, nodes: NodeFactory, stack: Deployment
) -> None:
    """What a log poller needs: bounded log reads filtered by topic, and headers to check for reorgs."""
    members = [await nodes.node(f"log-{i}") for i in (1, 2)]
    ids = [(await register(node, cluster))[1] for node in members]
    head = await conn.block_number()
    registered = cluster.event_topic("MemberRegistered")
    logs = await conn.get_logs([cluster.address], stack.factory_block, head, [[registered]])
    assert_our_types(logs)
    events = cluster.events(logs)
    assert [e.name for e in events] == ["MemberRegistered", "MemberRegistered"]
    assert [e["memberId"] for e in events] == ids
    everything = await conn.get_logs([cluster.address], stack.factory_block, head)
    assert {"ComposeHashAdded", "AppIdAllowed", "MemberRegistered"} <= {
        e.name for e in cluster.events(everything)
    }
    by_member = await conn.get_logs([cluster.address], stack.factory_block, head, [None, [ids[1]]])
    assert [e["memberId"] for e in cluster.events(by_member)] == [ids[1]]
    assert await conn.get_logs([cluster.address], head, head, [[cluster.event_topic("MemberRemoved")]]) == []
    with pytest.raises(ValueError, match="empty block range"):
        await conn.get_logs([cluster.address], head, head - 1)

    header = await conn.block_header(head)
    latest = await conn.block_header()
    assert header == latest and header.number == head
    parent = await conn.block_header(head - 1)
    assert header.parent_hash == parent.hash and parent.number == head - 1
    assert events[-1].log.block_hash == (await conn.block_header(events[-1].log.block_number)).hash
    assert_our_types(header)


async def test_member_id_for_matches_compute_member_id(cluster: ClusterClient) -> None:
    for _ in range(5):
        app_id = Address(os.urandom(20))
        assert await cluster.compute_member_id(app_id) == member_id_for(cluster.address, app_id)


async def test_absent_values_are_none(cluster: ClusterClient) -> None:
    stranger = Address(b"\x99" * 20)
    assert await cluster.member_count() == 0
    assert await cluster.member_id_of(stranger) is None
    assert await cluster.member_id_of_signer(stranger) is None
    assert await cluster.originator() is None
    assert await cluster.member_by_id(member_id_for(cluster.address, stranger)) is None
    assert await cluster.mesh_ip_of(member_id_for(cluster.address, stranger)) is None
    assert await cluster.csk_commitment() is None
    assert await cluster.csk_epoch() == 1
    assert await cluster.csk_commitment_of(1) is None
    assert not await cluster.rotate_csk_on_remove()
    assert await cluster.pending_owner() is None
    assert await cluster.members() == []


async def test_stack_reads(
    conn: ChainConnection, stack: Deployment, cluster: ClusterClient, kms: DevnetKms
) -> None:
    factory = ClusterFactoryClient(conn, stack.cluster_factory)
    assert await factory.deployment_block() == stack.factory_block
    assert await factory.is_deployed_cluster(stack.cluster)
    assert not await factory.is_deployed_cluster(stack.member_app_factory)
    assert await factory.cluster_count() == 1
    assert await cluster.owner() == cluster.submitter.address  # type: ignore[union-attr]
    assert await cluster.allowed_kms_root(kms.root_address)
    assert await cluster.member_app_factory() == stack.member_app_factory
    assert await cluster.allowed_compose_hash(COMPOSE_HASH)
    assert await cluster.allow_any_device()
    assert not await cluster.require_tcb_up_to_date()


async def test_member_app_factory_is_deterministic(
    conn: ChainConnection, stack: Deployment, deployer: TxSubmitter
) -> None:
    apps = MemberAppFactoryClient(conn, stack.member_app_factory, deployer)
    predicted = await apps.predict(stack.cluster, "node-x")
    assert not await apps.is_our_app(predicted)
    assert (await apps.salt_of(predicted)).is_zero
    deployed = await apps.deploy(stack.cluster, "node-x")
    assert deployed == predicted
    assert await apps.is_our_app(deployed)
    assert await apps.salt_of(deployed) == Bytes32(
        keccak(encode(["address", "string"], [stack.cluster.checksum, "node-x"]))
    )
    assert await apps.deploy(stack.cluster, "node-x") == deployed  # idempotent
    assert await apps.predict(stack.cluster, "node-y") != deployed
    assert await MemberAppClient(conn, deployed).cluster() == stack.cluster


async def test_factory_deploys_a_second_cluster(
    conn: ChainConnection, stack: Deployment, deployer: TxSubmitter, kms: DevnetKms
) -> None:
    second = await deploy_stack(
        conn, deployer, kms_roots=(kms.root_address,), compose_hashes=(), mesh_cidr="10.77.0.0/24"
    )
    assert second.cluster != stack.cluster
    assert str(await ClusterClient(conn, second.cluster).mesh_cidr()) == "10.77.0.0/24"


# --- (b) registration rejects ----------------------------------------------------------------------------


async def test_rejects_untrusted_kms_root(cluster: ClusterClient, nodes: NodeFactory) -> None:
    other = DevnetKms(seed=OTHER_KMS_SEED)
    node = await nodes.node("rogue", kms=other)
    with pytest.raises(KmsRootNotAllowed) as caught:
        await register(node, cluster)
    assert caught.value.args == (other.root_address,)


async def test_rejects_chain_issued_for_another_app(cluster: ClusterClient, nodes: NodeFactory) -> None:
    node = await nodes.node("node-1")
    other_app = await nodes.app("node-2")
    await cluster.add_allowed_app_id(other_app)
    forged = dataclasses.replace(node.proof, app_id=other_app)
    with pytest.raises(KmsSignatureMismatch) as caught:
        await node.client(cluster).register(forged, node.keys, node.endpoint)
    claimed, recovered = caught.value.args
    assert claimed == nodes.kms.root_address
    assert recovered != claimed


async def test_rejects_tampered_app_signature(cluster: ClusterClient, nodes: NodeFactory) -> None:
    node = await nodes.node("node-1")
    # A well-formed signature over the right message, by a key that is not the app key.
    impostor = PrivateKey(keccak(b"not the app key"))
    message = derived_key_message("ethereum", compress_secp256k1(node.proof.derived_pubkey))
    tampered = dataclasses.replace(
        node.proof, app_signature=bytes(impostor.sign_msg_hash(keccak(message)).to_bytes())
    )
    with pytest.raises(AppSignatureMismatch) as caught:
        await node.client(cluster).register(tampered, node.keys, node.endpoint)
    assert caught.value.args[0] == node.proof.app_address
    assert caught.value.args[1] == Address(impostor.public_key.to_canonical_address())


async def test_rejects_sender_that_is_not_the_derived_key(
    cluster: ClusterClient, nodes: NodeFactory, outsider: TxSubmitter
) -> None:
    node = await nodes.node("node-1")
    with pytest.raises(SenderNotDerivedKey) as caught:
        await cluster.with_submitter(outsider).register(node.proof, node.keys, node.endpoint)
    assert caught.value.args == (outsider.address, node.proof.signer)


async def test_rejects_second_registration(cluster: ClusterClient, nodes: NodeFactory) -> None:
    node = await nodes.node("node-1")
    _, member_id = await register(node, cluster)
    with pytest.raises(AlreadyRegistered) as caught:
        await register(node, cluster)
    assert caught.value.args == (node.app_id, member_id)
    assert caught.value.fields["memberId"] == member_id


async def test_rejects_unapproved_app_id(cluster: ClusterClient, nodes: NodeFactory) -> None:
    node = await nodes.node("node-1", approve=False)
    with pytest.raises(AppIdNotAllowed) as caught:
        await register(node, cluster)
    assert caught.value.args == (node.app_id,)
    assert await cluster.member_count() == 0


async def test_rejects_overlong_endpoint(cluster: ClusterClient, nodes: NodeFactory) -> None:
    node = await nodes.node("node-1")
    with pytest.raises(EndpointTooLong) as caught:
        await node.client(cluster).register(node.proof, node.keys, "x" * 256)
    assert caught.value.args == (256,)


# --- (c) boot policy ------------------------------------------------------------------------------------


async def test_boot_policy_reasons(cluster: ClusterClient, nodes: NodeFactory) -> None:
    app_id = await nodes.app("node-1")
    assert (await cluster.is_app_allowed(boot_info(app_id))).reason == "app id not allowed"
    await cluster.add_allowed_app_id(app_id)
    verdict = await cluster.is_app_allowed(boot_info(app_id))
    assert verdict.allowed and verdict.reason == ""

    denied = await cluster.is_app_allowed(boot_info(app_id, compose_hash=Bytes32(b"\xee" * 32)))
    assert (denied.allowed, denied.reason) == (False, "compose hash not allowed")

    await cluster.set_allow_any_device(False)
    assert not await cluster.allow_any_device()
    denied = await cluster.is_app_allowed(boot_info(app_id))
    assert (denied.allowed, denied.reason) == (False, "device not allowed")
    await cluster.add_device(Bytes32(b"\xde" * 32))
    assert await cluster.allowed_device(Bytes32(b"\xde" * 32))
    assert (await cluster.is_app_allowed(boot_info(app_id))).allowed
    await cluster.remove_device(Bytes32(b"\xde" * 32))
    assert not (await cluster.is_app_allowed(boot_info(app_id))).allowed
    await cluster.set_allow_any_device(True)

    await cluster.set_require_tcb_up_to_date(True)
    assert await cluster.require_tcb_up_to_date()
    denied = await cluster.is_app_allowed(boot_info(app_id, tcb_status="OutOfDate"))
    assert (denied.allowed, denied.reason) == (False, "tcb status not up to date")
    assert (await cluster.is_app_allowed(boot_info(app_id, tcb_status="UpToDate"))).allowed

    await cluster.remove_compose_hash(COMPOSE_HASH)
    assert not await cluster.allowed_compose_hash(COMPOSE_HASH)
    assert (await cluster.is_app_allowed(boot_info(app_id))).reason == "compose hash not allowed"


async def test_members_stay_allowed_without_pre_approval(cluster: ClusterClient, nodes: NodeFactory) -> None:
    node = await nodes.node("node-1")
    await register(node, cluster)
    await cluster.remove_allowed_app_id(node.app_id)
    assert not await cluster.allowed_app_id(node.app_id)
    assert (await cluster.is_app_allowed(boot_info(node.app_id))).allowed


async def test_empty_allowlist_denies(conn: ChainConnection, deployer: TxSubmitter, kms: DevnetKms) -> None:
    empty = await deploy_stack(conn, deployer, kms_roots=(kms.root_address,), compose_hashes=())
    app_id = await deploy_member_app(conn, deployer, empty.member_app_factory, empty.cluster, "node-1")
    client = ClusterClient(conn, empty.cluster, deployer)
    await client.add_allowed_app_id(app_id)
    for compose_hash in (COMPOSE_HASH, ZERO32):
        verdict = await client.is_app_allowed(boot_info(app_id, compose_hash=compose_hash))
        assert (verdict.allowed, verdict.reason) == (False, "compose hash not allowed")


async def test_member_app_forwards_to_its_cluster(
    conn: ChainConnection, cluster: ClusterClient, nodes: NodeFactory
) -> None:
    app_id = await nodes.app("node-1")
    app = MemberAppClient(conn, app_id)
    assert (await app.is_app_allowed(boot_info(app_id))).reason == "app id not allowed"
    await cluster.add_allowed_app_id(app_id)
    assert (await app.is_app_allowed(boot_info(app_id))).allowed
    other = await nodes.app("node-2")
    await cluster.add_allowed_app_id(other)
    mismatch = await app.is_app_allowed(boot_info(other))
    assert (mismatch.allowed, mismatch.reason) == (False, "app id mismatch")
    assert await app.supports_interface(bytes.fromhex("01ffc9a7"))  # ERC-165 itself


# --- (d) CSK commitment ---------------------------------------------------------------------------------


async def test_csk_commitment_originator_only_and_once(cluster: ClusterClient, nodes: NodeFactory) -> None:
    first, second = await nodes.node("node-1"), await nodes.node("node-2")
    await register(first, cluster)
    await register(second, cluster)
    commitment = Bytes32(keccak(b"cluster shared key"))

    with pytest.raises(NotOriginator) as caught:
        await second.client(cluster).set_csk_commitment(1, commitment)
    assert caught.value.args == (second.proof.signer,)
    with pytest.raises(ZeroCommitment):
        await first.client(cluster).set_csk_commitment(1, ZERO32)

    receipt = await first.client(cluster).set_csk_commitment(1, commitment)
    print(f"gas set_csk_commitment = {receipt.gas_used}")
    (event,) = cluster.events(receipt, "CskCommitmentSet")
    assert (event["commitment"], event["epoch"]) == (commitment, 1)
    assert event["originator"] == member_id_for(cluster.address, first.app_id)
    assert await cluster.csk_commitment() == commitment

    with pytest.raises(CskCommitmentAlreadySet) as again:
        await first.client(cluster).set_csk_commitment(1, Bytes32(keccak(b"another key")))
    assert again.value.args == (1, commitment)


# --- (e) owner-only administration and eviction ----------------------------------------------------------

ADMIN_CALLS: dict[str, Callable[[ClusterClient], Awaitable[Any]]] = {
    "remove_member": lambda c: c.remove_member(Bytes32(b"\x01" * 32)),
    "add_compose_hash": lambda c: c.add_compose_hash(Bytes32(b"\x02" * 32)),
    "remove_compose_hash": lambda c: c.remove_compose_hash(COMPOSE_HASH),
    "add_device": lambda c: c.add_device(Bytes32(b"\x03" * 32)),
    "remove_device": lambda c: c.remove_device(Bytes32(b"\x03" * 32)),
    "set_allow_any_device": lambda c: c.set_allow_any_device(False),
    "set_require_tcb_up_to_date": lambda c: c.set_require_tcb_up_to_date(True),
    "add_allowed_app_id": lambda c: c.add_allowed_app_id(Address(b"\x04" * 20)),
    "rotate_csk": lambda c: c.rotate_csk(),
    "set_rotate_csk_on_remove": lambda c: c.set_rotate_csk_on_remove(True),
    "remove_allowed_app_id": lambda c: c.remove_allowed_app_id(Address(b"\x04" * 20)),
    "add_kms_root": lambda c: c.add_kms_root(Address(b"\x05" * 20)),
    "remove_kms_root": lambda c: c.remove_kms_root(Address(b"\x05" * 20)),
    "transfer_ownership": lambda c: c.transfer_ownership(Address(b"\x06" * 20)),
}


async def test_every_admin_function_is_owner_only(cluster: ClusterClient, outsider: TxSubmitter) -> None:
    as_outsider = cluster.with_submitter(outsider)
    for name, call in ADMIN_CALLS.items():
        with pytest.raises(OwnableUnauthorizedAccount) as caught:
            await call(as_outsider)
        assert caught.value.args == (outsider.address,), name
    for name, call in ADMIN_CALLS.items():  # and the owner may (the calls' own checks aside)
        if name == "remove_member":
            with pytest.raises(UnknownMember):
                await call(cluster)
        elif name == "add_allowed_app_id":
            with pytest.raises(NotMemberApp):  # not a member app: tests/component/test_cluster_rules.py
                await call(cluster)
        else:
            assert (await call(cluster)).succeeded, name


async def test_writes_without_submitter_fail_clearly(conn: ChainConnection, stack: Deployment) -> None:
    with pytest.raises(NoSubmitter, match="without a TxSubmitter"):
        await ClusterClient(conn, stack.cluster).add_compose_hash(COMPOSE_HASH)


async def test_remove_member_frees_nothing_and_requires_reapproval(
    cluster: ClusterClient, nodes: NodeFactory
) -> None:
    first, second, third = [await nodes.node(f"node-{i}") for i in (1, 2, 3)]
    for node in (first, second, third):
        await register(node, cluster)
    before = {r.member_id: r.mesh_ip for r in await cluster.members()}
    removed_id = member_id_for(cluster.address, second.app_id)

    receipt = await cluster.remove_member(removed_id)
    print(f"gas remove_member = {receipt.gas_used}")
    (event,) = cluster.events(receipt, "MemberRemoved")
    assert (event["memberId"], event["appId"]) == (removed_id, second.app_id)
    assert await cluster.member_count() == 2
    assert await cluster.member_by_id(removed_id) is None
    assert await cluster.member_id_of(second.app_id) is None
    assert removed_id not in await cluster.list_members()
    assert not await cluster.allowed_app_id(second.app_id)

    with pytest.raises(AppIdNotAllowed):
        await register(second, cluster)
    await cluster.add_allowed_app_id(second.app_id)
    _, again_id = await register(second, cluster)
    assert again_id == removed_id
    fourth = await nodes.node("node-4")
    await register(fourth, cluster)

    after = {r.member_id: r.mesh_ip for r in await cluster.members()}
    assert after[removed_id] != before[removed_id]  # a re-registration gets a fresh IP
    assert after[removed_id] not in before.values()
    assert len(set(after.values())) == len(after) == 4
    assert after[member_id_for(cluster.address, fourth.app_id)] not in before.values()
    with pytest.raises(UnknownMember):
        await cluster.remove_member(member_id_for(cluster.address, Address(b"\x07" * 20)))


# --- (f) two-step ownership ------------------------------------------------------------------------------


async def test_two_step_ownership(
    conn: ChainConnection, stack: Deployment, deployer: TxSubmitter, outsider: TxSubmitter
) -> None:
    for contract in (
        ClusterClient(conn, stack.cluster, deployer),
        IndexerRegistryClient(conn, stack.indexer_registry, deployer),
    ):
        stranger = TxSubmitter(conn, LocalSigner(DEVNET_DEV_KEYS[1]))
        await contract.transfer_ownership(outsider.address)
        assert await contract.owner() == deployer.address
        assert await contract.pending_owner() == outsider.address
        with pytest.raises(OwnableUnauthorizedAccount) as caught:
            await contract.with_submitter(stranger).accept_ownership()
        assert caught.value.args == (stranger.address,)
        await contract.with_submitter(outsider).accept_ownership()
        assert await contract.owner() == outsider.address
        assert await contract.pending_owner() is None
        with pytest.raises(OwnableUnauthorizedAccount):
            await contract.transfer_ownership(deployer.address)  # the old owner has no say any more


# --- (g) endpoint and indexer registry -------------------------------------------------------------------


async def test_set_endpoint_is_member_gated(
    cluster: ClusterClient, nodes: NodeFactory, outsider: TxSubmitter
) -> None:
    node = await nodes.node("node-1")
    _, member_id = await register(node, cluster)
    receipt = await node.client(cluster).set_endpoint("127.0.0.1:60000")
    (event,) = cluster.events(receipt, "EndpointChanged")
    assert (event["memberId"], event["endpoint"]) == (member_id, "127.0.0.1:60000")
    record = await cluster.member_by_id(member_id)
    assert record is not None and record.endpoint == "127.0.0.1:60000"
    with pytest.raises(NotMember) as caught:
        await cluster.with_submitter(outsider).set_endpoint("127.0.0.1:1")
    assert caught.value.args == (outsider.address,)


async def test_indexer_registry_round_trip(
    conn: ChainConnection, stack: Deployment, deployer: TxSubmitter, outsider: TxSubmitter
) -> None:
    registry = IndexerRegistryClient(conn, stack.indexer_registry, deployer)
    empty = await registry.current()
    assert not empty.registered and empty.updated_at == 0
    assert await registry.owner() == deployer.address
    code_id, pub_key = Bytes32(b"\xc1" * 32), Bytes32(b"\xb2" * 32)
    receipt = await registry.set_indexer("ws://127.0.0.1:8700", code_id, pub_key)
    record = await registry.current()
    assert_our_types(record)
    assert record.registered
    assert (record.endpoint, record.code_id, record.pub_key) == ("ws://127.0.0.1:8700", code_id, pub_key)
    assert record.updated_at > 0
    (event,) = registry.events(receipt, "IndexerUpdated")
    assert event["codeId"] == code_id and event["endpoint"] == "ws://127.0.0.1:8700"
    with pytest.raises(OwnableUnauthorizedAccount):
        await registry.with_submitter(outsider).set_indexer("ws://evil", code_id, pub_key)
    with pytest.raises(EndpointTooLong):
        await registry.set_indexer("w" * 300, code_id, pub_key)


# --- (h) transport failures and the submitter ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_nothing_listening_is_chain_unavailable() -> None:
    with pytest.raises(ChainUnavailable) as caught:
        await connect(f"http://127.0.0.1:{_free_port()}", timeout=2.0)
    assert caught.value.transient


async def test_reads_after_the_node_went_away_are_chain_unavailable() -> None:
    with AnvilProcess(host="127.0.0.1") as doomed:
        conn = await connect(doomed.rpc_url, expected_chain_id=CHAIN_ID)
    try:
        assert doomed.pid is None
        reads: list[Callable[[], Awaitable[int]]] = [
            conn.block_number,
            ClusterClient(conn, Address(b"\x01" * 20)).member_count,
        ]
        for read in reads:
            with pytest.raises(ChainUnavailable) as caught:
                await read()
            assert caught.value.transient
    finally:
        await conn.close()


async def test_wrong_chain_id_is_terminal(anvil: AnvilProcess) -> None:
    with pytest.raises(ChainIdMismatch) as caught:
        await connect(anvil.rpc_url, expected_chain_id=1)
    assert (caught.value.expected, caught.value.actual) == (1, CHAIN_ID)
    assert not caught.value.transient


async def test_calling_an_address_without_code_is_unexpected(conn: ChainConnection) -> None:
    with pytest.raises(UnexpectedChainError):
        await ClusterClient(conn, Address(b"\x42" * 20)).member_count()


async def test_receipt_timeout_when_nothing_is_mined() -> None:
    with AnvilProcess(host="127.0.0.1", no_mining=True) as idle:
        async with await connect(idle.rpc_url, expected_chain_id=CHAIN_ID) as conn:
            submitter = TxSubmitter(
                conn, LocalSigner(DEVNET_DEPLOYER_KEY), receipt_timeout=0.3, poll_interval=0.05
            )
            with pytest.raises(TransactionTimeout) as caught:
                await submitter.send(Address(b"\x01" * 20), b"", value=1)
            assert caught.value.transient
            assert caught.value.tx_hash is not None
            # The nonce is re-read from the pending pool, so the next send does not collide.
            with pytest.raises(TransactionTimeout) as second:
                await submitter.send(Address(b"\x01" * 20), b"", value=2)
            assert second.value.tx_hash != caught.value.tx_hash


async def test_onchain_revert_is_replayed_and_decoded(cluster: ClusterClient, outsider: TxSubmitter) -> None:
    # An explicit gas limit skips estimation, so the transaction is mined and fails with status 0.
    calldata = cluster.encode_call("addComposeHash", Bytes32(b"\x09" * 32).raw)
    with pytest.raises(OwnableUnauthorizedAccount) as caught:
        await outsider.send(cluster.address, calldata, gas_limit=200_000)
    assert caught.value.tx_hash is not None
    assert caught.value.args == (outsider.address,)
    # The submitter recovers: the failed transaction consumed its nonce and the next one goes through.
    await outsider.send(outsider.address, b"", value=1)


async def test_concurrent_sends_are_serialised(deployer: TxSubmitter, conn: ChainConnection) -> None:
    targets = [Address(os.urandom(20)) for _ in range(5)]
    receipts = await asyncio.gather(*(deployer.send(t, b"", value=7) for t in targets))
    assert all(r.succeeded for r in receipts)
    assert [await conn.get_balance(t) for t in targets] == [7] * 5


async def test_insufficient_funds_is_terminal_with_amounts(conn: ChainConnection) -> None:
    poor = TxSubmitter(conn, LocalSigner(SecretBytes(keccak(b"an empty test account"))))
    with pytest.raises(InsufficientFunds) as caught:
        await poor.send(Address(b"\x01" * 20), b"", value=1)
    assert caught.value.address == poor.address
    assert caught.value.needed is not None and caught.value.needed > 1
    assert caught.value.have == 0
    assert not caught.value.transient


async def test_value_beyond_balance_is_insufficient_funds(
    conn: ChainConnection, deployer: TxSubmitter
) -> None:
    modest = TxSubmitter(conn, LocalSigner(SecretBytes(keccak(b"a modest test account"))))
    await deployer.send(modest.address, b"", value=10**15)
    with pytest.raises(InsufficientFunds) as caught:
        await modest.send(Address(b"\x01" * 20), b"", value=10**18)
    assert caught.value.address == modest.address
    assert caught.value.have == 10**15
    assert str(modest.address) in str(caught.value)


# --- devnet.anvil ----------------------------------------------------------------------------------------


def test_anvil_start_failure_reports_the_log_tail() -> None:
    process = AnvilProcess(host="127.0.0.1", extra_args=("--no-such-flag",))
    with pytest.raises(AnvilError, match="no-such-flag"):
        process.start(timeout=5.0)
    assert process.pid is None and not process.running


def test_anvil_binary_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTESTMESH_ANVIL", "/nonexistent/anvil")
    with pytest.raises(AnvilError, match="cannot start"):
        AnvilProcess(host="127.0.0.1").start()


def test_anvil_stop_is_bounded_and_idempotent() -> None:
    process = AnvilProcess(host="127.0.0.1", block_time=1.0).start()
    pid = process.pid
    assert pid is not None and process.running
    assert process.rpc_url.startswith("http://127.0.0.1:")
    assert "--block-time" in process.argv()
    process.stop()
    assert process.pid is None and not process.running
    comm = Path(f"/proc/{pid}/comm")
    assert not comm.exists() or "anvil" not in comm.read_text()
    process.stop()  # a second stop signals nothing
