"""AttestMesh operator command line: ``attestmesh`` (chain status, owner actions, indexer register/verify,
health).

Owns the ``attestmesh`` entry point (``ops.cli:main``) and the operator's reads and day-2 actions against a
live chain and live services. Ships in the image beside ``sidecar`` and ``indexer``; the development lab
(``devnet``) adds its ``attestmesh devnet …`` verbs when it is installed.
Must not: import ``devnet`` (the image has none), or import web3 / structlog before a command needs them
(``attestmesh --help`` and ``attestmesh health URL`` start fast).
"""
