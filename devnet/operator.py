"""Operator actions against a live chain and live services, shared by the CLI and the devnet.

Owns: reading an indexer's public identity from its ``/status`` (the public key is read there, never scraped
from logs) and its health, ``check_indexer`` (healthy, and the registry naming what ``/status`` says; reads
only), and ``ensure_indexer_registered``: write ``IndexerRegistry.setIndexer(endpoint, code id, public
key)`` only when the on-chain record differs (idempotent: a second run sends nothing and says so); and the
owner key's loading from the environment (``ATTESTMESH_OWNER_KEY``: never a command-line argument, never
echoed); the day-2 owner actions the deploy routines call, each a no-op when the chain already says what
it should: ``ensure_compose_hash_allowed`` (``Cluster.addComposeHash`` only when the hash is not on the
allowlist: "allowlist first") and ``ensure_funded`` (send ETH to an account only while its balance is below
a floor; the funding key is ``ATTESTMESH_FUNDER_KEY``, or the owner key when that is not set) and
``ensure_member_app`` (a node's app contract from the CREATE2 factory and its pre-approved app id, each
sent only when missing: the cold-start rule, before the node's first boot).
Must not: hold a key beyond the call, print or log key material, or talk to anything but the URLs it is
given.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import structlog

from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient, MemberAppFactoryClient
from sidecar.chain.errors import ChainError
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.model import IndexerRecord

log = structlog.get_logger("attestmesh.operator")

OWNER_KEY_VARIABLE: Final = "ATTESTMESH_OWNER_KEY"
FUNDER_KEY_VARIABLE: Final = "ATTESTMESH_FUNDER_KEY"
STATUS_TIMEOUT: Final = 3.0
WEI_PER_ETH: Final = 10**18


class OperatorError(RuntimeError):
    """An operator action could not be done; the message says why (never with key material)."""


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


def key_signer(env: Mapping[str, str], variable: str) -> LocalSigner:
    """A signer from the environment variable ``variable`` (0x-prefixed 32-byte hex); errors never show it."""
    text = env.get(variable, "").strip()
    if not text:
        raise OperatorError(f"{variable} is not set (the key is read from the environment)")
    try:
        raw = bytes.fromhex(text.removeprefix("0x").removeprefix("0X"))
    except ValueError:
        raise OperatorError(f"{variable} is not hex") from None
    if len(raw) != 32:
        raise OperatorError(f"{variable} must be 32 bytes of hex")
    try:
        return LocalSigner(SecretBytes(raw))
    except ValueError:
        raise OperatorError(f"{variable} is not a valid secp256k1 private key") from None


def owner_signer(env: Mapping[str, str]) -> LocalSigner:
    """The cluster/registry owner's signer from ``ATTESTMESH_OWNER_KEY`` (0x-prefixed 32-byte hex)."""
    return key_signer(env, OWNER_KEY_VARIABLE)


def funder_signer(env: Mapping[str, str]) -> tuple[LocalSigner, str]:
    """The account that pays for ``chain fund`` and the variable it came from: ``ATTESTMESH_FUNDER_KEY`` when
    set (a hot wallet that owns nothing), else ``ATTESTMESH_OWNER_KEY``."""
    variable = FUNDER_KEY_VARIABLE if env.get(FUNDER_KEY_VARIABLE, "").strip() else OWNER_KEY_VARIABLE
    return key_signer(env, variable), variable


def parse_eth(text: str) -> int:
    """An amount of ETH written as a decimal (``10``, ``0.5``, ``1e-3``) in wei; at most 18 decimals."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError("is not a decimal amount of ETH") from None
    if not value.is_finite() or value < 0:
        raise ValueError("must be a finite amount of ETH, 0 or more")
    wei = value * WEI_PER_ETH
    if wei != wei.to_integral_value():
        raise ValueError("has more than 18 decimals (finer than 1 wei)")
    return int(wei)


def format_eth(wei: int) -> str:
    """Wei as ETH, exact, without trailing zeros (``10``, ``0.5``, ``0.000000000000000001``)."""
    whole, frac = divmod(wei, WEI_PER_ETH)
    return f"{whole}.{frac:018d}".rstrip("0").rstrip(".")


async def require_contract(conn: ChainConnection, address: Address, what: str) -> None:
    """Raise ``OperatorError`` unless ``address`` holds code (a typo'd address is an empty account)."""
    if not await conn.get_code(address):
        raise OperatorError(f"no contract at the {what} address {address} on chain {await conn.chain_id()}")


def fetch_indexer_identity(status_url: str, timeout: float = STATUS_TIMEOUT) -> IndexerIdentity:
    """GET the indexer's ``/status`` and return its public key, code id and endpoint."""
    try:
        with urllib.request.urlopen(status_url, timeout=timeout) as response:  # noqa: S310 - operator URL
            body = response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        raise OperatorError(f"{status_url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise OperatorError(f"{status_url} did not answer: {exc}") from None
    try:
        data = json.loads(body)
        key = data["public_key"]
    except (ValueError, KeyError, TypeError):
        raise OperatorError(f"{status_url} did not return an indexer status document") from None
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


def http_get(url: str, timeout: float, limit: int = 1 << 20) -> tuple[int, bytes]:
    """GET ``url``: the status and (at most ``limit`` bytes of) the body, 2xx or not (a 503 carries one)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - operator URL
            return int(response.status), response.read(limit)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(limit)


def fetch_indexer_health(health_url: str, timeout: float = STATUS_TIMEOUT) -> tuple[bool, str]:
    """GET the indexer's ``/healthz``: whether it is healthy (200 and ``healthy: true``) and, when it is
    not, why (its answer, or that it did not answer)."""
    try:
        status, body = http_get(health_url, timeout)
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{health_url} did not answer: {exc}"
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
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


# --- day-2 owner actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComposeAllowlisting:
    """The outcome of ``ensure_compose_hash_allowed``: whether we sent ``addComposeHash``."""

    compose_hash: Bytes32
    changed: bool
    tx_hash: Bytes32 | None = None


async def ensure_compose_hash_allowed(
    conn: ChainConnection, owner: TxSubmitter, cluster: Address, compose_hash: Bytes32
) -> ComposeAllowlisting:
    """Put ``compose_hash`` on the cluster's allowlist; send nothing when it is already there.

    Raises ``OperatorError`` when ``cluster`` holds no contract or ``owner`` is not its owner (checked before
    anything is sent), ``ChainError`` when a read or the transaction fails.
    """
    await require_contract(conn, cluster, "cluster")
    client = ClusterClient(conn, cluster, owner)
    if await client.allowed_compose_hash(compose_hash):
        log.info("cluster.compose_hash_unchanged", cluster=str(cluster), compose_hash=str(compose_hash))
        return ComposeAllowlisting(compose_hash, changed=False)
    actual = await client.owner()
    if actual != owner.address:
        raise OperatorError(f"{owner.address} is not the owner of cluster {cluster} (the owner is {actual})")
    receipt = await client.add_compose_hash(compose_hash)
    log.info(
        "cluster.compose_hash_allowed",
        cluster=str(cluster),
        compose_hash=str(compose_hash),
        tx=str(receipt.tx_hash),
        block=receipt.block_number,
    )
    return ComposeAllowlisting(compose_hash, changed=True, tx_hash=receipt.tx_hash)


@dataclass(frozen=True, slots=True)
class Funding:
    """The outcome of ``ensure_funded``: the balance before and after, and the transfer if one was sent."""

    account: Address
    funder: Address
    balance_before: int
    balance_after: int
    sent: int  # wei; 0 when nothing was sent
    tx_hash: Bytes32 | None = None

    @property
    def changed(self) -> bool:
        return self.tx_hash is not None


async def ensure_funded(
    conn: ChainConnection, funder: TxSubmitter, account: Address, *, min_balance: int, amount: int
) -> Funding:
    """Send ``amount`` wei to ``account`` only while its balance is below ``min_balance`` (idempotent).

    Raises ``OperatorError`` on amounts that cannot make sense, ``ChainError`` (``InsufficientFunds``
    among them) when a read or the transfer fails.
    """
    if amount <= 0:
        raise OperatorError("the amount to send must be more than 0")
    if min_balance < 0:
        raise OperatorError("the minimum balance cannot be negative")
    before = await conn.get_balance(account)
    if before >= min_balance:
        log.info("account.funding_unchanged", account=str(account), balance=before, min_balance=min_balance)
        return Funding(account, funder.address, before, before, 0)
    receipt = await funder.send(account, b"", value=amount)
    after = await conn.get_balance(account)
    log.info(
        "account.funded",
        account=str(account),
        funder=str(funder.address),
        value=amount,
        balance=after,
        tx=str(receipt.tx_hash),
        block=receipt.block_number,
    )
    return Funding(account, funder.address, before, after, amount, receipt.tx_hash)


@dataclass(frozen=True, slots=True)
class MemberAppSetup:
    """The outcome of ``ensure_member_app``: the node's app id and the transactions it took (if any)."""

    name: str
    app_id: Address
    member_id: MemberId | None
    deploy_tx: Bytes32 | None = None
    approve_tx: Bytes32 | None = None

    @property
    def changed(self) -> bool:
        return self.deploy_tx is not None or self.approve_tx is not None


async def ensure_member_app(
    conn: ChainConnection, owner: TxSubmitter, factory: Address, cluster: Address, name: str
) -> MemberAppSetup:
    """Make node ``name``'s app contract exist and its app id pre-approved on ``cluster`` (idempotent).

    The app is the factory's CREATE2 address for ``(cluster, name)``: deployed only when it has no code yet.
    Its app id is added to ``allowedAppIds`` only when it is neither there nor already a member (a
    registered node needs no pre-approval). The owner is checked before the approval is sent.
    """
    await require_contract(conn, factory, "member app factory")
    await require_contract(conn, cluster, "cluster")
    apps = MemberAppFactoryClient(conn, factory, owner)
    app_id, deployed = await apps.ensure_deployed(cluster, name)
    client = ClusterClient(conn, cluster, owner)
    member_id = await client.member_id_of(app_id)
    approve_tx: Bytes32 | None = None
    if member_id is None and not await client.allowed_app_id(app_id):
        actual = await client.owner()
        if actual != owner.address:
            raise OperatorError(
                f"{owner.address} is not the owner of cluster {cluster} (the owner is {actual})"
            )
        approve_tx = (await client.add_allowed_app_id(app_id)).tx_hash
    result = MemberAppSetup(
        name, app_id, member_id, deploy_tx=deployed.tx_hash if deployed else None, approve_tx=approve_tx
    )
    log.info(
        "cluster.member_app_ready" if result.changed else "cluster.member_app_unchanged",
        cluster=str(cluster),
        node=name,
        app_id=str(app_id),
        member_id=str(member_id) if member_id else None,
        deploy_tx=str(result.deploy_tx) if result.deploy_tx else None,
        approve_tx=str(approve_tx) if approve_tx else None,
    )
    return result
