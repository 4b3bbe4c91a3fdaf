"""Agreement across JSON-RPC providers: which snapshot a quorum of them vouches for, or why none.

Owns the rule a multi-provider read follows. Each provider is asked for its head; the snapshot block is the
highest block at least ``quorum`` providers have reached, minus the confirmations (``confirmed_block``).
Each provider then reads the snapshot at that block, pinned by the hash it reports for it
(``ProviderAnswer``). ``agree`` accepts a snapshot only when at least ``quorum`` providers return the same
block number, block hash and snapshot: the membership digest (the sorted member ids), every member record
(keys, endpoints, mesh IPs: what the device is built from), the CSK commitment, the mesh CIDR and the boot
verdict. Anything else is a named reason: ``rpc_disagreement`` (providers answered differently: which ones,
by index, and what differs) or ``rpc_quorum_unavailable`` (too few answered). Providers are named by
their index in ``ATTESTMESH_RPC_URLS`` only, never by URL (a URL can carry an API key).

``RpcView`` is what ``/healthz`` and the metrics show of the last read. Must not do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.core.digest import membership_digest
from sidecar.core.ids import Bytes32
from sidecar.core.snapshot import Snapshot

RPC_DISAGREEMENT = "rpc_disagreement"
RPC_QUORUM_UNAVAILABLE = "rpc_quorum_unavailable"


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """One provider's snapshot, read at ``block`` pinned by the ``block_hash`` that provider reported."""

    provider: int
    head: int
    block_hash: Bytes32
    snapshot: Snapshot

    @property
    def block(self) -> int:
        return self.snapshot.block

    def same(self, other: ProviderAnswer) -> bool:
        """The same block, hash and snapshot (every field: members, commitment, mesh, verdict)."""
        return self.block_hash == other.block_hash and self.snapshot == other.snapshot


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    """A provider that did not answer this read (its error already scrubbed of any URL)."""

    provider: int
    error: str


@dataclass(frozen=True, slots=True)
class QuorumVerdict:
    """The outcome of one multi-provider read: the accepted answer, or a named ``reason`` and ``detail``."""

    providers: int
    quorum: int
    accepted: ProviderAnswer | None
    agreeing: tuple[int, ...]  # the providers behind the accepted answer (or the largest group)
    dissenting: tuple[int, ...]  # answered, but not with the accepted (or largest) answer
    failed: tuple[int, ...]  # did not answer
    reason: str  # "" when accepted
    detail: str  # human text naming providers by index; "" when all answered alike

    @property
    def head(self) -> int | None:
        """The highest head among the agreeing providers."""
        return None if self.accepted is None else self.accepted.head


@dataclass(frozen=True, slots=True)
class RpcView:
    """What ``/healthz`` shows of the providers after the last read (indices only)."""

    providers: int = 1
    quorum: int = 1
    up: tuple[int, ...] = ()
    agreeing: tuple[int, ...] = ()
    dissenting: tuple[int, ...] = ()
    reason: str = ""

    @classmethod
    def of(cls, verdict: QuorumVerdict) -> RpcView:
        up = tuple(sorted((*verdict.agreeing, *verdict.dissenting)))
        return cls(
            verdict.providers, verdict.quorum, up, verdict.agreeing, verdict.dissenting, verdict.reason
        )


def confirmed_block(heads: Sequence[int], quorum: int, confirmations: int) -> int | None:
    """The block a quorum can vouch for: the ``quorum``-th highest head, ``confirmations`` deep (never below
    0). None when fewer than ``quorum`` providers reported a head."""
    if quorum < 1 or confirmations < 0:
        raise ValueError("quorum must be at least 1 and confirmations non-negative")
    if len(heads) < quorum:
        return None
    return max(0, sorted(heads, reverse=True)[quorum - 1] - confirmations)


def _short(value: Bytes32) -> str:
    return str(value)[:10] + "…"


def _names(providers: Sequence[int]) -> str:
    word = "provider" if len(providers) == 1 else "providers"
    return f"{word} {', '.join(str(p) for p in providers)}"


def differences(a: ProviderAnswer, b: ProviderAnswer) -> list[str]:
    """What differs between two answers, in the operator's terms."""
    found = []
    if a.block != b.block:
        found.append(f"block {a.block} vs {b.block}")
    if a.block_hash != b.block_hash:
        found.append(f"block hash {_short(a.block_hash)} vs {_short(b.block_hash)}")
    ids_a = membership_digest(m.member_id for m in a.snapshot.members)
    ids_b = membership_digest(m.member_id for m in b.snapshot.members)
    if ids_a != ids_b:
        found.append(f"membership digest {_short(ids_a)} vs {_short(ids_b)}")
    elif a.snapshot.members != b.snapshot.members:
        found.append("member records")
    if a.snapshot.commitment != b.snapshot.commitment:
        found.append("CSK commitment")
    if a.snapshot.mesh != b.snapshot.mesh:
        found.append("mesh CIDR")
    if a.snapshot.verdict != b.snapshot.verdict:
        found.append("boot verdict")
    if not found and a.snapshot != b.snapshot:
        found.append("snapshot")
    return found


def agree(
    answers: Sequence[ProviderAnswer], failures: Sequence[ProviderFailure], *, providers: int, quorum: int
) -> QuorumVerdict:
    """Accept the answer at least ``quorum`` providers gave identically, when exactly one answer reaches the
    largest such group; otherwise name the disagreement or the shortfall (nothing is accepted then)."""
    if not 1 <= quorum <= providers:
        raise ValueError(f"quorum {quorum} must be between 1 and the {providers} providers")
    groups: list[list[ProviderAnswer]] = []
    for answer in sorted(answers, key=lambda a: a.provider):
        group = next((g for g in groups if g[0].same(answer)), None)
        if group is None:
            groups.append([answer])
        else:
            group.append(answer)
    groups.sort(key=lambda g: (-len(g), g[0].provider))
    failed = tuple(sorted(f.provider for f in failures))
    failed_text = "; ".join(
        f"provider {f.provider}: {f.error}" for f in sorted(failures, key=lambda f: f.provider)
    )
    if not groups:
        detail = f"no provider answered (quorum {quorum} of {providers})"
        return QuorumVerdict(
            providers, quorum, None, (), (), failed, RPC_QUORUM_UNAVAILABLE, f"{detail}; {failed_text}"
        )
    top = groups[0]
    agreeing = tuple(a.provider for a in top)
    dissenting = tuple(sorted(a.provider for g in groups[1:] for a in g))
    tied = len(groups) > 1 and len(groups[1]) == len(top)
    dissent = [
        f"{_names([a.provider for a in g])} {'disagree' if len(g) > 1 else 'disagrees'} with "
        f"{_names(agreeing)}: {', '.join(differences(top[0], g[0]))}"
        for g in groups[1:]
    ]
    if len(top) >= quorum and not tied:
        best = max(top, key=lambda a: a.head)  # the same snapshot: report the highest head among them
        return QuorumVerdict(providers, quorum, best, agreeing, dissenting, failed, "", "; ".join(dissent))
    if dissent:
        detail = "; ".join(dissent) + f" (quorum {quorum} of {providers})"
        if failed:
            detail += f"; {failed_text}"
        return QuorumVerdict(providers, quorum, None, agreeing, dissenting, failed, RPC_DISAGREEMENT, detail)
    detail = f"{len(top)} of {providers} providers answered, quorum {quorum}; {failed_text}"
    return QuorumVerdict(
        providers, quorum, None, agreeing, dissenting, failed, RPC_QUORUM_UNAVAILABLE, detail
    )
