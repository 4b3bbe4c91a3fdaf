"""The cluster shared key as one feature: hold, cache, pull and serve (rules: ``sidecar.core.csk``).

Owns the key this node holds (``CskHeld``: epoch, value, commitment, source, the last reason it is not
held) and the previous epoch's for its grace period after a rotation (``sidecar.core.cskepochs``; memory
only, the cache keeps the current one), this node's member proof (made once from its derived keys and the
member app's CREATE2 salt, read once from the chain; ``sidecar.core.memberproof``), the acquire step of a
reconcile pass (the originator derives and commits, or re-derives and verifies; every other member reads
its sealed cache or pulls the key from a live peer, several at a time, adopting it only from a peer whose
proof verifies against the measured anchors; always the snapshot's epoch's key, checked against that
epoch's commitment) and the sealed cache in the state directory. The answer to a peer's request is
``sidecar.drivers.cskserve`` (the epoch asked for, only when held and verified, only to a proven member of
this node's confirmed snapshot). Without the measured anchors (member-app factory, KMS roots) the node
neither serves nor accepts a key from peers and says why (``peering_error``). Facts about the node come
from the shared ``NodeState``; the time from the injected clock. Repeated warnings are rate-limited.
Must not: log, repr or return the key except sealed to a proven member's seal key; serve a key that is
not verified against its epoch's on-chain commitment; adopt a key from a peer whose proof fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol

import aiohttp
import structlog

from sidecar.chain.errors import ChainError
from sidecar.core import csk as cskcore
from sidecar.core.cskepochs import GraceKeys, PreviousCsk
from sidecar.core.cskgate import DEFAULT_FRESHNESS_MS, CskGate
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.liveness import Liveness
from sidecar.core.memberproof import (
    MemberProof,
    ProofAnchors,
    ProofRejected,
    make_member_proof,
    verify_member_proof,
)
from sidecar.core.model import MemberRecord
from sidecar.core.outcome import Outcome, stop
from sidecar.core.repeats import Repeats
from sidecar.core.snapshot import Snapshot
from sidecar.drivers.chainlink import ClusterChain
from sidecar.drivers.clock import Clock, wall_ms
from sidecar.drivers.cskserve import CskServer
from sidecar.drivers.identity import KeySource, NodeIdentity, derive_csk_key
from sidecar.drivers.nodestate import NodeState
from sidecar.drivers.steps import warn_limited
from sidecar.drivers.store import StateStore, StoreError
from sidecar.http.peerapi import CskAnswer, CskFetchError, fetch_csk
from sidecar.metricvocab import CskPullResult
from sidecar.observability import Metrics
from sidecar.settings import MeshSettings

log = structlog.get_logger("sidecar.csk")

CSK_CACHE_FILE = "csk.cache"


@dataclass
class CskHeld:
    """The key this node holds and its epoch (``value`` None: not held; ``error`` says why)."""

    value: SecretBytes | None = field(default=None, repr=False)
    epoch: int = 0
    commitment: Bytes32 | None = None
    source: str = ""
    error: str = ""


class CskFetcher(Protocol):
    """Asks one peer for the CSK: returns its JSON answer (not yet checked) or raises ``CskFetchError``."""

    async def fetch(self, host: str, request: Mapping[str, object]) -> dict[str, object]: ...


class PeerApiFetcher:
    """``CskFetcher`` over the peers' HTTP peer API (one client session, opened on first use)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, host: str, request: Mapping[str, object]) -> dict[str, object]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return await fetch_csk(self._session, host, self.port, request, self.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class CskKeeper:
    """Hold, cache, pull and serve the cluster shared key for one node."""

    def __init__(
        self,
        *,
        cluster: Address,
        chain_id: int,
        anchors: ProofAnchors | str,
        mesh: MeshSettings,
        state: NodeState,
        agent: KeySource,
        chain: ClusterChain,
        store: StateStore,
        fetcher: CskFetcher,
        liveness: Liveness,
        metrics: Metrics,
        clock: Clock,
        repeats: Repeats,
        freshness_ms: int = DEFAULT_FRESHNESS_MS,
    ) -> None:
        self.cluster = cluster
        self.chain_id = chain_id
        # The measured anchors proofs are checked against, or why there are none.
        self.anchors = anchors if isinstance(anchors, ProofAnchors) else None
        self.proof: MemberProof | None = None  # this node's own member proof, made once
        self._proof_error = "" if self.anchors else str(anchors)
        self.parallelism = mesh.csk_parallelism
        self.state = state
        self.agent = agent
        self.chain = chain
        self.store = store
        self.fetcher = fetcher
        self.liveness = liveness
        self.metrics = metrics
        self.clock = clock
        self.repeats = repeats
        self.server = CskServer(
            self, cluster=cluster, state=state, liveness=liveness, metrics=metrics, clock=clock,
            gate=CskGate(freshness_ms=freshness_ms),
        )  # fmt: skip
        self.held = CskHeld()
        self.grace = GraceKeys(mesh.csk_grace)  # the previous epoch's key, for the grace period
        self._rederive_mismatch_logged: Bytes32 | None = None  # log that once per commitment
        self._committed_block: int | None = None  # where our commitment landed, until a snapshot shows it

    # --- the reconcile step --------------------------------------------------------------------------

    async def run(self, ident: NodeIdentity, snap: Snapshot, mine: MemberRecord) -> Outcome:
        """Acquire the key of the snapshot's epoch (checked against its commitment); report whether it is
        held and, if not, why."""
        await self.acquire(ident, snap, mine)
        held = self.holds(snap.commitment)
        if held:
            return Outcome({"csk_held": True, "csk_error": self.held.error})
        return stop({"csk_held": False, "csk_error": self.held.error})

    @property
    def peering_error(self) -> str:
        """Why this node can neither serve the key to peers nor accept it from them ("" when it can)."""
        return self._proof_error

    async def make_proof(self, ident: NodeIdentity) -> None:
        """Make this node's member proof once: read its member app's salt, bind its keys, check it."""
        if self.proof is not None or self.anchors is None:
            return
        now = self.clock.monotonic()
        try:
            salt = await self.chain.member_app_salt(ident.app_id)
        except ChainError as exc:
            self._proof_error = f"reading the member app's salt failed: {exc}"
            warn_limited(self.repeats, "csk.proof_failed", self._proof_error, now)
            return
        proof = make_member_proof(
            ident.proof, ident.signer_key, salt=salt, chain_id=self.chain_id, cluster=self.cluster,
            identity_pub=ident.keys.identity_pub, seal_pub=ident.keys.seal_pub,
        )  # fmt: skip
        try:  # what a peer will check: a node whose own proof fails is told so here, not by every peer
            verify_member_proof(proof, self.anchors)
        except ProofRejected as exc:
            self._proof_error = f"this node's member proof does not verify: {exc}"
            warn_limited(self.repeats, "csk.proof_failed", self._proof_error, now)
            return
        self.repeats.succeeded("csk.proof_failed")
        self.proof, self._proof_error = proof, ""
        log.info("csk.proof_made", app_id=str(ident.app_id), kms_root=str(ident.proof.kms_root))

    def holds(self, commitment: Bytes32 | None) -> bool:
        """Tell whether the held key is verified against ``commitment``."""
        return self.held.value is not None and commitment is not None and self.held.commitment == commitment

    async def acquire(self, ident: NodeIdentity, snap: Snapshot, mine: MemberRecord) -> None:
        await self.make_proof(ident)  # once: needed to serve the key as much as to pull it
        commitment, epoch = snap.commitment, snap.csk_epoch
        is_originator = snap.originator == mine.member_id
        if self.holds(commitment):
            return
        if commitment is None:
            if not is_originator:
                self.held.error = (
                    f"waiting for the originator to commit the cluster shared key of epoch {epoch}"
                )
                return
            if self._committed_block is not None and snap.block < self._committed_block:
                # committed, not confirmed yet: never send it twice (a snapshot at or past that block without
                # it means a reorg dropped it, and the same derived key is committed again)
                self.held.error = "waiting for the commitment to be confirmed"
                return
            await self._commit(ident, mine, epoch)
            return
        if is_originator:
            # The originator's key is deterministic: re-derive and verify rather than trust a cache.
            key = cskcore.csk_from_key(await derive_csk_key(self.agent, ident.scope, epoch))
            if cskcore.commitment(key) == commitment:
                log.info("csk.rederived", commitment=str(commitment), epoch=epoch)
                self.hold(ident, mine.member_id, key, commitment, "derived", epoch=epoch)
                return
            # Not the member that committed it: that one was evicted and this one moved up to index 0.
            # Like every other member, it reads its sealed cache or pulls the key from a peer.
            if self._rederive_mismatch_logged != commitment:
                self._rederive_mismatch_logged = commitment
                log.warning("csk.rederive_mismatch", commitment=str(commitment), then="cache or peer")
        # The cache mirrors the key held in memory: holding another epoch's key, it holds that one too.
        cached = self._load_cache(ident, mine.member_id, commitment) if self.held.value is None else None
        if cached is not None:
            self.hold(ident, mine.member_id, cached, commitment, "cache", epoch=epoch)
            log.info("csk.loaded_from_cache", commitment=str(commitment), epoch=epoch)
            return
        await self.pull(ident, snap, mine, commitment)

    async def _commit(self, ident: NodeIdentity, mine: MemberRecord, epoch: int) -> None:
        key = cskcore.csk_from_key(await derive_csk_key(self.agent, ident.scope, epoch))
        digest = cskcore.commitment(key)
        try:
            self._committed_block = await self.chain.commit_csk(ident, epoch, digest)
        except ChainError as exc:
            self.held.error = f"committing the cluster shared key failed: {exc}"
            warn_limited(self.repeats, "csk.commit_failed", str(exc), self.clock.monotonic())
            return
        self.repeats.succeeded("csk.commit_failed")
        log.info("csk.committed", commitment=str(digest), epoch=epoch, block=self._committed_block)
        self.hold(ident, mine.member_id, key, digest, "derived", epoch=epoch)

    # --- hold and cache --------------------------------------------------------------------------------

    def hold(
        self,
        ident: NodeIdentity,
        me: MemberId,
        key: SecretBytes,
        commitment: Bytes32,
        source: str,
        *,
        epoch: int,
    ) -> None:
        """Hold a verified key of ``epoch``; the one it replaces stays for the grace period when it is an
        earlier epoch's (memory only). Seal the new key into the cache unless it came from there."""
        old = self.held
        if old.value is not None and old.commitment is not None and old.commitment != commitment:
            kept = self.grace.replaced(
                old.epoch, old.value, old.commitment, new_epoch=epoch, now=self.clock.monotonic()
            )
            log.info(
                "csk.epoch_changed", from_epoch=old.epoch, to_epoch=epoch,
                previous_kept_s=self.grace.grace if kept is not None else 0,
            )  # fmt: skip
        self.held = CskHeld(key, epoch, commitment, source, "")
        if source == "cache":
            return
        try:
            blob = cskcore.seal_cache(key, ident.state_key, self.cluster, me, commitment)
            self.store.write(CSK_CACHE_FILE, blob)
        except (OSError, StoreError) as exc:
            warn_limited(self.repeats, "csk.cache_write_failed", str(exc), self.clock.monotonic())

    def drop(self) -> None:
        """Forget the keys held in memory (the cache stays): as after a restart."""
        self.held = CskHeld()
        self.grace.clear()

    def _load_cache(self, ident: NodeIdentity, me: MemberId, commitment: Bytes32) -> SecretBytes | None:
        now = self.clock.monotonic()
        try:
            blob = self.store.read(CSK_CACHE_FILE)
        except StoreError as exc:
            warn_limited(self.repeats, "csk.cache_unreadable", str(exc), now)
            return None
        if blob is None:
            return None
        try:
            return cskcore.open_cache(blob, ident.state_key, self.cluster, me, commitment)
        except cskcore.CskError as exc:
            report = self.repeats.failed("csk.cache_rejected", str(exc), now)
            if report is not None:
                log.warning("csk.cache_rejected", reason=str(exc), **_repeats(report.repeats))
            return None

    # --- pull ------------------------------------------------------------------------------------------

    async def pull(
        self, ident: NodeIdentity, snap: Snapshot, mine: MemberRecord, commitment: Bytes32
    ) -> None:
        """Ask live peers (the originator first), ``parallelism`` at a time; hold the first valid key."""
        await self.make_proof(ident)
        if self.anchors is None or self.proof is None:
            self.held.error = f"cannot take the cluster shared key from peers: {self._proof_error}"
            return
        now = self.clock.monotonic()
        candidates = [m for m in snap.others(mine.member_id) if self.liveness.is_live(m.member_id, now)]
        candidates.sort(key=lambda m: (m.member_id != snap.originator, m.member_id.raw))
        if not candidates:
            self.held.error = "no live peer to pull the cluster shared key from"
            return
        gate = asyncio.Semaphore(self.parallelism)
        errors: list[str] = []

        async def attempt(peer: MemberRecord) -> SecretBytes | None:
            async with gate:
                return await self._pull_one(
                    ident, mine.member_id, peer, commitment, errors, epoch=snap.csk_epoch
                )

        tasks = [asyncio.create_task(attempt(p)) for p in candidates]
        try:
            for next_done in asyncio.as_completed(tasks):
                key = await next_done
                if key is not None:
                    self.hold(ident, mine.member_id, key, commitment, "peer", epoch=snap.csk_epoch)
                    return
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.held.error = (
            f"no peer served a valid cluster shared key of epoch {snap.csk_epoch} (" + ", ".join(errors) + ")"
        )

    async def _pull_one(
        self,
        ident: NodeIdentity,
        me: MemberId,
        peer: MemberRecord,
        commitment: Bytes32,
        errors: list[str],
        *,
        epoch: int,
    ) -> SecretBytes | None:
        assert self.anchors is not None and self.proof is not None  # pull() checked
        request = cskcore.CskRequest(self.cluster, me, peer.member_id, wall_ms(self.clock), epoch)
        body = cskcore.sign_request(request, ident.identity_key, self.proof)
        short = str(peer.member_id)[:10]
        try:
            answer = await self.fetcher.fetch(str(peer.mesh_ip), body)
        except CskFetchError as exc:
            self.metrics.csk_pull_attempt(exc.kind)
            errors.append(f"{short}: {exc.kind}")
            return None
        try:
            sealed = cskcore.check_response(request, answer, self.anchors)
            key = cskcore.open_sealed(sealed, ident.seal_key, commitment)
        except (ProofRejected, cskcore.CskError) as exc:
            result: CskPullResult = "unproven" if isinstance(exc, ProofRejected) else "invalid"
            self.metrics.csk_pull_attempt(result)
            report = self.repeats.failed(
                f"csk.pull_rejected:{peer.member_id}", str(exc), self.clock.monotonic()
            )
            if report is not None:
                log.warning(
                    "csk.pull_rejected", peer=str(peer.member_id), result=result, reason=str(exc),
                    **_repeats(report.repeats),
                )  # fmt: skip
            errors.append(f"{short}: {result}")
            return None
        self.metrics.csk_pull_attempt("ok")
        log.info("csk.pulled", peer=str(peer.member_id), commitment=str(commitment), epoch=epoch)
        return key

    # --- serve -----------------------------------------------------------------------------------------

    def value(self) -> SecretBytes | None:
        """The key, when it is verified against the current snapshot's commitment."""
        snap = self.state.snapshot
        return self.held.value if snap is not None and self.holds(snap.commitment) else None

    def previous(self) -> PreviousCsk | None:
        """The previous epoch's key while its grace period lasts (None when the current key is not held:
        the app API shows the previous key only next to the current one)."""
        now = self.clock.monotonic()
        retired = self.grace.previous(now)
        if retired is None or self.value() is None:
            return None
        until = (wall_ms(self.clock) + int((retired.until - now) * 1000)) // 1000
        return PreviousCsk(retired.epoch, retired.value, retired.commitment, until)

    def key_of(self, epoch: int) -> SecretBytes | None:
        """The key of ``epoch`` if held and verified: the current one, or the previous within its grace."""
        snap, current = self.state.snapshot, self.value()
        if current is not None and snap is not None and snap.csk_epoch == epoch == self.held.epoch:
            return current
        retired = self.grace.for_epoch(epoch, self.clock.monotonic())
        return retired.value if retired is not None else None

    def respond(self, body: object, remote_ip: IPv4Address) -> CskAnswer:
        """Answer a peer's CSK request (``CskResponder`` for the peer API; ``sidecar.drivers.cskserve``)."""
        return self.server.respond(body, remote_ip)

    def forget(self, member: MemberId) -> None:
        """A member left the cluster: drop its replay memory."""
        self.server.gate.forget(member)


def _repeats(count: int) -> dict[str, int]:
    return {"repeats": count} if count else {}
