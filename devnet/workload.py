"""`attestmesh devnet node restart`: a running node's workload (its sidecar) restarted, import-light.

Owns ``WorkloadLab``, the lab facade of that one verb: the lock, the running check and
``NodePower.restart_workload`` (``devnet.boot``), without the rest of ``devnet.lab`` (chain client, KMS,
simulator, indexer, gateway set-up), so the command adds a few hundred milliseconds, not a second, to a
node's restart. ``devnet.lab.Devnet.restart_node`` does the same through the same ``NodePower`` method.
Must not: boot, power off or change anything but the node's sidecar process and its state record.
"""

from __future__ import annotations

from devnet.boot import NodePower
from devnet.labbase import LabBase
from devnet.state import NodeState


class WorkloadLab(LabBase):
    """The lab, for restarting a node's workload only."""

    def restart_node(self, name: str) -> NodeState:
        """Restart the node's workload (the sidecar container); the interface and the agent stay up."""
        with self._running() as state:
            return NodePower(self.files).restart_workload(state, name)
