"""Read-only operator views of a live cluster, shared by the CLI, scripts and tests.

Owns: ``read_chain_status`` (one consistent read, at one block, of what the chain says about a cluster:
members with mesh IPs and endpoints, CSK commitment, owner, mesh CIDR, ``IndexerRegistry.current()`` and
whether given compose hashes are allowlisted) and its JSON form; ``fetch_health`` (GET a node's
``/healthz``, 200 and 503 alike, and check that the answer is a health document); and the redaction of
URLs in anything shown to an operator (``display_url``, ``scrub``): an RPC URL can carry an API key in its
user info, path or query, so only its scheme, host and port are ever shown.

Must not: write to the chain or hold a key, retry, print (the CLI renders these values), or talk to
anything but the URLs it is given.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from devnet.operator import OperatorError, http_get, require_contract
from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import IndexerRecord, MemberRecord, MeshCidr

HEALTH_TIMEOUT: Final = 5.0
MAX_HEALTH_BODY: Final = 1 << 20
REDACTED: Final = "<redacted>"
_MIN_SECRET_LEN: Final = 6  # shorter path or user-name fragments are not worth hiding (and are common words)


# --- redaction -----------------------------------------------------------------------------------------


def display_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what may be shown of a URL that can carry credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.hostname:
        return REDACTED
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def scrub(text: str, url: str, *, path_is_secret: bool = True) -> str:
    """``text`` with every part of ``url`` that may be a credential replaced: user info, query, fragment and
    (unless ``path_is_secret`` is False: a node's ``/healthz`` path is not) the path, where providers such as
    ``/v2/<api key>`` put their keys."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text.replace(url, REDACTED) if url else text
    secrets = [url, url.rstrip("/")]
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        secrets += [userinfo, parts.password or "", parts.username or ""]
    secrets += [parts.query, parts.fragment, *(value for _, value in parse_qsl(parts.query))]
    if path_is_secret:
        secrets += [parts.path.strip("/"), *parts.path.split("/")]
    secrets += [unquote(s) for s in secrets]  # a library may show the decoded form
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    if at and parts.password:  # even a short password is never shown
        for password in (parts.password, unquote(parts.password)):
            text = text.replace(password, REDACTED)
    return text


# --- chain status --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComposeHashCheck:
    """Whether one compose hash is on the cluster's allowlist."""

    compose_hash: Bytes32
    allowlisted: bool


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """What the chain says about one cluster, every value read at block ``block``."""

    chain_id: int
    block: int
    block_timestamp: int
    cluster: Address
    owner: Address
    mesh_cidr: MeshCidr
    member_count: int
    members: tuple[MemberRecord, ...]  # registration order; index 0 is the CSK originator
    originator: MemberId | None
    csk_commitment: Bytes32 | None
    registry: Address | None
    indexer: IndexerRecord | None  # None when no registry was given
    compose_hashes: tuple[ComposeHashCheck, ...]

    def to_json(self) -> dict[str, object]:
        """Full values, machine-readable (addresses EIP-55, 32-byte values ``0x`` hex, times unix seconds)."""
        indexer: dict[str, object] | None = None
        if self.registry is not None and self.indexer is not None:
            i = self.indexer
            indexer = {
                "address": str(self.registry),
                "registered": i.registered,
                "endpoint": i.endpoint or None,
                "code_id": str(i.code_id) if i.registered else None,
                "pub_key": str(i.pub_key) if i.registered else None,
                "updated_at": i.updated_at if i.registered else None,
            }
        return {
            "chain_id": self.chain_id,
            "block": self.block,
            "block_timestamp": self.block_timestamp,
            "cluster": {
                "address": str(self.cluster),
                "owner": str(self.owner),
                "mesh_cidr": str(self.mesh_cidr),
                "member_count": self.member_count,
                "originator": None if self.originator is None else str(self.originator),
                "csk_commitment": None if self.csk_commitment is None else str(self.csk_commitment),
            },
            "members": [member_json(m) for m in self.members],
            "indexer_registry": indexer,
            "compose_hashes": [
                {"compose_hash": str(c.compose_hash), "allowlisted": c.allowlisted}
                for c in self.compose_hashes
            ],
        }


def member_json(member: MemberRecord) -> dict[str, object]:
    return {
        "member_id": str(member.member_id),
        "app_id": str(member.app_id),
        "signer": str(member.signer),
        "mesh_ip": str(member.mesh_ip),
        "endpoint": member.endpoint,
        "wg_pub": str(member.wg_pub),
        "seal_pub": str(member.seal_pub),
        "identity_pub": str(member.identity_pub),
        "registered_at": member.registered_at,
    }


def utc_time(timestamp: int) -> str:
    """A block timestamp as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def read_chain_status(
    conn: ChainConnection,
    cluster: Address,
    *,
    registry: Address | None = None,
    compose_hashes: Sequence[Bytes32] = (),
) -> ChainStatus:
    """Read the cluster (and the registry, when given) at the current head, all at that one block.

    Raises ``OperatorError`` when an address holds no contract, ``ChainError`` when a read fails.
    """
    head = await conn.block_header("latest")
    await require_contract(conn, cluster, "cluster")
    if registry is not None:
        await require_contract(conn, registry, "indexer registry")
    at = head.number
    client = ClusterClient(conn, cluster)
    members = await client.members(block=at)
    checks = [
        ComposeHashCheck(h, await client.allowed_compose_hash(h, block=at))
        for h in dict.fromkeys(compose_hashes)  # each once, in the order given
    ]
    indexer = await IndexerRegistryClient(conn, registry).current(block=at) if registry is not None else None
    return ChainStatus(
        chain_id=await conn.chain_id(),
        block=at,
        block_timestamp=head.timestamp,
        cluster=cluster,
        owner=await client.owner(block=at),
        mesh_cidr=await client.mesh_cidr(block=at),
        member_count=await client.member_count(block=at),
        members=tuple(members),
        originator=await client.originator(block=at),
        csk_commitment=await client.csk_commitment(block=at),
        registry=registry,
        indexer=indexer,
        compose_hashes=tuple(checks),
    )


# --- health --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A node's answer on ``/healthz``: the HTTP status, the raw body and the decoded document."""

    url: str  # as shown (``display_url`` plus the path), never with credentials
    status: int
    text: str
    body: Mapping[str, Any]

    @property
    def healthy(self) -> bool:
        """Healthy iff the node answered 200 and its document says so (the two never disagree honestly)."""
        return self.status == 200 and self.body.get("healthy") is True


def _is_health_document(data: object) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("phase"), str)
        and isinstance(data.get("healthy"), bool)
        and "reason" in data
    )


def fetch_health(url: str, timeout: float = HEALTH_TIMEOUT) -> HealthReport:
    """GET ``url`` (a node's ``/healthz``) and return its health document, healthy (200) or not (503).

    Raises ``OperatorError`` when nothing answers, or the answer is not a health document.
    """
    shown = display_url(url) + urlsplit(url).path  # no user info, no query
    try:
        status, raw = http_get(url, timeout, MAX_HEALTH_BODY)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        why = scrub(str(reason), url, path_is_secret=False)
        raise OperatorError(f"{shown} did not answer: {why}") from None
    try:
        text = raw.decode()
        data = json.loads(text)
    except ValueError:
        data = None
    if not _is_health_document(data):
        path = urlsplit(url).path.rstrip("/")
        hint = "" if path.endswith(("/healthz", "/v1/status")) else " (is the path /healthz?)"
        raise OperatorError(f"{shown} answered HTTP {status} but not a health document{hint}")
    assert isinstance(data, dict)
    return HealthReport(url=shown, status=status, text=text, body=data)
