"""The node's one connection to the chain: the cluster reads and writes a reconcile pass needs.

Owns ``ClusterChain`` (the port the chain and registration steps depend on, so a unit test can pass a
small fake) and ``ChainLink``, its web3 implementation: one lazily opened ``ChainConnection`` (shared
with the log poller and the push subscriber through ``connection()``), the snapshot read at one
confirmed block, the member app's CREATE2 salt (for the member proof), and the signed writes (register,
endpoint, CSK commitment), priced within the configured fee cap: a write the cap refuses is not sent, logged
when the hold starts (``chain.fee_capped``) and ends (``chain.fee_cap_cleared``), and named in
``write_held`` (``/healthz`` ``chain.write_held``) until a write goes through. Must not: decide what a
failure means for the node (the steps do), or log private keys (the signer key stays in the identity).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from sidecar.chain.contracts import ClusterClient, MemberAppFactoryClient
from sidecar.chain.errors import FeeAboveCap, UnexpectedChainError
from sidecar.chain.failures import gwei
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import FeeCap, TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.snapshot import Snapshot
from sidecar.drivers.identity import NodeIdentity
from sidecar.observability import Metrics
from sidecar.settings import ChainSettings

log = structlog.get_logger("sidecar.chain")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Registered:
    """A registration that landed: its block, gas used and the member id the contract assigned."""

    block: int
    gas: int
    member_id: MemberId


class ClusterChain(Protocol):
    """What the reconcile steps ask of the chain (``ChainError`` on failure)."""

    @property
    def cluster(self) -> Address: ...

    @property
    def write_held(self) -> str | None:
        """Why the last write was not sent (``fee_cap: …``), until one is; None otherwise."""
        ...

    async def read(self, identity: NodeIdentity) -> tuple[int, Snapshot]: ...

    async def has_contract(self) -> bool: ...

    async def register(self, identity: NodeIdentity, endpoint: str) -> Registered: ...

    async def set_endpoint(self, identity: NodeIdentity, endpoint: str) -> None: ...

    async def commit_csk(self, identity: NodeIdentity, commitment: Bytes32) -> None: ...

    async def member_app_salt(self, app_id: Address) -> Bytes32: ...

    async def reset(self) -> None: ...


class ChainLink:
    """``ClusterChain`` over web3: one connection, opened on first use and dropped after terminal errors."""

    def __init__(self, settings: ChainSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._conn: ChainConnection | None = None
        self.fee_cap = FeeCap(settings.max_fee_wei, settings.max_priority_fee_wei)
        self._held: str | None = None

    @property
    def cluster(self) -> Address:
        return self.settings.cluster

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
        """Return the open connection, if any (the log poller and push subscriber share it)."""
        return self._conn

    async def _connection(self) -> ChainConnection:
        if self._conn is None:
            s = self.settings
            self._conn = await connect(
                s.rpc_url, timeout=s.rpc_timeout, expected_chain_id=s.chain_id, on_rpc=self.metrics.rpc_call
            )
        return self._conn

    async def _cluster(self, identity: NodeIdentity | None = None) -> ClusterClient:
        conn = await self._connection()
        submitter = None
        if identity is not None:
            submitter = TxSubmitter(
                conn,
                identity.local_signer(),
                receipt_timeout=self.settings.receipt_timeout,
                fee_cap=self.fee_cap,
            )
        return ClusterClient(conn, self.settings.cluster, submitter)

    async def read(self, identity: NodeIdentity) -> tuple[int, Snapshot]:
        """Read the head and the snapshot at ``head - confirmations``."""
        conn = await self._connection()
        head = await conn.block_number()
        block = max(0, head - self.settings.confirmations)
        cluster = await self._cluster()
        verdict = await cluster.is_app_allowed(identity.boot_info(), block=block)
        members = tuple(await cluster.members(block=block))
        commitment = await cluster.csk_commitment(block=block)
        mesh = await cluster.mesh_cidr(block=block)
        return head, Snapshot(block, verdict, members, commitment, mesh)

    async def has_contract(self) -> bool:
        return bool(await (await self._connection()).get_code(self.settings.cluster))

    async def register(self, identity: NodeIdentity, endpoint: str) -> Registered:
        cluster = await self._cluster(identity)
        receipt, member_id = await self._write(
            "register", cluster.register(identity.proof, identity.keys, endpoint)
        )
        return Registered(receipt.block_number, receipt.gas_used, member_id)

    async def set_endpoint(self, identity: NodeIdentity, endpoint: str) -> None:
        await self._write("setEndpoint", (await self._cluster(identity)).set_endpoint(endpoint))

    async def commit_csk(self, identity: NodeIdentity, commitment: Bytes32) -> None:
        await self._write("setCskCommitment", (await self._cluster(identity)).set_csk_commitment(commitment))

    async def member_app_salt(self, app_id: Address) -> Bytes32:
        """The CREATE2 salt of ``app_id`` at the configured member-app factory (read once, for the member
        proof: a wrong value only makes this node's own proof fail, at home and at every peer)."""
        factory = self.settings.member_app_factory
        if factory is None:
            raise UnexpectedChainError("no member-app factory is configured")
        return await MemberAppFactoryClient(await self._connection(), factory).salt_of(app_id)

    async def reset(self) -> None:
        """Drop the connection (after a terminal error the next pass reconnects)."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await self.reset()
