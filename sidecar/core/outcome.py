"""What one reconcile step reports back: its part of the facts, whether the pass goes on, and a requeue hint.

Owns ``Outcome`` (controller-runtime's ``Result``, adapted: a step decides, the controller folds) and
``FactsPart``, the subset of ``Facts`` fields one step observed. ``fold`` applies a part to the facts of
the previous pass, so a fact a step did not observe this pass (because an earlier step stopped it) keeps
its last value — the degraded rule in ``sidecar.core.phases`` depends on that. Must not do I/O.

Failure classes: ``transient`` (retry on the error backoff) and ``terminal`` (report, do not retry until
something changes); ``None`` when the step succeeded or is merely waiting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from sidecar.core.phases import Facts

Failure = Literal["transient", "terminal"]


class FactsPart(TypedDict, total=False):
    """The ``Facts`` fields one step observed (each key is a ``Facts`` field of the same type)."""

    agent_ok: bool
    agent_error: str
    chain_ok: bool
    chain_error: str
    chain_id_ok: bool
    chain_mismatch: str
    chain_quorum: str
    boot_allowed: bool | None
    boot_reason: str
    lost_state: bool
    registered: bool
    register_error: str
    device_up: bool
    device_in_sync: bool
    mesh_error: str
    csk_held: bool
    csk_error: str
    other_members: int
    live_peers: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """One step's result: ``facts`` observed, ``proceed`` to the next step, ``requeue`` in seconds (None:
    no opinion, the controller's schedule applies), and the ``failure`` class when the step failed."""

    facts: FactsPart = field(default_factory=FactsPart)
    proceed: bool = True
    requeue: float | None = None
    failure: Failure | None = None


def stop(facts: FactsPart, failure: Failure | None = None, requeue: float | None = None) -> Outcome:
    """Return an outcome that ends the pass here."""
    return Outcome(facts, proceed=False, requeue=requeue, failure=failure)


def fold(facts: Facts, part: FactsPart) -> Facts:
    """Return ``facts`` with the observed part applied."""
    return dataclasses.replace(facts, **part)
