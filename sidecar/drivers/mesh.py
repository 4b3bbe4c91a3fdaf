"""The mesh step: bring the WireGuard device up with this node's address and apply the peer delta.

Owns the device (opened on first use from an injected factory, so a unit test passes a fake), the peer
screen of each pass (``sidecar.core.peerscreen``: the unusable records are excluded from the plan, logged
once as ``peer.excluded`` when they become so and ``peer.readmitted`` when fixed, counted per reason, and
the device is "in sync" with the plan it can apply — one bad record never holds back the mesh), asking the
transport (``sidecar.transport.seam.Transport``) which endpoint the device gets for each peer (the peer's
``ip:port``, or a loopback bridge of the gateway transport), the desired state of the previous pass (the
endpoint-roaming rule needs it), which members are configured, and telling the caller when the mesh IP
first comes up or changes (``on_mesh_up``) and when members left the cluster (``on_member_removed``).
A WireGuard failure (or the gateway listener failing to bind) sets the device not up — whatever was up
before — so the phase reads "mesh device not up: …" until a pass succeeds again; the warning is
rate-limited.
Must not: read the chain or the agent, or tear the interface down (it outlives the sidecar).
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface

import structlog

from sidecar.core.ids import Address, MemberId
from sidecar.core.model import MemberRecord
from sidecar.core.outcome import FactsPart, Outcome, stop
from sidecar.core.peerplan import DesiredPeer, PeerPlan, WgKey, plan_peers
from sidecar.core.peerscreen import Excluded, PeerScreen, screen_peers
from sidecar.core.repeats import Repeats
from sidecar.core.snapshot import Snapshot, desired_peers
from sidecar.drivers.clock import Clock
from sidecar.drivers.identity import NodeIdentity
from sidecar.drivers.steps import warn_limited
from sidecar.observability import Metrics
from sidecar.settings import MeshSettings
from sidecar.transport.link import LocalMember
from sidecar.transport.seam import Transport
from sidecar.wg.device import InterfaceConfig, WgDevice, WgError, peer_problem

log = structlog.get_logger("sidecar.control")


class MeshStep:
    """Reconcile the WireGuard device against the snapshot; apply only the delta."""

    def __init__(
        self,
        settings: MeshSettings,
        open_device: Callable[[], WgDevice],
        metrics: Metrics,
        clock: Clock,
        repeats: Repeats,
        *,
        cluster: Address,
        transport: Transport,
        on_mesh_up: Callable[[IPv4Address], None] = lambda ip: None,
        on_member_removed: Callable[[MemberId], None] = lambda member: None,
    ) -> None:
        self.settings = settings
        self.open_device = open_device
        self.metrics = metrics
        self.clock = clock
        self.repeats = repeats
        self.cluster = cluster
        self.transport = transport
        self.on_mesh_up = on_mesh_up
        self.on_member_removed = on_member_removed
        self.device: WgDevice | None = None
        self.configured: frozenset[MemberId] = frozenset()
        self.screen = PeerScreen()  # the last pass's usable and excluded records
        self._up = False
        self._previous: dict[WgKey, DesiredPeer] = {}
        self._announced: IPv4Address | None = None
        self._known: set[MemberId] = set()

    async def run(self, ident: NodeIdentity, snap: Snapshot, mine: MemberRecord) -> Outcome:
        try:
            await self._ensure_up(ident, snap, mine)
            in_sync = await self._reconcile(ident, snap, mine)
        except (WgError, OSError) as exc:
            transient = exc.transient if isinstance(exc, WgError) else True
            error = str(exc) if isinstance(exc, WgError) else f"gateway transport: {exc}"
            self._up = False
            warn_limited(self.repeats, "mesh.failed", error, self.clock.monotonic(), transient=transient)
            facts: FactsPart = {"device_up": False, "device_in_sync": False, "mesh_error": error}
            return stop(facts, "transient" if transient else "terminal")
        self.repeats.succeeded("mesh.failed")
        current = {m.member_id for m in snap.members}
        for gone in self._known - current:
            self.on_member_removed(gone)
        self._known = current
        return Outcome({"device_up": True, "device_in_sync": in_sync, "mesh_error": ""})

    async def _ensure_up(self, ident: NodeIdentity, snap: Snapshot, mine: MemberRecord) -> None:
        mesh = self.settings
        if self.device is None:
            self.device = self.open_device()
        config = InterfaceConfig(
            name=mesh.interface,
            private_key=ident.wg_key,
            listen_port=mesh.listen_port,
            address=IPv4Interface(f"{mine.mesh_ip}/{snap.mesh.prefix_length}"),
        )
        await self.device.ensure_up(config)
        if not self._up:
            log.info("mesh.interface_up", interface=mesh.interface, mesh_ip=str(mine.mesh_ip))
        self._up = True
        if self._announced != mine.mesh_ip:
            self._announced = mine.mesh_ip
            self.on_mesh_up(mine.mesh_ip)

    async def _reconcile(self, ident: NodeIdentity, snap: Snapshot, mine: MemberRecord) -> bool:
        """Apply the peer delta for the usable records; return whether the device now equals that plan."""
        assert self.device is not None
        screen = screen_peers(snap.members, mine, snap.mesh)
        records = snap.by_id()
        me = LocalMember(mine.member_id, self.cluster, ident.identity_key)
        routed = await self.transport.route(
            me, [(p, records[p.member_id]) for p in desired_peers(screen.usable)]
        )
        refused = [
            Excluded(p.member_id, "device_refused", f"the WireGuard device would refuse it: {problem}")
            for p in routed
            if (problem := peer_problem(p)) is not None
        ]
        self._screened(screen.with_excluded(refused))
        gone = {e.member_id for e in refused}
        desired = [p for p in routed if p.member_id not in gone]
        actual = await self.device.read_peers()
        plan = plan_peers(desired, actual, self._previous, self.clock.wall())
        if plan.empty:
            log.debug("mesh.unchanged", peers=len(desired))
            self.metrics.reconcile_passes.labels(result="unchanged").inc()
        else:
            await self.device.apply(plan)
            self._log_plan(plan)
            self.metrics.reconcile_passes.labels(result="changed").inc()
        self._previous = {p.public_key: p for p in desired}
        after = await self.device.read_peers()
        keys = {p.public_key for p in after}
        self.transport.observe(after, {p.public_key.raw: p.member_id for p in desired})
        self.configured = frozenset(p.member_id for p in desired if p.public_key in keys)
        return plan_peers(desired, after, self._previous, self.clock.wall()).empty

    def _screened(self, screen: PeerScreen) -> None:
        """Keep the pass's screen; log each record that becomes excluded (or changes reason) or is let back
        in, once, and export the counts per reason."""
        before = {e.member_id: e for e in self.screen.excluded}
        now = {e.member_id: e for e in screen.excluded}
        members = {m.member_id for m in screen.usable}
        for member, entry in now.items():
            if before.get(member) != entry:
                log.warning("peer.excluded", member_id=str(member), reason=entry.reason, detail=entry.detail)
        for member in before.keys() - now.keys():
            if member in members:
                log.info("peer.readmitted", member_id=str(member))
        self.screen = screen
        self.metrics.set_peers_excluded(screen.counts())

    def _log_plan(self, plan: PeerPlan) -> None:
        for peer in plan.add:
            log.info("peer.added", member_id=str(peer.member_id), endpoint=peer.endpoint)
            self.metrics.peer_changes.labels(change="added").inc()
        for key in plan.remove:
            log.info("peer.removed", wg_pub=key.hex)
            self.metrics.peer_changes.labels(change="removed").inc()
        for peer in plan.update:
            log.info("peer.updated", member_id=str(peer.member_id), endpoint=peer.endpoint)
            self.metrics.peer_changes.labels(change="updated").inc()

    async def close(self) -> None:
        await self.transport.close()
        if self.device is not None:
            await self.device.close()
