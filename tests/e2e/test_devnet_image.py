"""`attestmesh devnet up --workload image`: a 3-node lab whose sidecars are podman containers of the image
built from this tree (scripts/image.sh, as `make image`), run the way dstack's compose runs compose/node.yaml.

Checks each container is what the compose describes (the node's network namespace, NET_ADMIN,
/dev/net/tun, the guest-agent simulator's socket at /var/run/dstack.sock, a named state volume, the image's
own entrypoint and HEALTHCHECK), that the lab comes to healthy, that every node's /healthz names the image's
build (`source: image`, this tree's commit) and the image's HEALTHCHECK reports healthy; then a workload
restart (`devnet node restart`: a new container, the same volume) comes back with its identity and the CSK
cache it wrote into the volume; a node rolled to a rebuilt image (one commit later, same tag) reports the
new commit while the others keep theirs; and `devnet down` leaves no container and no volume of the lab
behind.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devnet.container import AGENT_SOCKET, LAB_LABEL, STATE_DIR
from sidecar.drivers.csk import CSK_CACHE_FILE
from tests.e2e.imagekit import BuiltImage, build_image, next_commit, podman
from tests.e2e.lab import PLAN, REPO, LabCli, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

HEAD = subprocess.run(
    ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
).stdout.strip()


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    return build_image()


def _containers() -> list[str]:
    listed = podman("ps", "--all", "--filter", f"label={LAB_LABEL}={PLAN.name}", "--format", "{{.Names}}")
    return sorted(listed.stdout.split())


def _volumes() -> list[str]:
    listed = podman("volume", "ls", "--filter", f"label={LAB_LABEL}={PLAN.name}", "--format", "{{.Name}}")
    return sorted(listed.stdout.split())


def _inspect(name: str) -> dict[str, Any]:
    (found,) = json.loads(podman("container", "inspect", name).stdout)
    return dict(found)


def _healthz(lab: LabCli) -> dict[str, dict[str, Any]]:
    return {node["name"]: node["healthz"] for node in lab.status()["nodes"]}


def test_a_lab_of_image_workloads_comes_to_healthy(lab: LabCli, image: BuiltImage, tmp_path: Path) -> None:
    out = lab.run("up", "--nodes", "3", "--workload", "image", "--image", image.tag, timeout=300).stdout
    assert f"workload image {image.tag}" in out
    lab.run("status", "--wait-healthy", "120", timeout=180)
    state = lab.state()
    assert (state.workload, state.image) == ("image", image.tag)

    names = [f"{PLAN.name}-node-{i}-sidecar" for i in (1, 2, 3)]
    assert _containers() == names
    for node, name in zip(state.nodes, names, strict=True):
        found = _inspect(name)
        assert found["Image"].removeprefix("sha256:") == image.id
        assert found["State"]["Running"] is True
        host = found["HostConfig"]
        assert host["NetworkMode"] == f"ns:/run/netns/{node.netns}"
        assert "CAP_NET_ADMIN" in host["CapAdd"]
        assert [d["PathOnHost"] for d in host["Devices"]] == ["/dev/net/tun"]
        mounts = {m["Destination"]: m for m in found["Mounts"]}
        assert mounts[AGENT_SOCKET]["Source"] == node.dstack_socket
        assert (
            mounts[STATE_DIR]["Type"] == "volume"
            and mounts[STATE_DIR]["Name"] == f"{PLAN.name}-{node.name}-state"
        )
        assert "/dstack" not in mounts
        assert found["Config"]["Entrypoint"] in (["attestmesh-sidecar"], "attestmesh-sidecar")
        # The image's own HEALTHCHECK, run by podman in the container: healthy.
        assert podman("healthcheck", "run", name, check=False).returncode == 0
    assert _volumes() == [f"{PLAN.name}-node-{i}-state" for i in (1, 2, 3)]

    bodies = _healthz(lab)
    for body in bodies.values():
        assert body["healthy"] is True
        assert body["build"]["commit"] == HEAD and body["build"]["source"] == "image"

    # A workload restart: a new container of the same image, the same volume; the node comes back with its
    # identity, and the CSK cache it wrote into the volume is still there (the volume outlived the container).
    volume = json.loads(podman("volume", "inspect", f"{PLAN.name}-node-2-state").stdout)[0]
    cache = Path(volume["Mountpoint"]) / CSK_CACHE_FILE
    assert cache.is_file(), sorted(p.name for p in cache.parent.iterdir())
    cached = cache.read_bytes()
    before = _inspect(names[1])["Id"]
    lab.run("node", "restart", "node-2")
    wait_until(
        lambda: (
            _inspect(names[1])["Id"] != before
            and (body := _healthz(lab)["node-2"]) is not None
            and body["healthy"]
        ),
        60,
        "node-2 healthy again in a new container after its workload restart",
        interval=0.5,
    )
    after = _healthz(lab)["node-2"]
    assert after["node"]["member_id"] == bodies["node-2"]["node"]["member_id"]
    assert after["csk"]["commitment"] == bodies["node-2"]["csk"]["commitment"]
    assert cache.is_file() and len(cache.read_bytes()) == len(cached)

    # A roll to a rebuilt image under the same tag (the seed's `:latest` flow; the lab pulls nothing, so a
    # workload restart re-creates the container from whatever the tag names now): node-2 comes back on the
    # new build, with its identity; the others still run the old one.
    clone, next_commit_sha = next_commit(tmp_path)
    rebuilt = build_image(image.tag, tree=clone)
    assert rebuilt.id != image.id
    lab.run("node", "restart", "node-2")
    wait_until(
        lambda: (
            (body := _healthz(lab)["node-2"]) is not None
            and body["healthy"]
            and body["build"]["commit"] == next_commit_sha
        ),
        60,
        "node-2 healthy on the rebuilt image",
        interval=0.5,
    )
    rolled = _healthz(lab)
    assert _inspect(names[1])["Image"].removeprefix("sha256:") == rebuilt.id
    assert rolled["node-2"]["node"]["member_id"] == bodies["node-2"]["node"]["member_id"]
    assert [rolled[n]["build"]["commit"] for n in ("node-1", "node-3")] == [HEAD, HEAD]
    assert all(body["healthy"] for body in rolled.values())

    lab.run("down")
    assert _containers() == [] and _volumes() == []
