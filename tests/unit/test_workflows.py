"""The GitHub workflows' hygiene, read from .github/workflows/*.yml (they cannot run here).

Every action is pinned by a full 40-hex commit SHA with its version in a comment (a tag or a branch is
mutable: whoever moves it runs code in our publishing job); the publish workflow attaches an SBOM and
provenance to the image and attests it, and prints the compose file pinned to the pushed digest with the
project's own renderer (the command line it runs is run here too); a lint job runs `make lint`, and every
`make` target a workflow runs exists in the Makefile.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.compose_cmd import pin_image

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
PINNED = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(?:/[^@\s]+)?@[0-9a-f]{40}")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")
VERSION_COMMENT = re.compile(r"\s+#\s*v\d+(?:\.\d+)*\s*$")


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), path
    return document


def _uses(document: dict[str, Any]) -> list[str]:
    """Every ``uses:`` of the workflow: the steps' actions and the jobs' reusable workflows."""
    found = []
    for job in document["jobs"].values():
        if "uses" in job:
            found.append(str(job["uses"]))
        found += [str(step["uses"]) for step in job.get("steps", []) if "uses" in step]
    return found


def unpinned(document: dict[str, Any]) -> list[str]:
    """The references of ``document`` not pinned to a commit (a local ``./`` action is this repository's)."""
    bad = []
    for ref in _uses(document):
        if ref.startswith("./"):
            continue
        if ref.startswith("docker://"):
            if not re.search(r"@sha256:[0-9a-f]{64}$", ref):
                bad.append(ref)
        elif not PINNED.fullmatch(ref):
            bad.append(ref)
    return bad


def test_there_are_the_publish_and_the_lint_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"image.yml", "lint.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_by_a_full_commit_sha_with_its_version_in_a_comment(path: Path) -> None:
    document = _load(path)
    assert _uses(document), f"{path.name} uses no action?"
    assert unpinned(document) == [], f"{path.name}: not pinned by a 40-hex commit SHA"
    for line in path.read_text(encoding="utf-8").splitlines():
        match = USES_LINE.match(line)
        if match and not match.group("ref").startswith("./"):
            assert VERSION_COMMENT.fullmatch(match.group("rest")), f"{path.name}: no '# vX.Y.Z' on {line!r}"


@pytest.mark.parametrize(
    "ref",
    [
        "actions/checkout@v4",
        "actions/checkout@main",
        "actions/checkout@11d5960",  # a short SHA can collide, and is looked up as a ref first
        "actions/checkout@11D5960A326750D5838078E36CF38B85AF677262",
        "actions/checkout",
        "docker://alpine:3",
        "owner/repo/.github/workflows/x.yml@v1",
    ],
)
def test_the_pin_check_refuses_a_tag_a_branch_a_short_sha_and_an_image_tag(ref: str) -> None:
    as_step = {"jobs": {"j": {"steps": [{"uses": ref}]}}}
    assert unpinned(as_step) == [ref]


def test_the_pin_check_accepts_a_sha_a_digest_a_local_action_and_a_reusable_workflow() -> None:
    sha = "11d5960a326750d5838078e36cf38b85af677262"
    document = {
        "jobs": {
            "a": {"steps": [{"uses": f"actions/checkout@{sha}"}, {"uses": "./.github/actions/x"},
                            {"uses": "docker://alpine@sha256:" + "0" * 64}, {"run": "true"}]},
            "b": {"uses": f"owner/repo/.github/workflows/x.yml@{sha}"},
        }
    }  # fmt: skip
    assert unpinned(document) == []


# --- the publish workflow --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    return _load(REPO / ".github" / "workflows" / "image.yml")


def _step(document: dict[str, Any], action: str) -> dict[str, Any]:
    (job,) = document["jobs"].values()
    found = [s for s in job["steps"] if str(s.get("uses", "")).startswith(action + "@")]
    assert len(found) == 1, action
    return found[0]


def test_the_push_carries_an_sbom_and_provenance_and_a_signed_attestation(image: dict[str, Any]) -> None:
    build = _step(image, "docker/build-push-action")
    assert build["with"]["sbom"] is True
    assert build["with"]["provenance"] == "mode=max"
    attest = _step(image, "actions/attest-build-provenance")["with"]
    assert attest["subject-name"] == "${{ env.IMAGE }}"
    assert attest["subject-digest"] == f"${{{{ steps.{build['id']}.outputs.digest }}}}"
    assert attest["push-to-registry"] is True
    permissions = image["permissions"]
    assert permissions["id-token"] == "write" and permissions["attestations"] == "write"
    assert permissions["contents"] == "read"


def _pinned_compose_step(image: dict[str, Any]) -> dict[str, Any]:
    (job,) = image["jobs"].values()
    (step,) = [s for s in job["steps"] if s.get("name") == "Pinned compose"]
    return step


def test_the_pinned_compose_is_made_from_the_pushed_digest_and_published(image: dict[str, Any]) -> None:
    build = _step(image, "docker/build-push-action")
    step = _pinned_compose_step(image)
    assert step["env"]["DIGEST"] == f"${{{{ steps.{build['id']}.outputs.digest }}}}"
    script = str(step["run"])
    assert 'compose pin --image "${IMAGE}@${DIGEST}"' in script and '"${IMAGE}@${DIGEST}"' in script
    assert "$GITHUB_STEP_SUMMARY" in script and "node-pinned.yaml" in script
    upload = _step(image, "actions/upload-artifact")["with"]
    assert upload["path"] == "node-pinned.yaml" and upload["if-no-files-found"] == "error"
    (job,) = image["jobs"].values()
    names = [s.get("name") or s.get("uses") for s in job["steps"]]
    assert names.index("Pinned compose") > names.index(build["uses"])  # after the push, from its digest
    assert "compose/node.yaml" in (image.get("on") or image[True])["push"]["paths"]


def test_the_workflows_pin_command_line_prints_the_pinned_template(tmp_path: Path) -> None:
    """The exact `attestmesh compose pin` command of the workflow (there run from the pushed image, the
    template on stdin), here from this checkout's CLI: the template pinned to the digest, nothing else."""
    image = _load(REPO / ".github" / "workflows" / "image.yml")
    script = str(_pinned_compose_step(image)["run"]).replace("\\\n", " ")
    (command,) = [line.strip() for line in script.splitlines() if "compose pin" in line]
    argv_text = command.split('--entrypoint attestmesh "${IMAGE}@${DIGEST}"', 1)[1].split("<", 1)[0]
    reference = "ghcr.io/someone/attestmesh-sidecar@sha256:" + "c" * 64
    argv = argv_text.replace('"${IMAGE}@${DIGEST}"', reference).split()
    assert argv == ["compose", "pin", "--image", reference, "--template", "/dev/stdin"]
    template = REPO / "compose" / "node.yaml"
    with template.open("rb") as stdin:
        result = subprocess.run(
            [sys.executable, "-m", "ops", *argv], stdin=stdin, capture_output=True, text=True, check=False,
            cwd=tmp_path, timeout=60,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == pin_image(template.read_text(encoding="utf-8"), reference)
    pinned = yaml.safe_load(result.stdout)["services"]["sidecar"]
    assert pinned["image"] == reference and pinned["pull_policy"] == "missing"


# --- the lint workflow -----------------------------------------------------------------------------------


def test_the_lint_job_runs_make_lint_on_the_debian_ci_assumes() -> None:
    lint = _load(REPO / ".github" / "workflows" / "lint.yml")
    triggers = lint.get("on", lint.get(True))
    assert "push" in triggers and "pull_request" in triggers
    (job,) = lint["jobs"].values()
    assert str(job["container"]).startswith("debian:bookworm")
    runs = [str(s["run"]).strip() for s in job["steps"] if "run" in s]
    assert runs[-1] == "make lint"
    assert lint["permissions"] == {"contents": "read"}


def test_every_make_target_a_workflow_runs_exists_in_the_makefile() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.MULTILINE))
    for path in WORKFLOWS:
        for job in _load(path)["jobs"].values():
            for step in job.get("steps", []):
                script = str(step.get("run", "")).replace("\\\n", " ")  # continuation lines joined
                for wanted in re.findall(r"^\s*make\s+([A-Za-z][\w-]*)", script, re.MULTILINE):
                    assert wanted in targets, f"{path.name} runs `make {wanted}`, which the Makefile lacks"
