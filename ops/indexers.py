"""A shared indexer as its operator sees it: its identity, its registration and its health.

Owns reading an indexer's public identity from its ``/status`` (the public key is read there, never scraped
from logs) and its health from its ``/healthz`` (both through ``ops.jsonget``), ``check_indexer`` (healthy,
and the registry naming what ``/status`` says; reads only), and ``ensure_indexer_registered``: write
``IndexerRegistry.setIndexer(endpoint, code id, public key)`` only when the on-chain record differs
(idempotent: a second run sends nothing and says so).
Must not: hold a key beyond the call, print or log key material, or talk to anything but the URLs it is
given.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import structlog

from ops.errors import OperatorError
from ops.jsonget import Unreachable, get_json
from sidecar.chain.contracts import IndexerRegistryClient
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import IndexerRecord

log = structlog.get_logger("attestmesh.operator")

STATUS_TIMEOUT: Final = 3.0


@dataclass(frozen=True, slots=True)
class IndexerIdentity:
    """What an indexer says about itself on ``/status``: the three fields the registry holds."""

    public_key: Bytes32
    code_id: Bytes32 | None
    public_url: str | None
    key_version: int | None


@dataclass(frozen=True, slots=True)
class RegistryUpdate:
    """The outcome of ``ensure_indexer_registered``: the record now on chain and whether we sent a tx."""

    record: IndexerRecord
    changed: bool
    tx_hash: Bytes32 | None = None


def fetch_indexer_identity(status_url: str, timeout: float = STATUS_TIMEOUT) -> IndexerIdentity:
    """GET the indexer's ``/status`` and return its public key, code id and endpoint."""
    try:
        answer = get_json(status_url, timeout)
    except Unreachable as exc:
        raise OperatorError(f"{status_url} did not answer: {exc}") from None
    if not answer.ok:
        raise OperatorError(f"{status_url} answered {answer.status}")
    data = answer.data
    if not isinstance(data, dict) or "public_key" not in data:
        raise OperatorError(f"{status_url} did not return an indexer status document")
    key = data["public_key"]
    if not isinstance(key, str):
        raise OperatorError(f"{status_url}: the indexer has no signing key yet (still starting?)")
    try:
        public_key = Bytes32.from_hex(key)
        code_id = Bytes32.from_hex(data["code_id"]) if isinstance(data.get("code_id"), str) else None
    except ValueError:
        raise OperatorError(f"{status_url}: public key or code id is not 32 bytes of hex") from None
    url = data.get("public_url")
    version = data.get("key_version")
    return IndexerIdentity(
        public_key=public_key,
        code_id=code_id,
        public_url=url if isinstance(url, str) and url else None,
        key_version=version if isinstance(version, int) else None,
    )


async def ensure_indexer_registered(
    conn: ChainConnection,
    owner: TxSubmitter,
    registry: Address,
    *,
    endpoint: str,
    code_id: Bytes32,
    public_key: Bytes32,
) -> RegistryUpdate:
    """Make ``IndexerRegistry.current()`` equal (endpoint, code id, key); send a tx only when it differs."""
    if not endpoint.startswith(("ws://", "wss://")):
        raise OperatorError(f"indexer endpoint must be a ws:// or wss:// URL, got {endpoint!r}")
    client = IndexerRegistryClient(conn, registry, owner)
    current = await client.current()
    if current.endpoint == endpoint and current.code_id == code_id and current.pub_key == public_key:
        log.info("indexer.registration_unchanged", endpoint=endpoint, public_key=str(public_key))
        return RegistryUpdate(current, changed=False)
    receipt = await client.set_indexer(endpoint, code_id, public_key)
    record = await client.current()
    log.info(
        "indexer.registered",
        endpoint=endpoint,
        public_key=str(public_key),
        code_id=str(code_id),
        previous_public_key=str(current.pub_key) if current.registered else None,
        tx=str(receipt.tx_hash),
        block=receipt.block_number,
    )
    return RegistryUpdate(record, changed=True, tx_hash=receipt.tx_hash)


def fetch_indexer_health(health_url: str, timeout: float = STATUS_TIMEOUT) -> tuple[bool, str]:
    """GET the indexer's ``/healthz``: whether it is healthy (200 and ``healthy: true``) and, when it is
    not, why (its answer, or that it did not answer)."""
    try:
        answer = get_json(health_url, timeout)
    except Unreachable as exc:
        return False, f"{health_url} did not answer: {exc}"
    status, data = answer.status, answer.data
    if not isinstance(data, dict):
        return False, f"{health_url} answered {status} without an indexer health document"
    if status == 200 and data.get("healthy") is True:
        return True, ""
    return False, (
        f"{health_url} answered {status}: healthy {data.get('healthy')}, ready {data.get('ready')}, "
        f"lag {data.get('lag_blocks')} blocks (at most {data.get('max_head_lag')})"
    )


def registration_problems(
    record: IndexerRecord,
    identity: IndexerIdentity,
    *,
    endpoint: str | None = None,
    code_id: Bytes32 | None = None,
) -> list[str]:
    """What differs between the registry record and the indexer: its key, and the endpoint and code id it
    reports on ``/status`` (or ``endpoint`` / ``code_id`` when given, as ``indexer register`` takes them)."""
    if not record.registered:
        return ["the registry names no indexer"]
    problems = []
    if record.pub_key != identity.public_key:
        version = "" if identity.key_version is None else f" (key v{identity.key_version})"
        problems.append(
            f"the registry names key {record.pub_key} "
            f"but the indexer signs with {identity.public_key}{version}"
        )
    want_endpoint = endpoint or identity.public_url
    if want_endpoint is None:
        problems.append("the indexer's /status has no public_url (give the endpoint)")
    elif record.endpoint != want_endpoint:
        problems.append(f"the registry names endpoint {record.endpoint} but the indexer is {want_endpoint}")
    want_code_id = code_id or identity.code_id
    if want_code_id is None:
        problems.append("the indexer's /status has no code_id (give the code id)")
    elif record.code_id != want_code_id:
        problems.append(f"the registry names code id {record.code_id} but the indexer's is {want_code_id}")
    return problems


@dataclass(frozen=True, slots=True)
class IndexerCheck:
    """One look at a running indexer: healthy, and named by the registry as its /status describes it."""

    record: IndexerRecord | None  # None: the registry could not be read
    identity: IndexerIdentity | None  # None: /status did not answer with a key
    problems: tuple[str, ...]  # empty: verified

    @property
    def ok(self) -> bool:
        return not self.problems


async def check_indexer(
    conn: ChainConnection,
    registry: Address,
    *,
    status_url: str,
    health_url: str,
    endpoint: str | None = None,
    code_id: Bytes32 | None = None,
) -> IndexerCheck:
    """Check once that the indexer's ``/healthz`` is healthy and ``IndexerRegistry.current()`` equals what its
    ``/status`` says (key, code id, endpoint); every problem found is named (reads only)."""
    problems: list[str] = []
    healthy, why = await asyncio.to_thread(fetch_indexer_health, health_url)
    if not healthy:
        problems.append(f"not healthy: {why}")
    identity: IndexerIdentity | None = None
    try:
        identity = await asyncio.to_thread(fetch_indexer_identity, status_url)
    except OperatorError as exc:
        problems.append(str(exc))
    record: IndexerRecord | None = None
    try:
        record = await IndexerRegistryClient(conn, registry).current()
    except ChainError as exc:
        problems.append(f"IndexerRegistry.current() failed: {exc}")
    if record is not None and identity is not None:
        problems += registration_problems(record, identity, endpoint=endpoint, code_id=code_id)
    return IndexerCheck(record, identity, tuple(problems))
