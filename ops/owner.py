"""The cluster owner's day-2 actions on a live chain, and the keys that sign them.

Owns the keys' loading from the environment (``ATTESTMESH_OWNER_KEY``, ``ATTESTMESH_FUNDER_KEY``: never a
command-line argument, never echoed) and the actions the deploy routines call, each a no-op when the chain
already says what it should: ``ensure_compose_hash_allowed`` (``Cluster.addComposeHash`` only when the hash
is not on the allowlist: "allowlist first"), ``ensure_compose_hash_removed`` (``Cluster.removeComposeHash``
only while the hash is on it: retiring the compose a roll replaced), ``ensure_funded`` (send ETH to an
account only while its balance is below a floor; the funding key is ``ATTESTMESH_FUNDER_KEY``, or the owner
key when that is not set) and ``ensure_member_app`` (a node's app contract from the CREATE2 factory and its
pre-approved app id, each sent only when missing: the cold-start rule, before the node's first boot).
Must not: hold a key beyond the call, print or log key material, or talk to anything but the RPC URL it is
given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import structlog

from ops.errors import OperatorError
from sidecar.chain.contracts import ClusterClient, MemberAppFactoryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes

log = structlog.get_logger("attestmesh.operator")

OWNER_KEY_VARIABLE: Final = "ATTESTMESH_OWNER_KEY"
FUNDER_KEY_VARIABLE: Final = "ATTESTMESH_FUNDER_KEY"


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


async def require_contract(conn: ChainConnection, address: Address, what: str) -> None:
    """Raise ``OperatorError`` unless ``address`` holds code (a typo'd address is an empty account)."""
    if not await conn.get_code(address):
        raise OperatorError(f"no contract at the {what} address {address} on chain {await conn.chain_id()}")


# --- day-2 owner actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComposeAllowlisting:
    """The outcome of ``ensure_compose_hash_allowed``/``_removed``: whether we sent the transaction."""

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
    return await _ensure_compose_hash(conn, owner, cluster, compose_hash, allowed=True)


async def ensure_compose_hash_removed(
    conn: ChainConnection, owner: TxSubmitter, cluster: Address, compose_hash: Bytes32
) -> ComposeAllowlisting:
    """Take ``compose_hash`` off the cluster's allowlist; send nothing when it is not there.

    A node running that compose drops to ``boot_gate`` on its next pass and a CVM booting it is refused
    keys: call this only once no node runs it. Raises as ``ensure_compose_hash_allowed`` does.
    """
    return await _ensure_compose_hash(conn, owner, cluster, compose_hash, allowed=False)


async def _ensure_compose_hash(
    conn: ChainConnection, owner: TxSubmitter, cluster: Address, compose_hash: Bytes32, *, allowed: bool
) -> ComposeAllowlisting:
    """Make the allowlist hold ``compose_hash`` (``allowed``) or not, with one transaction at most."""
    await require_contract(conn, cluster, "cluster")
    client = ClusterClient(conn, cluster, owner)
    if await client.allowed_compose_hash(compose_hash) == allowed:
        log.info("cluster.compose_hash_unchanged", cluster=str(cluster), compose_hash=str(compose_hash))
        return ComposeAllowlisting(compose_hash, changed=False)
    actual = await client.owner()
    if actual != owner.address:
        raise OperatorError(f"{owner.address} is not the owner of cluster {cluster} (the owner is {actual})")
    if allowed:
        receipt = await client.add_compose_hash(compose_hash)
    else:
        receipt = await client.remove_compose_hash(compose_hash)
    log.info(
        "cluster.compose_hash_allowed" if allowed else "cluster.compose_hash_removed",
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
    registered node needs no pre-approval). The owner is checked before the approval is sent, and the factory
    before anything: the cluster approves only member apps of the factory it was deployed with.
    """
    await require_contract(conn, factory, "member app factory")
    await require_contract(conn, cluster, "cluster")
    client = ClusterClient(conn, cluster, owner)
    expected = await client.member_app_factory()
    if factory != expected:
        raise OperatorError(
            f"cluster {cluster} approves only member apps of factory {expected}, not of {factory}"
        )
    apps = MemberAppFactoryClient(conn, factory, owner)
    app_id, deployed = await apps.ensure_deployed(cluster, name)
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


@dataclass(frozen=True, slots=True)
class CskRotation:
    """The outcome of ``rotate_csk`` (``changed``: a transaction was sent) or of ``ensure_rotate_on_remove``:
    the epoch before and after, and the rotate-on-remove option as it now stands."""

    epoch_before: int
    epoch: int
    rotate_on_remove: bool
    changed: bool
    tx_hash: Bytes32 | None = None


async def _owned_cluster(conn: ChainConnection, owner: TxSubmitter, cluster: Address) -> ClusterClient:
    await require_contract(conn, cluster, "cluster")
    client = ClusterClient(conn, cluster, owner)
    actual = await client.owner()
    if actual != owner.address:
        raise OperatorError(f"{owner.address} is not the owner of cluster {cluster} (the owner is {actual})")
    return client


async def rotate_csk(conn: ChainConnection, owner: TxSubmitter, cluster: Address) -> CskRotation:
    """Start the cluster's next CSK epoch (``Cluster.rotateCsk``): its originator derives and commits the
    new key, every member acquires it, the evicted are refused it. Always sends (each call is one epoch)."""
    client = await _owned_cluster(conn, owner, cluster)
    before = await client.csk_epoch()
    receipt = await client.rotate_csk()
    epoch = await client.csk_epoch(block=receipt.block_number)
    log.info(
        "cluster.csk_rotated", cluster=str(cluster), epoch_before=before, epoch=epoch, tx=str(receipt.tx_hash)
    )
    on_remove = await client.rotate_csk_on_remove()
    return CskRotation(before, epoch, on_remove, changed=True, tx_hash=receipt.tx_hash)


async def ensure_rotate_on_remove(
    conn: ChainConnection, owner: TxSubmitter, cluster: Address, rotate: bool
) -> CskRotation:
    """Set whether every ``removeMember`` also rotates the CSK (``Cluster.setRotateCskOnRemove``); send
    nothing when it already says so."""
    client = await _owned_cluster(conn, owner, cluster)
    epoch = await client.csk_epoch()
    if await client.rotate_csk_on_remove() == rotate:
        return CskRotation(epoch, epoch, rotate, changed=False)
    receipt = await client.set_rotate_csk_on_remove(rotate)
    log.info("cluster.rotate_on_remove_set", cluster=str(cluster), rotate=rotate, tx=str(receipt.tx_hash))
    return CskRotation(epoch, epoch, rotate, changed=True, tx_hash=receipt.tx_hash)
