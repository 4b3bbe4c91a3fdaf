"""``attestmesh chain status`` and ``attestmesh health`` as an operator runs them: the CLI as a subprocess,
against anvil with our contracts and members registered through the devnet KMS, and against the sidecar's
real health application (``health_app`` serving ``healthz_body(NodeStatus(...))``) on 127.0.0.1.

Every server started here is stopped here; nothing but loopback is used.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
from ipaddress import ip_address
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment
from devnet.kms import DevnetKms
from ops.chainstatus import member_json
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Bytes32
from sidecar.core.model import MemberRecord
from sidecar.core.status import NodeStatus, healthz_body
from sidecar.http.health import health_app
from sidecar.observability import Metrics
from tests.component.conftest import CHAIN_ID, COMPOSE_HASH
from tests.component.toolkit import (
    HOST,
    Chain,
    Serve,
    bad_checksum,
    chain_args,
    closed_port,
    commit_csk,
    run_cli,
    usage_error,
)

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

CODE_ID = Bytes32(b"\xc1" * 32)
INDEXER_KEY = Bytes32(b"\x1e" * 32)
INDEXER_ENDPOINT = "ws://10.99.0.5:8080/v1/subscribe"  # written on chain; nothing connects to it
OTHER_COMPOSE = Bytes32(b"\xc2" * 32)
COMMITMENT = Bytes32(b"\xcc" * 32)


# --- chain status ------------------------------------------------------------------------------------------


async def test_chain_status_shows_members_commitment_registry_and_allowlist(
    anvil: AnvilProcess,
    conn: ChainConnection,
    deployer: TxSubmitter,
    stack: Deployment,
    kms: DevnetKms,
    chain: Chain,
) -> None:
    for _ in range(3):
        await chain.member()
    cluster = ClusterClient(conn, stack.cluster)
    await commit_csk(conn, kms, cluster, COMMITMENT)
    await IndexerRegistryClient(conn, stack.indexer_registry, deployer).set_indexer(
        INDEXER_ENDPOINT, CODE_ID, INDEXER_KEY
    )
    members: list[MemberRecord] = await cluster.members()
    assert len(members) == 3
    record = await IndexerRegistryClient(conn, stack.indexer_registry).current()
    checks = ("--compose-hash", str(COMPOSE_HASH), "--compose-hash", OTHER_COMPOSE.hex)  # 0x optional
    args = (*chain_args(anvil, stack), "--registry", str(stack.indexer_registry), *checks)

    human = await run_cli("chain", "status", *args)
    assert human.returncode == 0, human.stderr
    out = human.stdout
    assert f"members 3  originator {members[0].member_id}" in out
    assert f"csk epoch 1\ncsk commitment {COMMITMENT}" in out
    assert f"indexer registry {stack.indexer_registry}: {INDEXER_ENDPOINT}" in out
    assert f"  key      {INDEXER_KEY}\n  code id  {CODE_ID}\n" in out
    assert f"compose hash {COMPOSE_HASH}: allowlisted" in out
    assert f"compose hash {OTHER_COMPOSE}: NOT allowlisted" in out
    table = out[out.index("member id") :].splitlines()[1:]
    assert len(table) == 3
    for row, member in zip(table, members, strict=True):  # registration order
        cells = row.split()
        assert cells[0] == str(member.member_id)[:12] + "…"
        assert cells[1:4] == [str(member.app_id), str(member.mesh_ip), member.endpoint]
        assert member.mesh_ip in (await cluster.mesh_cidr()).network

    machine = await run_cli("chain", "status", *args, "--json")
    assert machine.returncode == 0, machine.stderr
    data = json.loads(machine.stdout)
    assert data["chain_id"] == CHAIN_ID and data["block"] <= await conn.block_number()
    assert data["members"] == [member_json(m) for m in members]
    for shown, member in zip(data["members"], members, strict=True):
        assert await cluster.member_by_id(member.member_id) == member
        assert shown["mesh_ip"] == str(await cluster.mesh_ip_of(member.member_id))
    assert data["cluster"] == {
        "address": str(stack.cluster),
        "owner": str(deployer.address),
        "mesh_cidr": str(await cluster.mesh_cidr()),
        "member_count": await cluster.member_count(),
        "originator": str(members[0].member_id),
        "csk_epoch": 1,
        "csk_commitment": str(await cluster.csk_commitment()),
        "rotate_csk_on_remove": False,
    }
    assert data["indexer_registry"] == {
        "address": str(stack.indexer_registry),
        "registered": True,
        "endpoint": INDEXER_ENDPOINT,
        "code_id": str(CODE_ID),
        "pub_key": str(INDEXER_KEY),
        "updated_at": record.updated_at,
    }
    assert data["compose_hashes"] == [
        {"compose_hash": str(COMPOSE_HASH), "allowlisted": await cluster.allowed_compose_hash(COMPOSE_HASH)},
        {"compose_hash": str(OTHER_COMPOSE), "allowlisted": False},
    ]
    assert data["compose_hashes"][0]["allowlisted"] is True

    # The same from the sidecar's environment variables, with no chain option on the command line.
    env = {
        "ATTESTMESH_RPC_URL": anvil.rpc_url,
        "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
        "ATTESTMESH_CLUSTER": str(stack.cluster),
        "ATTESTMESH_INDEXER_REGISTRY": str(stack.indexer_registry),
    }
    from_env = await run_cli("chain", "status", *checks, "--json", env=env)
    assert from_env.returncode == 0, from_env.stderr
    same = json.loads(from_env.stdout)
    assert same.keys() == data.keys()
    assert {k: same[k] for k in data if not k.startswith("block")} == {
        k: v for k, v in data.items() if not k.startswith("block")
    }


async def test_chain_status_of_a_new_cluster_says_what_is_not_there_yet(
    anvil: AnvilProcess, stack: Deployment
) -> None:
    registry = ("--registry", str(stack.indexer_registry))
    human, bare = await asyncio.gather(
        run_cli("chain", "status", *chain_args(anvil, stack), *registry),
        run_cli("chain", "status", *chain_args(anvil, stack), "--json"),
    )
    assert human.returncode == 0, human.stderr
    assert "members 0  no originator yet" in human.stdout
    assert "csk commitment none (not committed yet)" in human.stdout
    assert "no indexer registered" in human.stdout and "no members" in human.stdout

    assert bare.returncode == 0, bare.stderr
    data = json.loads(bare.stdout)
    assert data["members"] == [] and data["indexer_registry"] is None and data["compose_hashes"] == []
    assert data["cluster"]["csk_commitment"] is None and data["cluster"]["originator"] is None


async def test_chain_status_failures_are_one_clear_line_without_credentials(
    anvil: AnvilProcess, stack: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    api_key = "k3y0f7h3pr0v1d3r"
    url = f"http://user:secret@{HOST}:{closed_port()}/v2/{api_key}?token=t0k3nv4lu3"
    cluster = ("--cluster", str(stack.cluster))
    base = ("chain", "status", "--rpc-url", anvil.rpc_url, "--chain-id", str(CHAIN_ID))
    down, wrong_chain, no_contract, not_a_cluster = await asyncio.gather(
        run_cli("chain", "status", "--rpc-url", url, "--chain-id", "1", *cluster, "--json"),
        run_cli("chain", "status", "--rpc-url", anvil.rpc_url, "--chain-id", "1", *cluster),
        run_cli(*base, *cluster, "--registry", "0x" + "00" * 19 + "42"),
        run_cli(*base, "--cluster", str(stack.indexer_registry)),  # a contract, but not a Cluster
    )
    assert down.returncode == 1 and down.stdout == ""
    assert f"cannot read the chain at http://{HOST}:" in down.stderr and "unreachable" in down.stderr
    for secret in ("secret", "user:", api_key, "t0k3nv4lu3"):
        assert secret not in down.stderr
    assert wrong_chain.returncode == 1
    assert "chain id mismatch: expected 1, the node reports 31337" in wrong_chain.stderr
    assert no_contract.returncode == 1 and "no contract at the indexer registry address" in no_contract.stderr
    assert not_a_cluster.returncode == 1 and "cannot read the chain" in not_a_cluster.stderr
    for failed in (down, wrong_chain, no_contract, not_a_cluster):
        assert len(failed.stderr.splitlines()) == 1 and "Traceback" not in failed.stderr

    usage = await run_cli(*base, "--cluster", "0x1234")  # one as a process: the exit status itself
    assert usage.returncode == 2 and "'0x1234' is not an address" in usage.stderr
    for bad in (  # the rest through the same entry point, in process
        (*base, *cluster, "--registry", "not-an-address"),
        (*base, *cluster, "--compose-hash", "0xabc"),
        (*base, "--cluster", bad_checksum(str(stack.cluster))),
        (*base, "--cluster", "0x" + "00" * 20),
        ("chain", "status", "--rpc-url", "ftp://user:secret@host", "--chain-id", "1", *cluster),
        ("chain", "status", "--rpc-url", url, "--chain-id", "0", *cluster),
        base,  # no cluster at all
    ):
        assert usage_error(capsys, bad), bad


# --- health ------------------------------------------------------------------------------------------------

HEALTHY = NodeStatus(
    phase="healthy",
    healthy=True,
    reason=None,
    version="0.1.0",
    app_id="0x" + "ab" * 20,
    instance_id="0x" + "1c" * 20,
    compose_hash=str(COMPOSE_HASH),
    member_id="0x" + "3e" * 32,
    mesh_ip="10.13.0.2",
    signer="0x" + "5a" * 20,
    peers_desired=2,
    peers_configured=2,
    peers_live=2,
    csk_held=True,
    csk_commitment=str(COMMITMENT),
    csk_source="derived",
    events_mode="push",
    indexer_connected=True,
    cursor_block=120,
    head_block=121,
    rejected_pushes=3,
    rejected_by_reason=(("bad_signature", 2), ("continuity", 1)),
    membership_digest="0x" + "d1" * 32,
    chain_reachable=True,
)
UNHEALTHY = NodeStatus(
    phase="csk_acquire",
    healthy=False,
    reason="csk: no live peer answered",
    version="0.1.0",
    mesh_ip="10.13.0.3",
    peers_desired=2,
    chain_reachable=False,
    chain_error="RPC endpoint unreachable",
)


async def test_health_prints_a_healthy_node_readably_and_exits_0(serve: Serve) -> None:
    current = [HEALTHY]
    runner = await serve(health_app(lambda: current[0], Metrics(CollectorRegistry())))
    url = f"http://{HOST}:{runner.port}/healthz"

    healthy, as_json = await asyncio.gather(run_cli("health", url), run_cli("health", url, "--json"))
    assert healthy.returncode == 0, healthy.stderr
    out = healthy.stdout
    assert out.splitlines()[0] == f"{url}: HEALTHY (HTTP 200)"
    for expected in (
        "phase              healthy",
        f"member id          {HEALTHY.member_id}",
        f"app id             {HEALTHY.app_id}",
        "mesh ip            10.13.0.2",
        "peers              desired 2  configured 2  live 2",
        f"csk                held (source derived)  commitment {COMMITMENT}",
        "events             mode push  indexer connected  cursor 120  head 121",
        "rejected pushes    3 (bad_signature 2, continuity 1)",
        "chain              reachable",
        f"membership digest  {HEALTHY.membership_digest}",
        "version            0.1.0",
    ):
        assert expected in out, (expected, out)

    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == healthz_body(HEALTHY)

    current[0] = UNHEALTHY
    sick, sick_json = await asyncio.gather(run_cli("health", url), run_cli("health", url, "--json"))
    assert sick.returncode == 1
    assert sick.stdout.splitlines()[0] == f"{url}: UNHEALTHY (HTTP 503)"
    assert "reason             csk: no live peer answered" in sick.stdout
    assert "phase              csk_acquire" in sick.stdout
    assert "chain              UNREACHABLE: RPC endpoint unreachable" in sick.stdout
    assert "csk                not held  commitment -" in sick.stdout

    assert sick_json.returncode == 1
    assert json.loads(sick_json.stdout) == healthz_body(UNHEALTHY)


async def test_health_fails_on_a_non_health_answer_or_nothing_listening(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    async def plain(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def other_json(_request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    app = web.Application()
    app.router.add_get("/healthz", plain)
    app.router.add_get("/livez", other_json)
    runner = await serve(app)

    port, base = closed_port(), f"http://{HOST}:{runner.port}"
    not_json, wrong_path, missing, nothing = await asyncio.gather(
        run_cli("health", f"{base}/healthz"),
        run_cli("health", f"{base}/livez", "--json"),
        run_cli("health", f"{base}/nowhere"),
        run_cli("health", f"http://{HOST}:{port}/healthz", "--timeout", "2"),
    )
    assert not_json.returncode == 1 and not_json.stdout == ""
    assert "answered HTTP 200 but not a health document" in not_json.stderr
    assert wrong_path.returncode == 1 and wrong_path.stdout == ""
    assert "not a health document (is the path /healthz?)" in wrong_path.stderr
    assert missing.returncode == 1 and "answered HTTP 404 but not a health document" in missing.stderr
    assert nothing.returncode == 1 and f"http://{HOST}:{port}/healthz did not answer" in nothing.stderr
    for failed in (not_json, wrong_path, missing, nothing):
        assert len(failed.stderr.splitlines()) == 1 and "Traceback" not in failed.stderr
    assert "must be an http:// or https:// URL" in usage_error(capsys, ("health", "not a url"))
    assert "greater than 0" in usage_error(capsys, ("health", f"{base}/healthz", "--timeout", "0"))


async def test_health_over_https_trusts_the_given_ca_and_nothing_else(tmp_path: Path) -> None:
    """``attestmesh health https://…`` (a node through the gateway) verifies the server: with the lab CA
    (``--ca-file`` or ``ATTESTMESH_CA_FILE``) it reads the document, without it it refuses to."""
    ca_file, server_tls = _test_ca(tmp_path)
    runner = web.AppRunner(health_app(lambda: HEALTHY, Metrics(CollectorRegistry())))
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=server_tls)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"https://{HOST}:{port}/healthz"
        flag, env, untrusted = await asyncio.gather(
            run_cli("health", url, "--ca-file", str(ca_file)),
            run_cli("health", url, env={**os.environ, "ATTESTMESH_CA_FILE": str(ca_file)}),
            run_cli("health", url),
        )
    finally:
        await runner.cleanup()
    assert flag.returncode == 0 and flag.stdout.startswith(f"{url}: HEALTHY (HTTP 200)"), flag.stderr
    assert env.returncode == 0, env.stderr
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


def _test_ca(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (its certificate written to a file) and a server context for 127.0.0.1 it signed."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address(HOST))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_file, chain = directory / "ca.pem", directory / "server.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )  # a throwaway test key in the test's own temporary directory
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain)
    return ca_file, context
