"""The e2e toolkit for the container image: build it from the tree with ``scripts/image.sh`` (what
``make image`` runs) and drive podman the way the project configures it (``scripts/podman/containers.conf``).

Must not import pytest or another test module, push an image, or touch containers and images it did not
create: every container it starts is named ``<lab>-…`` and removed by the caller's ``finally``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.lab import LAB, REPO

CONTAINERS_CONF = REPO / "scripts" / "podman" / "containers.conf"
#: The image the e2e tier builds and runs: a tag of its lab's (a developer's `make image` tag, and another
#: checkout's e2e run on the same machine, are left alone).
TEST_TAG = f"localhost/attestmesh-sidecar:{LAB}"


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` with the project's containers.conf; with ``check``, a failure names its stderr."""
    done = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return done


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    id: str
    seconds: float
    log: str  # image.sh's progress (stderr)


def build_image(tag: str = TEST_TAG, tree: Path = REPO) -> BuiltImage:
    """Build the Dockerfile of ``tree`` (default: this one) with its ``scripts/image.sh --tag TAG`` (the
    local Debian base)."""
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(tree / "scripts" / "image.sh"), "--tag", tag],
        env={k: v for k, v in os.environ.items() if k not in ("ATTESTMESH_IMAGE_BASE", "CONTAINERS_CONF")},
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, f"scripts/image.sh failed ({done.returncode}):\n{done.stderr[-4000:]}"
    lines = done.stdout.split()
    assert len(lines) == 1, f"image.sh must print exactly the image id, got {done.stdout!r}"
    return BuiltImage(tag=tag, id=lines[0], seconds=time.monotonic() - started, log=done.stderr)


def next_commit(workdir: Path) -> tuple[Path, str]:
    """A clone of this checkout's HEAD in ``workdir`` with one more (empty) commit: the tree of a "new
    release" whose image differs from this one's by its commit only. Returns the clone and that commit."""
    clone = workdir / "next"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    who = ["-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid"]
    subprocess.run(
        ["git", "-C", str(clone), *who, "commit", "--quiet", "--allow-empty", "-m", "next"], check=True
    )
    head = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    return clone, head.stdout.strip()


def inspect_image(ref: str) -> dict[str, Any]:
    found = json.loads(podman("image", "inspect", ref).stdout)
    assert isinstance(found, list) and len(found) == 1
    return dict(found[0])


def container_name(what: str) -> str:
    """A container name in this lab's namespace of names."""
    return f"{LAB}-{what}"


def remove_container(name: str) -> None:
    podman("rm", "--force", "--ignore", "--time", "2", name, check=False)
