"""The CSK responder: the answer to a peer's ``POST /v1/csk`` (behind the peer API's HTTP adapter).

Owns ``CskServer``: the order of the checks around the admission gate (``sidecar.core.cskgate``) and what
is served. Malformed → 400; no anchors, no current key, no own proof → 503; the gate's refusals → 403
(membership against this node's confirmed snapshot: an evicted member is ``not_member``, whatever its
proof); then the key of the epoch the request names, only when held and verified against that epoch's
commitment (the current one, or the previous one within its grace period), else 503 ``epoch_not_held``;
sealed to the requester's PROVEN seal key and signed with this node's member proof. Every refusal is
counted by reason and logged ``csk.request_refused``.

The keys come from the ``ServedKeys`` the keeper implements (``sidecar.drivers.csk``). Must not: log,
repr or return a key except sealed to a proven member's seal key; consult chain keys for whom to seal to.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Protocol

import structlog

from sidecar.core import csk as cskcore
from sidecar.core.cskgate import CskGate, Refusal
from sidecar.core.ids import Address, SecretBytes
from sidecar.core.liveness import Liveness
from sidecar.core.memberproof import MemberProof, ProofAnchors, ProvenMember
from sidecar.drivers.clock import Clock, wall_ms
from sidecar.drivers.identity import NodeIdentity
from sidecar.drivers.nodestate import NodeState
from sidecar.http.peerapi import CskAnswer
from sidecar.metricvocab import CskRefusal
from sidecar.observability import Metrics

log = structlog.get_logger("sidecar.csk")


class ServedKeys(Protocol):
    """What the responder needs of the keeper: the keys it holds verified and this node's proof."""

    @property
    def anchors(self) -> ProofAnchors | None: ...

    @property
    def proof(self) -> MemberProof | None: ...

    @property
    def peering_error(self) -> str: ...

    def value(self) -> SecretBytes | None: ...

    def key_of(self, epoch: int) -> SecretBytes | None: ...


class CskServer:
    """Answers peers' CSK requests for one node."""

    def __init__(
        self,
        keys: ServedKeys,
        *,
        cluster: Address,
        state: NodeState,
        liveness: Liveness,
        metrics: Metrics,
        clock: Clock,
        gate: CskGate,
    ) -> None:
        self.keys = keys
        self.cluster = cluster
        self.state = state
        self.liveness = liveness
        self.metrics = metrics
        self.clock = clock
        self.gate = gate

    def respond(self, body: object, remote_ip: IPv4Address) -> CskAnswer:
        """Answer a peer's CSK request (``CskResponder`` for the peer API)."""
        try:
            signed = cskcore.parse_request(body)
        except cskcore.CskWireError as exc:
            return self._refuse(400, "malformed", str(exc))
        keys, me, ident = self.keys, self.state.member_id, self.state.identity
        if keys.anchors is None:
            return self._refuse(503, "anchors_missing", keys.peering_error)
        if keys.value() is None or me is None or ident is None:
            return self._refuse(503, "not_held", "cluster shared key not held yet")
        if keys.proof is None:
            return self._refuse(503, "no_own_proof", "this node has no member proof yet")
        now = self.clock.monotonic()
        verdict = self.gate.check(
            signed,
            me=me,
            cluster=self.cluster,
            members=self.state.members_by_id().keys(),
            anchors=keys.anchors,
            verified_recently=lambda m: self.liveness.is_live(m, now),
            now_ms=wall_ms(self.clock),
        )
        if isinstance(verdict, Refusal):
            return self._refuse(403, verdict.reason, verdict.reason.replace("_", " "), verdict.detail)
        return self._serve(signed, verdict, ident, keys.proof, remote_ip)

    def _serve(
        self,
        signed: cskcore.SignedRequest,
        member: ProvenMember,
        ident: NodeIdentity,
        proof: MemberProof,
        remote_ip: IPv4Address,
    ) -> CskAnswer:
        """Answer an admitted request with the key of the epoch it names, sealed to the proven seal key."""
        epoch = signed.request.epoch
        key = self.keys.key_of(epoch)  # a member in our confirmed snapshot, asking an epoch we hold verified
        if key is None:
            return self._refuse(503, "epoch_not_held", f"epoch {epoch} of the cluster shared key not held")
        sealed = cskcore.seal(key, member.seal_pub)  # the PROVEN seal key, whatever the chain shows
        self.metrics.csk_served()
        log.info("csk.served", requester=str(signed.request.requester), epoch=epoch, remote=str(remote_ip))
        return CskAnswer(200, cskcore.sign_response(signed.request, sealed, ident.identity_key, proof))

    def _refuse(self, status: int, reason: CskRefusal, message: str, detail: str = "") -> CskAnswer:
        self.metrics.csk_refused(reason)
        log.info("csk.request_refused", reason=reason, **({"detail": detail} if detail else {}))
        return CskAnswer(status, {"error": message, "reason": reason})
