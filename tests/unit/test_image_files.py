"""The publishing workflow and the dstack compose files say what the image and the services need.

Parses .github/workflows/image.yml, compose/node.yaml (a template: rendered by ``attestmesh compose node``)
and compose/indexer.yaml and checks them against the code they configure: the sidecar's and the indexer's
variable tables, the measured trust anchors, the Dockerfile's entrypoint and health probe, the console
scripts. Running the image's commands is tests/component/test_image.py's job.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

import indexer.settings
import sidecar.settings
from devnet.compose import NodeAnchors, compose_hash, encode_app_compose, node_app_compose
from ops.compose_cmd import pin_image, render_node_compose
from ops.errors import OperatorError
from sidecar.core.ids import Address
from sidecar.core.measured import MEASURED, measured_literals
from tests import dockerfile

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "image.yml"
NODE_COMPOSE = REPO / "compose" / "node.yaml"
INDEXER_COMPOSE = REPO / "compose" / "indexer.yaml"
IMAGE_DOC = REPO / "docs" / "image.md"
DSTACK_SOCKET = "/var/run/dstack.sock"
SEALED_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ANCHORS = {
    "ATTESTMESH_CHAIN_ID": "8453",
    "ATTESTMESH_CLUSTER": "0x" + "ab" * 20,
    "ATTESTMESH_MEMBER_APP_FACTORY": "0x" + "cd" * 20,
    "ATTESTMESH_KMS_ROOTS": "0x" + "12" * 20 + ",0x" + "34" * 20,
    "ATTESTMESH_INDEXER_REGISTRY": "0x" + "ef" * 20,
}


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _default(variables: tuple[sidecar.settings.Variable, ...], name: str) -> str:
    (variable,) = (v for v in variables if v.name == name)
    assert variable.default is not None
    return variable.default


def _port(host_port: str) -> int:
    return int(host_port.rpartition(":")[2])


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as a mapping, from either compose spelling (list or mapping)."""
    raw = service.get("environment", {})
    if isinstance(raw, dict):
        return {str(name): str(value) for name, value in raw.items()}
    pairs = [str(item).partition("=") for item in raw]
    assert all(sep for _, sep, _ in pairs), f"an environment entry without '=': {raw}"
    return {name: value for name, _, value in pairs}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source (host path or volume name) of every short-syntax volume."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes", []):
        source, _, rest = str(entry).partition(":")
        target = rest.partition(":")[0]
        mounts[target] = source
    return mounts


def _published(service: dict[str, Any]) -> set[str]:
    return {str(port) for port in service.get("ports", [])}


# --- the workflow ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return _load(WORKFLOW)


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    assert isinstance(steps, list)
    return steps


def _step(workflow: dict[str, Any], action: str) -> dict[str, Any]:
    found = [step for step in _steps(workflow) if str(step.get("uses", "")).startswith(action + "@")]
    assert len(found) == 1, f"expected one step using {action}"
    return found[0]


def test_workflow_publishes_on_pushes_to_main_that_touch_the_image(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    push = triggers["push"]
    assert push["branches"] == ["main"]
    paths = push["paths"]
    for required in ("sidecar/**", "indexer/**", "Dockerfile", "constraints.txt", "pyproject.toml"):
        assert required in paths
    # Whatever the Dockerfile copies into the build is a trigger (the README only feeds package metadata).
    for source in dockerfile.copy_sources():
        if source == "README.md":
            continue
        probes = (source, f"{source}/any/file.py")
        assert any(fnmatch.fnmatchcase(p, pattern) for p in probes for pattern in paths), source
    (job,) = workflow["jobs"].values()
    assert job["if"] == "github.ref == 'refs/heads/main'"  # a manual run elsewhere must not move :latest


def test_the_image_is_built_from_sidecar_indexer_and_ops_never_devnet() -> None:
    # The development lab (and its development KMS) never ships: not copied, not in the build context, not
    # staged by build-venv.sh (package discovery then finds no devnet), not a trigger of the image build.
    sources = set(dockerfile.copy_sources())
    assert {"sidecar", "indexer", "ops"} <= sources and "devnet" not in sources
    context = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!ops/" in context and not any("devnet" in line for line in context if line.startswith("!"))
    staged = next(
        line
        for line in (REPO / "scripts" / "build-venv.sh").read_text().splitlines()
        if "$stage/" in line and '"$repo/sidecar"' in line
    )
    assert '"$repo/ops"' in staged and "devnet" not in staged


def test_workflow_may_write_packages_and_logs_in_to_ghcr(workflow: dict[str, Any]) -> None:
    assert workflow["permissions"]["packages"] == "write"
    login = _step(workflow, "docker/login-action")["with"]
    assert login["registry"] == "ghcr.io"
    assert login["password"] == "${{ secrets.GITHUB_TOKEN }}"


def test_workflow_tags_latest_and_the_commit_sha_of_a_lower_case_image_name(workflow: dict[str, Any]) -> None:
    runs = [str(s.get("run", "")) for s in _steps(workflow)]
    naming = [run for run in runs if run.startswith('echo "IMAGE=')]
    assert naming == ['echo "IMAGE=ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/attestmesh-sidecar" >> "$GITHUB_ENV"']
    meta = _step(workflow, "docker/metadata-action")
    assert meta["with"]["images"] == "${{ env.IMAGE }}"
    tags = [line.strip() for line in str(meta["with"]["tags"]).splitlines() if line.strip()]
    assert "type=raw,value=latest" in tags
    assert "type=raw,value=${{ github.sha }}" in tags
    build = _step(workflow, "docker/build-push-action")["with"]
    assert build["push"] is True
    assert build["tags"] == f"${{{{ steps.{meta['id']}.outputs.tags }}}}"
    assert build["file"] == "Dockerfile"
    assert build["context"] == "."


def test_workflow_bakes_version_and_commit_into_the_image(workflow: dict[str, Any], tmp_path: Path) -> None:
    build = _step(workflow, "docker/build-push-action")["with"]
    args = dict(line.strip().split("=", 1) for line in str(build["build-args"]).splitlines() if line.strip())
    assert args == {
        "ATTESTMESH_VERSION": "${{ env.ATTESTMESH_VERSION }}",
        "ATTESTMESH_COMMIT": "${{ github.sha }}",
        "ATTESTMESH_TREE": "clean",
    }
    declared = {arguments.split("=", 1)[0] for name, arguments in dockerfile.instructions() if name == "ARG"}
    assert set(args) <= declared
    # The step that sets ATTESTMESH_VERSION, run as the runner would: it finds the distribution's version.
    (step,) = [s for s in _steps(workflow) if "ATTESTMESH_VERSION=" in str(s.get("run", ""))]
    env_file = tmp_path / "github_env"
    subprocess.run(
        ["bash", "-c", step["run"]], cwd=REPO, env={"GITHUB_ENV": str(env_file), "PATH": "/usr/bin:/bin"},
        check=True,
    )  # fmt: skip
    assert env_file.read_text(encoding="utf-8") == f"ATTESTMESH_VERSION={metadata.version('attestmesh')}\n"


# --- the node's compose file ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> dict[str, Any]:
    return _load(NODE_COMPOSE)


def test_sidecar_service_has_the_network_devices_and_agent_it_needs(node: dict[str, Any]) -> None:
    sidecar_service = node["services"]["sidecar"]
    assert "NET_ADMIN" in sidecar_service["cap_add"]
    assert any(str(device).partition(":")[0] == "/dev/net/tun" for device in sidecar_service["devices"])
    mounts = _mounts(sidecar_service)
    assert mounts[DSTACK_SOCKET] == DSTACK_SOCKET
    assert not any(source.startswith("/dstack") for source in mounts.values()), "never mount /dstack"
    assert sidecar_service["restart"] == "unless-stopped"
    assert (
        sidecar_service["image"].startswith("ghcr.io/") and "/attestmesh-sidecar" in sidecar_service["image"]
    )
    assert "entrypoint" not in sidecar_service and "command" not in sidecar_service  # the image's entrypoint


def test_sidecar_state_dir_is_a_named_volume(node: dict[str, Any]) -> None:
    state_dir = _default(sidecar.settings.VARIABLES, "ATTESTMESH_STATE_DIR")
    app_socket_dir = str(PurePosixPath(_default(sidecar.settings.VARIABLES, "ATTESTMESH_APP_SOCKET")).parent)
    mounts = _mounts(node["services"]["sidecar"])
    for target in (state_dir, app_socket_dir):
        volume = mounts[target]
        assert not volume.startswith(("/", ".")), f"{target} must be a named volume, not a bind mount"
        assert volume in node["volumes"]
    # The app reads the app API socket from the same volume.
    assert _mounts(node["services"]["app"])[app_socket_dir] == mounts[app_socket_dir]
    # The container must not be told to keep its state anywhere else.
    assert "ATTESTMESH_STATE_DIR" not in _environment(node["services"]["sidecar"])


def test_sidecar_health_port_is_published_and_probed_by_the_image_command(node: dict[str, Any]) -> None:
    sidecar_service = node["services"]["sidecar"]
    port = _port(_default(sidecar.settings.VARIABLES, "ATTESTMESH_HEALTH_ADDR"))
    assert port == 9090
    assert f"{port}:{port}" in _published(sidecar_service)
    assert "ATTESTMESH_HEALTH_ADDR" not in _environment(sidecar_service)  # the published port is fixed here
    check = sidecar_service["healthcheck"]
    _, image_command = dockerfile.healthcheck()
    assert check["test"] == ["CMD", *image_command]
    for key in ("interval", "timeout", "start_period"):
        assert dockerfile.seconds(str(check[key])) > 0
    assert dockerfile.seconds(str(check["timeout"])) < dockerfile.seconds(str(check["interval"])) + 1


def test_app_waits_for_a_healthy_sidecar_and_shares_its_network(node: dict[str, Any]) -> None:
    app = node["services"]["app"]
    assert app["depends_on"] == {"sidecar": {"condition": "service_healthy"}}
    assert app["network_mode"] == "service:sidecar"
    assert "ports" not in app  # with a shared network namespace, ports are published on the sidecar


def _check_sealed_environment(
    service: dict[str, Any],
    known: frozenset[str],
    variables: tuple[sidecar.settings.Variable, ...],
    prefix: str,
    measured: Mapping[str, str] | None = None,
) -> None:
    environment = _environment(service)
    measured = measured or {}
    for name, value in environment.items():
        expected = measured.get(name, f"${{{name}}}")
        assert value == expected, f"{name} must be {expected!r}, not {value!r}"
        assert name.startswith(prefix), name
        assert name in known, f"{name} is not a variable the service knows"
    required = {v.name for v in variables if v.default is None}
    assert required <= set(environment), f"required variables missing: {sorted(required - set(environment))}"
    assert "DSTACK_SIMULATOR_ENDPOINT" not in environment


def test_node_template_takes_every_trust_anchor_and_the_rest_from_the_sealed_env(
    node: dict[str, Any],
) -> None:
    # Unrendered, every variable is a ${VAR}: the sidecar would refuse to start with it (not measured).
    _check_sealed_environment(
        node["services"]["sidecar"], sidecar.settings.KNOWN_NAMES, sidecar.settings.VARIABLES, "ATTESTMESH_"
    )
    for service in node["services"].values():  # no other ${VAR} hides anywhere else in the file
        text = yaml.safe_dump(service)
        for name in SEALED_REFERENCE.findall(text):
            assert name in _environment(node["services"]["sidecar"]), name
    assert set(MEASURED) <= set(_environment(node["services"]["sidecar"]))


def test_rendered_node_compose_has_the_anchors_as_literals_and_only_sealed_references_else() -> None:
    template = NODE_COMPOSE.read_text(encoding="utf-8")
    image = "ghcr.io/attestmesh/attestmesh-sidecar@sha256:" + "e" * 64
    rendered = render_node_compose(template, ANCHORS, image)
    document = yaml.safe_load(rendered)
    sidecar_service = document["services"]["sidecar"]
    _check_sealed_environment(
        sidecar_service, sidecar.settings.KNOWN_NAMES, sidecar.settings.VARIABLES, "ATTESTMESH_", ANCHORS
    )
    assert sidecar_service["image"] == image
    assert sidecar_service["pull_policy"] == "missing"  # by digest: the cached image is this code
    assert measured_literals(rendered) == ANCHORS
    # Only the measured names and the image were substituted: the rest is the template's, byte for byte.
    kept = ("- ATTESTMESH_", "image:", "pull_policy:")
    rest = [line for line in rendered.splitlines() if not line.strip().startswith(kept)]
    assert rest == [line for line in template.splitlines() if not line.strip().startswith(kept)]
    # No indexer registry: an empty literal (measured "none"), never a ${VAR} left for the sealed env.
    without = render_node_compose(template, {k: v for k, v in ANCHORS.items() if "INDEXER" not in k})
    assert "- ATTESTMESH_INDEXER_REGISTRY=\n" in without
    assert "${ATTESTMESH_INDEXER_REGISTRY}" not in without


def test_the_tagged_template_pulls_at_every_boot_and_a_pinned_one_only_when_missing(
    node: dict[str, Any], indexer_compose: dict[str, Any]
) -> None:
    # dstack runs `docker compose up` at every boot with /var/lib/docker on the data disk: compose's default
    # (missing) would keep the image a tag named at the first boot; `always` makes a restart pull it again.
    assert node["services"]["sidecar"]["image"].endswith(":latest")
    assert node["services"]["sidecar"]["pull_policy"] == "always"
    assert indexer_compose["services"]["indexer"]["pull_policy"] == "always"
    template = NODE_COMPOSE.read_text(encoding="utf-8")
    tag = yaml.safe_load(render_node_compose(template, ANCHORS, "registry.example/o/attestmesh-sidecar:v2"))
    assert tag["services"]["sidecar"]["pull_policy"] == "always"
    assert render_node_compose(template, ANCHORS) == render_node_compose(template, ANCHORS, None)
    assert "pull_policy: always\n" in render_node_compose(template, ANCHORS)


def _app_compose_hash(docker_compose: str) -> str:
    """The compose hash of an app-compose.json around ``docker_compose`` (dstack's rule: sha256 of the
    sorted, compact JSON)."""
    return str(compose_hash(encode_app_compose(_app_compose_document(docker_compose))))


def _app_compose_document(docker_compose: str) -> dict[str, Any]:
    return {"manifest_version": 2, "name": "attestmesh-node", "runner": "docker-compose",
            "docker_compose_file": docker_compose, "allowed_envs": ["ATTESTMESH_RPC_URL"]}  # fmt: skip


def test_a_pinned_image_is_another_compose_hash_and_each_digest_its_own() -> None:
    template = NODE_COMPOSE.read_text(encoding="utf-8")
    image_a = "ghcr.io/o/attestmesh-sidecar@sha256:" + "a" * 64
    image_b = "ghcr.io/o/attestmesh-sidecar@sha256:" + "b" * 64
    latest = _app_compose_hash(render_node_compose(template, ANCHORS))
    pinned_a = _app_compose_hash(render_node_compose(template, ANCHORS, image_a))
    pinned_b = _app_compose_hash(render_node_compose(template, ANCHORS, image_b))
    again_a = _app_compose_hash(render_node_compose(template, ANCHORS, image_a))
    assert len({latest, pinned_a, pinned_b}) == 3 and again_a == pinned_a
    # The workflow's pinned template (anchors still ${VAR}) rendered per cluster is the same bytes as
    # rendering the repository's template with --image: one compose hash, whichever way it was made.
    pinned_template = pin_image(template, image_a)
    assert "${ATTESTMESH_CLUSTER}" in pinned_template
    assert render_node_compose(pinned_template, ANCHORS) == render_node_compose(template, ANCHORS, image_a)
    # And pinned again (a later roll) from the pinned template: the new digest, pull_policy still missing.
    repinned = pin_image(pinned_template, image_b)
    assert repinned == pin_image(template, image_b)
    # The devnet writes its nodes' compose the same way: a pinned image is another hash there too.
    anchors = NodeAnchors(8453, Address(b"\xab" * 20), Address(b"\xcd" * 20), (Address(b"\x12" * 20),))
    lab_latest = node_app_compose(anchors)
    lab_pinned = node_app_compose(anchors, image=image_a)
    assert compose_hash(encode_app_compose(lab_latest)) != compose_hash(encode_app_compose(lab_pinned))
    assert "    pull_policy: always\n" in lab_latest["docker_compose_file"]
    assert f"    image: {image_a}\n    pull_policy: missing\n" in lab_pinned["docker_compose_file"]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("ghcr.io/o/attestmesh-sidecar@sha256:" + "a" * 63, "a digest must be @sha256: and 64"),
        ("ghcr.io/o/attestmesh-sidecar@sha256:" + "A" * 64, "a digest must be @sha256: and 64"),
        ("ghcr.io/o/attestmesh-sidecar@md5:" + "a" * 32, "a digest must be @sha256: and 64"),
        ("ghcr.io/o/attestmesh sidecar:latest", "is not an image reference"),
    ],
)
def test_pin_refuses_a_malformed_reference(image: str, message: str) -> None:
    with pytest.raises(OperatorError, match=re.escape(message)):
        pin_image(NODE_COMPOSE.read_text(encoding="utf-8"), image)


def test_pin_refuses_a_template_without_the_pull_policy_line() -> None:
    template = NODE_COMPOSE.read_text(encoding="utf-8").replace("    pull_policy: always\n", "")
    with pytest.raises(OperatorError, match="not followed by its pull_policy line"):
        pin_image(template, "ghcr.io/o/attestmesh-sidecar@sha256:" + "a" * 64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ATTESTMESH_CLUSTER": ""}, "ATTESTMESH_CLUSTER needs a value"),
        ({"ATTESTMESH_CLUSTER": "${ATTESTMESH_CLUSTER}"}, "must be a plain value"),
        ({"ATTESTMESH_RPC_URL": "http://x"}, "not measured variables: ATTESTMESH_RPC_URL"),
    ],
)
def test_render_refuses_a_missing_or_unmeasured_value(change: dict[str, str], message: str) -> None:
    with pytest.raises(OperatorError, match=re.escape(message)):
        render_node_compose(NODE_COMPOSE.read_text(encoding="utf-8"), {**ANCHORS, **change})


def test_render_refuses_a_template_without_an_anchor() -> None:
    template = NODE_COMPOSE.read_text(encoding="utf-8").replace(
        "ATTESTMESH_KMS_ROOTS=${ATTESTMESH_KMS_ROOTS}", "ATTESTMESH_KMS_ROOTS=0x" + "12" * 20
    )
    with pytest.raises(OperatorError, match=re.escape("does not take ${ATTESTMESH_KMS_ROOTS}")):
        render_node_compose(template, ANCHORS)


# --- the indexer's compose file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexer_compose() -> dict[str, Any]:
    return _load(INDEXER_COMPOSE)


def test_indexer_runs_its_console_script_from_the_same_image(
    indexer_compose: dict[str, Any], node: dict[str, Any]
) -> None:
    service = indexer_compose["services"]["indexer"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert service["entrypoint"] == ["attestmesh-indexer"]
    assert "attestmesh-indexer" in scripts
    assert dockerfile.entrypoint() == ["attestmesh-sidecar"]
    assert "attestmesh-sidecar" in scripts
    assert "command" not in service  # arguments to the sidecar's entrypoint would be refused
    assert service["image"] == node["services"]["sidecar"]["image"]
    assert _mounts(service)[DSTACK_SOCKET] == DSTACK_SOCKET
    assert "cap_add" not in service and "devices" not in service


def test_indexer_health_is_probed_on_its_own_port(indexer_compose: dict[str, Any]) -> None:
    service = indexer_compose["services"]["indexer"]
    port = _port(_default(indexer.settings.VARIABLES, "ATTESTMESH_INDEXER_LISTEN_ADDR"))
    assert f"{port}:{port}" in _published(service)
    _, image_command = dockerfile.healthcheck()
    assert service["healthcheck"]["test"] == ["CMD", *image_command, f"http://127.0.0.1:{port}/healthz"]
    assert "ATTESTMESH_INDEXER_LISTEN_ADDR" not in _environment(service)


def test_indexer_environment_is_sealed_references_to_known_indexer_variables(
    indexer_compose: dict[str, Any],
) -> None:
    _check_sealed_environment(
        indexer_compose["services"]["indexer"],
        indexer.settings.KNOWN_NAMES,
        indexer.settings.VARIABLES,
        "ATTESTMESH_INDEXER_",
    )


# --- the docs ---------------------------------------------------------------------------------------------


def test_image_doc_lists_every_variable_name_of_both_compose_files(
    node: dict[str, Any], indexer_compose: dict[str, Any]
) -> None:
    text = IMAGE_DOC.read_text(encoding="utf-8")
    names = {
        *_environment(node["services"]["sidecar"]),
        *_environment(indexer_compose["services"]["indexer"]),
    }
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert not missing, f"docs/image.md does not list {missing}"
