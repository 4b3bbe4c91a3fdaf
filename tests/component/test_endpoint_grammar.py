"""The contract's endpoint grammar against the sidecar's parser (``sidecar.core.endpoint.parse_endpoint``).

The contract refuses (``InvalidEndpoint``) every endpoint a node could not use, and accepts every endpoint a
node registers: one list of good and bad endpoints goes to both and they must agree, except for a short,
named list where the contract is deliberately stricter. Hypothesis adds the two properties that matter: the
contract never accepts what the sidecar rejects (random and mutated strings), and it accepts every endpoint
in the form a node writes (``str`` of a parsed endpoint, the legacy ``ip:port``, a gateway route).
Each probe is an ``eth_call`` of ``setEndpoint`` from a registered member: no transaction, no state change.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.chain.contracts import ClusterClient
from sidecar.chain.errors import EndpointTooLong, InvalidEndpoint
from sidecar.chain.rpc import tx_params
from sidecar.core.endpoint import EndpointError, UdpEndpoint, gateway_endpoint, parse_endpoint
from sidecar.core.ids import Address
from sidecar.envkit import HostPort
from tests.component.toolkit import NodeFactory

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

ROUTE = "tls://" + "ab" * 20 + "-51820s.dstack-prod5.phala.network:443"

BOTH_ACCEPT = [
    "udp://203.0.113.7:51820",
    "203.0.113.7:51820",
    "0.0.0.0:1",
    "255.255.255.255:65535",
    "udp://[2001:db8::1]:51820",
    "[2001:db8::1]:51820",
    "[::1]:1",
    "[::]:80",
    "[1:2:3:4:5:6:7:8]:9",
    "[1::]:9",
    "[1:2:3:4:5:6:7::]:9",
    "[::2:3:4:5:6:7:8]:9",
    "[::ffff:1.2.3.4]:9",
    "[1:2:3:4:5:6:1.2.3.4]:9",
    "udp://[2001:DB8::A]:9",
    ROUTE,
    "tls://a.b:1",
    "tls://A-1.example.COM:8443",
    "tls://x.y2z:443",
    "tls://" + "a" * 63 + ".com:443",
    "tls://1a.2b:443",
]

BOTH_REJECT = [
    "",
    "x",
    ":",
    "1.2.3.4",
    "1.2.3.4:",
    ":51820",
    "1.2.3.4:0",
    "1.2.3.4:65536",
    "1.2.3.4:999999",
    "1.2.3.4:-1",
    "1.2.3.4:+1",
    "1.2.3.4: 1",
    " 1.2.3.4:1",
    "1.2.3.4:1\n",
    "1.2.3:1",
    "1.2.3.4.5:1",
    "256.1.1.1:1",
    "01.2.3.4:1",
    "1..3.4:1",
    "localhost:51820",
    "host.example:1",
    "udp://host.example:1",
    "udp://[1.2.3.4]:1",
    "[1.2.3.4]:1",
    "2001:db8::1:51820",
    "[2001:db8::1]",
    "[::1]:",
    "[:::1]:1",
    "[:1]:1",
    "[1:]:1",
    "[1:2:3:4:5:6:7:8:9]:1",
    "[1:2:3:4:5:6:7:8::]:1",
    "[1::2::3]:1",
    "[12345::]:1",
    "[g::]:1",
    "[1:2:3:4:5:6:7:1.2.3.4]:1",
    "[::1.2.3]:1",
    "tls://1.2.3.4:443",
    "tls://localhost:443",
    "tls://-a.b:1",
    "tls://a-.b:1",
    "tls://a..b:1",
    "tls://a.b.:1",
    "tls://.a.b:1",
    "tls://a_b.c:1",
    "tls://" + "a" * 64 + ".com:443",
    "tls://[::1]:443",
    "tls://a.b:0",
    "tls://a.b",
    "http://1.2.3.4:80",
    "UDP://1.2.3.4:1",
    "udp:/1.2.3.4:1",
    "udp://udp://1.2.3.4:1",
    "udp://",
    "tls://",
]

#: The sidecar accepts these, the contract does not, on purpose (none is a form a node registers).
CONTRACT_STRICTER = {
    "1.2.3.4:051820": "a port with a leading zero",
    "tls://a.b:0443": "a port with a leading zero",
    "[fe80::1%eth0]:51820": "an IPv6 zone (meaningless to a peer)",
    "1.2.3.4:\u0661": "a non-ASCII digit in the port",
    "tls://" + ("a" * 60 + ".") * 4 + "com:443": "longer than the contract's 255 bytes",
}


@pytest.fixture
async def member(cluster: ClusterClient, nodes: NodeFactory) -> Address:
    """A registered member's signer: the account the probes call ``setEndpoint`` from."""
    node = await nodes.node("prober")
    await node.client(cluster).register(node.proof, node.keys, node.endpoint)
    return node.proof.signer


async def contract_accepts(cluster: ClusterClient, signer: Address, endpoint: str) -> bool:
    tx = tx_params(signer, cluster.address, cluster.encode_call("setEndpoint", endpoint))
    try:
        await cluster.connection.call(tx)
    except (InvalidEndpoint, EndpointTooLong):
        return False
    return True


def sidecar_accepts(endpoint: str) -> bool:
    try:
        parse_endpoint(endpoint)
    except EndpointError:
        return False
    return True


async def test_contract_and_sidecar_agree_on_the_list(cluster: ClusterClient, member: Address) -> None:
    disagree = []
    for endpoint in BOTH_ACCEPT + BOTH_REJECT:
        expected = endpoint in BOTH_ACCEPT
        verdicts = (await contract_accepts(cluster, member, endpoint), sidecar_accepts(endpoint))
        if verdicts != (expected, expected):
            disagree.append((endpoint, verdicts))
    assert disagree == [], "(endpoint, (contract, sidecar)) not as listed"


async def test_where_the_contract_is_stricter(cluster: ClusterClient, member: Address) -> None:
    for endpoint, why in CONTRACT_STRICTER.items():
        assert sidecar_accepts(endpoint), why
        assert not await contract_accepts(cluster, member, endpoint), why


# --- properties -------------------------------------------------------------------------------------------

ALPHABET = "udptls:/[]%.-_0123456789abcdefxyzABCF "
_mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace"]), st.integers(0, 300), st.sampled_from(ALPHABET)
)


def mutate(text: str, edits: list[tuple[str, int, str]]) -> str:
    for kind, position, char in edits:
        at = position % (len(text) + 1)
        if kind == "insert":
            text = text[:at] + char + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + char + text[at + 1 :]
    return text


strings = st.one_of(
    st.text(alphabet=ALPHABET, max_size=40),
    st.builds(mutate, st.sampled_from(BOTH_ACCEPT), st.lists(_mutation, min_size=1, max_size=3)),
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(endpoint=strings)
async def test_the_contract_accepts_nothing_the_sidecar_rejects(
    cluster: ClusterClient, member: Address, endpoint: str
) -> None:
    if await contract_accepts(cluster, member, endpoint):
        assert sidecar_accepts(endpoint), endpoint


ports = st.integers(1, 65535)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.builds(
    lambda parts, tld: ".".join([*parts, tld]),
    st.lists(labels, min_size=1, max_size=4),
    st.from_regex(r"[a-z]{2,6}", fullmatch=True),
)
registered_forms = st.one_of(
    st.builds(lambda ip, port: str(UdpEndpoint(ip, port)), st.ip_addresses(), ports),
    st.builds(lambda ip, port: str(HostPort(str(ip), port)), st.ip_addresses(), ports),
    st.builds(
        lambda app, domain, port: str(gateway_endpoint(Address(app), domain, port)),
        st.binary(min_size=20, max_size=20),
        domains,
        ports,
    ),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(endpoint=registered_forms)
async def test_the_contract_accepts_every_form_a_node_registers(
    cluster: ClusterClient, member: Address, endpoint: str
) -> None:
    assert sidecar_accepts(endpoint)
    assert await contract_accepts(cluster, member, endpoint), endpoint


def test_the_lists_use_both_address_families() -> None:
    parsed = [parse_endpoint(e) for e in BOTH_ACCEPT]
    families = {type(p.ip) for p in parsed if isinstance(p, UdpEndpoint)}
    assert families == {IPv4Address, IPv6Address}
