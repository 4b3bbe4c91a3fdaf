"""One node's reconcile machinery, wired: the steps, the CSK keeper, the controller and what they share.

Owns ``build_node``, the part of the composition root that wires a pass: each step gets its injected
dependencies (the ``ClusterChain``, the guest agent's ``KeySource``, the device factory, the CSK fetcher,
the one ``Clock``, one ``Repeats`` for rate-limited warnings) and the narrow settings group it needs; the
``NodeState`` is created once and handed to the controller (its writer) and the CSK keeper (a reader).
``Node`` holds the result and closes what it opened. The daemon calls it with the parts it shares with
the event source (chain connection, state store); unit tests call it with fakes. Must not: start tasks,
bind sockets or patch anything after construction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from sidecar.chain.artifacts import ArtifactError, load_artifact
from sidecar.core.ids import MemberId
from sidecar.core.keys import KeyScope
from sidecar.core.liveness import Liveness
from sidecar.core.memberproof import ProofAnchors, member_app_code_hash
from sidecar.core.repeats import Repeats
from sidecar.drivers.anchors import AnchorGate
from sidecar.drivers.chainlink import ChainLink, ClusterChain
from sidecar.drivers.clock import Clock, SystemClock, wall_ms
from sidecar.drivers.control import Controller, Steps
from sidecar.drivers.csk import CskFetcher, CskKeeper, PeerApiFetcher
from sidecar.drivers.events import EventSource
from sidecar.drivers.identity import KeySource
from sidecar.drivers.mesh import MeshStep
from sidecar.drivers.nodestate import NodeState
from sidecar.drivers.readsource import ReadPlanner
from sidecar.drivers.steps import ChainStep, EndpointStep, IdentityStep, MembershipStep, own_endpoint
from sidecar.drivers.store import StateStore
from sidecar.observability import Metrics
from sidecar.settings import ChainSettings, MeshSettings, Settings
from sidecar.transport.gateway import GatewayCarrier
from sidecar.transport.link import GatewayOptions
from sidecar.transport.seam import Transport
from sidecar.wg.device import WgDevice
from sidecar.wg.select import open_device


@dataclass
class Node:
    """One node's reconcile machinery, built by ``build_node``: the shared state, the steps (the mesh step
    owns the device, the CSK keeper the key) and the controller; ``close`` releases what was opened."""

    state: NodeState
    mesh: MeshStep
    csk: CskKeeper
    controller: Controller
    closers: list[Callable[[], Awaitable[None]]]

    async def close(self) -> None:
        for close in self.closers:
            await close()


def build_node(
    settings: Settings,
    *,
    agent: KeySource,
    metrics: Metrics,
    liveness: Liveness,
    clock: Clock | None = None,
    chain: ClusterChain | None = None,
    store: StateStore | None = None,
    fetcher: CskFetcher | None = None,
    device: Callable[[], WgDevice] | None = None,
    transport: Transport | None = None,
    events: EventSource | None = None,
    planner: ReadPlanner | None = None,
    on_mesh_up: Callable[[IPv4Address], None] = lambda ip: None,
    on_member_removed: Callable[[MemberId], None] | None = None,
    on_carrier_up: Callable[[MemberId], None] = lambda member: None,
    anchors: AnchorGate | None = None,
) -> Node:
    """Wire the steps and the controller of one node; each part gets the narrow settings group it needs.
    Parts not given are the real ones (a unit test passes fakes for chain, fetcher, device and clock);
    ``planner`` lets the chain step read at a block the event source already knows (push mode);
    ``anchors`` checks the measured trust anchors when the identity is first derived (the daemon's);
    ``on_carrier_up`` hears of every gateway stream that opens (the daemon greets that peer at once)."""
    clock = clock or SystemClock()
    chain, fetcher, closers = _real_ports(settings, metrics, chain, fetcher)
    state, repeats = NodeState(), Repeats()
    csk = CskKeeper(
        cluster=settings.chain.cluster,
        chain_id=settings.chain.chain_id,
        anchors=proof_anchors(settings.chain),
        mesh=settings.mesh,
        state=state,
        agent=agent,
        chain=chain,
        store=store or StateStore(settings.state_dir),
        fetcher=fetcher,
        liveness=liveness,
        metrics=metrics,
        clock=clock,
        repeats=repeats,
    )

    def forget(member: MemberId) -> None:
        csk.forget(member)
        (on_member_removed or liveness.forget)(member)

    mesh = _mesh_step(
        settings,
        metrics,
        clock,
        repeats,
        device=device,
        transport=transport or _transport(settings.mesh, metrics, clock, on_carrier_up),
        on_mesh_up=on_mesh_up,
        on_member_removed=forget,
    )
    steps = Steps(
        identity=IdentityStep(agent, KeyScope(settings.chain.chain_id, settings.chain.cluster), anchors),
        chain=ChainStep(chain, metrics, planner),
        membership=MembershipStep(chain, metrics, own_endpoint(settings.mesh)),
        endpoint=EndpointStep(chain, own_endpoint(settings.mesh), repeats, metrics),
        mesh=mesh,
        csk=csk,
    )
    controller = Controller(
        steps,
        state,
        cluster=settings.chain.cluster,
        liveness=liveness,
        metrics=metrics,
        clock=clock,
        resync_interval=settings.chain.resync_interval,
        events=events,
        resync_interval_pushed=settings.events.resync_interval_pushed,
    )
    return Node(state, mesh, csk, controller, [*closers, mesh.close])


def proof_anchors(chain: ChainSettings) -> ProofAnchors | str:
    """The measured anchors member proofs are checked against, or why there are none (the node then
    neither serves nor accepts the CSK from peers). The member app's init code hash comes from the
    compiled ``ClusterMemberApp`` artifact the image carries."""
    missing = [
        name
        for name, value in (
            ("ATTESTMESH_MEMBER_APP_FACTORY", chain.member_app_factory),
            ("ATTESTMESH_KMS_ROOTS", chain.kms_roots),
        )
        if not value
    ]
    if missing:
        return " and ".join(missing) + " not set: member proofs cannot be checked"
    assert chain.member_app_factory is not None and chain.kms_roots is not None
    try:
        code_hash = member_app_code_hash(load_artifact("ClusterMemberApp").bytecode, chain.cluster)
    except (ArtifactError, ValueError) as exc:
        return f"the ClusterMemberApp artifact is unusable: {exc}"
    return ProofAnchors(
        chain_id=chain.chain_id,
        cluster=chain.cluster,
        member_app_factory=chain.member_app_factory,
        member_app_code_hash=code_hash,
        kms_roots=frozenset(chain.kms_roots),
    )


def _real_ports(
    settings: Settings, metrics: Metrics, chain: ClusterChain | None, fetcher: CskFetcher | None
) -> tuple[ClusterChain, CskFetcher, list[Callable[[], Awaitable[None]]]]:
    """The chain and the CSK fetcher not given, opened for real; and how to close what was opened here."""
    closers: list[Callable[[], Awaitable[None]]] = []
    if chain is None:
        chain = link = ChainLink(settings.chain, metrics)
        closers.append(link.close)
    if fetcher is None:
        fetcher = client = PeerApiFetcher(settings.mesh.peer_api_port, settings.mesh.csk_request_timeout)
        closers.append(client.close)
    return chain, fetcher, closers


def _transport(
    settings: MeshSettings, metrics: Metrics, clock: Clock, on_carrier_up: Callable[[MemberId], None]
) -> Transport:
    """The node's carriers: the gateway carrier when a gateway domain is configured, direct always."""
    gateway = None
    if settings.gateway_domain is not None:
        gateway = GatewayCarrier(
            GatewayOptions(port=settings.gateway_port, wg_port=settings.listen_port),
            metrics,
            wall_ms=lambda: wall_ms(clock),
            monotonic=clock.monotonic,
            on_stream_opened=on_carrier_up,
        )
    return Transport(metrics, gateway=gateway, wall=clock.wall)


def _mesh_step(
    all_settings: Settings,
    metrics: Metrics,
    clock: Clock,
    repeats: Repeats,
    *,
    device: Callable[[], WgDevice] | None,
    transport: Transport,
    on_mesh_up: Callable[[IPv4Address], None],
    on_member_removed: Callable[[MemberId], None],
) -> MeshStep:
    settings = all_settings.mesh

    def real_device() -> WgDevice:
        return open_device(settings.backend, ifname=settings.interface, uapi_dir=settings.uapi_dir)

    return MeshStep(
        settings,
        device or real_device,
        metrics,
        clock,
        repeats,
        cluster=all_settings.chain.cluster,
        transport=transport,
        on_mesh_up=on_mesh_up,
        on_member_removed=on_member_removed,
    )
