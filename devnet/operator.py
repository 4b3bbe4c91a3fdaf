"""The operator actions ``devnet.lab`` uses, now in ``ops`` (the operator CLI that ships in the image).

Owns nothing: it re-exports ``ops.indexers``' and ``ops.owner``'s names under their old module so the lab
keeps importing them while it is split. Must not: grow; delete it once ``devnet.lab`` (and
tests/unit/test_indexer_deploy_rules.py) import from ``ops`` directly.
"""

from ops.errors import OperatorError
from ops.indexers import (
    IndexerIdentity,
    RegistryUpdate,
    ensure_indexer_registered,
    fetch_indexer_identity,
    registration_problems,
)
from ops.owner import ensure_member_app

__all__ = [
    "IndexerIdentity",
    "OperatorError",
    "RegistryUpdate",
    "ensure_indexer_registered",
    "ensure_member_app",
    "fetch_indexer_identity",
    "registration_problems",
]
