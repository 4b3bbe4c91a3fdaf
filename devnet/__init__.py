"""The devnet: everything AttestMesh needs on one machine, with real parts (DESIGN §6).

Development only. Nothing under ``devnet`` is imported by ``sidecar`` (import-linter enforces it).
"""
