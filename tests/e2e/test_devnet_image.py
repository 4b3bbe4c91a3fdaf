"""`attestmesh devnet up --workload image`: a 3-node lab whose sidecars are podman containers of the image
built from this tree (scripts/image.sh, as `make image`), run the way dstack's compose runs compose/node.yaml.

Checks each container is what the compose describes (the node's network namespace, NET_ADMIN,
/dev/net/tun, the guest-agent simulator's socket at /var/run/dstack.sock, a named state volume, the image's
own entrypoint and HEALTHCHECK), that the lab comes to healthy, that every node's /healthz names the image's
build (`source: image`, this tree's commit) and the image's HEALTHCHECK reports healthy; then a workload
restart (`devnet node restart`: a new container, the same volume) comes back with its identity and the CSK
cache it wrote into the volume. Then an image rebuilt one commit later, rolled out both ways of
docs/operations.md: the recommended one, ``SIDECAR_IMAGE=<image>@sha256:<digest> deploy/node.sh node-3
update`` (the compose pinned to the rebuilt image's digest allowlisted before the reboot, node-3 back as the
same member with the same mesh IP, running that exact reference, its /healthz naming the new commit while
the others still run the old one); then the seed's tag flow (the same tag rebuilt, a workload restart of
node-2). The cluster is healthy afterwards, and `devnet down` leaves no container and no volume of the lab
behind.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devnet.compose import NodeAnchors, compose_hash, encode_app_compose, node_app_compose
from devnet.container import AGENT_SOCKET, LAB_LABEL, STATE_DIR
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import ChainConnection
from sidecar.core.ids import Bytes32
from sidecar.drivers.csk import CSK_CACHE_FILE
from tests.e2e.deploykit import Routine, check_logs, node_record, owner_nonce, steps_in_order
from tests.e2e.imagekit import BuiltImage, build_image, inspect_image, next_commit, podman
from tests.e2e.lab import PLAN, REPO, LabCli, chain, wait_until

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


def _container_id(name: str) -> str | None:
    """The container's id; None while there is none (a restart's new container is created after the verb
    returns: `podman run` is the workload's process)."""
    found = podman("container", "inspect", "--format", "{{.Id}}", name, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


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
            _container_id(names[1]) not in (None, before)
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

    # The next release: this tree one commit later, built under a tag of its own (so far the lab's tag still
    # names the old build: a node running the tag instead of its compose's digest would stay on HEAD).
    clone, next_commit_sha = next_commit(tmp_path)
    rebuilt = build_image(f"{image.tag}-next", tree=clone)
    assert rebuilt.id != image.id

    # The recommended roll: node-3's compose pinned to the rebuilt image's digest (podman's digest of the
    # local image, what `podman image inspect` shows; a pushed one is the registry's), allowlisted first.
    pinned = f"{image.tag.rpartition(':')[0]}@{inspect_image(rebuilt.id)['Digest']}"
    roll_pinned(lab, pinned, rebuilt, next_commit_sha, tmp_path)

    # A roll to a rebuilt image under the same tag (the seed's `:latest` flow: the new build pushed to the
    # tag; the lab pulls nothing, so a workload restart re-creates the container from whatever the tag names
    # now): node-2 comes back on the new build, with its identity; node-1 still runs the old one.
    podman("tag", rebuilt.id, image.tag)
    podman("untag", rebuilt.id, rebuilt.tag)
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
    assert [rolled[n]["build"]["commit"] for n in ("node-1", "node-3")] == [HEAD, next_commit_sha]
    assert all(body["healthy"] for body in rolled.values())
    lab.run("status", "--wait-healthy", "60", timeout=120)

    lab.run("down")
    assert _containers() == [] and _volumes() == []


def _allowlisted(lab: LabCli, digest: str) -> bool:
    async def allowed(conn: ChainConnection, cluster: ClusterClient) -> bool:
        return await cluster.allowed_compose_hash(Bytes32.from_hex(digest))

    return bool(chain(lab, allowed))


def roll_pinned(lab: LabCli, pinned: str, rebuilt: BuiltImage, commit: str, tmp_path: Path) -> None:
    """``SIDECAR_IMAGE=<pinned> deploy/node.sh node-3 update`` on the running 3-node image lab: the pinned
    compose allowlisted before node-3 reboots into it; node-3 back as the same member with the same mesh IP,
    its container running ``pinned`` (the rebuilt image) and its /healthz naming ``commit``; node-1 and
    node-2 untouched, on the old build; the cluster healthy."""
    before = _healthz(lab)
    old_hash = node_record(lab, "node-3")["compose_hash"]
    new_hash = str(
        compose_hash(encode_app_compose(node_app_compose(NodeAnchors.of_lab(lab.state()), image=pinned)))
    )
    assert new_hash != old_hash and not _allowlisted(lab, new_hash)
    others = {n: _inspect(f"{PLAN.name}-{n}-sidecar")["Id"] for n in ("node-1", "node-2")}
    nonce = owner_nonce(lab)

    routine = Routine(lab, tmp_path / "routine")
    routine.run("node-3", "update", SIDECAR_IMAGE=pinned)
    member = before["node-3"]["node"]["member_id"]
    steps_in_order(
        routine.last_run("node-3"),
        "step prepare started", f"new compose hash {new_hash}",
        "step allowlist started", f"compose hash {new_hash} on cluster", "allowlisted (tx 0x",
        "step allowlist done",
        "step apply started", f"leaving compose {old_hash}",
        f"updated compose {old_hash} -> {new_hash}; boot allowed; running, state kept",
        "step mesh-verify done", f"identity carried over: member {member}",
        "step retire started", f"compose {old_hash} stays allowlisted: still the compose of node-1 node-2",
        "done: changed allowlist,apply",
    )  # fmt: skip
    check_logs(routine)
    assert owner_nonce(lab) == nonce + 1  # addComposeHash only: the old compose still runs on node-1, node-2
    assert _allowlisted(lab, new_hash) and _allowlisted(lab, old_hash)

    # node-3 is back as the same member on the new build; the others still run the old one, untouched.
    after = _healthz(lab)
    rolled = after["node-3"]
    assert rolled["build"]["commit"] == commit and rolled["build"]["source"] == "image"
    assert {k: rolled["node"][k] for k in ("member_id", "mesh_ip", "app_id")} == {
        k: before["node-3"]["node"][k] for k in ("member_id", "mesh_ip", "app_id")
    }
    assert rolled["node"]["compose_hash"] == new_hash
    assert [after[n]["build"]["commit"] for n in ("node-1", "node-2")] == [HEAD, HEAD]
    assert {n: _inspect(f"{PLAN.name}-{n}-sidecar")["Id"] for n in others} == others

    # The container runs what the node's compose names: the reference pinned by digest (the rebuilt image).
    container = _inspect(f"{PLAN.name}-node-3-sidecar")
    assert container["ImageName"] == pinned
    assert container["Image"].removeprefix("sha256:") == rebuilt.id
    assert (
        f"image: {pinned}\\n    pull_policy: missing\\n"
        in Path(node_record(lab, "node-3")["compose_path"]).read_text()
    )
    assert podman("healthcheck", "run", f"{PLAN.name}-node-3-sidecar", check=False).returncode == 0

    # A compose naming an image podman does not have: refused before the node is touched (the lab pulls
    # nothing; on dstack the pull would fail and the CVM would run no workload).
    missing = f"{pinned.partition('@')[0]}@sha256:{'5e' * 32}"
    absent = tmp_path / "absent.json"
    lab.run("compose", "--image", missing, "--output", str(absent))
    refused = lab.run("node", "update", "node-3", "--compose-file", str(absent), check=False)
    assert refused.returncode == 1 and f"no image {missing!r} here" in refused.stderr
    assert _container_id(f"{PLAN.name}-node-3-sidecar") == container["Id"]
    assert node_record(lab, "node-3")["compose_hash"] == new_hash
    lab.run("status", "--wait-healthy", "60", timeout=120)
