"""`make image` here: the Dockerfile built with podman from this tree (scripts/image.sh, the local Debian
base), then the built image itself inspected and run.

Checks what only the real image can show: the commit and version labels and the build record agree with the
tree; `--version` of all three entry points inside the image names that commit; the image's own HEALTHCHECK
(as `podman healthcheck run` executes it) reports healthy against a `/healthz` answering 200 in the container
and unhealthy when nothing answers; the runtime image holds neither pip nor setuptools (nor wgconfig); a
second build reuses the cached base. Containers run with `--network none` (loopback only) and are removed
here. A missing podman, runc or mmdebstrap fails the build, and so the test.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from importlib import metadata

import pytest

from tests.e2e.imagekit import (
    BuiltImage,
    build_image,
    container_name,
    inspect_image,
    podman,
    remove_container,
)
from tests.e2e.lab import REPO, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

VERSION = metadata.version("attestmesh")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


HEAD = _git("rev-parse", "HEAD").strip()
MODIFIED = bool(_git("status", "--porcelain", "--untracked-files=no").strip())


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    built = build_image()
    print(f"image built in {built.seconds:.1f} s")
    return built


def _run(image: BuiltImage, entrypoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return podman(
        "run", "--rm", "--network", "none", "--entrypoint", entrypoint, image.id, *args, check=False
    )


def test_the_image_is_labelled_with_the_commit_and_version(image: BuiltImage) -> None:
    found = inspect_image(image.tag)
    assert found["Id"].removeprefix("sha256:") == image.id
    labels = found["Config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == HEAD
    assert labels["org.opencontainers.image.version"] == VERSION
    assert found["Config"]["Entrypoint"] == ["attestmesh-sidecar"]


@pytest.mark.parametrize("program", ["attestmesh", "attestmesh-sidecar", "attestmesh-indexer"])
def test_version_inside_the_image_names_the_commit(image: BuiltImage, program: str) -> None:
    done = _run(image, program, "--version")
    assert done.returncode == 0, done.stderr
    tree = ", modified tree" if MODIFIED else ""
    assert done.stdout.strip() == f"{program} {VERSION} (commit {HEAD}{tree}, from image)"


def test_the_build_record_is_in_the_image(image: BuiltImage) -> None:
    done = _run(image, "python", "-m", "sidecar.buildinfo")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "version": VERSION,
        "commit": HEAD,
        "dirty": MODIFIED,
        "source": "image",
    }


# A stand-in /healthz inside the container (the real sidecar's is the image-workload lab's): the standard
# library's file server, 200 for the file `healthz`. The HEALTHCHECK probes ATTESTMESH_HEALTH_ADDR's port.
SERVE_HEALTHZ = (
    "import http.server, os, tempfile\n"
    "os.chdir(tempfile.mkdtemp())\n"
    "open('healthz', 'w').write('{\"healthy\": true}')\n"
    "handler = http.server.SimpleHTTPRequestHandler\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', 9090), handler).serve_forever()\n"
)


@pytest.fixture
def serving(image: BuiltImage) -> Iterator[str]:
    name = container_name("image-health")
    remove_container(name)
    try:
        podman(
            "run", "--detach", "--name", name, "--network", "none", "--health-interval", "disable",
            "--entrypoint", "python", image.id, "-c", SERVE_HEALTHZ,
        )  # fmt: skip
        yield name
    finally:
        remove_container(name)


def test_the_images_own_healthcheck_runs_in_the_container(image: BuiltImage, serving: str) -> None:
    healthcheck = inspect_image(image.tag)["Healthcheck"]  # podman's inspect: top level, durations in ns
    assert healthcheck["Test"] == ["CMD", "python", "-m", "sidecar.healthcheck"]
    assert (healthcheck["Timeout"], healthcheck["StartPeriod"]) == (5 * 10**9, 900 * 10**9)
    # podman runs the image's HEALTHCHECK itself; the server may still be binding at first.
    wait_until(
        lambda: podman("healthcheck", "run", serving, check=False).returncode == 0,
        30,
        "the image's HEALTHCHECK to pass against a /healthz answering 200",
    )
    state = json.loads(podman("inspect", serving).stdout)[0]["State"]
    health = state.get("Health") or state.get("Healthcheck")
    assert health["Status"] == "healthy", health
    assert health["Log"][-1]["Output"].startswith("healthy: "), health["Log"][-1]
    # The same command where nothing answers: unhealthy, exit 1, said in one line.
    nothing = podman(
        "exec", "--env", "ATTESTMESH_HEALTH_ADDR=127.0.0.1:9", serving, *healthcheck["Test"][1:], check=False
    )
    assert nothing.returncode == 1 and nothing.stdout.startswith("unhealthy: no answer"), nothing


NO_INSTALLERS = """
import importlib.util, json, os, shutil, sys
modules = ("pip", "setuptools", "pkg_resources", "wheel", "wgconfig")
found = [m for m in modules if importlib.util.find_spec(m)]
found += [f"PATH:{p}" for p in ("pip", "pip3", "easy_install") if shutil.which(p)]
for root, dirs, files in os.walk("/"):
    if root.startswith(("/proc", "/sys", "/dev")):
        dirs[:] = []
        continue
    for name in dirs + files:
        low = name.lower()
        if low in ("pip", "setuptools") or low.startswith(("pip-", "setuptools-")):
            found.append(os.path.join(root, name))
print(json.dumps({"python": sys.executable, "found": found}))
"""


@pytest.mark.parametrize("interpreter", ["python", "/usr/bin/python3"])
def test_the_runtime_image_has_no_pip_or_setuptools(image: BuiltImage, interpreter: str) -> None:
    # The venv's interpreter and the base's (this image is on the Debian base: /usr/bin/python3).
    done = _run(image, interpreter, "-c", NO_INSTALLERS)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["found"] == [], report


def test_a_second_build_reuses_the_cached_base(image: BuiltImage) -> None:
    again = build_image(image.tag)
    assert "(cached)" in again.log and "making" not in again.log, again.log
    assert again.id == image.id  # nothing changed: every layer came from the cache
    print(f"second build in {again.seconds:.1f} s")
