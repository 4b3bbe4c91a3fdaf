"""The start-up gate of the measured trust anchors: the environment must not override the compose.

Owns ``AnchorGate``: given this process's environment and the KMS roots it trusts, it checks what the
guest agent's ``Info`` measures (``sidecar.core.measured``) before any key is derived, and the node's own
signer proof once it is, and on a problem logs each one (``config.measured_refused``, naming the
variable) and hands the list to ``on_refused`` (the daemon exits 2 with them). The rules are in
``sidecar.core.measured``; this module only runs them at the right moment.
Must not: log the environment (only the problems, which name measured values), or retry: a measured
mismatch does not heal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from sidecar.core.ids import Address
from sidecar.core.measured import kms_root_problems, measured_problems
from sidecar.core.sigchain import SigChainProof
from sidecar.dstack.agent import NodeInfo

log = structlog.get_logger("sidecar.anchors")


@dataclass
class AnchorGate:
    """Checks the measured anchors once the guest agent answers; ``on_refused`` gets every problem."""

    env: Mapping[str, str]
    kms_roots: tuple[Address, ...]
    on_refused: Callable[[list[str]], None] = field(default=lambda problems: None)

    def check_info(self, info: NodeInfo) -> list[str]:
        """The problems of the environment against the compose ``info`` measures (reported)."""
        return self._report(measured_problems(info.app_compose, info.compose_hash, self.env))

    def check_proof(self, proof: SigChainProof) -> list[str]:
        """The problem when the node's own keys come from a KMS root it does not trust (reported)."""
        return self._report(kms_root_problems(proof.kms_root, self.kms_roots))

    def _report(self, problems: list[str]) -> list[str]:
        if problems:
            for problem in problems:
                log.error("config.measured_refused", problem=problem)
            self.on_refused(problems)
        else:
            log.debug("config.measured_checked")
        return problems
