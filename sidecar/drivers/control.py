"""The control loop: one level-triggered pass from facts to actions, repeated on every wake.

Owns the order of a pass — identity (guest agent) → chain snapshot (boot policy, membership, commitment,
one ``members()`` call at a confirmed block) → lost-state check → registration → mesh reconcile (plan the
peer delta, apply only the delta) → cluster shared key → phase — and the node's observed facts, from which
the phase is computed (``sidecar.core.phases``). Wakes come from the event source (polled chain logs),
peer liveness changes, a periodic resync and an error backoff; every pass re-reads the whole desired and
actual state, so a missed wake only delays convergence.

Rules: when the chain cannot be read, nothing on the device changes and the last good snapshot is kept;
an already-registered node never registers again (its keys must match the chain, otherwise it is a
terminal "lost state"); broad exceptions are caught in exactly one place (``run``).
Must not: log or expose private keys; block the event loop on anything unbounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import aiohttp
import structlog

from sidecar import __version__
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.errors import ChainError, ChainIdMismatch
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import TxSubmitter
from sidecar.core import csk as cskcore
from sidecar.core.digest import membership_digest
from sidecar.core.ids import Bytes32, MemberId, SecretBytes
from sidecar.core.liveness import Liveness
from sidecar.core.model import BootVerdict, MemberRecord, MeshCidr
from sidecar.core.peerplan import DesiredPeer, PeerPlan, WgKey, plan_peers
from sidecar.core.phases import Facts, Phase, PhaseTracker, next_phase
from sidecar.core.status import NodeStatus, PeerView, SelfView
from sidecar.drivers.events import EventSource
from sidecar.drivers.identity import NodeIdentity, derive, derive_csk_key
from sidecar.drivers.store import StateStore, StoreError
from sidecar.dstack.agent import GuestAgent, GuestAgentError
from sidecar.http.peerapi import CskFetchError, fetch_csk
from sidecar.observability import Metrics
from sidecar.settings import Settings
from sidecar.wg.device import InterfaceConfig, WgDevice, WgError
from sidecar.wg.select import open_device

log = structlog.get_logger("sidecar.control")

CSK_CACHE_FILE = "csk.cache"
ERROR_BACKOFF_MIN = 0.5
ERROR_BACKOFF_MAX = 10.0
PROGRESS_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The chain's desired state at one block."""

    block: int
    verdict: BootVerdict
    members: tuple[MemberRecord, ...]
    commitment: Bytes32 | None
    mesh: MeshCidr

    def member(self, member_id: MemberId | None) -> MemberRecord | None:
        return next((m for m in self.members if m.member_id == member_id), None)

    @property
    def originator(self) -> MemberId | None:
        return self.members[0].member_id if self.members else None

    def by_app(self, identity: NodeIdentity) -> MemberRecord | None:
        return next((m for m in self.members if m.app_id == identity.app_id), None)


@dataclass
class CskState:
    value: SecretBytes | None = field(default=None, repr=False)
    commitment: Bytes32 | None = None
    source: str = ""
    error: str = ""


class Controller:
    """The node's control loop and the facts it has observed."""

    def __init__(
        self,
        settings: Settings,
        agent: GuestAgent,
        metrics: Metrics,
        liveness: Liveness,
        *,
        on_mesh_up: Callable[[IPv4Address], None] = lambda ip: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.agent = agent
        self.metrics = metrics
        self.liveness = liveness
        self.store = StateStore(settings.state_dir)
        self.clock = clock
        self.on_mesh_up = on_mesh_up
        self._wake = asyncio.Event()
        self.identity: NodeIdentity | None = None
        self.conn: ChainConnection | None = None
        self.snapshot: Snapshot | None = None
        self.member_id: MemberId | None = None
        self.device: WgDevice | None = None
        self.device_up = False
        self.in_sync = False
        self.configured: frozenset[MemberId] = frozenset()
        self._previous: dict[WgKey, DesiredPeer] = {}
        self.csk = CskState()
        self.tracker = PhaseTracker()
        self.facts = Facts(agent_ok=False, chain_ok=False, boot_allowed=None)
        self.status = NodeStatus.initial(__version__)
        self._agent_error = ""
        self._chain_error = ""
        self._register_error = ""
        self._mesh_error = ""
        self._lost: list[str] = []
        self._mesh_ip_announced: IPv4Address | None = None
        self._session: aiohttp.ClientSession | None = None
        self._rederive_mismatch_logged: Bytes32 | None = None  # log that once per commitment
        self._head: int | None = None
        self._known_members: set[MemberId] = set()
        self._registered_here = False
        self._registered_block: int | None = None
        self._chain_id_ok = True
        self._carried_over_logged = False
        #: Hooks the daemon wires: a removed member's heartbeat state is dropped; the event source (its mode,
        #: connection, cursor and head are reported in ``/healthz`` ``events``).
        self.forget_member: Callable[[MemberId], None] = liveness.forget
        self.events: EventSource | None = None

    # --- wakes -------------------------------------------------------------------------------------

    def wake(self, reason: str = "") -> None:
        """Ask for a pass soon (events, liveness changes). Idempotent and cheap."""
        if reason:
            log.debug("control.woken", reason=reason)
        self._wake.set()

    async def run(self) -> None:
        """Pass after pass until cancelled: on a wake, on the resync timer, or after an error backoff."""
        backoff = ERROR_BACKOFF_MIN
        while True:
            self._wake.clear()
            try:
                await self.pass_once()
                if self._settled():  # healthy: only events and the resync timer trigger a pass
                    delay, backoff = self.settings.chain.resync_interval, ERROR_BACKOFF_MIN
                elif self.facts.chain_ok and self.facts.agent_ok:  # progressing: check again soon
                    delay, backoff = PROGRESS_RETRY, ERROR_BACKOFF_MIN
                else:  # a dependency is failing: capped exponential backoff
                    delay, backoff = backoff, min(backoff * 2, ERROR_BACKOFF_MAX)
            except asyncio.CancelledError:
                raise
            except Exception:  # the one broad catch of this loop: log, count, back off, keep going
                log.exception("control.pass_failed")
                self.metrics.reconcile_passes.labels(result="error").inc()
                delay = backoff
                backoff = min(backoff * 2, ERROR_BACKOFF_MAX)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives just as
            # the event is set, which would hang shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _settled(self) -> bool:
        return self.status.phase == Phase.HEALTHY.value

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.conn is not None:
            await self.conn.close()
        if self.device is not None:
            await self.device.close()

    # --- one pass ----------------------------------------------------------------------------------

    async def pass_once(self) -> None:
        if await self._ensure_identity():
            snapshot = await self._read_chain()
            if snapshot is not None:
                await self._act(snapshot)
        self._update_status()

    async def _ensure_identity(self) -> bool:
        if self.identity is not None:
            return True
        try:
            self.identity = await derive(self.agent)
        except GuestAgentError as exc:
            if str(exc) != self._agent_error:  # log an outage once, not on every retry
                log.warning("identity.unavailable", error=str(exc), transient=exc.transient)
            self._agent_error = str(exc)
            return False
        self._agent_error = ""
        ident = self.identity
        log.info(
            "identity.derived",
            app_id=str(ident.app_id),
            compose_hash=str(ident.info.compose_hash),
            signer=str(ident.signer),
            wg_pub=ident.keys.wg_pub.hex,
            identity_pub=ident.keys.identity_pub.hex,
        )
        return True

    async def _connection(self) -> ChainConnection:
        if self.conn is None:
            chain = self.settings.chain
            self.conn = await connect(
                chain.rpc_url,
                timeout=chain.rpc_timeout,
                expected_chain_id=chain.chain_id,
                on_rpc=self.metrics.rpc_call,
            )
        return self.conn

    def _cluster(self, conn: ChainConnection, *, writable: bool = False) -> ClusterClient:
        submitter = None
        if writable:
            assert self.identity is not None
            submitter = TxSubmitter(
                conn, self.identity.local_signer(), receipt_timeout=self.settings.chain.receipt_timeout
            )
        return ClusterClient(conn, self.settings.chain.cluster, submitter)

    async def _read_chain(self) -> Snapshot | None:
        assert self.identity is not None
        try:
            conn = await self._connection()
            head = await conn.block_number()
            block = max(0, head - self.settings.chain.confirmations)
            cluster = self._cluster(conn)
            verdict = await cluster.is_app_allowed(self.identity.boot_info(), block=block)
            members = tuple(await cluster.members(block=block))
            commitment = await cluster.csk_commitment(block=block)
            mesh = await cluster.mesh_cidr(block=block)
        except ChainError as exc:
            self._chain_id_ok = not isinstance(exc, ChainIdMismatch)
            if self._chain_error == "" or self.facts.chain_ok:
                log.warning("chain.unreachable", error=str(exc), transient=exc.transient)
            self._chain_error = str(exc) or type(exc).__name__
            self.metrics.chain_errors.labels(kind="transient" if exc.transient else "terminal").inc()
            if self.conn is not None and not exc.transient:
                await self.conn.close()
                self.conn = None
            return None
        self._chain_id_ok = True
        if self._chain_error:
            log.info("chain.recovered", head=head)
        self._chain_error = ""
        self._head = head
        self.snapshot = Snapshot(block, verdict, members, commitment, mesh)
        return self.snapshot

    async def _act(self, snap: Snapshot) -> None:
        ident = self.identity
        assert ident is not None
        mine = snap.by_app(ident)
        self.member_id = mine.member_id if mine is not None else None
        lost = ident.matches(mine) if mine is not None else []
        if lost and lost != self._lost:  # terminal: said once, then shown in /healthz
            log.error("identity.lost_state", member_id=str(mine.member_id) if mine else None, differs=lost)
        self._lost = lost
        if lost:
            return
        if not snap.verdict.allowed:
            return
        if mine is None:
            if self._registered_block is not None and snap.block < self._registered_block:
                return  # our registration has not reached the confirmed snapshot yet: never send it twice
            await self._register()
            return
        self._register_error = ""
        if not self._carried_over_logged and self._register_error == "" and not self._registered_here:
            self._carried_over_logged = True
            log.info("registration.skipped", reason="identity carried over", member_id=str(mine.member_id))
        await self._maybe_update_endpoint(mine)
        if not await self._reconcile(snap, mine):
            return
        await self._acquire_csk(snap, mine)

    # --- register ----------------------------------------------------------------------------------

    async def _register(self) -> None:
        ident = self.identity
        assert ident is not None and self.conn is not None
        cluster = self._cluster(self.conn, writable=True)
        endpoint = self.settings.mesh.endpoint
        emit = log.debug if self._register_error else log.info  # retries after a logged failure: debug
        emit("registration.attempted", app_id=str(ident.app_id), signer=str(ident.signer), endpoint=endpoint)
        try:
            receipt, member_id = await cluster.register(ident.proof, ident.keys, endpoint)
        except ChainError as exc:
            reason = _explain_register_error(exc)
            self.metrics.registration_attempts.labels(result="failed").inc()
            if reason != self._register_error:  # once per distinct failure, not on every retry
                log.warning("registration.failed", reason=reason, transient=exc.transient)
            self._register_error = reason
            return
        self._register_error = ""
        self._registered_here = True
        self._registered_block = receipt.block_number
        self.metrics.registration_attempts.labels(result="ok").inc()
        log.info(
            "registration.succeeded",
            member_id=str(member_id),
            block=receipt.block_number,
            gas=receipt.gas_used,
        )
        self.wake("registered")

    async def _maybe_update_endpoint(self, mine: MemberRecord) -> None:
        if (
            self.member_id is not None
            and not self._register_error
            and mine.endpoint != self.settings.mesh.endpoint
        ):
            assert self.conn is not None
            try:
                await self._cluster(self.conn, writable=True).set_endpoint(self.settings.mesh.endpoint)
                log.info("endpoint.updated", old=mine.endpoint, new=self.settings.mesh.endpoint)
            except ChainError as exc:
                log.warning("endpoint.update_failed", error=str(exc))

    # --- mesh --------------------------------------------------------------------------------------

    async def _reconcile(self, snap: Snapshot, mine: MemberRecord) -> bool:
        ident = self.identity
        assert ident is not None
        mesh = self.settings.mesh
        try:
            if self.device is None:
                self.device = open_device(mesh.backend, ifname=mesh.interface, uapi_dir=mesh.uapi_dir)
            config = InterfaceConfig(
                name=mesh.interface,
                private_key=ident.wg_key,
                listen_port=mesh.listen_port,
                address=IPv4Interface(f"{mine.mesh_ip}/{snap.mesh.prefix_length}"),
            )
            await self.device.ensure_up(config)
            if not self.device_up:
                log.info("mesh.interface_up", interface=mesh.interface, mesh_ip=str(mine.mesh_ip))
            self.device_up = True
            if self._mesh_ip_announced != mine.mesh_ip:
                self._mesh_ip_announced = mine.mesh_ip
                self.on_mesh_up(mine.mesh_ip)
            desired = [
                DesiredPeer(
                    member_id=m.member_id,
                    public_key=WgKey(m.wg_pub.raw),
                    endpoint=m.endpoint or None,
                    allowed_ips=(IPv4Network(f"{m.mesh_ip}/32"),),
                )
                for m in snap.members
                if m.member_id != mine.member_id
            ]
            now = time.time()
            actual = await self.device.read_peers()
            plan = plan_peers(desired, actual, self._previous, now)
            if plan.empty:
                log.debug("mesh.unchanged", peers=len(desired))
                self.metrics.reconcile_passes.labels(result="unchanged").inc()
            else:
                await self.device.apply(plan)
                self._log_plan(plan)
                self.metrics.reconcile_passes.labels(result="changed").inc()
            self._previous = {p.public_key: p for p in desired}
            after = await self.device.read_peers()
            self.in_sync = plan_peers(desired, after, self._previous, time.time()).empty
            keys = {p.public_key for p in after}
            self.configured = frozenset(p.member_id for p in desired if p.public_key in keys)
            current = {m.member_id for m in snap.members}
            for gone in self._known_members - current:
                self.forget_member(gone)
            self._known_members = current
            self._mesh_error = ""
            return True
        except WgError as exc:
            self._mesh_error = str(exc)
            self.in_sync = False
            log.warning("mesh.failed", error=str(exc), transient=exc.transient)
            return False

    def _log_plan(self, plan: PeerPlan) -> None:
        for peer in plan.add:
            log.info("peer.added", member_id=str(peer.member_id), endpoint=peer.endpoint)
            self.metrics.peer_changes.labels(change="added").inc()
        for key in plan.remove:
            log.info("peer.removed", wg_pub=key.hex)
            self.metrics.peer_changes.labels(change="removed").inc()
        for peer in plan.update:
            log.info("peer.updated", member_id=str(peer.member_id), endpoint=peer.endpoint)
            self.metrics.peer_changes.labels(change="updated").inc()

    # --- cluster shared key ------------------------------------------------------------------------

    async def _acquire_csk(self, snap: Snapshot, mine: MemberRecord) -> None:
        ident = self.identity
        assert ident is not None and self.conn is not None
        commitment = snap.commitment
        is_originator = snap.originator == mine.member_id
        if self.csk.value is not None and self.csk.commitment == commitment and commitment is not None:
            return
        if commitment is None:
            if not is_originator:
                self.csk.error = "waiting for the originator to commit the cluster shared key"
                return
            key = cskcore.csk_from_key(await derive_csk_key(self.agent))
            digest = cskcore.commitment(key)
            try:
                await self._cluster(self.conn, writable=True).set_csk_commitment(digest)
            except ChainError as exc:
                self.csk.error = f"committing the cluster shared key failed: {exc}"
                log.warning("csk.commit_failed", error=str(exc))
                return
            log.info("csk.committed", commitment=str(digest))
            self._hold(key, digest, "derived")
            return
        if is_originator:
            # The originator's key is deterministic: re-derive and verify rather than trust a cache.
            key = cskcore.csk_from_key(await derive_csk_key(self.agent))
            if cskcore.commitment(key) == commitment:
                log.info("csk.rederived", commitment=str(commitment))
                self._hold(key, commitment, "derived")
                return
            # Not the member that committed it: that one was evicted and this one moved up to index 0.
            # Like every other member, it reads its sealed cache or pulls the key from a peer.
            if self._rederive_mismatch_logged != commitment:
                self._rederive_mismatch_logged = commitment
                log.warning("csk.rederive_mismatch", commitment=str(commitment), then="cache or peer")
        cached = self._load_cache(mine.member_id, commitment)
        if cached is not None:
            self._hold(cached, commitment, "cache")
            log.info("csk.loaded_from_cache", commitment=str(commitment))
            return
        await self._pull_csk(snap, mine, commitment)

    def _hold(self, key: SecretBytes, commitment: Bytes32, source: str) -> None:
        assert self.identity is not None and self.member_id is not None
        self.csk = CskState(key, commitment, source, "")
        if source != "cache":
            try:
                blob = cskcore.seal_cache(
                    key, self.identity.state_key, self.settings.chain.cluster, self.member_id, commitment
                )
                self.store.write(CSK_CACHE_FILE, blob)
            except (OSError, StoreError) as exc:
                log.warning("csk.cache_write_failed", error=str(exc))

    def _load_cache(self, member_id: MemberId, commitment: Bytes32) -> SecretBytes | None:
        assert self.identity is not None
        try:
            blob = self.store.read(CSK_CACHE_FILE)
        except StoreError as exc:
            log.warning("csk.cache_unreadable", error=str(exc))
            return None
        if blob is None:
            return None
        try:
            return cskcore.open_cache(
                blob, self.identity.state_key, self.settings.chain.cluster, member_id, commitment
            )
        except cskcore.CskError as exc:
            log.warning("csk.cache_rejected", reason=str(exc))
            return None

    async def _pull_csk(self, snap: Snapshot, mine: MemberRecord, commitment: Bytes32) -> None:
        ident = self.identity
        assert ident is not None
        now = self.clock()
        candidates = [
            m
            for m in snap.members
            if m.member_id != mine.member_id and self.liveness.is_live(m.member_id, now)
        ]
        candidates.sort(key=lambda m: (m.member_id != snap.originator, m.member_id.raw))
        if not candidates:
            self.csk.error = "no live peer to pull the cluster shared key from"
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        session = self._session
        mesh = self.settings.mesh
        gate = asyncio.Semaphore(mesh.csk_parallelism)
        errors: list[str] = []

        async def attempt(peer: MemberRecord) -> SecretBytes | None:
            async with gate:
                request = cskcore.CskRequest(
                    cluster=self.settings.chain.cluster,
                    requester=mine.member_id,
                    responder=peer.member_id,
                    timestamp_ms=int(time.time() * 1000),
                )
                body = cskcore.sign_request(request, ident.identity_key)
                try:
                    sealed = await fetch_csk(
                        session, str(peer.mesh_ip), mesh.peer_api_port, body, mesh.csk_request_timeout
                    )
                except CskFetchError as exc:
                    kind = (
                        "refused"
                        if exc.kind == "refused"
                        else "unreachable"
                        if exc.kind == "unreachable"
                        else "invalid"
                    )
                    self.metrics.csk_pull_attempts.labels(result=kind).inc()
                    errors.append(f"{str(peer.member_id)[:10]}: {exc.kind}")
                    return None
                try:
                    key = cskcore.open_sealed(sealed, ident.seal_key, commitment)
                except cskcore.CskError as exc:
                    self.metrics.csk_pull_attempts.labels(result="invalid").inc()
                    log.warning("csk.pull_rejected", peer=str(peer.member_id), reason=str(exc))
                    errors.append(f"{str(peer.member_id)[:10]}: invalid")
                    return None
                self.metrics.csk_pull_attempts.labels(result="ok").inc()
                log.info("csk.pulled", peer=str(peer.member_id), commitment=str(commitment))
                return key

        tasks = [asyncio.create_task(attempt(p)) for p in candidates]
        try:
            for next_done in asyncio.as_completed(tasks):
                key = await next_done
                if key is not None:
                    self._hold(key, commitment, "peer")
                    return
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.csk.error = "no peer served a valid cluster shared key (" + ", ".join(errors) + ")"

    # --- facts, phase, status ----------------------------------------------------------------------

    def _update_status(self) -> None:
        snap = self.snapshot
        now = self.clock()
        live = self.liveness.live(now)
        others = [m for m in snap.members if m.member_id != self.member_id] if snap else []
        facts = Facts(
            agent_ok=self.identity is not None,
            agent_error=self._agent_error,
            chain_ok=self._chain_error == "" and snap is not None,
            chain_error=self._chain_error,
            chain_id_ok=self._chain_id_ok,
            boot_allowed=None if snap is None else snap.verdict.allowed,
            boot_reason="" if snap is None else snap.verdict.reason,
            lost_state=bool(self._lost),
            registered=self.member_id is not None,
            register_error=self._register_error,
            device_up=self.device_up,
            device_in_sync=self.in_sync,
            mesh_error=self._mesh_error,
            csk_held=self.csk.value is not None
            and snap is not None
            and self.csk.commitment == snap.commitment,
            csk_error=self.csk.error,
            other_members=len(others),
            live_peers=sum(1 for m in others if m.member_id in live),
        )
        self.facts = facts
        phase, reason = next_phase(facts)
        change = self.tracker.observe(phase, reason, now)
        if change is not None:
            log.info(
                "phase.changed",
                from_phase=str(change.from_phase) if change.from_phase else None,
                to_phase=str(change.to_phase),
                reason=reason,
                expected=change.expected,
            )
            self.metrics.record_phase(change.from_phase, change.to_phase, change.expected)
        self.metrics.peers.labels(state="desired").set(len(others))
        self.metrics.peers.labels(state="configured").set(len(self.configured))
        self.metrics.peers.labels(state="live").set(facts.live_peers)
        ident = self.identity
        mine = snap.member(self.member_id) if snap else None
        self.status = NodeStatus(
            phase=phase.value,
            healthy=phase == Phase.HEALTHY,
            reason=reason,
            app_id=str(ident.app_id) if ident else None,
            instance_id=ident.info.instance_id.hex() if ident else None,
            compose_hash=str(ident.info.compose_hash) if ident else None,
            member_id=str(self.member_id) if self.member_id else None,
            mesh_ip=str(mine.mesh_ip) if mine else None,
            signer=str(ident.signer) if ident else None,
            peers_desired=len(others),
            peers_configured=len(self.configured),
            peers_live=facts.live_peers,
            csk_held=facts.csk_held,
            csk_commitment=str(snap.commitment) if snap and snap.commitment else None,
            csk_source=self.csk.source or None,
            **self._events_fields(),
            membership_digest=str(membership_digest(m.member_id for m in snap.members)) if snap else None,
            version=__version__,
            chain_reachable=facts.chain_ok,
            chain_error=self._chain_error,
        )

    def _events_fields(self) -> dict[str, Any]:
        source = self.events
        if source is None:
            return {"events_mode": "poll", "indexer_connected": False, "head_block": self._head}
        heads = [h for h in (self._head, source.head_block) if h is not None]
        return {
            "events_mode": source.mode,
            "indexer_connected": source.indexer_connected,
            "cursor_block": source.cursor_block,
            "head_block": max(heads) if heads else None,
            "rejected_pushes": source.rejected_pushes,
            "rejected_by_reason": tuple(sorted(source.rejected_by_reason.items())),
        }

    def refresh_events(self) -> None:
        """Re-read the event source into the status now (its mode flips between passes)."""
        self.status = dataclasses.replace(self.status, **self._events_fields())

    # --- views for the app API and the peer API ----------------------------------------------------

    def self_view(self) -> SelfView | None:
        ident, snap = self.identity, self.snapshot
        mine = snap.member(self.member_id) if snap and self.member_id else None
        if ident is None or mine is None:
            return None
        return SelfView(
            cluster=str(self.settings.chain.cluster),
            member_id=str(mine.member_id),
            app_id=str(ident.app_id),
            instance_id=ident.info.instance_id.hex(),
            mesh_ip=str(mine.mesh_ip),
            signer=str(ident.signer),
            wg_pub=ident.keys.wg_pub.hex,
            seal_pub=ident.keys.seal_pub.hex,
            identity_pub=ident.keys.identity_pub.hex,
        )

    def peer_views(self) -> list[PeerView]:
        snap = self.snapshot
        if snap is None:
            return []
        now = self.clock()
        views = []
        for m in snap.members:
            if m.member_id == self.member_id:
                continue
            heard = self.liveness.last_heard(m.member_id)
            views.append(
                PeerView(
                    member_id=str(m.member_id),
                    mesh_ip=str(m.mesh_ip),
                    endpoint=m.endpoint,
                    configured=m.member_id in self.configured,
                    live=self.liveness.is_live(m.member_id, now),
                    last_heard_ms_ago=None if heard is None else int((now - heard) * 1000),
                )
            )
        return views

    def csk_value(self) -> SecretBytes | None:
        return self.csk.value if self.facts.csk_held else None

    def members_by_id(self) -> dict[MemberId, MemberRecord]:
        snap = self.snapshot
        return {} if snap is None else {m.member_id: m for m in snap.members}


def _explain_register_error(exc: ChainError) -> str:
    name = type(exc).__name__
    if name == "InsufficientFunds":
        return f"no gas: the signer has no funds to register ({exc})"
    if exc.transient:
        return f"chain unreachable while registering: {exc}"
    return f"registration reverted: {exc}"
