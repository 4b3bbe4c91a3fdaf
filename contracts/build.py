"""Compile AttestMesh's Solidity contracts with the pinned solcjs and write (or check) their artifacts.

Usage (from any directory)::

    .venv/bin/python contracts/build.py            # (re)write contracts/artifacts/<Name>.json
    .venv/bin/python contracts/build.py --check    # exit 1, listing stale or missing artifacts

The standard-JSON input is assembled here rather than through solcjs's import callback: every source unit
is named by a path that does not depend on where the checkout lives (``contracts/src/...`` for ours,
``@openzeppelin/contracts/...`` for OpenZeppelin), so the metadata hash embedded in the bytecode -- and
hence the artifacts -- are identical on every machine. ``--src`` and ``--artifacts`` point the build at
another tree (the staleness test compiles a modified temporary copy without touching the real one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SRC = REPO / "contracts" / "src"
DEFAULT_ARTIFACTS = REPO / "contracts" / "artifacts"
NODE_MODULES = REPO / "tools" / "node_modules"
SOLCJS = NODE_MODULES / ".bin" / "solcjs"

# Source unit prefix of our own files: fixed, so that artifacts do not depend on the --src location.
SRC_UNIT_PREFIX = "contracts/src/"
EIP170_LIMIT = 24576

SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "metadata": {"bytecodeHash": "ipfs"},
    "outputSelection": {
        "*": {
            "*": [
                "abi",
                "evm.bytecode.object",
                "evm.bytecode.linkReferences",
                "evm.deployedBytecode.object",
                "metadata",
                "storageLayout",
            ],
            "": ["ast"],
        }
    },
}

_IMPORT_RE = re.compile(r"""^\s*import\s+(?:[^"';]*?\s+from\s+)?["']([^"']+)["']\s*;""", re.MULTILINE)
_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)


class BuildError(Exception):
    """A problem the user has to fix (missing tool, unresolved import, compiler error)."""


def _normalise(unit: str) -> str:
    parts: list[str] = []
    for part in unit.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise BuildError(f"import escapes the source root: {unit}")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _unit_path(unit: str, src: Path) -> Path:
    if unit.startswith(SRC_UNIT_PREFIX):
        return src / unit[len(SRC_UNIT_PREFIX) :]
    if unit.startswith("@"):
        return NODE_MODULES / unit
    raise BuildError(f"cannot resolve source unit {unit!r} (only contracts/src and npm packages are known)")


def collect_sources(src: Path) -> dict[str, str]:
    """Every ``.sol`` file under ``src`` plus the transitive closure of its imports, by source unit name."""
    if not src.is_dir():
        raise BuildError(f"source directory not found: {src}")
    pending = [SRC_UNIT_PREFIX + p.relative_to(src).as_posix() for p in sorted(src.rglob("*.sol"))]
    sources: dict[str, str] = {}
    while pending:
        unit = pending.pop()
        if unit in sources:
            continue
        path = _unit_path(unit, src)
        if not path.is_file():
            hint = " (run make setup)" if unit.startswith("@") else ""
            raise BuildError(f"source unit {unit!r} not found at {path}{hint}")
        text = path.read_text(encoding="utf-8")
        sources[unit] = text
        for target in _IMPORT_RE.findall(_COMMENT_RE.sub("", text)):
            relative = target.startswith(".")
            pending.append(_normalise(unit.rsplit("/", 1)[0] + "/" + target) if relative else target)
    return dict(sorted(sources.items()))


def run_solc(sources: dict[str, str]) -> dict[str, Any]:
    """Compile with the pinned solcjs; returns the standard-JSON output."""
    if not SOLCJS.exists():
        raise BuildError(f"pinned solcjs not found at {SOLCJS}: run make setup")
    request = {
        "language": "Solidity",
        "sources": {unit: {"content": text} for unit, text in sources.items()},
        "settings": SETTINGS,
    }
    # solcjs exits right after console.log, which can truncate a large document written to a pipe: write to a
    # regular file instead (node writes files synchronously). The request goes in through a regular file
    # too: solcjs reads stdin in one synchronous loop, which fails with EAGAIN on a pipe whose writer has
    # not caught up (a request larger than the pipe buffer, 64 KiB).
    with (
        tempfile.TemporaryFile(mode="w+", encoding="utf-8") as stdout,
        tempfile.TemporaryFile(mode="w+b") as stdin,
    ):
        stdin.write(json.dumps(request).encode("utf-8"))
        stdin.seek(0)
        proc = subprocess.run(
            [str(SOLCJS), "--standard-json"],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            check=False,
            cwd=REPO,
        )
        stdout.seek(0)
        text = stdout.read()
    # solcjs prints a ">>> Cannot retry compilation with SMT..." line before the JSON document.
    start = text.find("{")
    if proc.returncode != 0 or start < 0:
        raise BuildError(
            f"solcjs failed (exit {proc.returncode}):\n{proc.stderr.decode(errors='replace')}{text}"
        )
    output: dict[str, Any] = json.loads(text[start:])
    warnings = {
        str(e.get("formattedMessage", e)) for e in output.get("errors", []) if e.get("severity") != "error"
    }
    for warning in sorted(warnings):
        print(warning, file=sys.stderr)  # noqa: T201
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise BuildError(
            "compilation failed:\n" + "\n".join(str(e.get("formattedMessage", e)) for e in errors)
        )
    return output


def _deployable(output: dict[str, Any]) -> list[tuple[str, str]]:
    """(source unit, contract name) of every concrete contract defined in our own sources (not interfaces,
    abstract contracts or libraries: nothing of those is deployed on its own)."""
    found: list[tuple[str, str]] = []
    for unit, source in output["sources"].items():
        if not unit.startswith(SRC_UNIT_PREFIX):
            continue
        for node in source["ast"]["nodes"]:
            if (
                node.get("nodeType") == "ContractDefinition"
                and node.get("contractKind") == "contract"
                and not node.get("abstract", False)
            ):
                found.append((unit, node["name"]))
    return sorted(found, key=lambda item: item[1])


def source_hash(units: list[str], sources: dict[str, str]) -> str:
    """sha256 over the sorted source units: for each, name, NUL, byte length, NUL, bytes."""
    digest = hashlib.sha256()
    for unit in sorted(units):
        data = sources[unit].encode("utf-8")
        digest.update(unit.encode("utf-8") + b"\0" + str(len(data)).encode() + b"\0" + data)
    return digest.hexdigest()


def build_artifacts(src: Path = DEFAULT_SRC) -> dict[str, str]:
    """Compile ``src`` in memory; returns ``{file name: serialised artifact}``."""
    sources = collect_sources(src)
    output = run_solc(sources)
    artifacts: dict[str, str] = {}
    for unit, name in _deployable(output):
        contract = output["contracts"][unit][name]
        if contract["evm"]["bytecode"].get("linkReferences"):
            raise BuildError(f"{name} needs library linking; keep library functions internal")
        metadata = json.loads(contract["metadata"])
        artifact = {
            "contractName": name,
            "abi": contract["abi"],
            "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
            "compiler": metadata["compiler"]["version"],
            # Where each state variable lives (slot, offset, type); test tooling writes storage by it
            # (devnet/chainpoke.py), so it follows a reordered contract instead of hard-coded slots.
            "storageLayout": contract["storageLayout"],
            # Exactly the sources this contract's bytecode depends on (its metadata's source list).
            "sourceHash": source_hash(list(metadata["sources"]), sources),
        }
        artifacts[f"{name}.json"] = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
    return artifacts


def _oversized(artifacts: dict[str, str]) -> list[str]:
    problems = []
    for file_name, text in artifacts.items():
        size = (len(json.loads(text)["deployedBytecode"]) - 2) // 2
        if size >= EIP170_LIMIT:
            problems.append(
                f"{file_name}: deployed bytecode {size} B exceeds the EIP-170 limit ({EIP170_LIMIT} B)"
            )
    return problems


def check(artifacts: dict[str, str], out: Path) -> list[str]:
    """Names of committed artifacts that are missing, stale, or no longer produced."""
    problems = []
    for file_name, text in sorted(artifacts.items()):
        path = out / file_name
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"stale: {path}")
    for path in sorted(out.glob("*.json")):
        if path.name not in artifacts:
            problems.append(f"orphaned (no such contract): {path}")
    return problems


def write(artifacts: dict[str, str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in sorted(artifacts.items()):
        path = out / file_name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    for path in sorted(out.glob("*.json")):
        if path.name not in artifacts:
            path.unlink()
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="compile in memory and compare with the artifacts"
    )
    parser.add_argument(
        "--src", type=Path, default=DEFAULT_SRC, help="Solidity source root (default: %(default)s)"
    )
    parser.add_argument(
        "--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help="artifact directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        artifacts = build_artifacts(args.src.resolve())
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    oversized = _oversized(artifacts)
    for problem in oversized:
        print(f"build.py: {problem}", file=sys.stderr)  # noqa: T201
    out: Path = args.artifacts.resolve()
    if args.check:
        problems = check(artifacts, out)
        for problem in problems:
            print(problem)  # noqa: T201
        if problems:
            print("artifacts are not current: run `python contracts/build.py`", file=sys.stderr)  # noqa: T201
        return 1 if problems or oversized else 0
    if oversized:
        return 1
    for path in write(artifacts, out):
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
