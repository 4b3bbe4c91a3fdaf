"""The dstack-gateway stand-in of the devnet: TLS on one TCP port, routed by SNI with dstack's own rules.

Mirrors dstack-gateway's data path (``dstack/gateway/src/proxy*``; ``docs/devnet.md`` "The gateway
stand-in"): ``<id>[-<port>][s|g].<domain>`` names, instance id then app id (up to three instances racing),
TLS 1.2 termination with the lab CA's wildcard certificate or raw passthrough, fail-closed port policy,
the connect/handshake/idle/lifetime limits and the per-app connection limit — all configurable. Routes come
from a JSON file the devnet rewrites as nodes boot and stop.

Modules: ``sni`` (the ClientHello and the name rules, pure), ``routes`` (the route table and its file),
``config``, ``streams`` (TCP and TLS ends), ``relay`` (both directions, idle watchdog), ``proxy`` (the
listener and each connection's sequence), ``metrics`` (Prometheus, ``/status``), ``service`` (all of it
started and stopped together), ``labca`` (the lab CA and the wildcard certificate), ``__main__``.

Development only, like all of ``devnet``: nothing in ``sidecar`` imports it.
"""

from devnet.gateway.config import ConfigError, GatewayConfig
from devnet.gateway.labca import LabCa, ensure_lab_ca
from devnet.gateway.service import GatewayService

__all__ = ["ConfigError", "GatewayConfig", "GatewayService", "LabCa", "ensure_lab_ca"]
