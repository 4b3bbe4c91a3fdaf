"""The transports that carry WireGuard datagrams to a peer (DESIGN §4 "Transport"), behind one seam.

``sidecar.transport.seam.Transport`` chooses the carrier per peer from the peer's registered endpoint and
tells the mesh step which endpoint to give the WireGuard device: the peer's own ``ip:port`` for the
direct transport, a stable loopback bridge of this sidecar for the gateway transport
(``sidecar.transport.gateway``: one TLS stream per member pair through the dstack gateway). An adapter:
it owns sockets and TLS, never the chain, the device or the phase machine.
"""
