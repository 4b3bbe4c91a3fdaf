"""``attestmesh cluster status`` as an operator runs it: the CLI as a subprocess against anvil with our
contracts, members registered through the devnet KMS and a CSK committed on chain, and a gateway stand-in
in this test: a real aiohttp server on 127.0.0.1 with the lab CA's wildcard certificate, dispatching on the
Host header (``<app id>-9090.<domain>``) as dstack's gateway routes, reached with ``--connect-to``.

Each member's answer is chosen per server: the sidecar's own ``healthz_body`` (healthy and agreeing), or a
hostile or malformed one (not JSON, oversized, a body that drips past the deadline, nesting past the
stack, wrong types, terminal escapes, a redirect, a digest or commitment that disagrees). Each must be
that member's failure, named in the summary, never a crash. The full-lab run (a 3-node gateway lab, one
node stopped) is tests/e2e/test_cluster_status.py.

Every server started here is stopped here; nothing but loopback is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment
from devnet.gateway.labca import LabCa
from devnet.kms import DevnetKms
from ops.amounts import format_eth
from ops.clusterview import SCHEMA
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.digest import membership_digest
from sidecar.core.ids import Bytes32
from sidecar.core.model import MemberRecord
from sidecar.core.status import NodeStatus, healthz_body
from tests.component.gatewaykit import DOMAIN
from tests.component.toolkit import (
    CHAIN_ID,
    HOST,
    Chain,
    chain_args,
    closed_port,
    commit_csk,
    run_cli,
    usage_error,
)

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

COMMITMENT = Bytes32(b"\xcc" * 32)
DRIP_LIMIT = 40  # the dripping handler gives up after this many 0.1 s ticks (bounded even if nobody hangs up)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def healthy_body(member: MemberRecord, digest: str, **changes: Any) -> dict[str, object]:
    status = NodeStatus(
        phase="healthy", healthy=True, reason=None, version="0.1.0", app_id=str(member.app_id),
        member_id=str(member.member_id), mesh_ip=str(member.mesh_ip), peers_desired=2, peers_live=2,
        peers_transport={"gateway": {"up": 2, "down": 0}}, csk_held=True, csk_commitment=str(COMMITMENT),
        membership_digest=digest,
    )  # fmt: skip
    return {**healthz_body(status), **changes}


def answer_json(data: object, status: int = 200) -> Handler:
    async def handle(_request: web.Request) -> web.StreamResponse:
        return web.json_response(data, status=status)

    return handle


def answer_raw(body: bytes, status: int = 200, content_type: str = "application/json") -> Handler:
    async def handle(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, content_type=content_type)

    return handle


async def oversized(request: web.Request) -> web.StreamResponse:
    """Two MiB of a JSON string, chunked (no Content-Length to refuse it by)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b'{"phase": "healthy", "reason": "')
    with contextlib.suppress(ConnectionError):
        for _ in range(32):
            await response.write(b"x" * 65536)
        await response.write(b'"}')
    return response


async def dripping(request: web.Request) -> web.StreamResponse:
    """Headers at once, then one byte every 0.1 s: each read is quick, the whole never ends in time."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        for _ in range(DRIP_LIMIT):
            await response.write(b" ")
            await asyncio.sleep(0.1)
    return response


async def redirect(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"http://{HOST}:{closed_port()}/healthz")


@contextlib.asynccontextmanager
async def gateway(ca: LabCa, routes: Mapping[str, Handler]) -> AsyncIterator[int]:
    """A TLS server for ``*.DOMAIN`` on 127.0.0.1 answering each ``<app id>-9090.DOMAIN`` with its handler
    (404 for any other name); yields its port."""

    async def route(request: web.Request) -> web.StreamResponse:
        handler = routes.get(request.host.split(".", 1)[0])
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request)

    app = web.Application()
    app.router.add_get("/healthz", route)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(ca.cert, ca.key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=tls)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def host_label(member: MemberRecord) -> str:
    return f"{member.app_id.hex}-9090"


async def three_members(
    conn: ChainConnection, chain: Chain, kms: DevnetKms, stack: Deployment
) -> list[MemberRecord]:
    for _ in range(3):
        await chain.member()
    cluster = ClusterClient(conn, stack.cluster)
    await commit_csk(conn, kms, cluster, COMMITMENT)
    return await cluster.members()


def gateway_args(ca: LabCa, port: int) -> tuple[str, ...]:
    return (
        "--gateway-domain", DOMAIN, "--ca-file", str(ca.ca_cert), "--connect-to", f"{HOST}:{port}",
        "--health-timeout", "2",
    )  # fmt: skip


async def test_a_healthy_cluster_exits_0_with_its_table_and_json(
    anvil: AnvilProcess, stack: Deployment, conn: ChainConnection, chain: Chain, kms: DevnetKms, ca: LabCa
) -> None:
    members = await three_members(conn, chain, kms, stack)
    digest = str(membership_digest(m.member_id for m in members))
    routes = {host_label(m): answer_json(healthy_body(m, digest)) for m in members}
    async with gateway(ca, routes) as port:
        args = ("cluster", "status", *chain_args(anvil, stack), *gateway_args(ca, port))
        table, as_json = await asyncio.gather(run_cli(*args), run_cli(*args, "--json"))

    assert table.returncode == 0, table.stdout + table.stderr
    lines = table.stdout.splitlines()
    assert (
        lines[0].startswith(f"chain {CHAIN_ID}  block ") and f"cluster {stack.cluster}  members 3" in lines[0]
    )
    assert lines[1] == f"membership digest {digest}  csk epoch 1 commitment {COMMITMENT}"
    header = next(line for line in lines if line.startswith("member "))
    for column in ("app id", "phase", "reason", "live peers", "transport", "membership digest",
                   "csk commitment", "version", "signer balance"):  # fmt: skip
        assert column in header
    for m in members:
        row = next(line for line in lines if str(m.app_id) in line)
        assert row.startswith(str(m.member_id)[:12] + "…")
        for cell in ("healthy", "2/2", "gateway down=0,up=2", "0.1.0", " ETH"):
            assert cell in row, (cell, row)
        assert re.search(r"agrees +agrees", row), row  # the membership digest, the CSK commitment
    assert (
        lines[-1]
        == f"cluster {stack.cluster} at block {lines[0].split()[3]}: OK: all 3 members healthy and agreeing"
        " with the chain"
    )

    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["schema"] == SCHEMA and doc["ok"] is True and doc["failing"] == []
    assert doc["chain"]["membership_digest"] == digest and doc["chain"]["csk_commitment"] == str(COMMITMENT)
    assert [m["member_id"] for m in doc["members"]] == [str(m.member_id) for m in members]
    for entry, m in zip(doc["members"], members, strict=True):
        assert entry["health_url"] == f"https://{m.app_id.hex}-9090.{DOMAIN}/healthz"
        assert entry["signer"] == str(m.signer) and entry["signer_balance_wei"] > 0
        assert entry["membership_digest_agrees"] == entry["csk_commitment_agrees"] == "chain"
        assert f"{format_eth(entry['signer_balance_wei'] // 10**14 * 10**14)} ETH" in table.stdout


async def test_hostile_or_malformed_answers_are_each_that_member_s_failure(
    anvil: AnvilProcess, stack: Deployment, conn: ChainConnection, chain: Chain, kms: DevnetKms, ca: LabCa
) -> None:
    members = await three_members(conn, chain, kms, stack)
    digest = str(membership_digest(m.member_id for m in members))
    one, two, three = members
    wrong_types = {"phase": "healthy", "healthy": "yes", "reason": None}
    escapes = healthy_body(
        two, digest, phase="csk_acquire", healthy=False, reason="\x1b[2J\x1b]0;pwned\x07 no peer"
    )
    cases: list[dict[str, Handler]] = [
        {  # not JSON, over the body cap, never finishing in time
            host_label(one): answer_raw(b"<html>gateway error</html>", 502, "text/html"),
            host_label(two): oversized,
            host_label(three): dripping,
        },
        {  # nesting past the stack, wrong types, an unhealthy node whose reason carries terminal escapes
            host_label(one): answer_raw(b"[" * 200_000),
            host_label(two): answer_json(escapes, 503),
            host_label(three): answer_json(wrong_types),
        },
        {  # a redirect elsewhere (not followed), a disagreeing digest, a disagreeing commitment
            host_label(one): redirect,
            host_label(two): answer_json(healthy_body(two, "0x" + "d2" * 32)),
            host_label(three): answer_json(healthy_body(three, digest, csk={"commitment": "0x" + "ee" * 32})),
        },
    ]
    async with contextlib.AsyncExitStack() as servers:
        ports = [await servers.enter_async_context(gateway(ca, routes)) for routes in cases]
        base = ("cluster", "status", *chain_args(anvil, stack))
        runs = await asyncio.gather(*(run_cli(*base, *gateway_args(ca, port)) for port in ports))
        as_json = await run_cli(*base, *gateway_args(ca, ports[0]), "--json")

    expected = [
        ("not a health document: HTTP 502, the body is not JSON", "not a health document: the body is over",
         "did not answer within 2 s"),
        ("not a health document: HTTP 200, the body is not JSON",
         "not healthy (phase csk_acquire, HTTP 503): ?[2J?]0;pwned? no peer",
         "not a health document: HTTP 200, healthy is not true or false"),
        ("not a health document: HTTP 302, the body is not JSON",
         "membership digest differs from the chain's",
         "CSK commitment differs from the chain's"),
    ]  # fmt: skip
    for run, whys in zip(runs, expected, strict=True):
        out = run.stdout
        assert run.returncode == 1, out + run.stderr
        assert "Traceback" not in out + run.stderr and "\x1b" not in out and "\x07" not in out
        summary = out.splitlines()[-1]
        assert (
            summary.startswith(f"cluster {stack.cluster} at block ")
            and ": FAILING: 3 of 3 members: " in summary
        )
        for m, why in zip(members, whys, strict=True):
            assert f"app {m.app_id} (member {str(m.member_id)[:12]}…): {why}" in summary, (why, summary)
            assert any(
                line.startswith(str(m.member_id)[:12]) and str(m.app_id) in line for line in out.splitlines()
            )
    digest_row = next(line for line in runs[2].stdout.splitlines() if str(two.app_id) in line)
    assert re.search(r"DIFFERS +agrees", digest_row), digest_row  # the digest differs; the commitment agrees
    commitment_row = next(line for line in runs[2].stdout.splitlines() if str(three.app_id) in line)
    assert re.search(r"agrees +DIFFERS", commitment_row), commitment_row

    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False and doc["failing"] == [str(m.member_id) for m in members]
    assert [m["error"] for m in doc["members"]][2] == "did not answer within 2 s"


async def test_chain_and_usage_failures(
    anvil: AnvilProcess, stack: Deployment, ca: LabCa, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://user:secret@{HOST}:{closed_port()}/v2/k3y0f7h3pr0v1d3r"
    gw = ("--gateway-domain", DOMAIN, "--ca-file", str(ca.ca_cert))
    no_chain = await run_cli(
        "cluster", "status", "--rpc-url", url, "--chain-id", "1", "--cluster", str(stack.cluster), *gw
    )
    assert no_chain.returncode == 1 and no_chain.stdout == ""
    assert "cannot read the chain at http://127.0.0.1:" in no_chain.stderr
    assert "secret" not in no_chain.stderr and "k3y0f7h3pr0v1d3r" not in no_chain.stderr
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("not a certificate\n")
    bad_ca = await run_cli("cluster", "status", *chain_args(anvil, stack), "--gateway-domain", DOMAIN,
                           "--ca-file", str(not_pem))  # fmt: skip
    assert bad_ca.returncode == 2 and "cannot load it as PEM CA certificates" in bad_ca.stderr
    base = ("cluster", "status", *chain_args(anvil, stack))
    assert "not a DNS domain" in usage_error(capsys, (*base, "--gateway-domain", "not a domain"))
    assert "--gateway-domain" in usage_error(capsys, base)  # required unless ATTESTMESH_GATEWAY_DOMAIN is set
    assert "is not a file" in usage_error(capsys, (*base, *gw[:2], "--ca-file", str(tmp_path / "missing")))
    assert "ADDRESS or ADDRESS:PORT" in usage_error(capsys, (*base, *gw, "--connect-to", "a b"))
    assert "greater than 0" in usage_error(capsys, (*base, *gw, "--health-timeout", "0"))
