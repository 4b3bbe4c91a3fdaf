"""The CSK responder's admission gate: whether a parsed request is served, and to which proven keys.

Owns ``CskGate`` (its memory of accepted requests and of verified member proofs), ``Refusal`` and the
refusal reasons. ``CskGate.check`` judges a ``SignedRequest`` (``sidecar.core.csk``), in order:

``wrong_cluster``, ``wrong_responder`` (not addressed to me), ``not_member`` (not in the chain snapshot:
chain data decides whom to talk to), ``no_proof``, then the member proof against the measured anchors,
with nothing read from the chain (``bad_proof``, ``untrusted_root``, ``foreign_app``, and ``bad_proof``
when it proves another member than the requester), ``bad_signature`` (against the PROVEN identity key,
not the chain's), ``stale`` (timestamp more than ``freshness_ms`` from now either way, or older than the
freshest accepted request allows), ``replayed`` (same requester and timestamp accepted within the
window), ``rate_limited`` (more than ``MAX_REQUESTS_PER_WINDOW`` accepted from one requester within the
window), ``not_live`` (its heartbeats were not verified recently).

On acceptance it returns the ``ProvenMember``: the CSK is sealed to its proven seal key. State changes
only on acceptance; memory is bounded by members times the per-window limit, entries leave once outside
the window, and at most ``MAX_PROVEN`` verified proofs are remembered (a member's proof is the same on
every request, and verifying one costs four secp256k1 recoveries). Must not do I/O or read a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Literal

from sidecar.core.csk import SignedRequest, verify_request
from sidecar.core.ids import Address, MemberId
from sidecar.core.memberproof import (
    MemberProof,
    ProofAnchors,
    ProofRejected,
    ProvenMember,
    parse_proof,
    verify_member_proof,
)

DEFAULT_FRESHNESS_MS = 30_000
MAX_REQUESTS_PER_WINDOW = 32
MAX_PROVEN = 1024

RefusalReason = Literal[
    "wrong_cluster",
    "wrong_responder",
    "not_member",
    "no_proof",
    "bad_proof",
    "untrusted_root",
    "foreign_app",
    "bad_signature",
    "stale",
    "replayed",
    "rate_limited",
    "not_live",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a CSK request is not served (``detail``: public words for the log, may be empty)."""

    reason: RefusalReason
    detail: str = ""


@dataclass(slots=True)
class CskGate:
    """Decides whether to serve a CSK request; remembers accepted (requester, timestamp) pairs and proofs."""

    freshness_ms: int = DEFAULT_FRESHNESS_MS
    _seen: dict[MemberId, dict[int, None]] = field(default_factory=dict, repr=False)
    _high_water_ms: int | None = field(default=None, repr=False)
    _proven: dict[tuple[MemberProof, ProofAnchors], ProvenMember] = field(default_factory=dict, repr=False)

    def check(
        self,
        signed: SignedRequest,
        *,
        me: MemberId,
        cluster: Address,
        members: Collection[MemberId],
        anchors: ProofAnchors,
        verified_recently: Callable[[MemberId], bool],
        now_ms: int,
    ) -> Refusal | ProvenMember:
        """Judge a request; ``members`` are the snapshot's member ids. Accepted: the proven member."""
        req = signed.request
        newest = now_ms if self._high_water_ms is None else max(now_ms, self._high_water_ms)
        seen = self._seen.get(req.requester, {})
        recent = [t for t in seen if newest - t <= self.freshness_ms]
        proven: list[ProvenMember] = []
        problems = self._problems(
            signed, proven, me=me, cluster=cluster, members=members, anchors=anchors,
            verified_recently=verified_recently, now_ms=now_ms, newest=newest, recent=recent,
        )  # fmt: skip
        refusal = next(problems, None)
        if refusal is not None:
            return refusal
        self._high_water_ms = newest
        self._seen[req.requester] = dict.fromkeys([*recent, req.timestamp_ms])
        self._prune(newest)
        return proven[0]

    def _problems(
        self,
        signed: SignedRequest,
        proven: list[ProvenMember],
        *,
        me: MemberId,
        cluster: Address,
        members: Collection[MemberId],
        anchors: ProofAnchors,
        verified_recently: Callable[[MemberId], bool],
        now_ms: int,
        newest: int,
        recent: list[int],
    ) -> Iterator[Refusal]:
        """Yield the refusals in order, lazily (the proof and the signature are checked only when needed);
        the proven member is appended to ``proven``."""
        req = signed.request
        if req.cluster != cluster:
            yield Refusal("wrong_cluster")
        if req.responder != me:
            yield Refusal("wrong_responder")
        if req.requester not in members:
            yield Refusal("not_member")
        if signed.proof is None:
            yield Refusal("no_proof")
            return
        try:
            member = self.prove(signed.proof, anchors)
        except ProofRejected as exc:
            yield Refusal(exc.reason, exc.detail)
            return
        if member.member_id != req.requester:
            yield Refusal("bad_proof", "the proof is another member's than the requester")
        proven.append(member)
        if not verify_request(req, signed.signature, member.identity_pub):
            yield Refusal("bad_signature")
        ts = req.timestamp_ms
        if abs(now_ms - ts) > self.freshness_ms or newest - ts > self.freshness_ms:
            yield Refusal("stale")
        if ts in recent:
            yield Refusal("replayed")
        if len(recent) >= MAX_REQUESTS_PER_WINDOW:
            yield Refusal("rate_limited")
        if not verified_recently(req.requester):
            yield Refusal("not_live")

    def prove(self, proof_json: object, anchors: ProofAnchors) -> ProvenMember:
        """Parse and verify a proof (remembered once verified); raise ``ProofRejected``."""
        proof = parse_proof(proof_json)
        key = (proof, anchors)
        known = self._proven.get(key)
        if known is not None:
            return known
        member = verify_member_proof(proof, anchors)
        if len(self._proven) >= MAX_PROVEN:
            self._proven.clear()
        self._proven[key] = member
        return member

    def _prune(self, newest: int) -> None:
        for member in list(self._seen):
            kept = {t: None for t in self._seen[member] if newest - t <= self.freshness_ms}
            if kept:
                self._seen[member] = kept
            else:
                del self._seen[member]

    def forget(self, member: MemberId) -> None:
        """Drop a removed member's replay memory."""
        self._seen.pop(member, None)
