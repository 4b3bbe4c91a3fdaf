"""The node's one connection to the chain: the cluster reads and writes a reconcile pass needs.

Owns ``ClusterChain`` (the port the chain and registration steps depend on, so a unit test can pass a
small fake) and ``ChainLink``, its web3 implementation: one lazily opened ``ChainConnection`` (shared
with the log poller and the push subscriber through ``connection()``), the snapshot read at one
confirmed block, and the signed writes (register, endpoint, CSK commitment). Must not: decide what a
failure means for the node (the steps do), or log private keys (the signer key stays in the identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.snapshot import Snapshot
from sidecar.drivers.identity import NodeIdentity
from sidecar.observability import Metrics
from sidecar.settings import ChainSettings


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

    async def read(self, identity: NodeIdentity) -> tuple[int, Snapshot]: ...

    async def has_contract(self) -> bool: ...

    async def register(self, identity: NodeIdentity, endpoint: str) -> Registered: ...

    async def set_endpoint(self, identity: NodeIdentity, endpoint: str) -> None: ...

    async def commit_csk(self, identity: NodeIdentity, epoch: int, commitment: Bytes32) -> None: ...

    async def reset(self) -> None: ...


class ChainLink:
    """``ClusterChain`` over web3: one connection, opened on first use and dropped after terminal errors."""

    def __init__(self, settings: ChainSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._conn: ChainConnection | None = None

    @property
    def cluster(self) -> Address:
        return self.settings.cluster

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
                conn, identity.local_signer(), receipt_timeout=self.settings.receipt_timeout
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
        epoch = await cluster.csk_epoch(block=block)
        commitment = await cluster.csk_commitment_of(epoch, block=block)
        mesh = await cluster.mesh_cidr(block=block)
        return head, Snapshot(block, verdict, members, commitment, mesh, epoch)

    async def has_contract(self) -> bool:
        return bool(await (await self._connection()).get_code(self.settings.cluster))

    async def register(self, identity: NodeIdentity, endpoint: str) -> Registered:
        cluster = await self._cluster(identity)
        receipt, member_id = await cluster.register(identity.proof, identity.keys, endpoint)
        return Registered(receipt.block_number, receipt.gas_used, member_id)

    async def set_endpoint(self, identity: NodeIdentity, endpoint: str) -> None:
        await (await self._cluster(identity)).set_endpoint(endpoint)

    async def commit_csk(self, identity: NodeIdentity, epoch: int, commitment: Bytes32) -> None:
        """Commit ``commitment`` for ``epoch``: the epoch the snapshot read, so that a rotation after the read
        makes the transaction revert (``WrongEpoch``) instead of landing the key in the rotated epoch."""
        await (await self._cluster(identity)).set_csk_commitment(epoch, commitment)

    async def reset(self) -> None:
        """Drop the connection (after a terminal error the next pass reconnects)."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await self.reset()
