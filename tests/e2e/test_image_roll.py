"""An image roll the compose hash binds, on the devnet, as docs/operations.md "Rolling a new image" tells an
operator to run it: ``SIDECAR_IMAGE=<image@sha256:…> deploy/node.sh NODE update`` one node at a time.

The lab's compose with the pinned image (``attestmesh devnet compose --image``) is another compose hash than
the ``:latest`` one; each node's update allowlists it (``addComposeHash``) BEFORE the node reboots into it
(the run's log order, and the KMS boot gate letting the reboot through: it would deny a hash not yet
allowed), the node comes back as the same member, and the compose it left is retired (``removeComposeHash``)
only by the update of the last node still running it, once that node is healthy. The last node's roll is
killed at each fault point (the allowlist, mid-apply, mesh-verify, the retire) and run again: one
``removeComposeHash`` in all, no second registration. Then a node booting the old compose is denied keys:
what the gate now admits is the pinned image's code, and nothing else.

``roll_image`` takes the image reference: this file rolls the process workload (the image is measured, not
run). The same routine on the image workload, where the node runs the image its compose pins (a rebuilt
image by its podman digest, /healthz naming the new commit), is tests/e2e/test_devnet_image.py's
``roll_pinned``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from devnet.compose import NodeAnchors, compose_hash, encode_app_compose, node_app_compose
from sidecar.core.ids import Bytes32
from tests.e2e.deploykit import (
    Routine,
    check_logs,
    node_record,
    owner_nonce,
    registrations,
    steps_in_order,
)
from tests.e2e.lab import LabCli, chain, wait_until
from tests.e2e.mesh import Node, wait_all_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

#: An image pinned by digest. The process workload runs this checkout whatever the compose names; what
#: matters here is the measured reference (another digest, another compose hash).
PINNED = "ghcr.io/attestmesh/attestmesh-sidecar@sha256:" + "5e" * 32


@pytest.fixture
def routine(lab: LabCli, tmp_path: Path) -> Iterator[Routine]:
    found = Routine(lab, tmp_path)
    yield found
    check_logs(found)


def allowlisted(lab: LabCli, digest: str) -> bool:
    return bool(chain(lab, lambda conn, c: c.allowed_compose_hash(Bytes32.from_hex(digest))))


def lab_compose_hashes(lab: LabCli) -> dict[str, str]:
    """Every node's compose hash as ``devnet env`` tells the routine (LAB_NODE_COMPOSE_HASHES)."""
    line = next(x for x in lab.run("env").stdout.splitlines() if x.startswith("LAB_NODE_COMPOSE_HASHES="))
    pairs = line.partition("=")[2].strip("'").split()
    return dict(pair.split("=", 1) for pair in pairs)


#: Where the last node's roll is killed, each in a run of its own: as the allowlist step starts, mid-apply
#: (its first line: the old compose recorded, the reboot about to start), as mesh-verify and the retire start.
KILL_POINTS = (
    ("allowlist", re.compile(r"step allowlist started\n")),
    ("apply", re.compile(r"step apply started\n\S+Z   \| leaving compose 0x[0-9a-f]{64}\n")),
    ("mesh-verify", re.compile(r"step mesh-verify started\n")),
    ("retire", re.compile(r"step retire started\n")),
)


def roll_image(
    lab: LabCli, routine: Routine, nodes: dict[str, Node], image: str, tmp_path: Path, *, faults: bool
) -> tuple[str, str]:
    """Roll every node of the lab to ``image`` with ``deploy/node.sh NODE update`` (SIDECAR_IMAGE), one at a
    time, asserting the allowlist-first order and the retirement of the old compose; with ``faults`` the
    last node's roll is killed at each of ``KILL_POINTS`` first. Returns (old hash, new hash)."""
    names = sorted(nodes)
    old_hash = node_record(lab, names[0])["compose_hash"]
    assert {node_record(lab, n)["compose_hash"] for n in names} == {old_hash}
    members = {n: nodes[n].healthz()["node"]["member_id"] for n in names}

    # The pinned compose: the lab's, with the image; its own compose hash, not the :latest one's.
    pinned = tmp_path / "pinned.json"
    wrote = lab.run("compose", "--image", image, "--output", str(pinned)).stdout
    new_hash = str(compose_hash(pinned.read_bytes()))
    assert wrote == f"wrote {pinned}: compose hash {new_hash} (image {image})\n"
    assert new_hash != old_hash and not allowlisted(lab, new_hash)
    expected = encode_app_compose(node_app_compose(NodeAnchors.of_lab(lab.state()), image=image))
    assert pinned.read_bytes() == expected
    assert f"image: {image}\\n    pull_policy: missing\\n" in pinned.read_text()

    nonce = owner_nonce(lab)
    for index, name in enumerate(names):
        last = index == len(names) - 1
        if last and faults:
            assert kill_roll(routine, name, image) == [point for point, _ in KILL_POINTS]
        routine.run(name, "update", SIDECAR_IMAGE=image)
        run = routine.last_run(name)
        others = " ".join(n for n in names[index + 1 :])
        if index == 0:
            # The first node: the allowlist transaction, then (and only then) the reboot into the new hash.
            steps_in_order(
                run,
                "step prepare started", f"new compose hash {new_hash}",
                "step allowlist started", f"compose hash {new_hash} on cluster", "allowlisted (tx 0x",
                "step allowlist done",
                "step apply started", f"leaving compose {old_hash}",
                f"updated compose {old_hash} -> {new_hash}; boot allowed; running, state kept",
                "step mesh-verify done", f"identity carried over: member {members[name]}",
                "step retire started", f"compose {old_hash} stays allowlisted: still the compose of {others}",
                "done: changed allowlist,apply",
            )  # fmt: skip
            assert owner_nonce(lab) == nonce + 1
        elif not last:
            steps_in_order(
                run, "already allowlisted; nothing changed", "step apply started",
                f"-> {new_hash}; boot allowed", f"identity carried over: member {members[name]}",
                f"still the compose of {others}", "done: changed apply",
            )  # fmt: skip
            assert owner_nonce(lab) == nonce + 1  # nothing sent: the hash was allowlisted by the first
        else:
            # The last node: once it is healthy, nobody runs the old compose; it leaves the allowlist.
            steps_in_order(
                run, "step mesh-verify done", f"identity carried over: member {members[name]}",
                "step retire started", f"compose hash {old_hash} on cluster",
                "removed from the allowlist (tx 0x", "step retire done",
            )  # fmt: skip
            assert owner_nonce(lab) == nonce + 2  # addComposeHash once, removeComposeHash once
        record = node_record(lab, name)
        assert record["compose_hash"] == new_hash and record["boot"] == "allowed"
        body = nodes[name].healthz()
        assert body["node"]["member_id"] == members[name] and body["node"]["compose_hash"] == new_hash
        assert allowlisted(lab, new_hash)
        assert allowlisted(lab, old_hash) == (not last), f"after {name}'s roll"
    assert lab_compose_hashes(lab) == dict.fromkeys(names, new_hash)
    return old_hash, new_hash


def kill_roll(routine: Routine, name: str, image: str) -> list[str]:
    """Start ``name``'s roll and kill it (its whole process group) at each kill point, one run each."""
    killed = []
    for point, pattern in KILL_POINTS:
        routine.kill_at(name, "update", pattern, point, SIDECAR_IMAGE=image)
        killed.append(point)
    return killed


def test_a_pinned_image_roll_allowlists_first_keeps_identities_and_retires_the_old_compose_once(
    lab: LabCli, routine: Routine, tmp_path: Path
) -> None:
    lab.run("up", "--nodes", "3")
    nodes = wait_all_healthy(lab)
    members = chain(lab, lambda conn, c: c.member_count())
    lab_compose = Path(lab.run("env").stdout.split("LAB_COMPOSE_FILE=", 1)[1].split("\n", 1)[0].strip("'"))

    old_hash, new_hash = roll_image(lab, routine, nodes, PINNED, tmp_path, faults=True)

    nodes = wait_all_healthy(lab)
    assert chain(lab, lambda conn, c: c.member_count()) == members
    for name in nodes:
        assert registrations(lab, name) == 1, f"{name} registered again"
    # Again: nothing to do anywhere (no transaction, no reboot).
    nonce = owner_nonce(lab)
    routine.run("node-2", "update", SIDECAR_IMAGE=PINNED)
    steps_in_order(routine.last_run("node-2"), "already runs compose", "no compose to retire",
                   "done: nothing changed")  # fmt: skip
    assert owner_nonce(lab) == nonce

    # The old compose (the :latest image) no longer gets keys: a node booted with it is denied at the gate.
    denied = lab.run("node", "update", "node-2", "--compose-file", str(lab_compose), check=False)
    assert denied.returncode == 1
    assert "denied at the KMS boot gate (compose hash not allowed)" in denied.stderr
    assert node_record(lab, "node-2")["compose_hash"] == old_hash
    # The routine brings it back to the pinned image: nothing to allowlist, nothing left to retire.
    routine.run("node-2", "update", SIDECAR_IMAGE=PINNED)
    steps_in_order(routine.last_run("node-2"), "already allowlisted; nothing changed",
                   f"compose hash {old_hash} on cluster", "not allowlisted; nothing changed",
                   "done: changed apply")  # fmt: skip
    assert owner_nonce(lab) == nonce
    wait_until(nodes["node-2"].healthy, 60, "node-2 healthy on the pinned image again")
    assert nodes["node-2"].healthz()["node"]["compose_hash"] == new_hash
    wait_all_healthy(lab)
