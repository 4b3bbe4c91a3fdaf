"""The image workload (`devnet up --workload image`): a node's sidecar as a podman container of the image, run
the way dstack's compose runs `compose/node.yaml`'s sidecar service.

Owns which image a node's container runs (``node_image``): the image the sidecar service of the node's own
app-compose.json names, as dstack's compose runs what the measured compose names, so a roll to a compose
pinned by digest (``localhost/attestmesh-sidecar@sha256:…``, podman's digest of a local image) runs exactly
that image; the published tag the lab's default compose names (``ghcr.io/…/attestmesh-sidecar:latest``)
stands for the lab's image (``devnet up --image``: the lab pulls nothing, its local tag is what that tag
names), and an image podman does not have is refused before the node is touched (``check_compose_image``).
Owns the container's command line (``sidecar_container``): the node's network namespace (``--network
ns:/run/netns/<ns>``), ``NET_ADMIN``, ``/dev/net/tun``, the node's guest-agent simulator socket at
``/var/run/dstack.sock``, a named state volume at ``/var/lib/attestmesh``, the image's own entrypoint and
HEALTHCHECK, and the environment: the sidecar's ``ATTESTMESH_*`` variables of the lab (the compose file's
trust anchors as literals, the sealed values, the lab's tuning), passed by name so no value is in a command
line; host paths the sidecar needs (the WireGuard UAPI directory of the lab's wireguard-go, the lab
CA) bind-mounted at the same path; the app API socket in the node's ``app/`` directory, mounted at
``/run/attestmesh`` as compose/node.yaml mounts its app volume. ``podman run`` stays in the foreground
(``--rm``, ``--replace``): its PID is the workload's process record, and the SIGTERM the lab sends it is
forwarded to the sidecar (PID 1 in the container). Also the sweep that removes the lab's containers and
volumes (``remove_lab_containers``), found by the label ``io.attestmesh.lab=<lab>``.
Must not: touch containers or volumes without its lab's label, publish ports (the node's namespace is the
network), or pass the host's environment into the container.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import yaml

from devnet.compose import DEFAULT_SIDECAR_IMAGE
from devnet.labdir import DevnetError
from devnet.state import DevnetState, NodeState
from sidecar.core.measured import SIDECAR_SERVICE

REPO: Final = Path(__file__).resolve().parents[1]
CONTAINERS_CONF: Final = REPO / "scripts" / "podman" / "containers.conf"
#: What `make image` tags (scripts/image.sh); `devnet up --image` or ATTESTMESH_IMAGE names another.
DEFAULT_IMAGE: Final = "localhost/attestmesh-sidecar:dev"
LAB_LABEL: Final = "io.attestmesh.lab"
AGENT_SOCKET: Final = "/var/run/dstack.sock"
STATE_DIR: Final = "/var/lib/attestmesh"
APP_DIR: Final = "/run/attestmesh"
WORKLOADS: Final = ("process", "image")
_PODMAN_TIMEOUT: Final = 60.0


def podman_env() -> dict[str, str]:
    """The environment podman runs with: the project's containers.conf (no default ulimits, no pids limit,
    runc; ENVIRONMENT.md "Containers without Docker") and nothing of the lab."""
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CONTAINERS_CONF": str(CONTAINERS_CONF),
    }


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=_PODMAN_TIMEOUT,
        check=False,
    )


def container_name(state: DevnetState, node: NodeState) -> str:
    return f"{state.lab}-{node.name}-sidecar"


def volume_name(state: DevnetState, node: NodeState) -> str:
    return f"{state.lab}-{node.name}-state"


def check_image(image: str, hint: str = "build it with `make image` (or pass --image)") -> None:
    """``DevnetError`` unless podman is installed and has ``image`` (no registry is asked)."""
    if shutil.which("podman") is None:
        raise DevnetError("--workload image needs podman: run `make setup`")
    if _podman("image", "exists", image).returncode != 0:
        raise DevnetError(f"no image {image!r} here: {hint}")


def compose_image(compose: bytes) -> str:
    """The image the sidecar service of an app-compose.json's ``docker_compose_file`` names; ``DevnetError``
    when there is none (not an app compose, no ``sidecar`` service, no image)."""
    try:
        document = json.loads(compose)
        services = yaml.safe_load(document["docker_compose_file"])["services"]
        image = services[SIDECAR_SERVICE]["image"]
    except (ValueError, TypeError, KeyError, yaml.YAMLError):
        raise DevnetError("the compose names no image of a sidecar service") from None
    if not isinstance(image, str) or not image.strip():
        raise DevnetError("the compose names no image of a sidecar service")
    return image.strip()


def image_of(state: DevnetState, compose: bytes) -> str:
    """The image a node booting ``compose`` runs: the one the compose names; the published tag the lab's own
    compose names stands for the lab's image (``state.image``)."""
    named = compose_image(compose)
    return state.image if named == DEFAULT_SIDECAR_IMAGE else named


def node_image(state: DevnetState, node: NodeState) -> str:
    """The image the node's container runs: ``image_of`` its app-compose.json as it is now."""
    try:
        compose = Path(node.compose_path).read_bytes()
    except OSError as exc:
        raise DevnetError(f"cannot read {node.name}'s compose: {exc.strerror or exc}") from None
    return image_of(state, compose)


def check_compose_image(state: DevnetState, compose: bytes) -> None:
    """On an image lab running workloads, ``DevnetError`` unless podman has the image ``compose`` names (a
    node is not powered off for a workload that could not start: the lab pulls nothing)."""
    if state.workload == "image" and state.sidecars:
        hint = "the lab pulls nothing; build it (`make image`) and name it by a tag or digest podman has"
        check_image(image_of(state, compose), hint)


def _ensure_volume(state: DevnetState, node: NodeState) -> str:
    name = volume_name(state, node)
    if _podman("volume", "exists", name).returncode != 0:
        made = _podman("volume", "create", "--label", f"{LAB_LABEL}={state.lab}", name)
        if made.returncode != 0:
            raise DevnetError(f"podman volume create {name}: {made.stderr.strip()}")
    return name


def sidecar_container(
    state: DevnetState, node: NodeState, sidecar_env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The ``podman run`` command line of the node's sidecar and the environment to run it with (the
    container's variables, passed by name, plus podman's own)."""
    if not state.image:
        raise DevnetError(f"lab {state.lab!r} runs the image workload but names no image")
    image = node_image(state, node)
    env = {k: v for k, v in sidecar_env.items() if k.startswith("ATTESTMESH_")}
    env["ATTESTMESH_STATE_DIR"] = STATE_DIR  # the named volume, as in compose/node.yaml
    # The app API socket in a directory of its own (compose/node.yaml: the attestmesh-app volume), visible
    # on the host next to the node's files; never the node directory itself (the simulator's files).
    app_dir = Path(node.app_socket).parent / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    env["ATTESTMESH_APP_SOCKET"] = f"{APP_DIR}/{Path(node.app_socket).name}"
    mounts = [f"{node.dstack_socket}:{AGENT_SOCKET}", f"{app_dir}:{APP_DIR}"]
    if env.get("ATTESTMESH_WG_UAPI_DIR"):  # the lab's wireguard-go serves the node's device there
        mounts.append(f"{env['ATTESTMESH_WG_UAPI_DIR']}:{env['ATTESTMESH_WG_UAPI_DIR']}")
    if env.get("ATTESTMESH_CA_FILE"):
        mounts.append(f"{env['ATTESTMESH_CA_FILE']}:{env['ATTESTMESH_CA_FILE']}:ro")
    argv = [
        "podman", "run", "--rm", "--replace", "--name", container_name(state, node),
        "--label", f"{LAB_LABEL}={state.lab}",
        "--network", f"ns:/run/netns/{node.netns}",
        "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun:/dev/net/tun",
        "--mount", f"type=volume,source={_ensure_volume(state, node)},target={STATE_DIR}",
        *[arg for mount in mounts for arg in ("--volume", mount)],
        *[arg for name in sorted(env) for arg in ("--env", name)],
        image,
    ]  # fmt: skip
    return argv, {**podman_env(), **env}


def remove_lab_containers(lab: str) -> None:
    """Remove the containers and volumes labelled with ``lab`` (a stopped workload's, or a killed `up`'s)."""
    if shutil.which("podman") is None:
        return
    label = f"label={LAB_LABEL}={lab}"
    names = _podman("ps", "--all", "--filter", label, "--format", "{{.Names}}").stdout.split()
    if names:
        _podman("rm", "--force", "--ignore", "--time", "2", *names)
    volumes = _podman("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split()
    if volumes:
        _podman("volume", "rm", "--force", *volumes)
