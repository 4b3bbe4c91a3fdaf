"""The devnet lab's address and name plan: every namespace, link, address and route the lab may create.

Owns: ``LabPlan`` (a frozen value built from a lab name, an underlay /24 and the mesh CIDR), the name
rules for labs and nodes, the lab's transports (``gateway``, the default, or ``direct``), and every derived
name and address (hub, root veth, node namespaces and ports, the indexer slot, the gateway slot and its
domain, blackhole prefixes, the sweep prefix). Pure: must not do I/O, run commands or read the
system; ``devnet.netns`` applies the plan. Every name the lab creates starts with ``<lab>-`` (or lives
inside a namespace that does), so a sweep by that prefix finds all of it and nothing else: lab names
contain no ``-``, so one lab's prefix is never a prefix of another's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

DEFAULT_LAB = "amlab"
DEFAULT_UNDERLAY = IPv4Network("10.213.0.0/24")
DEFAULT_MESH = IPv4Network("10.13.0.0/16")

#: Metric of the root namespace's blackhole routes: above the connected route of the root veth (metric 0),
#: so the veth wins while it is up and the blackhole keeps strays on the machine otherwise.
BLACKHOLE_METRIC = 4242

BRIDGE = "br0"
#: The interface name of a namespace's underlay veth, inside that namespace.
NODE_IFACE = "eth0"
#: Hub-side end of the root veth, enslaved to the bridge.
HUB_ROOT_PORT = "vroot"

MAX_LAB_NAME = 6  # "<lab>-root" and "<lab>-v200" must fit IFNAMSIZ (15 characters)
MAX_NODE_NAME = 24
MIN_NODE_INDEX = 1
MAX_NODE_INDEX = 200

ROOT_HOST = 1
HUB_HOST = 2
GATEWAY_HOST = 3
INDEXER_HOST = 5
NODE_HOST_BASE = 10

INDEXER_NAME = "idx"
GATEWAY_NAME = "gw"
_RESERVED_NODE_NAMES = frozenset({"hub", "root", INDEXER_NAME, GATEWAY_NAME})

#: How the nodes reach each other and how everything reaches a node. ``gateway`` is a CVM's production
#: network (inbound only through the gateway stand-in, nodes' firewalls drop the rest); ``direct`` is plain
#: WireGuard UDP between the nodes' underlay addresses.
TRANSPORT_GATEWAY = "gateway"
TRANSPORT_DIRECT = "direct"
TRANSPORTS = (TRANSPORT_GATEWAY, TRANSPORT_DIRECT)
DEFAULT_TRANSPORT = TRANSPORT_GATEWAY
#: The parent of every lab's gateway domain: ``.test`` is reserved (RFC 2606), so no name under it can be
#: anybody else's, and nothing outside the lab ever answers for it.
GATEWAY_PARENT_DOMAIN = "gw.test"

_LAB_NAME = re.compile(rf"[a-z0-9]{{1,{MAX_LAB_NAME}}}")
_NODE_NAME = re.compile(rf"[a-z0-9](?:[a-z0-9-]{{0,{MAX_NODE_NAME - 2}}}[a-z0-9])?")


class TopologyError(ValueError):
    """A lab name, node name, index or prefix that the lab cannot use."""


def validate_lab_name(name: str) -> str:
    """Return ``name`` if it is a valid lab name (1-6 lowercase letters or digits), else raise."""
    if not _LAB_NAME.fullmatch(name):
        raise TopologyError(f"lab name must be 1-{MAX_LAB_NAME} lowercase letters or digits, got {name!r}")
    return name


def validate_node_name(name: str) -> str:
    """Return ``name`` if it is a valid node name ([a-z0-9-], short, no edge hyphen, not reserved)."""
    if not _NODE_NAME.fullmatch(name):
        raise TopologyError(
            f"node name must be 1-{MAX_NODE_NAME} of [a-z0-9-], not starting or ending with '-', got {name!r}"
        )
    if name in _RESERVED_NODE_NAMES:
        raise TopologyError(f"node name {name!r} is reserved")
    return name


def validate_transport(transport: str) -> str:
    """Return ``transport`` if it is one the lab knows (``gateway`` or ``direct``), else raise."""
    if transport not in TRANSPORTS:
        raise TopologyError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    return transport


def validate_node_index(index: int) -> int:
    """Return ``index`` if it is a node index the underlay can hold (1..200), else raise."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise TopologyError(f"node index must be an int, got {index!r}")
    if not MIN_NODE_INDEX <= index <= MAX_NODE_INDEX:
        raise TopologyError(f"node index must be in {MIN_NODE_INDEX}..{MAX_NODE_INDEX}, got {index}")
    return index


@dataclass(frozen=True, slots=True)
class Attachment:
    """One namespace attached to the lab bridge through a veth pair.

    ``iface`` is the veth end inside ``ns`` (holding ``ip``); ``hub_port`` is the other end, in the hub
    namespace and enslaved to the bridge. ``veth_temp`` is the name the namespace-side end carries if it is
    ever created in the root namespace first; it starts with the sweep prefix so a sweep removes it.
    """

    name: str
    ns: str
    ip: IPv4Address
    prefixlen: int
    iface: str
    hub_port: str
    veth_temp: str


@dataclass(frozen=True, slots=True)
class LabPlan:
    """Names and addresses of one lab; everything derived from the lab name and two prefixes."""

    name: str = DEFAULT_LAB
    underlay: IPv4Network = DEFAULT_UNDERLAY
    mesh: IPv4Network = DEFAULT_MESH

    def __post_init__(self) -> None:
        validate_lab_name(self.name)
        if not isinstance(self.underlay, IPv4Network) or not isinstance(self.mesh, IPv4Network):
            raise TopologyError("underlay and mesh must be IPv4Network values")
        if self.underlay.prefixlen != 24:
            raise TopologyError(f"underlay must be a /24, got {self.underlay}")
        for what, net in (("underlay", self.underlay), ("mesh", self.mesh)):
            # Lab prefixes must never be routable off the machine, nor special-purpose local ranges.
            if not net.is_private or net.is_loopback or net.is_link_local or net.is_multicast:
                raise TopologyError(f"{what} {net} is not a private unicast range")
        if self.underlay.overlaps(self.mesh):
            raise TopologyError(f"underlay {self.underlay} overlaps mesh {self.mesh}")

    @property
    def sweep_prefix(self) -> str:
        """Prefix of every namespace and root-side link this lab creates."""
        return f"{self.name}-"

    @property
    def hub_ns(self) -> str:
        return f"{self.name}-hub"

    @property
    def bridge(self) -> str:
        return BRIDGE

    @property
    def bridge_mac(self) -> str:
        """A fixed, locally administered unicast MAC for the bridge, derived from the lab name."""
        digest = hashlib.sha256(f"attestmesh-lab-bridge:{self.name}".encode()).digest()
        return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))

    @property
    def hub_ip(self) -> IPv4Address:
        return self._host(HUB_HOST)

    @property
    def root_veth(self) -> str:
        """Root-namespace end of the veth into the bridge; its peer in the hub is ``HUB_ROOT_PORT``."""
        return f"{self.name}-root"

    @property
    def hub_root_port(self) -> str:
        return HUB_ROOT_PORT

    @property
    def root_ip(self) -> IPv4Address:
        return self._host(ROOT_HOST)

    @property
    def prefixlen(self) -> int:
        return self.underlay.prefixlen

    @property
    def blackhole_prefixes(self) -> tuple[IPv4Network, ...]:
        """Prefixes blackholed in the root namespace for as long as the lab exists."""
        return (self.underlay, self.mesh)

    def node_ns(self, node_name: str) -> str:
        return f"{self.name}-{validate_node_name(node_name)}"

    def node_ip(self, index: int) -> IPv4Address:
        return self._host(NODE_HOST_BASE + validate_node_index(index))

    def node(self, node_name: str, index: int) -> Attachment:
        """Compute the attachment of node ``node_name`` with underlay index ``index``."""
        return Attachment(
            name=node_name,
            ns=self.node_ns(node_name),
            ip=self.node_ip(index),
            prefixlen=self.prefixlen,
            iface=NODE_IFACE,
            hub_port=f"v{index}",
            veth_temp=f"{self.name}-v{index}",
        )

    def _service(self, name: str, host: int) -> Attachment:
        """A lab service's slot: namespace ``<lab>-<name>``, host ``host`` of the underlay."""
        return Attachment(
            name=name,
            ns=f"{self.name}-{name}",
            ip=self._host(host),
            prefixlen=self.prefixlen,
            iface=NODE_IFACE,
            hub_port=f"v{name}",
            veth_temp=f"{self.name}-v{name}",
        )

    @property
    def indexer(self) -> Attachment:
        """The indexer service's slot (namespace ``<lab>-idx``, host .5)."""
        return self._service(INDEXER_NAME, INDEXER_HOST)

    @property
    def gateway(self) -> Attachment:
        """The gateway stand-in's slot (namespace ``<lab>-gw``, host .3): the gateway and the lab's DNS."""
        return self._service(GATEWAY_NAME, GATEWAY_HOST)

    @property
    def gateway_domain(self) -> str:
        """The lab's gateway domain (``<lab>.gw.test``): the gateway's wildcard certificate and DNS zone."""
        return f"{self.name}.{GATEWAY_PARENT_DOMAIN}"

    def _host(self, host: int) -> IPv4Address:
        return self.underlay.network_address + host
