"""Which code runs: the version and git commit of this installation.

Owns ``BuildInfo`` and ``build_info()`` (read once per process), which ``/healthz`` (``version`` and the
``build`` object), the ``attestmesh_build_info`` gauges of the sidecar and the indexer, the start-up log lines
and every entry point's ``--version`` report; and the **build record** that an image build bakes into the
installation, written by ``python -m sidecar.buildinfo record --commit SHA --tree clean|modified`` (the
Dockerfile's build stage, from its ``ATTESTMESH_COMMIT`` / ``ATTESTMESH_TREE`` build arguments).

Where each fact comes from, first match wins:

- the version: the installed distribution's metadata (``importlib.metadata``: pyproject's ``version``);
- the commit: the build record ``<sys.prefix>/attestmesh-build.json`` (the image's venv; ``source``
  ``"image"``), else ``git`` in the source checkout the packages are imported from (a development checkout,
  editable install; ``source`` ``"git"``, ``dirty`` from ``git status``), else ``"unknown"`` (``source``
  ``"unknown"``: a wheel installed without a record, or no git).

Light on purpose (the standard library; prometheus_client only when a registry asks for the gauge), so
``--version`` and the Dockerfile's record step load nothing else.

Must not: guess — a commit that cannot be established is ``"unknown"`` and ``dirty`` is then None; ask
``git`` about any directory but a checkout of this project (a venv that happens to sit inside some other
repository would otherwise report that repository's commit); or fail a start: every error means "unknown".
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Gauge

DISTRIBUTION: Final = "attestmesh"
RECORD_NAME: Final = "attestmesh-build.json"
UNKNOWN: Final = "unknown"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_GIT_TIMEOUT: Final = 5.0

Source = Literal["image", "git", "unknown"]


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """The code this process runs: ``commit`` is a full git sha or ``"unknown"``; ``dirty`` says whether the
    tree it was built from had uncommitted changes (None when unknown)."""

    version: str
    commit: str
    dirty: bool | None
    source: Source

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "commit": self.commit, "dirty": self.dirty, "source": self.source}

    def line(self, program: str) -> str:
        """The ``--version`` line: ``attestmesh 0.1.0 (commit 1a2b…, modified tree, from git)``."""
        tree = {True: ", modified tree", False: "", None: ""}[self.dirty]
        return f"{program} {self.version} (commit {self.commit}{tree}, from {self.source})"


def distribution_version() -> str:
    """The installed distribution's version, or ``"unknown"`` when it is not installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def record_path(prefix: Path | None = None) -> Path:
    """Where the build record of the installation at ``prefix`` (default: this interpreter's) lives."""
    return (Path(sys.prefix) if prefix is None else prefix) / RECORD_NAME


def _from_record(path: Path, version: str) -> BuildInfo | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    commit, dirty = record.get("commit"), record.get("dirty")
    if not isinstance(commit, str) or not (commit == UNKNOWN or _COMMIT.fullmatch(commit)):
        return None
    return BuildInfo(
        version=version,
        commit=commit,
        dirty=dirty if isinstance(dirty, bool) and commit != UNKNOWN else None,
        source="image",
    )


def checkout_of(package_dir: Path) -> Path | None:
    """The project checkout a package directory belongs to, or None (an installed copy)."""
    root = package_dir.parent
    pyproject = root / "pyproject.toml"
    if not (root / ".git").exists() or not pyproject.is_file():
        return None
    try:
        declares = f'name = "{DISTRIBUTION}"' in pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    return root if declares else None


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _from_git(root: Path, version: str) -> BuildInfo | None:
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None or not _COMMIT.fullmatch(commit):
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return BuildInfo(
        version=version, commit=commit, dirty=None if status is None else bool(status), source="git"
    )


def read_build_info(prefix: Path | None = None, package_dir: Path | None = None) -> BuildInfo:
    """Establish the build facts of the installation at ``prefix`` importing from ``package_dir``."""
    version = distribution_version()
    found = _from_record(record_path(prefix), version)
    if found is None:
        root = checkout_of(Path(__file__).resolve().parent if package_dir is None else package_dir)
        found = None if root is None else _from_git(root, version)
    return found or BuildInfo(version=version, commit=UNKNOWN, dirty=None, source="unknown")


@functools.cache
def build_info() -> BuildInfo:
    """This process's build facts (read once: git runs at most once per process)."""
    return read_build_info()


BUILD_INFO_LABELS: Final = ("version", "commit", "dirty", "source")


def register_build_gauge(registry: CollectorRegistry, build: BuildInfo | None = None) -> Gauge:
    """Register ``attestmesh_build_info`` (always 1; the build facts as labels: ``dirty`` is ``true``,
    ``false`` or ``unknown``) in ``registry``: the sidecar's and the indexer's metrics both carry it."""
    from prometheus_client import Gauge  # noqa: PLC0415 - `--version` and the record step need no metrics

    build = build_info() if build is None else build
    gauge = Gauge(
        "attestmesh_build_info",
        "Which code runs: 1, labelled with the version, git commit, whether its tree was modified, source.",
        list(BUILD_INFO_LABELS),
        registry=registry,
    )
    dirty = {True: "true", False: "false", None: UNKNOWN}[build.dirty]
    gauge.labels(version=build.version, commit=build.commit, dirty=dirty, source=build.source).set(1)
    return gauge


def write_record(commit: str, tree: str, prefix: Path | None = None) -> Path:
    """Write the build record of the installation at ``prefix``; refuse a commit that is not a full sha."""
    commit = commit.strip().lower()
    if commit != UNKNOWN and not _COMMIT.fullmatch(commit):
        raise ValueError(f"not a full git commit: {commit!r} (pass 40 hex digits, or {UNKNOWN!r})")
    if tree not in ("clean", "modified", UNKNOWN):
        raise ValueError(f"tree must be clean, modified or {UNKNOWN}, not {tree!r}")
    path = record_path(prefix)
    dirty = None if UNKNOWN in (tree, commit) else tree == "modified"
    path.write_text(json.dumps({"commit": commit, "dirty": dirty}, sort_keys=True) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.buildinfo", description="Show or record which code this installation runs."
    )
    verbs = parser.add_subparsers(dest="verb")
    record = verbs.add_parser("record", help="bake the build record into this installation (image builds)")
    record.add_argument("--commit", required=True, help="the full git commit the image is built from")
    record.add_argument("--tree", default=UNKNOWN, help="clean, modified or unknown")
    args = parser.parse_args(argv)
    if args.verb == "record":
        try:
            path = write_record(args.commit, args.tree)
        except ValueError as exc:
            print(f"sidecar.buildinfo: {exc}", file=sys.stderr)  # noqa: T201
            return 2
        print(f"sidecar.buildinfo: recorded in {path}")  # noqa: T201
    print(json.dumps(read_build_info().to_json(), sort_keys=True))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
