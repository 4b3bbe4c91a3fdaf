"""The dstack-gateway stand-in of the devnet: TLS on one TCP port, routed by SNI with dstack's own rules.

Mirrors dstack-gateway's data path (``dstack/gateway/src/proxy*``): ``<id>[-<port>][s|g].<domain>`` names,
instance id then app id. Modules: ``sni`` (the ClientHello and the name rules, pure).

Development only, like all of ``devnet``: nothing in ``sidecar`` imports it.
"""
