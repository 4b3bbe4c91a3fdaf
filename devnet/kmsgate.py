"""The devnet's KMS boot gate: what the dstack KMS does before it releases keys to a booting CVM.

Owns building a node's ``BootInfo`` from the same facts its guest agent will report (app id, compose hash
of the exact app-compose bytes, instance id, device id, measurements) and asking the node's app contract
``isAppAllowed(bootInfo)`` with an ``eth_call``. Must not start or stop anything: the lab acts on the
verdict (an allowed node starts; a denied one never gets keys, like a CVM the KMS refuses).
"""

from __future__ import annotations

import hashlib

from devnet.kms import DevnetKms
from devnet.simulator.config import SimulatorConfig
from devnet.simulator.server import Simulator
from sidecar.chain.contracts import MemberAppClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import BootInfo, BootVerdict


def boot_info_for(config: SimulatorConfig, kms: DevnetKms | None = None) -> BootInfo:
    """Compute the BootInfo the KMS would build for this node (re-reading its app-compose.json now)."""
    sim = Simulator.from_config(config, kms or DevnetKms())
    rtmr0, rtmr1, rtmr2, _ = sim.rtmrs()
    key_provider = hashlib.sha256(sim.key_provider_info.encode()).digest()
    mr_system = hashlib.sha256(sim.mrtd + rtmr0 + rtmr1 + rtmr2 + key_provider).digest()
    return BootInfo(
        app_id=config.app_id,
        compose_hash=Bytes32(sim.compose_hash),
        instance_id=Address(config.instance_id),
        device_id=config.effective_device_id,
        mr_aggregated=Bytes32(sim.mr_aggregated()),
        mr_system=Bytes32(mr_system),
        os_image_hash=config.os_image_hash,
        tcb_status=config.tcb_status,
        advisory_ids=(),
    )


async def evaluate(conn: ChainConnection, boot_info: BootInfo) -> BootVerdict:
    """Ask the node's app contract (its address is the app id) whether this CVM may boot."""
    return await MemberAppClient(conn, boot_info.app_id).is_app_allowed(boot_info)
