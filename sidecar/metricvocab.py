"""The label vocabularies of the sidecar's metrics: every closed set a label may take, and the value shapes.

Owns the ``Literal`` types of each label (``PeerState``, ``CskRefusal``, ``PushRejection``, …), their tuples
(``PEER_STATES``, ``CSK_REFUSALS``, …: ``Metrics`` creates every series at zero from them and checks each
label against them), ``PHASES``, the histogram buckets of calls per pass, and the membership fingerprint
(the first bits of the membership digest as a number Prometheus can compare across nodes).

Must not: register or export anything (``sidecar.observability.Metrics`` does), or hold a value that names
a key, an address, a member id or a block.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from sidecar.core.phases import ORDER
from sidecar.core.quorum import RPC_DISAGREEMENT, RPC_QUORUM_UNAVAILABLE

PeerState = Literal["desired", "configured", "live"]
PeerChange = Literal["added", "removed", "updated"]
ReconcileResult = Literal["changed", "unchanged", "error"]
ReconcileStep = Literal["identity", "chain", "membership", "endpoint", "mesh", "csk"]
StepFailure = Literal["transient", "terminal"]
HeartbeatRejection = Literal[
    "malformed", "unknown_sender", "bad_signature", "wrong_source", "stale", "future", "replayed"
]
LivenessDirection = Literal["up", "down"]
CskRefusal = Literal[
    "malformed",
    "wrong_cluster",
    "wrong_responder",
    "not_member",
    "bad_signature",
    "stale",
    "replayed",
    "not_live",
    "not_held",
    "rate_limited",
    "no_proof",
    "bad_proof",
    "foreign_app",
    "untrusted_root",
    "anchors_missing",
    "no_own_proof",
    "epoch_not_held",
]
CskPullResult = Literal["ok", "refused", "unreachable", "invalid", "unproven"]
HttpSurface = Literal["health", "app", "peer"]
ConnectionDrop = Literal["over_limit", "header_timeout"]
ChainErrorKind = Literal["transient", "terminal"]
RegistrationResult = Literal["ok", "failed"]
EndpointUpdate = Literal["sent", "failed", "deferred"]
PushRejection = Literal[
    "bad_signature",
    "wrong_indexer",
    "wrong_cluster",
    "gap",
    "replay",
    "out_of_order",
    "reorg",
    "malformed",
    "crosscheck",
]
EventMode = Literal["push", "poll"]
#: Who made a JSON-RPC call: a reconcile pass, the chain-log poller, the push subscriber, anything else.
RpcSource = Literal["pass", "poll", "push", "other"]

PEER_STATES: Final[tuple[str, ...]] = get_args(PeerState)
PEER_CHANGES: Final[tuple[str, ...]] = get_args(PeerChange)
RECONCILE_RESULTS: Final[tuple[str, ...]] = get_args(ReconcileResult)
RECONCILE_STEPS: Final[tuple[str, ...]] = get_args(ReconcileStep)
STEP_FAILURES: Final[tuple[str, ...]] = get_args(StepFailure)
HEARTBEAT_REJECTIONS: Final[tuple[str, ...]] = get_args(HeartbeatRejection)
LIVENESS_DIRECTIONS: Final[tuple[str, ...]] = get_args(LivenessDirection)
CSK_REFUSALS: Final[tuple[str, ...]] = get_args(CskRefusal)
CSK_PULL_RESULTS: Final[tuple[str, ...]] = get_args(CskPullResult)
HTTP_SURFACES: Final[tuple[str, ...]] = get_args(HttpSurface)
CONNECTION_DROPS: Final[tuple[str, ...]] = get_args(ConnectionDrop)
CHAIN_ERROR_KINDS: Final[tuple[str, ...]] = get_args(ChainErrorKind)
RPC_QUORUM_FAILURES: Final[tuple[str, ...]] = (RPC_DISAGREEMENT, RPC_QUORUM_UNAVAILABLE)
REGISTRATION_RESULTS: Final[tuple[str, ...]] = get_args(RegistrationResult)
ENDPOINT_UPDATES: Final[tuple[str, ...]] = get_args(EndpointUpdate)
PUSH_REJECTIONS: Final[tuple[str, ...]] = get_args(PushRejection)
EVENT_MODES: Final[tuple[str, ...]] = get_args(EventMode)
RPC_SOURCES: Final[tuple[str, ...]] = get_args(RpcSource)
#: Buckets of ``attestmesh_reconcile_pass_rpc_calls``: a pass at a pushed pin costs 1-5 calls, a head read
#: adds 2, a membership read or a registration more.
PASS_RPC_BUCKETS: Final = (0, 1, 2, 3, 5, 8, 13, 21, 34)

PHASES: Final[tuple[str, ...]] = tuple(p.value for p in ORDER)

WEI_PER_ETHER: Final = 10**18
NAN: Final = float("nan")
#: Bits of the membership digest in ``attestmesh_membership_digest_fingerprint``: a float64 holds integers
#: exactly up to 2**53, and two different member sets share 48 bits with a chance of 2**-48.
FINGERPRINT_BITS: Final = 48


def membership_fingerprint(digest: str) -> int:
    """The first ``FINGERPRINT_BITS`` of a ``0x`` hex membership digest, as an integer."""
    raw = bytes.fromhex(digest.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError("a membership digest is 32 bytes")
    return int.from_bytes(raw[: FINGERPRINT_BITS // 8], "big")
