"""Value objects of sidecar.core.model: member ids, mesh CIDR, indexer record, immutability."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import (
    BootInfo,
    BootVerdict,
    ClusterConfig,
    IndexerRecord,
    MemberKeys,
    MemberRecord,
    MeshCidr,
    TxReceipt,
    member_id_for,
)

addresses = st.binary(min_size=20, max_size=20).map(Address)

CLUSTER = Address.from_hex("0x1ae3bcc30fdaf6fa326d8948cfb85864c0df9f7b")
APP = Address.from_hex("0x4602b3a58f47ddd5a85069f0d88772ca14a043f4")


def test_member_id_for_known_vector() -> None:
    # Observed from Cluster.computeMemberId on anvil for this (cluster, app id) pair.
    expected = MemberId.from_hex("0x82996bb685ba148b03fa417eeaf783f6743d492b230587b73ce5904dce0cbcc8")
    assert member_id_for(CLUSTER, APP) == expected
    assert isinstance(member_id_for(CLUSTER, APP), MemberId)


@given(addresses, addresses)
def test_member_id_for_is_keccak_of_abi_encode(cluster: Address, app_id: Address) -> None:
    encoded = encode(["address", "address"], [cluster.checksum, app_id.checksum])
    assert member_id_for(cluster, app_id).raw == keccak(encoded)


def test_member_id_depends_on_cluster_and_app() -> None:
    other = Address(bytes(19) + b"\x01")
    assert member_id_for(CLUSTER, APP) != member_id_for(other, APP)
    assert member_id_for(CLUSTER, APP) != member_id_for(CLUSTER, other)


def test_mesh_cidr_parse_and_chain_form_agree() -> None:
    cidr = MeshCidr.parse("10.13.0.0/16")
    assert cidr.base == 0x0A0D0000
    assert cidr.prefix_length == 16
    assert MeshCidr.from_chain(0x0A0D0000, 16) == cidr
    assert str(cidr) == "10.13.0.0/16"
    assert IPv4Address("10.13.0.1") in cidr
    assert IPv4Address("10.14.0.1") not in cidr
    assert "10.13.0.1" not in cidr  # only addresses, never strings


@pytest.mark.parametrize("text", ["10.13.0.1/16", "10.0.0.0/7", "10.0.0.0/31", "10.0.0.0/32", "nonsense"])
def test_mesh_cidr_rejects_bad_networks(text: str) -> None:
    with pytest.raises(ValueError):
        MeshCidr.parse(text)


@given(st.integers(min_value=8, max_value=30), st.integers(min_value=0, max_value=2**32 - 1))
def test_mesh_cidr_round_trips_through_chain_form(prefix: int, address: int) -> None:
    network = IPv4Network((address, prefix), strict=False)
    cidr = MeshCidr(network)
    assert MeshCidr.from_chain(cidr.base, cidr.prefix_length) == cidr


def test_indexer_record_registered_iff_endpoint() -> None:
    zero = Bytes32(bytes(32))
    assert not IndexerRecord(endpoint="", code_id=zero, pub_key=zero, updated_at=0).registered
    assert IndexerRecord(endpoint="wss://indexer:8443", code_id=zero, pub_key=zero, updated_at=5).registered


def test_member_record_exposes_its_keys() -> None:
    keys = MemberKeys(Bytes32(b"\x01" * 32), Bytes32(b"\x02" * 32), Bytes32(b"\x03" * 32))
    record = MemberRecord(
        member_id=member_id_for(CLUSTER, APP),
        app_id=APP,
        signer=CLUSTER,
        seal_pub=keys.seal_pub,
        wg_pub=keys.wg_pub,
        identity_pub=keys.identity_pub,
        endpoint="127.0.0.1:51820",
        mesh_ip=IPv4Address("10.13.0.1"),
        registered_at=1,
    )
    assert record.keys == keys


def test_value_objects_are_frozen() -> None:
    verdict = BootVerdict(allowed=False, reason="compose hash not allowed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.allowed = True  # type: ignore[misc]
    info = BootInfo(
        app_id=APP,
        compose_hash=Bytes32(b"\x11" * 32),
        instance_id=APP,
        device_id=Bytes32(bytes(32)),
        mr_aggregated=Bytes32(bytes(32)),
        mr_system=Bytes32(bytes(32)),
        os_image_hash=Bytes32(bytes(32)),
        tcb_status="UpToDate",
    )
    assert info.advisory_ids == ()
    assert hash(info) == hash(dataclasses.replace(info))


def test_cluster_config_defaults_fail_closed() -> None:
    config = ClusterConfig(owner=CLUSTER, mesh_cidr=MeshCidr.parse("10.13.0.0/16"), member_app_factory=APP)
    assert config.compose_hashes == ()
    assert not config.allow_any_device
    assert not config.require_tcb_up_to_date


def test_tx_receipt_repr_is_short() -> None:
    receipt = TxReceipt(tx_hash=Bytes32(b"\xaa" * 32), block_number=3, gas_used=21000, succeeded=True)
    assert "logs" not in repr(receipt)
    assert receipt.contract_address is None
