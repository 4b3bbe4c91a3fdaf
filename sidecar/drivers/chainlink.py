"""The node's connections to the chain: the cluster reads and writes a reconcile pass needs.

Owns ``ClusterChain`` (the port the chain and registration steps depend on, so a unit test can pass a
small fake) and ``ChainLink``, its implementation over one or more JSON-RPC providers
(``ATTESTMESH_RPC_URLS``), each a lazily opened ``ChainConnection``:

- **Snapshot reads go to every provider, concurrently, and a quorum must agree** (``sidecar.core.quorum``):
  each provider's head is read, the snapshot block is the highest block ``quorum`` providers have reached,
  ``confirmations`` deep; each provider reads the block's hash once, then every call of its snapshot is
  pinned to that hash (EIP-1898 with ``requireCanonical``): ``syncState()`` always, and only what moved
  since that provider's last read (``sidecar.drivers.snapshotread``: the members page by page when
  ``membershipVersion`` moved, ``isAppAllowed`` when a version moved, ``meshCidr`` once), so a pass over an
  unchanged cluster is one ``eth_call`` per provider. A caller that already knows a block and its hash
  (push mode: ``sidecar.core.readpin``) passes it as ``at``: no head and no header are read, only the
  state at that hash. No quorum on (block, hash, snapshot) raises ``QuorumNotReached`` (transient, named
  reason), so the pass stops before anything changes and the controller keeps the last good snapshot.
  With one provider its own error is raised, as before.
- **Transactions** (register, endpoint, CSK commitment) and the one-off reads (the member app's CREATE2
  salt, for the member proof) go through the first provider that answered the last read with the accepted
  snapshot (provider order otherwise). Writes are priced within the configured fee cap: a write the cap
  refuses is not sent, logged when the hold starts (``chain.fee_capped``) and ends
  (``chain.fee_cap_cleared``), and named in ``write_held`` (``/healthz`` ``chain.write_held``) until a
  write goes through.
- **Events**: ``connection()`` hands the same preferred provider to the log poller and the push subscriber;
  logs only wake the reconciler, membership always comes from the quorum snapshot.

Providers are named by their index only; their URLs (which can carry API keys) are scrubbed from every
error text this module passes on. Must not: decide what a failure means for the node (the steps do), or log
private keys (the signer key stays in the identity).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import structlog

from sidecar.chain.contracts import MEMBERS_PAGE_SIZE, ClusterClient, MemberAppFactoryClient
from sidecar.chain.errors import ChainError, FeeAboveCap, TransientChainError, UnexpectedChainError
from sidecar.chain.failures import gwei
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import FeeCap, TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.quorum import (
    ProviderAnswer,
    ProviderFailure,
    QuorumVerdict,
    RpcView,
    agree,
    confirmed_block,
)
from sidecar.core.readpin import Position
from sidecar.core.snapshot import Snapshot
from sidecar.drivers.identity import NodeIdentity
from sidecar.drivers.snapshotread import SnapshotReader
from sidecar.observability import Metrics
from sidecar.settings import ChainSettings


@dataclass(frozen=True, slots=True)
class Registered:
    """A registration that landed: its block, gas used and the member id the contract assigned."""

    block: int
    gas: int
    member_id: MemberId


class QuorumNotReached(TransientChainError):
    """No quorum of providers vouched for one snapshot; ``verdict`` names why (by provider index)."""

    def __init__(self, verdict: QuorumVerdict) -> None:
        super().__init__(f"{verdict.reason}: {verdict.detail}")
        self.verdict = verdict


log = structlog.get_logger("sidecar.chain")
T = TypeVar("T")


class ClusterChain(Protocol):
    """What the reconcile steps ask of the chain (``ChainError`` on failure)."""

    @property
    def cluster(self) -> Address: ...

    @property
    def rpc(self) -> RpcView: ...

    @property
    def write_held(self) -> str | None:
        """Why the last write was not sent (``fee_cap: …``), until one is; None otherwise."""
        ...

    async def read(self, identity: NodeIdentity, at: Position | None = None) -> tuple[int, Snapshot]: ...

    async def has_contract(self) -> bool: ...

    async def register(self, identity: NodeIdentity, endpoint: str) -> Registered: ...

    async def set_endpoint(self, identity: NodeIdentity, endpoint: str) -> None: ...

    async def commit_csk(self, identity: NodeIdentity, epoch: int, commitment: Bytes32) -> int: ...

    async def member_app_salt(self, app_id: Address) -> Bytes32: ...

    async def reset(self) -> None: ...


class ChainLink:
    """``ClusterChain`` over ``sidecar.chain``: one connection per provider, opened on first use and
    dropped after terminal errors; snapshots by quorum, writes through the preferred provider."""

    def __init__(
        self, settings: ChainSettings, metrics: Metrics, *, page_size: int = MEMBERS_PAGE_SIZE
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        count = len(settings.rpc_urls)
        self._conns: list[ChainConnection | None] = [None] * count
        self._preferred: list[bool] = [True] * count  # answered the last read with the accepted snapshot
        self._readers = [
            SnapshotReader(page_size) for _ in range(count)
        ]  # what each provider last said, by version
        self._rpc = RpcView(providers=count, quorum=settings.rpc_quorum)
        self._dissent: tuple[int, ...] = ()
        metrics.set_rpc_providers([False] * count)
        self.fee_cap = FeeCap(settings.max_fee_wei, settings.max_priority_fee_wei)
        self._held: str | None = None

    @property
    def cluster(self) -> Address:
        return self.settings.cluster

    @property
    def rpc(self) -> RpcView:
        """The providers as of the last snapshot read (for ``/healthz``)."""
        return self._rpc

    @property
    def write_held(self) -> str | None:
        return self._held

    async def _write(self, what: str, write: Awaitable[T]) -> T:
        """Run one signed write; a fee the cap refuses holds writes (logged once) until one goes through."""
        try:
            result = await write
        except FeeAboveCap as exc:
            if self._held is None:
                log.warning(
                    "chain.fee_capped",
                    write=what,
                    base_fee=gwei(exc.base_fee),
                    tip=gwei(exc.tip),
                    cap=gwei(exc.cap),
                )
            self._held = str(exc)
            raise
        if self._held is not None:
            log.info("chain.fee_cap_cleared", write=what)
            self._held = None
        return result

    def connection(self) -> ChainConnection | None:
        """The open connection of the preferred provider, if any (the log poller and push subscriber use it:
        events only wake the reconciler)."""
        for conn, preferred in zip(self._conns, self._preferred, strict=True):
            if conn is not None and preferred:
                return conn
        return None

    async def _connection(self, index: int) -> ChainConnection:
        conn = self._conns[index]
        if conn is None:
            s = self.settings
            conn = await connect(
                s.rpc_urls[index],
                timeout=s.rpc_timeout,
                expected_chain_id=s.chain_id,
                on_rpc=self.metrics.rpc_call,
            )
            self._conns[index] = conn
        return conn

    async def _primary(self) -> ChainConnection:
        """The first preferred provider's connection (then the others, in order): writes go there."""
        order = sorted(range(len(self._conns)), key=lambda i: (not self._preferred[i], i))
        first: ChainError | None = None
        for index in order:
            try:
                return await self._connection(index)
            except ChainError as exc:
                self._preferred[index] = False
                first = first or exc
        assert first is not None
        raise first

    async def _cluster(self, identity: NodeIdentity | None = None) -> ClusterClient:
        conn = await self._primary()
        submitter = None
        if identity is not None:
            submitter = TxSubmitter(
                conn,
                identity.local_signer(),
                receipt_timeout=self.settings.receipt_timeout,
                fee_cap=self.fee_cap,
            )
        return ClusterClient(conn, self.settings.cluster, submitter)

    # --- the snapshot --------------------------------------------------------------------------------

    async def read(self, identity: NodeIdentity, at: Position | None = None) -> tuple[int, Snapshot]:
        """Read the snapshot at the confirmed block from every provider; return the quorum's head and
        snapshot, or raise (``QuorumNotReached``; with one provider, its own ``ChainError``).

        With ``at`` (a block the caller already knows, ``sidecar.core.readpin``) no head is read: every
        provider reads at that block's hash, and the head returned is that block."""
        s = self.settings
        count = len(s.rpc_urls)
        if at is None:
            heads = await asyncio.gather(*(self._attempt(i, self._head(i)) for i in range(count)))
        else:
            heads = [at.block] * count
        answered = {i: h for i, h in enumerate(heads) if not isinstance(h, ChainError)}
        errors = {i: e for i, e in enumerate(heads) if isinstance(e, ChainError)}
        answers: list[ProviderAnswer] = []
        if answered:  # fewer heads than the quorum: still read them, so the verdict says who answered
            quorum = min(s.rpc_quorum, len(answered))
            block = confirmed_block(list(answered.values()), quorum, s.confirmations)
            assert block is not None
            pin = None
            if at is not None:
                block, pin = at.block, at.block_hash
            reads = await asyncio.gather(
                *(
                    self._attempt(i, self._snapshot_at(i, head, block, identity, pin))
                    for i, head in answered.items()
                )
            )
            for index, result in zip(answered, reads, strict=True):
                if isinstance(result, ChainError):
                    errors[index] = result
                else:
                    answers.append(result)
        if count == 1 and errors:
            self._record_failure_only(errors)
            raise errors[0]
        failures = [ProviderFailure(i, self._scrub(str(e) or type(e).__name__)) for i, e in errors.items()]
        verdict = agree(answers, failures, providers=count, quorum=s.rpc_quorum)
        self._record(verdict)
        if verdict.accepted is None:
            raise QuorumNotReached(verdict)
        return verdict.accepted.head, verdict.accepted.snapshot

    async def _attempt(self, index: int, work: Awaitable[T]) -> T | ChainError:
        """Run one provider's part; its ``ChainError`` is returned (a terminal one drops its connection)."""
        try:
            return await work
        except ChainError as exc:
            if not exc.transient:
                await self._drop(index)
            return exc

    async def _head(self, index: int) -> int:
        return await (await self._connection(index)).block_number()

    async def _snapshot_at(
        self, index: int, head: int, block: int, identity: NodeIdentity, pin: Bytes32 | None = None
    ) -> ProviderAnswer:
        """One provider's snapshot at ``block``: its hash read once (unless the caller knows it as ``pin``),
        every call pinned to it; only what changed since its last read re-read."""
        conn = await self._connection(index)
        if pin is None:
            pin = (await conn.block_header(block)).hash
        cluster = ClusterClient(conn, self.settings.cluster)
        snapshot = await self._readers[index].read(cluster, block, pin, identity.boot_info())
        return ProviderAnswer(index, head, pin, snapshot)

    def _record(self, verdict: QuorumVerdict) -> None:
        """Remember and export the providers' standing; log a change of dissenters once."""
        self._rpc = RpcView.of(verdict)
        answered = set(verdict.agreeing) | set(verdict.dissenting)
        self.metrics.set_rpc_providers(i in answered for i in range(verdict.providers))
        accepted = set(verdict.agreeing) if verdict.accepted is not None else answered
        self._preferred = [i in accepted for i in range(verdict.providers)]
        if verdict.dissenting:
            self.metrics.rpc_disagreements.inc()
        if verdict.accepted is None:
            self.metrics.rpc_quorum_failures.labels(reason=verdict.reason).inc()
        if verdict.dissenting != self._dissent:
            if verdict.dissenting:
                log.warning(
                    "rpc.dissent_observed", dissenting=list(verdict.dissenting), detail=verdict.detail
                )
            else:
                log.info("rpc.dissent_ended")
            self._dissent = verdict.dissenting

    def _record_failure_only(self, errors: dict[int, ChainError]) -> None:
        self._rpc = RpcView(providers=1, quorum=1)
        self.metrics.set_rpc_providers([0 not in errors])

    def _scrub(self, text: str) -> str:
        """``text`` with every provider URL (and its path and query, where keys live) replaced by its
        index."""
        for index, url in enumerate(self.settings.rpc_urls):
            parts = urlsplit(url)
            for secret in (url, url.rstrip("/"), parts.path if len(parts.path) > 1 else "", parts.query):
                if secret:
                    text = text.replace(secret, f"<provider {index}>")
        return text

    # --- one-off reads and writes (the preferred provider) -------------------------------------------------

    async def has_contract(self) -> bool:
        return bool(await (await self._primary()).get_code(self.settings.cluster))

    async def register(self, identity: NodeIdentity, endpoint: str) -> Registered:
        cluster = await self._cluster(identity)
        receipt, member_id = await self._write(
            "register", cluster.register(identity.proof, identity.keys, endpoint)
        )
        return Registered(receipt.block_number, receipt.gas_used, member_id)

    async def set_endpoint(self, identity: NodeIdentity, endpoint: str) -> None:
        await self._write("setEndpoint", (await self._cluster(identity)).set_endpoint(endpoint))

    async def commit_csk(self, identity: NodeIdentity, epoch: int, commitment: Bytes32) -> int:
        """Commit ``commitment`` for ``epoch`` and return the block it landed in. The epoch is the one the
        snapshot read, so a rotation after the read makes the transaction revert (``WrongEpoch``) instead of
        landing the key in the rotated epoch."""
        cluster = await self._cluster(identity)
        receipt = await self._write("setCskCommitment", cluster.set_csk_commitment(epoch, commitment))
        return receipt.block_number

    async def member_app_salt(self, app_id: Address) -> Bytes32:
        """The CREATE2 salt of ``app_id`` at the configured member-app factory (read once, for the member
        proof: a wrong value only makes this node's own proof fail, at home and at every peer)."""
        factory = self.settings.member_app_factory
        if factory is None:
            raise UnexpectedChainError("no member-app factory is configured")
        return await MemberAppFactoryClient(await self._primary(), factory).salt_of(app_id)

    async def balance(self, address: Address) -> int:
        """The balance of ``address`` in wei at the latest block, from the preferred provider. A failure is
        a ``TransientChainError`` whose text names providers by index, never by URL (a URL may hold a key)."""
        try:
            return await (await self._primary()).get_balance(address)
        except ChainError as exc:
            raise TransientChainError(self._scrub(str(exc) or type(exc).__name__)) from exc

    async def _drop(self, index: int) -> None:
        self._readers[index].forget()
        conn, self._conns[index] = self._conns[index], None
        if conn is not None:
            await conn.close()

    async def reset(self) -> None:
        """Drop every connection (after a terminal error the next pass reconnects)."""
        for index in range(len(self._conns)):
            await self._drop(index)

    async def close(self) -> None:
        await self.reset()
