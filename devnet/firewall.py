"""A CVM's inbound network in the lab: the nftables firewall of a node's (or the indexer's) namespace.

Owns the ruleset of gateway mode (``ruleset``: on the underlay, every UDP datagram and every TCP
connection that is not part of an established flow is dropped unless it comes from the gateway's address;
loopback, established and related traffic, the mesh interface, where heartbeats and the CSK peer API run,
and ICMP are accepted), applying it inside a namespace with the real ``nft`` (``apply``), and reading its
named drop counters (``dropped``) so a test can prove that a direct packet between two nodes was dropped.
Must not: touch the root namespace's ruleset or any namespace the lab did not create, filter outbound
traffic, or hold any other rule (the lab's NAT-free, forward-free network stays as ``devnet.netns`` made it).
"""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address
from typing import Final

from devnet.netns import LabError
from devnet.topology import NODE_IFACE

#: The one nftables table the lab adds to a namespace (family ``inet``: IPv4 and the IPv6 link-local
#: addresses every veth has alike).
TABLE: Final = "attestmesh_lab"
MESH_IFACE: Final = "attestmesh0"
#: Named counters, by the protocol whose dropped packets they count.
COUNTERS: Final = {"udp": "udp_dropped", "tcp": "tcp_dropped"}
_NFT_TIMEOUT = 10.0


def ruleset(gateway: IPv4Address, *, underlay: str = NODE_IFACE, mesh: str = MESH_IFACE) -> str:
    """The nft script of a gateway-mode namespace: replaces the lab's table (idempotent, one transaction)."""
    return "\n".join(
        [
            # Declaring the table first makes the delete succeed on a namespace that has none yet.
            f"table inet {TABLE}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            *(f"  counter {name} {{ }}" for name in COUNTERS.values()),
            "  chain input {",
            "    type filter hook input priority filter; policy drop;",
            '    iif "lo" accept',
            "    ct state established,related accept",
            f'    iifname "{mesh}" accept',
            "    meta l4proto { icmp, ipv6-icmp } accept",
            f'    iifname "{underlay}" ip saddr {gateway} accept',
            f'    meta l4proto udp counter name "{COUNTERS["udp"]}" drop',
            f'    meta l4proto tcp counter name "{COUNTERS["tcp"]}" drop',
            "  }",
            "}",
            "",
        ]
    )


def _nft(ns: str, *args: str, stdin: str | None = None) -> str:
    argv = ["ip", "netns", "exec", ns, "nft", *args]
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, check=False, timeout=_NFT_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def apply(ns: str, gateway: IPv4Address) -> None:
    """Install (or replace) the gateway-mode firewall in namespace ``ns``; only ``gateway`` may connect in."""
    _nft(ns, "-f", "-", stdin=ruleset(gateway))


def tables(ns: str) -> list[str]:
    """The nftables tables of namespace ``ns`` as ``family name`` (for tests and leftover checks)."""
    found = []
    for entry in _entries(_nft(ns, "-j", "list", "tables")):
        table = entry.get("table")
        if isinstance(table, dict):
            found.append(f"{table.get('family')} {table.get('name')}")
    return found


def dropped(ns: str) -> dict[str, int]:
    """The packets the firewall of namespace ``ns`` dropped so far: ``{"udp": n, "tcp": n}``.

    ``LabError`` when the namespace has no lab firewall (direct mode, or not yet applied).
    """
    counts: dict[str, int] = {}
    names = {name: proto for proto, name in COUNTERS.items()}
    for entry in _entries(_nft(ns, "-j", "list", "counters", "table", "inet", TABLE)):
        counter = entry.get("counter")
        if isinstance(counter, dict) and counter.get("name") in names:
            packets = counter.get("packets")
            counts[names[str(counter["name"])]] = packets if isinstance(packets, int) else 0
    missing = sorted(set(COUNTERS) - set(counts))
    if missing:
        raise LabError(f"{ns} has no lab firewall counters for {missing}")
    return counts


def _entries(out: str) -> list[dict[str, object]]:
    try:
        parsed = json.loads(out)
    except ValueError:
        raise LabError(f"nft printed no JSON: {out[:200]!r}") from None
    items = parsed.get("nftables") if isinstance(parsed, dict) else None
    return [item for item in items or [] if isinstance(item, dict)]
