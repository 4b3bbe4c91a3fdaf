"""AttestMesh sidecar: the node daemon, and the home of what sidecar, indexer and devnet share.

Layout (enforced by import-linter): ``sidecar.core`` is pure logic and value objects; ``sidecar.chain``
(JSON-RPC, eth_abi) and ``sidecar.dstack`` (dstack-sdk) are adapters that each own one technology. The
version and commit that run are ``sidecar.buildinfo``'s (the distribution's metadata and the build record).
"""
