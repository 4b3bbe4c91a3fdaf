"""Our compose hash is dstack's: ``devnet.compose`` (the encoding and sha256 the lab, the KMS gate and the
deploy routines allowlist) pinned to ``dstack_sdk.get_compose_hash``, on the project's real app-compose
documents.

The documents: a devnet node's and the devnet indexer's (``devnet.compose``), and app-compose documents
around the shipped ``compose/node.yaml`` (rendered by ``attestmesh compose node``'s own function, with and
without an image digest) and ``compose/indexer.yaml``. The same bytes must give the same hash, and our
encoding must be byte for byte the SDK's deterministic JSON — a drift in either (a key order, an escape, a
separator) would make every hash the cluster allowlists one that no real CVM reports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from dstack_sdk import get_compose_hash
from dstack_sdk.get_compose_hash import AppCompose, to_deterministic_json

from devnet.compose import (
    INDEXER_COMPOSE_BYTES,
    NodeAnchors,
    compose_hash,
    encode_app_compose,
    indexer_app_compose,
    node_app_compose,
    node_compose_bytes,
)
from ops.compose_cmd import render_node_compose
from sidecar.core.ids import Address

REPO = Path(__file__).resolve().parents[2]
ANCHORS = NodeAnchors(
    chain_id=31337,
    cluster=Address(b"\x11" * 20),
    member_app_factory=Address(b"\x22" * 20),
    kms_roots=(Address(b"\x33" * 20), Address(b"\x44" * 20)),
    indexer_registry=Address(b"\x55" * 20),
)
DIGEST = "ghcr.io/attestmesh/attestmesh-sidecar@sha256:" + "ab" * 32
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)\}")


def _around(compose_file: str, name: str) -> dict[str, Any]:
    """An app-compose document carrying ``compose_file``, its ``${VAR}`` names as ``allowed_envs``."""
    text = (REPO / "compose" / compose_file).read_text(encoding="utf-8")
    if compose_file == "node.yaml":
        text = render_node_compose(
            text, ANCHORS.literals(), image=DIGEST if name.endswith("pinned") else None
        )
    return {
        **node_app_compose(ANCHORS, name=name),
        "docker_compose_file": text,
        "allowed_envs": sorted(set(_VARIABLE.findall(text))),
    }


DOCUMENTS = {
    "devnet node": node_app_compose(ANCHORS),
    "devnet node, more sealed names": node_app_compose(ANCHORS, extra_envs=("ATTESTMESH_LOG_LEVEL",)),
    "devnet indexer": indexer_app_compose(),
    "compose/node.yaml": _around("node.yaml", "attestmesh-node"),
    "compose/node.yaml pinned": _around("node.yaml", "attestmesh-node-pinned"),
    "compose/indexer.yaml": _around("indexer.yaml", "attestmesh-indexer"),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_our_compose_hash_is_dstack_sdks(name: str) -> None:
    document = DOCUMENTS[name]
    ours = encode_app_compose(document)
    assert ours == to_deterministic_json(AppCompose.from_dict(json.loads(ours))).encode("utf-8")
    assert compose_hash(ours).raw.hex() == get_compose_hash(json.loads(ours))
    assert compose_hash(ours).raw.hex() == get_compose_hash(document)


def test_the_devnets_stored_bytes_hash_like_the_sdk() -> None:
    for data in (node_compose_bytes(ANCHORS), INDEXER_COMPOSE_BYTES):
        assert compose_hash(data).raw.hex() == get_compose_hash(json.loads(data))


def test_a_single_byte_of_the_compose_text_is_a_new_hash() -> None:
    document = DOCUMENTS["compose/node.yaml"]
    edited = {**document, "docker_compose_file": document["docker_compose_file"] + " "}
    ours, theirs = compose_hash(encode_app_compose(edited)).raw.hex(), get_compose_hash(edited)
    assert ours == theirs != get_compose_hash(document)


def test_non_ascii_text_and_escapes_encode_like_the_sdk() -> None:
    # ensure_ascii=False on both sides (a comment in an operator's language), and JSON escapes of quotes,
    # backslashes, tabs and newlines in the compose text.
    document = DOCUMENTS["compose/node.yaml"]
    edited = {**document, "docker_compose_file": document["docker_compose_file"] + '# nœud "ü"\\\t\n'}
    ours = encode_app_compose(edited)
    assert "nœud".encode() in ours
    assert ours == to_deterministic_json(AppCompose.from_dict(edited)).encode("utf-8")
    assert compose_hash(ours).raw.hex() == get_compose_hash(edited)
