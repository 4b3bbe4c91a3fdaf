"""How the lab's own tooling reaches an HTTP surface inside the lab (a node's or the indexer's health).

Direct mode: a plain GET to the service's underlay address (``ops.jsonget``). Gateway mode: the nodes'
firewalls drop every connection that does not come from the gateway, so the lab reads a service the way an
operator reads a CVM: ``https://<app_id>-<port>.<domain>/…`` through the gateway, the certificate verified
with the lab CA. The root namespace has no resolver for the lab's domain, so a name under it is pinned to
the gateway's address (what the lab DNS would answer; ``curl --resolve`` does the same): the TCP connection
goes to the gateway over the root veth, the TLS handshake carries the name as SNI and checks it.
Owns ``LabReach`` (which of the two a lab uses); the pinned request itself is ``ops.jsonget``'s
``connect_to``, which operators use the same way. Must not: connect anywhere but a
URL's own host or, for a name under the gateway domain, the gateway's address; retry; or interpret the
documents (the callers do).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from devnet.state import DevnetState, GatewayState
from ops.jsonget import JsonAnswer, get_json


@dataclass(frozen=True, slots=True)
class LabReach:
    """The way the lab's tooling reads a service of one lab: through its gateway, or directly."""

    gateway: GatewayState | None = None

    @classmethod
    def of(cls, state: DevnetState) -> LabReach:
        return cls(state.gateway if state.gateway_mode else None)

    def through_gateway(self, url: str) -> bool:
        """Whether ``url`` names a service behind this lab's gateway."""
        if self.gateway is None:
            return False
        host = urllib.parse.urlsplit(url).hostname or ""
        domain = self.gateway.domain
        return host == domain or host.endswith("." + domain)

    def get_json(self, url: str, timeout: float) -> JsonAnswer:
        """GET ``url``; through the gateway (pinned, the lab CA) when it names a service behind it."""
        if self.gateway is not None and self.through_gateway(url):
            return get_json(url, timeout, ca_file=self.gateway.ca_file, connect_to=self.gateway.address)
        return get_json(url, timeout)
