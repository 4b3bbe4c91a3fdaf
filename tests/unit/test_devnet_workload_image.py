"""Which image an image-workload lab runs for a node (``devnet.container``): the one its app-compose.json
names; the published tag of the lab's own compose stands for the lab's image. Podman itself is exercised by
tests/e2e/test_devnet_image.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devnet.compose import (
    DEFAULT_SIDECAR_IMAGE,
    NodeAnchors,
    encode_app_compose,
    node_app_compose,
    node_compose_bytes,
)
from devnet.container import check_compose_image, compose_image, image_of, node_image
from devnet.labdir import DevnetError
from devnet.state import DevnetState, NodeState
from sidecar.core.ids import Address

ANCHORS = NodeAnchors(31337, Address(b"\xab" * 20), Address(b"\xcd" * 20), (Address(b"\x12" * 20),))
LAB_IMAGE = "localhost/attestmesh-sidecar:dev"
PINNED = "localhost/attestmesh-sidecar@sha256:" + "0a" * 32
STATE = DevnetState(
    lab="amxx", underlay="10.1.0.0/24", mesh_cidr="10.2.0.0/16", workload="image", image=LAB_IMAGE
)


def _node(compose_path: Path) -> NodeState:
    return NodeState(
        name="node-1", index=1, netns="amxx-node-1", app_id="0x" + "11" * 20, instance_id="22" * 20,
        compose_hash="0x" + "33" * 32, compose_path=str(compose_path), underlay_ip="10.1.0.11",
        dstack_socket="/nonexistent/dstack.sock", wg_uapi_dir="/nonexistent/wg",
        wg_socket="/nonexistent/wg.sock",
    )  # fmt: skip


def test_the_labs_own_compose_runs_the_labs_image() -> None:
    compose = node_compose_bytes(ANCHORS)
    assert compose_image(compose) == DEFAULT_SIDECAR_IMAGE
    assert image_of(STATE, compose) == LAB_IMAGE


@pytest.mark.parametrize(
    "image", [PINNED, "localhost/attestmesh-sidecar:other", "ghcr.io/o/attestmesh-sidecar:1"]
)
def test_another_image_in_the_compose_is_run_as_named(image: str, tmp_path: Path) -> None:
    compose = encode_app_compose(node_app_compose(ANCHORS, image=image))
    assert image_of(STATE, compose) == image
    path = tmp_path / "app-compose.json"
    path.write_bytes(compose)
    assert node_image(STATE, _node(path)) == image
    # The node's compose as it is now decides (a roll writes it before the reboot).
    path.write_bytes(node_compose_bytes(ANCHORS))
    assert node_image(STATE, _node(path)) == LAB_IMAGE


@pytest.mark.parametrize(
    "compose",
    [
        b"not json",
        json.dumps({"docker_compose_file": "services: [a]"}).encode(),
        json.dumps({"docker_compose_file": "services:\n  app:\n    image: x\n"}).encode(),
        json.dumps({"docker_compose_file": "services:\n  sidecar:\n    image: ''\n"}).encode(),
        json.dumps({"name": "no docker compose"}).encode(),
    ],
)
def test_a_compose_without_a_sidecar_image_is_refused(compose: bytes) -> None:
    with pytest.raises(DevnetError, match="names no image of a sidecar service"):
        image_of(STATE, compose)


def test_a_missing_compose_file_is_a_lab_error(tmp_path: Path) -> None:
    with pytest.raises(DevnetError, match="cannot read node-1's compose"):
        node_image(STATE, _node(tmp_path / "gone.json"))


def test_a_process_lab_does_not_check_the_image() -> None:
    # The process workload runs this checkout whatever the compose names (the image is measured, not run).
    process_lab = DevnetState(lab="amxx", underlay="10.1.0.0/24", mesh_cidr="10.2.0.0/16")
    check_compose_image(process_lab, encode_app_compose(node_app_compose(ANCHORS, image=PINNED)))
