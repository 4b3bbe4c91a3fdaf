"""The devnet nodes' ``app-compose.json``: the measured document whose sha256 is the compose hash.

Owns the document the devnet writes for a node and the hash rule (sha256 of the exact bytes, as dstack
computes it). Must not do I/O beyond what callers ask for (``compose_hash_of_file``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sidecar.core.ids import Bytes32

#: What the node's CVM runs. The sidecar image and its compose file arrive in later work; in the devnet the
#: workload is started by the devnet host, but the document is what the KMS gate measures either way.
NODE_DOCKER_COMPOSE = """\
services:
  sidecar:
    image: ghcr.io/attestmesh/attestmesh-sidecar:latest
    restart: unless-stopped
    cap_add: [NET_ADMIN]
    devices: [/dev/net/tun]
    volumes:
      - /var/run/dstack.sock:/var/run/dstack.sock
      - sidecar-state:/var/lib/attestmesh
    environment:
      - ATTESTMESH_RPC_URL=${ATTESTMESH_RPC_URL}
      - ATTESTMESH_CLUSTER=${ATTESTMESH_CLUSTER}
volumes:
  sidecar-state: {}
"""


def node_app_compose(*, name: str = "attestmesh-node", extra_envs: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return the app-compose document of a devnet node (identical for every node of one image)."""
    return {
        "manifest_version": 2,
        "name": name,
        "runner": "docker-compose",
        "docker_compose_file": NODE_DOCKER_COMPOSE,
        "allowed_envs": sorted({"ATTESTMESH_RPC_URL", "ATTESTMESH_CLUSTER", *extra_envs}),
        "kms_enabled": True,
        "gateway_enabled": True,
        "local_key_provider_enabled": False,
        "public_logs": False,
        "public_sysinfo": False,
        "public_tcbinfo": True,
        "no_instance_id": False,
        "secure_time": True,
    }


INDEXER_DOCKER_COMPOSE = """\
services:
  indexer:
    image: ghcr.io/attestmesh/attestmesh-sidecar:latest
    entrypoint: ["attestmesh-indexer"]
    restart: unless-stopped
    volumes:
      - /var/run/dstack.sock:/var/run/dstack.sock
    ports:
      - "8080:8080"
    environment:
      - ATTESTMESH_INDEXER_RPC_URL=${ATTESTMESH_INDEXER_RPC_URL}
      - ATTESTMESH_INDEXER_KEY_VERSION=${ATTESTMESH_INDEXER_KEY_VERSION}
"""


def indexer_app_compose() -> dict[str, Any]:
    """Return the app-compose document of the devnet's indexer (a stock dstack app, not a member)."""
    return {
        **node_app_compose(name="attestmesh-indexer"),
        "docker_compose_file": INDEXER_DOCKER_COMPOSE,
        "allowed_envs": ["ATTESTMESH_INDEXER_KEY_VERSION", "ATTESTMESH_INDEXER_RPC_URL"],
    }


def encode_app_compose(document: dict[str, Any]) -> bytes:
    """Serialise like dstack-sdk's ``get_compose_hash``: sorted keys, compact separators, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compose_hash(data: bytes) -> Bytes32:
    """sha256 of the exact app-compose bytes (dstack's compose hash)."""
    return Bytes32(hashlib.sha256(data).digest())


def compose_hash_of_file(path: Path) -> Bytes32:
    return compose_hash(path.read_bytes())


DEFAULT_COMPOSE_BYTES = encode_app_compose(node_app_compose())
DEFAULT_COMPOSE_HASH = compose_hash(DEFAULT_COMPOSE_BYTES)
INDEXER_COMPOSE_BYTES = encode_app_compose(indexer_app_compose())
