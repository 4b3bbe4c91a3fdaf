"""The devnet lab end to end: up, status, boot verdicts, node verbs, down, and recovery from a killed up."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from dstack_sdk import AsyncDstackClient

from devnet import procs
from devnet.compose import NodeAnchors, encode_app_compose, node_app_compose
from devnet.kms import DevnetKms
from devnet.lab import fetch_healthz
from devnet.netns import LabNetwork
from devnet.procs import ProcRecord
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient, MemberAppFactoryClient
from sidecar.chain.rpc import connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.keys import KeyPath, KeyScope, ed25519_public_key, secp256k1_address, x25519_public_key
from sidecar.core.model import MemberKeys
from sidecar.core.sigchain import build_proof, verify_proof
from sidecar.dstack.agent import GuestAgent
from tests.e2e.lab import MESH, PLAN, LabCli, as_owner, wait_until
from tests.e2e.mesh import lab_reach

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _recorded_processes(state: dict[str, Any]) -> list[ProcRecord]:
    records = [ProcRecord.from_json(p) for p in state["processes"].values()]
    if state.get("indexer"):
        records += [ProcRecord.from_json(p) for p in state["indexer"]["processes"].values()]
    for node in state["nodes"]:
        records += [ProcRecord.from_json(p) for p in node["processes"].values()]
    return records


def _assert_nothing_left(cli: LabCli, records: list[ProcRecord], sockets: list[str]) -> None:
    assert LabNetwork(PLAN).leftovers() == []
    assert [r for r in records if procs.is_alive(r)] == []
    assert [s for s in sockets if Path(s).exists()] == []
    assert not cli.state_file.exists()
    routes = subprocess.run(
        ["ip", "route", "show", "type", "blackhole"], capture_output=True, text=True, check=True
    ).stdout
    assert PLAN.underlay.with_prefixlen not in routes and MESH not in routes


def test_up_status_down(lab: LabCli) -> None:
    out = lab.run("up", "--nodes", "3", "--no-sidecar").stdout
    assert "created" in out
    status = lab.status()
    assert status["complete"] is True
    assert status["running"]["anvil"] and status["running"]["chain_reachable"]
    for key in (
        "rpc_url",
        "chain_id",
        "cluster",
        "indexer_registry",
        "cluster_factory",
        "member_app_factory",
    ):
        assert status[key], key
    nodes = status["nodes"]
    assert [n["name"] for n in nodes] == ["node-1", "node-2", "node-3"]
    assert len({n["app_id"] for n in nodes}) == 3
    assert len({n["underlay_ip"] for n in nodes}) == 3
    for node in nodes:
        assert node["boot"] == "allowed"
        assert node["netns"] == f"{PLAN.name}-{node['name']}"
        assert IPv4Address(node["underlay_ip"]) in PLAN.underlay
        assert node["running"] == {
            "node": True,
            "simulator": True,
            "wireguard": True,
            "sidecar": False,
            "dstack_socket": True,
            "wg_socket": True,
        }
        assert Bytes32.from_hex(node["compose_hash"]) == Bytes32.from_hex(status["initial_compose_hash"])

    async def check_chain() -> None:
        kms_root = DevnetKms().root_address
        async with await connect(status["rpc_url"], expected_chain_id=status["chain_id"]) as conn:
            cluster = ClusterClient(conn, Address.from_hex(status["cluster"]))
            assert await cluster.allowed_kms_root(kms_root)
            assert await cluster.allowed_compose_hash(Bytes32.from_hex(status["initial_compose_hash"]))
            factory = MemberAppFactoryClient(conn, Address.from_hex(status["member_app_factory"]))
            for node in nodes:
                app_id = Address.from_hex(node["app_id"])
                assert await factory.predict(cluster.address, node["name"]) == app_id
                assert await cluster.allowed_app_id(app_id)
                assert await conn.get_balance(Address.from_hex(node["signer"])) > 0
                # The official SDK, unchanged, against the node's simulator socket.
                async with AsyncDstackClient(node["dstack_socket"]) as client:
                    info = await client.info()
                    assert info.app_id == app_id.hex
                    assert "0x" + info.compose_hash == node["compose_hash"]
                    scope = KeyScope(status["chain_id"], cluster.address)  # keys bound to the cluster
                    resp = await client.get_key(scope.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
                    assert str(secp256k1_address(SecretBytes(resp.decode_key()))) == node["signer"]

    asyncio.run(check_chain())

    # the shared indexer: its own namespace and guest agent, healthy, and named by the registry
    indexer = status["indexer"]
    assert indexer["netns"] == f"{PLAN.name}-idx" and IPv4Address(indexer["ip"]) in PLAN.underlay
    if status["transport"] == "gateway":  # the registered endpoint is the gateway's terminated route
        domain = status["gateway"]["domain"]
        assert indexer["url"] == f"wss://{indexer['app_id'][2:].lower()}-8080.{domain}/v1/subscribe"
    else:
        assert indexer["url"] == f"ws://{indexer['ip']}:8080/v1/subscribe"
    assert indexer["running"]["simulator"] and indexer["running"]["indexer"]
    assert indexer["running"]["registered_key"] == indexer["public_key"] != ""
    assert indexer["status"]["public_key"] == indexer["public_key"]
    assert indexer["status"]["code_id"] == indexer["code_id"]
    assert indexer["code_id"][:42].lower() == indexer["app_id"].lower() and indexer["code_id"].endswith(
        "0" * 24
    )
    assert indexer["app_id"] not in {n["app_id"] for n in nodes}  # not a member: an app of its own
    reach = lab_reach(status)  # in gateway mode the indexer, a CVM too, is read through the gateway
    indexer_health = indexer.get("gateway_health_url") if reach.gateway is not None else indexer["health_url"]
    healthz = wait_until(
        lambda: (body := fetch_healthz(indexer_health, reach=reach)) is not None and body["healthy"] and body,
        30,
        "the indexer to be healthy",
    )
    assert healthz["lag_blocks"] == 0

    async def check_registry() -> None:
        async with await connect(status["rpc_url"], expected_chain_id=status["chain_id"]) as conn:
            record = await IndexerRegistryClient(conn, Address.from_hex(status["indexer_registry"])).current()
            assert record.endpoint == indexer["url"]
            assert str(record.pub_key) == indexer["public_key"] and str(record.code_id) == indexer["code_id"]

    asyncio.run(check_registry())
    wait_until(lambda: lab.status()["indexer"]["status"]["registry"]["matches"], 30, "registry read-back")

    anvil_pid = status["processes"]["anvil"]["pid"]
    again = lab.run("up", "--nodes", "3", "--no-sidecar").stdout
    assert "already running" in again
    assert lab.status()["processes"]["anvil"]["pid"] == anvil_pid

    human = lab.run("status").stdout
    assert "node-3" in human and "allowed" in human

    records = _recorded_processes(status)
    sockets = [n["dstack_socket"] for n in nodes] + [n["wg_socket"] for n in nodes]
    sockets.append(indexer["dstack_socket"])
    assert "removed" in lab.run("down").stdout
    _assert_nothing_left(lab, records, sockets)
    assert "not running" in lab.run("status").stdout


def test_denied_node_does_not_start_until_allowlisted(lab: LabCli, tmp_path: Path) -> None:
    lab.run("up", "--nodes", "1", "--no-sidecar")
    changed = tmp_path / "app-compose.json"
    changed.write_bytes(
        encode_app_compose(
            node_app_compose(NodeAnchors.of_lab(lab.state()), extra_envs=("APP_FEATURE_FLAG",))
        )
    )
    denied = lab.run("node", "add", "node-2", "--compose-file", str(changed), check=False)
    assert denied.returncode == 1, denied.stderr  # like `node update` and `node reboot`: denied is a failure
    assert "denied: compose hash not allowed" in denied.stdout
    assert "was denied at the KMS boot gate (compose hash not allowed)" in denied.stderr
    status = lab.status()
    node = next(n for n in status["nodes"] if n["name"] == "node-2")
    assert node["boot"] == "denied: compose hash not allowed"
    assert node["processes"] == {}
    assert not Path(node["dstack_socket"]).exists()
    assert node["running"]["simulator"] is False

    as_owner(status, lambda _, cluster: cluster.add_compose_hash(Bytes32.from_hex(node["compose_hash"])))
    assert "boot allowed" in lab.run("node", "start", "node-2").stdout
    after = next(n for n in lab.status()["nodes"] if n["name"] == "node-2")
    assert after["boot"] == "allowed"
    assert after["running"]["simulator"] and after["running"]["wireguard"]


def test_second_up_after_killed_up_works(lab: LabCli) -> None:
    proc = subprocess.Popen(
        lab.argv("up", "--nodes", "2", "--no-sidecar"),
        env=lab.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill it mid-build: once the chain runs and the contracts are being deployed or nodes created.
        procs.wait_for(
            lambda: lab.state_file.exists() and json.loads(lab.state_file.read_text()).get("processes"),
            60,
            interval=0.05,
            what="the first up to start anvil",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert json.loads(lab.state_file.read_text())["complete"] is False

    lab.run("up", "--nodes", "2", "--no-sidecar")
    status = lab.status()
    assert status["complete"] is True
    assert [n["boot"] for n in status["nodes"]] == ["allowed", "allowed"]
    records = _recorded_processes(status)
    lab.run("down")
    _assert_nothing_left(lab, records, [n["dstack_socket"] for n in status["nodes"]])


def test_three_members_register_with_keys_from_three_simulators(lab: LabCli) -> None:
    """Keys and signature chains obtained through the official SDK from three simulator instances."""
    lab.run("up", "--nodes", "3", "--no-sidecar")
    status = lab.status()

    async def register_all() -> None:
        async with await connect(status["rpc_url"], expected_chain_id=status["chain_id"]) as conn:
            cluster_address = Address.from_hex(status["cluster"])
            for node in status["nodes"]:
                agent = GuestAgent(node["dstack_socket"])
                try:
                    info = await agent.info()
                    scope = KeyScope(status["chain_id"], cluster_address)
                    signer_key = await agent.get_key(scope.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
                    keys = await _member_keys(agent, scope)
                finally:
                    await agent.close()
                proof = build_proof(info.app_id, signer_key.key, signer_key.signature_chain)
                verify_proof(proof, [DevnetKms().root_address])
                cluster = ClusterClient(conn, cluster_address, TxSubmitter(conn, LocalSigner(signer_key.key)))
                await cluster.register(proof, keys, f"{node['underlay_ip']}:51820")
            reader = ClusterClient(conn, cluster_address)
            assert await reader.member_count() == 3
            records = await reader.members()
            assert len(records) == 3
            cidr = (await reader.mesh_cidr()).network
            assert cidr == IPv4Network(MESH)
            assert len({r.mesh_ip for r in records}) == 3
            assert all(r.mesh_ip in cidr for r in records)
            assert {str(r.app_id) for r in records} == {n["app_id"] for n in status["nodes"]}
            for record in records:
                assert await reader.member_by_id(record.member_id) == record

    asyncio.run(register_all())


async def _member_keys(agent: GuestAgent, scope: KeyScope) -> MemberKeys:
    seal = await agent.get_key(scope.path(KeyPath.SEAL), KeyPath.SEAL.purpose)
    wg = await agent.get_key(scope.path(KeyPath.WIREGUARD), KeyPath.WIREGUARD.purpose)
    identity = await agent.get_key(
        scope.path(KeyPath.IDENTITY), KeyPath.IDENTITY.purpose, algorithm="ed25519"
    )
    return MemberKeys(
        seal_pub=Bytes32(x25519_public_key(seal.key)),
        wg_pub=Bytes32(x25519_public_key(wg.key)),
        identity_pub=Bytes32(ed25519_public_key(identity.key)),
    )
