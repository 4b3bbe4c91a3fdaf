"""Reads for ``attestmesh cluster status``: the members from the chain, every member's ``/healthz`` through
the gateway, concurrently.

Owns ``GatewayAccess`` (the gateway's domain, the extra CA, the address to connect to instead of resolving
a name: the devnet's root namespace has no resolver for the lab's domain, as ``curl --connect-to``),
``member_health_url`` (``https://<app id>-<port>.<domain>/healthz``, dstack's gateway naming),
``fetch_answers`` (one GET per member with a total deadline each, a body cap, no redirects; every failure,
hostile or not, becomes that member's ``NodeAnswer`` error, never an exception) and ``read_cluster`` (one
chain read at one block, the signers' balances and the answers, held together by ``ops.clusterview``).
Must not: retry, write to the chain, hold a key, print, or connect anywhere but the chain connection it is
given and the gateway (the ``connect_to`` address, or what the domain's names resolve to).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ops.chainstatus import read_chain_status
from ops.clusterview import (
    ChainFacts,
    ChainMember,
    ClusterView,
    NodeAnswer,
    NotAHealthDocument,
    assess,
    clean,
    read_health_document,
)
from ops.jsonget import MAX_BODY
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.core.digest import membership_digest
from sidecar.core.ids import Address

HEALTH_PORT: Final = 9090  # the sidecar's default ATTESTMESH_HEALTH_PORT
HEALTH_TIMEOUT: Final = 5.0
CONCURRENCY: Final = 32  # requests in flight at once (a 1000-member cluster is read 32 at a time)
_CHUNK: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class GatewayAccess:
    """How the members' ``/healthz`` are reached: through the gateway that serves ``domain``."""

    domain: str
    ca_file: str | None = None
    connect_to: tuple[str, int | None] | None = None  # (address, port or None: the URL's)
    port: int = HEALTH_PORT  # the sidecar's health port, as the gateway names it
    timeout: float = HEALTH_TIMEOUT  # the whole of one request: connect, TLS, headers and body

    def tls(self) -> ssl.SSLContext:
        """The system roots plus ``ca_file``; ``OSError``/``ssl.SSLError`` when it cannot be loaded."""
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        return context


def member_health_url(app_id: Address, access: GatewayAccess) -> str:
    """A member's ``/healthz`` through the gateway: ``https://<app id hex>-<port>.<domain>/healthz``."""
    return f"https://{app_id.hex}-{access.port}.{access.domain}/healthz"


class _ConnectTo(AbstractResolver):
    """Every name resolves to one address (and port): the gateway's, as ``curl --connect-to`` does. The URL's
    host still names the server: SNI, the certificate check and the Host header."""

    def __init__(self, address: str, port: int | None) -> None:
        self._address, self._port = address, port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        family = socket.AF_INET6 if ":" in self._address else socket.AF_INET
        return [
            ResolveResult(
                hostname=host, host=self._address, port=self._port or port, family=family, proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]  # fmt: skip

    async def close(self) -> None:
        return None


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > limit:
        raise NotAHealthDocument(f"the body is over {limit} bytes")
    body = bytearray()
    while chunk := await response.content.read(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise NotAHealthDocument(f"the body is over {limit} bytes")
    return bytes(body)


async def _get_one(http: aiohttp.ClientSession, url: str, within: float, limit: int) -> NodeAnswer:
    try:
        async with asyncio.timeout(within):
            async with http.get(
                url, allow_redirects=False, headers={"Accept": "application/json"}
            ) as response:
                return _document(response.status, await _read_capped(response, limit))
    except TimeoutError:
        return NodeAnswer(error=f"did not answer within {within:g} s")
    except NotAHealthDocument as exc:
        return NodeAnswer(error=f"not a health document: {exc}")
    except aiohttp.ClientResponseError as exc:  # a malformed HTTP answer (bad status line, huge header)
        return NodeAnswer(error=f"did not answer with HTTP: {clean(exc.message, 120)}")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return NodeAnswer(error=f"did not answer: {clean(str(exc) or type(exc).__name__, 160)}")


def _document(status: int, raw: bytes) -> NodeAnswer:
    """The answer of a member that answered: its facts, or why the body is not a health document."""
    try:
        return NodeAnswer(status, read_health_document(json.loads(raw)))
    except NotAHealthDocument as exc:
        return NodeAnswer(status, error=f"not a health document: HTTP {status}, {exc}")
    except (ValueError, RecursionError):  # not JSON, bad UTF-8, a huge integer, nesting past the stack
        return NodeAnswer(status, error=f"not a health document: HTTP {status}, the body is not JSON")


async def fetch_answers(
    urls: Sequence[str], access: GatewayAccess, *, limit: int = MAX_BODY, concurrency: int = CONCURRENCY
) -> list[NodeAnswer]:
    """GET every URL concurrently (at most ``concurrency`` at once), each within ``access.timeout``; one
    ``NodeAnswer`` per URL, in order. Raises only for a CA file that cannot be loaded (a usage error)."""
    tls = access.tls()
    resolver = _ConnectTo(*access.connect_to) if access.connect_to is not None else None
    connector = aiohttp.TCPConnector(ssl=tls, resolver=resolver, limit=concurrency, force_close=True)
    gate = asyncio.Semaphore(concurrency)

    async def one(http: aiohttp.ClientSession, url: str) -> NodeAnswer:
        async with gate:  # the deadline starts when the request does, not while it queues
            return await _get_one(http, url, access.timeout, limit)

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        return list(await asyncio.gather(*(one(http, url) for url in urls)))


async def _balance(conn: ChainConnection, signer: Address) -> int | None:
    try:
        return await conn.get_balance(signer)
    except (ChainError, OSError, TimeoutError):  # that member's balance is "unknown", not the command's end
        return None


async def read_cluster(
    conn: ChainConnection, cluster: Address, access: GatewayAccess, *, min_balance_wei: int | None = None
) -> ClusterView:
    """The members (one chain read at one block), their signers' balances and their ``/healthz``, assessed.

    Raises ``OperatorError``/``ChainError`` when the chain cannot be read."""
    status = await read_chain_status(conn, cluster)
    records = status.members
    urls = [member_health_url(m.app_id, access) for m in records]
    balances, answers = await asyncio.gather(
        asyncio.gather(*(_balance(conn, m.signer) for m in records)), fetch_answers(urls, access)
    )
    members = [
        ChainMember(
            member_id=str(m.member_id), app_id=str(m.app_id), signer=str(m.signer), mesh_ip=str(m.mesh_ip),
            health_url=url, balance_wei=balance,
        )
        for m, url, balance in zip(records, urls, balances, strict=True)
    ]  # fmt: skip
    chain = ChainFacts(
        chain_id=status.chain_id,
        block=status.block,
        cluster=str(status.cluster),
        membership_digest=str(membership_digest(m.member_id for m in records)).lower(),
        csk_epoch=status.csk_epoch,
        csk_commitment=None if status.csk_commitment is None else str(status.csk_commitment).lower(),
        min_balance_wei=min_balance_wei,
    )
    return assess(chain, members, answers)
