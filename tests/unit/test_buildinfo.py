"""Which code runs (``sidecar.buildinfo``): the build record an image bakes, a checkout's git, or "unknown".

Real git repositories in temporary directories stand in for a development checkout; the record is written by
the same ``python -m sidecar.buildinfo record`` the Dockerfile runs. Also the gauge, the ``/healthz``
``build`` object and every entry point's ``--version``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from indexer.metrics import IndexerMetrics
from sidecar.buildinfo import (
    BuildInfo,
    build_info,
    checkout_of,
    read_build_info,
    record_path,
    write_record,
)
from sidecar.core.status import NodeStatus, healthz_body
from sidecar.observability import Metrics

REPO = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
VERSION = metadata.version("attestmesh")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout of a project named attestmesh, with one commit and a ``sidecar`` package."""
    root = tmp_path / "checkout"
    (root / "sidecar").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "attestmesh"\n', encoding="utf-8")
    (root / "sidecar" / "__init__.py").write_text("", encoding="utf-8")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "one")
    return root


def test_a_baked_record_wins_and_says_image(tmp_path: Path, checkout: Path) -> None:
    write_record(SHA.upper(), "clean", prefix=tmp_path)
    found = read_build_info(prefix=tmp_path, package_dir=checkout / "sidecar")
    assert found == BuildInfo(version=VERSION, commit=SHA, dirty=False, source="image")
    write_record(SHA, "modified", prefix=tmp_path)
    assert read_build_info(prefix=tmp_path, package_dir=checkout / "sidecar").dirty is True


def test_a_checkout_reports_its_head_and_whether_it_is_modified(tmp_path: Path, checkout: Path) -> None:
    head = _git(checkout, "rev-parse", "HEAD")
    clean = read_build_info(prefix=tmp_path, package_dir=checkout / "sidecar")
    assert clean == BuildInfo(version=VERSION, commit=head, dirty=False, source="git")
    (checkout / "pyproject.toml").write_text('[project]\nname = "attestmesh"\n# edited\n', encoding="utf-8")
    assert read_build_info(prefix=tmp_path, package_dir=checkout / "sidecar").dirty is True


def test_no_record_and_no_checkout_is_unknown_not_a_guess(tmp_path: Path, checkout: Path) -> None:
    installed = tmp_path / "site-packages" / "sidecar"
    installed.mkdir(parents=True)
    unknown = BuildInfo(version=VERSION, commit="unknown", dirty=None, source="unknown")
    assert read_build_info(prefix=tmp_path, package_dir=installed) == unknown
    # Another project's repository around the installation is not ours to report.
    (checkout / "pyproject.toml").write_text('[project]\nname = "someone-else"\n', encoding="utf-8")
    assert checkout_of(checkout / "sidecar") is None
    assert read_build_info(prefix=tmp_path, package_dir=checkout / "sidecar") == unknown


def test_a_record_that_is_not_a_commit_is_ignored(tmp_path: Path) -> None:
    record_path(tmp_path).write_text(json.dumps({"commit": "main", "dirty": False}), encoding="utf-8")
    assert read_build_info(prefix=tmp_path, package_dir=tmp_path / "sidecar").commit == "unknown"


@pytest.mark.parametrize(("commit", "tree"), [("abc123", "clean"), ("main", "clean"), (SHA, "dirty")])
def test_write_record_refuses_anything_but_a_full_sha_and_a_known_tree(
    tmp_path: Path, commit: str, tree: str
) -> None:
    with pytest.raises(ValueError, match=r"commit|tree"):
        write_record(commit, tree, prefix=tmp_path)
    assert not record_path(tmp_path).exists()


def test_an_unknown_commit_records_no_tree_state(tmp_path: Path) -> None:
    write_record("unknown", "clean", prefix=tmp_path)
    assert read_build_info(prefix=tmp_path, package_dir=tmp_path / "x") == BuildInfo(
        version=VERSION, commit="unknown", dirty=None, source="image"
    )


def test_record_verb_is_what_the_dockerfile_runs(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The venv's interpreter sees this checkout's packages on PYTHONPATH: sys.prefix is the venv's.
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    argv = [str(venv / "bin" / "python"), "-m", "sidecar.buildinfo", "record", "--commit", SHA]
    done = subprocess.run([*argv, "--tree", "clean"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads((venv / "attestmesh-build.json").read_text(encoding="utf-8")) == {
        "commit": SHA,
        "dirty": False,
    }
    assert json.loads(done.stdout.splitlines()[-1])["commit"] == SHA
    bad = subprocess.run([*argv[:-1], "HEAD"], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "not a full git commit" in bad.stderr


def test_the_development_checkout_reports_git() -> None:
    head = _git(REPO, "rev-parse", "HEAD")
    assert build_info() == read_build_info()
    assert (build_info().commit, build_info().source, build_info().version) == (head, "git", VERSION)


def test_build_info_gauge_in_both_registries() -> None:
    build = BuildInfo(version="9.9.9", commit=SHA, dirty=True, source="image")
    labels = {"version": "9.9.9", "commit": SHA, "dirty": "true", "source": "image"}
    for metrics in (
        Metrics(CollectorRegistry(), build=build),
        IndexerMetrics(CollectorRegistry(), build=build),
    ):
        assert metrics.registry.get_sample_value("attestmesh_build_info", labels) == 1.0
    default = Metrics(CollectorRegistry())
    mine = build_info()
    assert (
        default.registry.get_sample_value(
            "attestmesh_build_info",
            {
                "version": mine.version,
                "commit": mine.commit,
                "dirty": str(mine.dirty).lower(),
                "source": "git",
            },
        )
        == 1.0
    )


def test_healthz_build_object() -> None:
    status = NodeStatus.initial("2.0.0", commit=SHA, dirty=False, build_source="image")
    body = healthz_body(status)
    assert body["version"] == "2.0.0"
    assert body["build"] == {"version": "2.0.0", "commit": SHA, "dirty": False, "source": "image"}


@pytest.mark.parametrize(
    ("argv", "program"),
    [
        (["-m", "ops", "--version"], "attestmesh"),
        (["-m", "sidecar", "--version"], "attestmesh-sidecar"),
        (["-m", "indexer", "--version"], "attestmesh-indexer"),
    ],
)
def test_every_entry_point_prints_version_and_commit(argv: list[str], program: str) -> None:
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    head = _git(REPO, "rev-parse", "HEAD")
    assert done.stdout.startswith(f"{program} {VERSION} (commit {head}"), done.stdout
    assert done.stdout.rstrip().endswith("from git)"), done.stdout
