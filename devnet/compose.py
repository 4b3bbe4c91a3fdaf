"""The devnet nodes' ``app-compose.json``: the measured document whose sha256 is the compose hash.

Owns the document the devnet writes for a node, with the cluster's trust anchors (``NodeAnchors``: chain
id, cluster, member-app factory, KMS roots, indexer registry) written into its docker compose as literals,
so the compose hash (and the KMS gate) covers them and the sealed env cannot change them; ``allowed_envs``
lists only sealed names. A node's compose is therefore per cluster: the lab deploys the cluster, renders the
compose with its addresses, then allowlists its hash (``devnet.lab``). The sidecar's image and its
``pull_policy`` are written as ``attestmesh compose node`` writes them (``ops.compose_cmd.pull_policy``:
``always`` for the default tag, ``missing`` for an image pinned by digest), so a pinned image is another
compose hash here as on dstack. Also the hash rule (sha256 of the exact bytes, as dstack computes it).
Must not do I/O beyond what callers ask for (``compose_hash_of_file``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devnet.state import DevnetState
from ops.compose_cmd import pin_image
from sidecar.core.ids import Address, Bytes32

#: The sealed variables of a devnet node's compose (values from the sealed env; not trust anchors).
NODE_SEALED_ENVS = ("ATTESTMESH_RPC_URL",)
#: The image the repository's compose files name (a tag: every boot pulls it).
DEFAULT_SIDECAR_IMAGE = "ghcr.io/attestmesh/attestmesh-sidecar:latest"


@dataclass(frozen=True, slots=True)
class NodeAnchors:
    """The measured trust anchors of one cluster's nodes: literal values of their compose."""

    chain_id: int
    cluster: Address
    member_app_factory: Address
    kms_roots: tuple[Address, ...]
    indexer_registry: Address | None = None

    @classmethod
    def of_lab(cls, state: DevnetState) -> NodeAnchors:
        """The anchors of the lab's cluster (its contracts must be deployed)."""
        return cls(
            chain_id=state.chain_id,
            cluster=Address.from_hex(state.cluster),
            member_app_factory=Address.from_hex(state.member_app_factory),
            kms_roots=(Address.from_hex(state.kms_root),),
            indexer_registry=Address.from_hex(state.indexer_registry) if state.indexer_registry else None,
        )

    def literals(self) -> dict[str, str]:
        """Name -> value, exactly as the compose writes them and as the lab passes them to a sidecar."""
        return {
            "ATTESTMESH_CHAIN_ID": str(self.chain_id),
            "ATTESTMESH_CLUSTER": str(self.cluster),
            "ATTESTMESH_MEMBER_APP_FACTORY": str(self.member_app_factory),
            "ATTESTMESH_KMS_ROOTS": ",".join(str(root) for root in self.kms_roots),
            "ATTESTMESH_INDEXER_REGISTRY": str(self.indexer_registry) if self.indexer_registry else "",
        }


def node_docker_compose(anchors: NodeAnchors, image: str = DEFAULT_SIDECAR_IMAGE) -> str:
    """What the node's CVM runs (the devnet host starts the workload itself, but this document is what the
    KMS gate measures): the sidecar's ``image``, its trust anchors as literals, its sealed variables as
    ``${VAR}``. Raises ``ops.errors.OperatorError`` when ``image`` is not an image reference."""
    measured = "".join(f"      - {name}={value}\n" for name, value in anchors.literals().items())
    sealed = "".join(f"      - {name}=${{{name}}}\n" for name in NODE_SEALED_ENVS)
    head = pin_image(f"    image: {DEFAULT_SIDECAR_IMAGE}\n    pull_policy: always\n", image)
    return (
        "services:\n"
        "  sidecar:\n"
        f"{head}"
        "    restart: unless-stopped\n"
        "    cap_add: [NET_ADMIN]\n"
        "    devices: [/dev/net/tun]\n"
        "    volumes:\n"
        "      - /var/run/dstack.sock:/var/run/dstack.sock\n"
        "      - sidecar-state:/var/lib/attestmesh\n"
        "    environment:\n"
        f"{measured}{sealed}"
        "volumes:\n"
        "  sidecar-state: {}\n"
    )


def _app_compose(name: str, docker_compose: str, allowed_envs: list[str]) -> dict[str, Any]:
    return {
        "manifest_version": 2,
        "name": name,
        "runner": "docker-compose",
        "docker_compose_file": docker_compose,
        "allowed_envs": allowed_envs,
        "kms_enabled": True,
        "gateway_enabled": True,
        "local_key_provider_enabled": False,
        "public_logs": False,
        "public_sysinfo": False,
        "public_tcbinfo": True,
        "no_instance_id": False,
        "secure_time": True,
    }


def node_app_compose(
    anchors: NodeAnchors,
    *,
    name: str = "attestmesh-node",
    extra_envs: tuple[str, ...] = (),
    image: str = DEFAULT_SIDECAR_IMAGE,
) -> dict[str, Any]:
    """The app-compose document of a node of ``anchors``' cluster (identical for every node of one image);
    ``extra_envs`` are more sealed names and ``image`` another sidecar image (each a different hash)."""
    return _app_compose(name, node_docker_compose(anchors, image), sorted({*NODE_SEALED_ENVS, *extra_envs}))


def node_compose_bytes(anchors: NodeAnchors) -> bytes:
    """The exact bytes of the default node app-compose.json of ``anchors``' cluster."""
    return encode_app_compose(node_app_compose(anchors))


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
    return _app_compose(
        "attestmesh-indexer",
        INDEXER_DOCKER_COMPOSE,
        ["ATTESTMESH_INDEXER_KEY_VERSION", "ATTESTMESH_INDEXER_RPC_URL"],
    )


def encode_app_compose(document: dict[str, Any]) -> bytes:
    """Serialise like dstack-sdk's ``get_compose_hash``: sorted keys, compact separators, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compose_hash(data: bytes) -> Bytes32:
    """sha256 of the exact app-compose bytes (dstack's compose hash)."""
    return Bytes32(hashlib.sha256(data).digest())


def compose_hash_of_file(path: Path) -> Bytes32:
    return compose_hash(path.read_bytes())


INDEXER_COMPOSE_BYTES = encode_app_compose(indexer_app_compose())
