"""The cluster at a glance: each member's ``/healthz`` held against what the chain says, and the verdict.

Owns the pure rules of ``attestmesh cluster status``: ``read_health_document`` (a ``/healthz`` body checked
field by field; anything else, hostile or merely malformed, is ``NotAHealthDocument`` with the reason),
``assess`` (per member: answered, healthy, membership digest equal to the chain's digest of its member
list or only to the members' majority, CSK commitment equal to the chain's, signer balance above a floor)
and ``ClusterView`` (the verdicts, the failing members, the summary line and the JSON document, whose shape
is documented in docs/operations.md and versioned by ``SCHEMA``).
Must not: do I/O, read a clock, or let a string from a node reach the terminal unsanitised (control
characters and escape sequences are replaced, lengths capped).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from ops.amounts import format_eth
from ops.render import short
from sidecar.core.status import HEALTHY_PHASE, PHASES

SCHEMA: Final = "attestmesh.cluster-status/1"
MAX_REASON: Final = 240  # characters of a node's reason kept (the JSON); the table shows fewer
MAX_VERSION: Final = 64
_HEX_COMMIT: Final = re.compile(r"[0-9a-f]{7,64}", re.ASCII)
MAX_TRANSPORTS: Final = 8
_HEX32: Final = re.compile(r"0x[0-9a-fA-F]{64}")
# C0/C1 controls, bidi marks and overrides, line separators, the BOM, lone surrogates (unprintable as UTF-8)
_UNPRINTABLE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


class NotAHealthDocument(ValueError):
    """An answer that is not a ``/healthz`` document; the message says which field is wrong (no values)."""


class Agreement(StrEnum):
    """How a member's value compares: with the chain's, only with the members' majority, or neither."""

    CHAIN = "chain"
    MAJORITY = "majority"  # the membership digest only: most members agree, the chain's list differs
    DIFFERS = "differs"
    UNKNOWN = "unknown"  # the member gave no value (no answer, or null)


def clean(text: str, limit: int) -> str:
    """``text`` safe for a terminal: control characters replaced by ``?``, at most ``limit`` characters."""
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class HealthFacts:
    """The fields of a member's ``/healthz`` that the cluster view shows, checked and sanitised."""

    phase: str
    healthy: bool
    reason: str | None
    peers_live: int | None
    peers_desired: int | None
    transport: Mapping[str, Mapping[str, int]]  # the node's own count of its peers by transport and state
    membership_digest: str | None  # lowercase 0x hex
    csk_commitment: str | None  # lowercase 0x hex
    version: str | None
    commit: str | None = None  # ``build.commit``: the git commit the node's code was built from


def _count(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise NotAHealthDocument(f"{where} is not a count")
    return value


def _hex32(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise NotAHealthDocument(f"{where} is not a 32-byte 0x hex value")
    return value.lower()


def _section(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NotAHealthDocument(f"{key} is not an object")
    return value


def _transport(value: object) -> Mapping[str, Mapping[str, int]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_TRANSPORTS:
        raise NotAHealthDocument("peers.transport is not a small object")
    counts: dict[str, dict[str, int]] = {}
    for kind, by_state in value.items():
        if not isinstance(by_state, dict) or len(by_state) > MAX_TRANSPORTS:
            raise NotAHealthDocument("peers.transport is not counts by state")
        states: dict[str, int] = {}
        for state, n in by_state.items():
            states[clean(str(state), 16)] = _count(n, "peers.transport") or 0
        counts[clean(str(kind), 16)] = states
    return counts


def version_cell(facts: HealthFacts) -> str:
    """The version as the table shows it: with the first 7 characters of the build's commit when it is a
    hex commit (``0.1.0 0435bab``), so the table says which code each member runs after a roll."""
    version = facts.version or "-"
    commit = facts.commit
    if commit and _HEX_COMMIT.fullmatch(commit):
        return f"{version} {commit[:7]}"
    return version


def read_health_document(data: object) -> HealthFacts:
    """The facts of a ``/healthz`` body (decoded JSON); ``NotAHealthDocument`` when it is not one."""
    if not isinstance(data, dict):
        raise NotAHealthDocument("the body is not a JSON object")
    phase, healthy, reason = data.get("phase"), data.get("healthy"), data.get("reason", ...)
    if not isinstance(phase, str) or phase not in PHASES:
        raise NotAHealthDocument("phase is not one of the sidecar's phases")
    if not isinstance(healthy, bool):
        raise NotAHealthDocument("healthy is not true or false")
    if healthy and phase != HEALTHY_PHASE:
        raise NotAHealthDocument("healthy in a phase that is not healthy")
    if reason is ... or not (reason is None or isinstance(reason, str)):
        raise NotAHealthDocument("reason is missing or not a string")
    version = data.get("version")
    if not (version is None or isinstance(version, str)):
        raise NotAHealthDocument("version is not a string")
    peers, csk, build = _section(data, "peers"), _section(data, "csk"), _section(data, "build")
    commit = build.get("commit")
    if not (commit is None or isinstance(commit, str)):
        raise NotAHealthDocument("build.commit is not a string")
    return HealthFacts(
        phase=phase,
        healthy=healthy,
        reason=None if reason is None else clean(reason, MAX_REASON),
        peers_live=_count(peers.get("live"), "peers.live"),
        peers_desired=_count(peers.get("desired"), "peers.desired"),
        transport=_transport(peers.get("transport")),
        membership_digest=_hex32(data.get("membership_digest"), "membership_digest"),
        csk_commitment=_hex32(csk.get("commitment"), "csk.commitment"),
        version=None if version is None else clean(version, MAX_VERSION),
        commit=None if commit is None else clean(commit, MAX_VERSION),
    )


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """What a member's ``/healthz`` gave: its HTTP status and facts, or why there are none."""

    status: int | None = None  # None: nothing answered
    facts: HealthFacts | None = None
    error: str | None = None  # set iff ``facts`` is None: did not answer, or not a health document

    @property
    def healthy(self) -> bool:
        """Healthy iff it answered 200 with a document that says so."""
        return self.status == 200 and self.facts is not None and self.facts.healthy


@dataclass(frozen=True, slots=True)
class ChainMember:
    """A member as the chain lists it, with its signer's balance (None when it could not be read)."""

    member_id: str
    app_id: str
    signer: str
    mesh_ip: str
    health_url: str
    balance_wei: int | None = None


@dataclass(frozen=True, slots=True)
class MemberVerdict:
    member: ChainMember
    answer: NodeAnswer
    digest: Agreement
    csk: Agreement
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, object]:
        m, a, f = self.member, self.answer, self.answer.facts
        return {
            "member_id": m.member_id,
            "app_id": m.app_id,
            "signer": m.signer,
            "mesh_ip": m.mesh_ip,
            "health_url": m.health_url,
            "signer_balance_wei": m.balance_wei,
            "http_status": a.status,
            "error": a.error,
            "phase": f and f.phase,
            "healthy": a.healthy,
            "reason": f and f.reason,
            "peers": None if f is None else {
                "live": f.peers_live,
                "desired": f.peers_desired,
                "transport": {k: dict(v) for k, v in sorted(f.transport.items())},
            },
            "membership_digest": f and f.membership_digest,
            "membership_digest_agrees": self.digest.value,
            "csk_commitment": f and f.csk_commitment,
            "csk_commitment_agrees": self.csk.value,
            "version": f and f.version,
            "commit": f and f.commit,
            "ok": self.ok,
            "failures": list(self.failures),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChainFacts:
    """What the members are held against: the chain's values at one block."""

    chain_id: int
    block: int
    cluster: str
    membership_digest: str  # of the member list the chain returns, lowercase 0x hex
    csk_epoch: int
    csk_commitment: str | None  # the current epoch's, lowercase 0x hex; None before the first commit
    min_balance_wei: int | None = None  # a signer below it fails; None: not checked


@dataclass(frozen=True, slots=True)
class ClusterView:
    chain: ChainFacts
    members: tuple[MemberVerdict, ...]
    majority_digest: str | None = None  # the digest more than half of the members report, if any
    failing: tuple[MemberVerdict, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "failing", tuple(v for v in self.members if not v.ok))

    @property
    def ok(self) -> bool:
        """Every member (and at least one) answered healthy and agrees with the chain."""
        return bool(self.members) and not self.failing

    def summary(self) -> str:
        """One line: all well, or how many fail and each failing member named (app id, member id, why)."""
        n = len(self.members)
        where = f"cluster {self.chain.cluster} at block {self.chain.block}"
        if not self.members:
            return f"{where}: FAILING: the chain lists no members"
        if self.ok:
            return f"{where}: OK: all {n} members healthy and agreeing with the chain"
        named = "; ".join(
            f"app {v.member.app_id} (member {short(v.member.member_id)}): {', '.join(v.failures)}"
            for v in self.failing
        )
        return f"{where}: FAILING: {len(self.failing)} of {n} members: {named}"

    def to_json(self) -> dict[str, object]:
        c = self.chain
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "chain": {
                "chain_id": c.chain_id,
                "block": c.block,
                "cluster": c.cluster,
                "member_count": len(self.members),
                "membership_digest": c.membership_digest,
                "csk_epoch": c.csk_epoch,
                "csk_commitment": c.csk_commitment,
                "min_balance_wei": c.min_balance_wei,
            },
            "majority_membership_digest": self.majority_digest,
            "members": [v.to_json() for v in self.members],
            "failing": [v.member.member_id for v in self.failing],
            "summary": self.summary(),
        }


def majority(values: Sequence[str | None], of: int) -> str | None:
    """The value more than half of ``of`` members report, if any."""
    counts = Counter(v for v in values if v is not None)
    if not counts:
        return None
    value, count = counts.most_common(1)[0]
    return value if 2 * count > of else None


def _digest_agreement(digest: str | None, chain: str, most: str | None) -> Agreement:
    if digest is None:
        return Agreement.UNKNOWN
    if digest == chain:
        return Agreement.CHAIN
    return Agreement.MAJORITY if digest == most else Agreement.DIFFERS


def _failures(
    answer: NodeAnswer, digest: Agreement, csk: Agreement, chain: ChainFacts, balance: int | None
) -> tuple[str, ...]:
    facts = answer.facts
    if facts is None:
        found = [answer.error or "no answer"]
    else:
        found = []
        if not answer.healthy:
            why = f": {clean(facts.reason, 80)}" if facts.reason else ""
            found.append(f"not healthy (phase {facts.phase}, HTTP {answer.status}){why}")
        if digest is not Agreement.CHAIN:
            found.append(
                "no membership digest"
                if digest is Agreement.UNKNOWN
                else "membership digest differs from the chain's"
            )
        if chain.csk_commitment is None:
            found.append("no CSK commitment on chain")
        elif csk is not Agreement.CHAIN:
            found.append(
                "no CSK commitment" if csk is Agreement.UNKNOWN else "CSK commitment differs from the chain's"
            )
    if chain.min_balance_wei is not None:
        if balance is None:
            found.append("signer balance unknown")
        elif balance < chain.min_balance_wei:
            found.append(
                f"signer balance {format_eth(balance)} ETH below {format_eth(chain.min_balance_wei)}"
            )
    return tuple(found)


def assess(chain: ChainFacts, members: Sequence[ChainMember], answers: Sequence[NodeAnswer]) -> ClusterView:
    """Hold each member's answer (same order as ``members``) against the chain and the members' majority."""
    if len(members) != len(answers):
        raise ValueError("one answer per member")
    most = majority([None if a.facts is None else a.facts.membership_digest for a in answers], len(members))
    verdicts = []
    for member, answer in zip(members, answers, strict=True):
        facts = answer.facts
        reported = None if facts is None else facts.membership_digest
        digest = _digest_agreement(reported, chain.membership_digest, most)
        commitment = None if facts is None else facts.csk_commitment
        if commitment is None:
            csk = Agreement.UNKNOWN
        else:
            csk = Agreement.CHAIN if commitment == chain.csk_commitment else Agreement.DIFFERS
        failures = _failures(answer, digest, csk, chain, member.balance_wei)
        verdicts.append(MemberVerdict(member, answer, digest, csk, failures))
    return ClusterView(chain, tuple(verdicts), most)
