"""How the lab's own tooling reaches an HTTP surface inside the lab (a node's or the indexer's health).

Direct mode: a plain GET to the service's underlay address (``ops.jsonget``). Gateway mode: the nodes'
firewalls drop every connection that does not come from the gateway, so the lab reads a service the way an
operator reads a CVM: ``https://<app_id>-<port>.<domain>/…`` through the gateway, the certificate verified
with the lab CA. The root namespace has no resolver for the lab's domain, so a name under it is pinned to
the gateway's address (what the lab DNS would answer; ``curl --resolve`` does the same): the TCP connection
goes to the gateway over the root veth, the TLS handshake carries the name as SNI and checks it.
Owns ``LabReach`` (which of the two a lab uses) and ``get_json_pinned``. Must not: connect anywhere but a
URL's own host or, for a name under the gateway domain, the gateway's address; retry; or interpret the
documents (the callers do).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from devnet.state import DevnetState, GatewayState
from ops.jsonget import MAX_BODY, JsonAnswer, Unreachable, get_json


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to ``host`` (SNI, certificate check, Host header) over a TCP connection to ``address``."""

    def __init__(self, host: str, port: int, *, address: str, context: ssl.SSLContext, timeout: float):
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts only the lab CA (and checks the host name)."""
    return ssl.create_default_context(cafile=ca_file)


def get_json_pinned(
    url: str, *, address: str, ca_file: str, timeout: float, limit: int = MAX_BODY
) -> JsonAnswer:
    """GET an ``https://`` ``url`` over a connection to ``address``, verified with ``ca_file``; like
    ``ops.jsonget.get_json``: any status, the body decoded when it is JSON, ``Unreachable`` when nothing
    answers (refused, timed out, a TLS failure, broken HTTP)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise Unreachable(f"{url}: not an https:// URL", "not an https:// URL")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn = _PinnedHTTPS(
            parts.hostname,
            parts.port or 443,
            address=address,
            context=tls_context(ca_file),
            timeout=timeout,
        )
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            response = conn.getresponse()
            status, raw = response.status, response.read(limit)
        finally:
            conn.close()
    except (http.client.HTTPException, OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise Unreachable(f"{url} (through {address}): {exc}", str(exc)) from None
    text = raw.decode(errors="replace")
    try:
        data: Any = json.loads(raw)
    except ValueError:
        data = None
    return JsonAnswer(status, text, data)


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
            return get_json_pinned(
                url, address=self.gateway.address, ca_file=self.gateway.ca_file, timeout=timeout
            )
        return get_json(url, timeout)
