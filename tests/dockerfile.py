"""Read the repository's Dockerfile the way the tests need it: its exec-form commands and COPY sources.

Owns a deliberately small reader (continuation lines, comments, one instruction per logical line) so that
the tests run the very commands the Dockerfile declares instead of copies of them. Must not interpret
anything the image build would (no ARG/ENV substitution): a Dockerfile that needs that here has outgrown
this reader, and the tests should fail rather than guess.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) per logical line, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def last(keyword: str, path: Path = DOCKERFILE) -> str:
    """Return the arguments of the last ``keyword`` instruction (the one that takes effect)."""
    found = [arguments for name, arguments in instructions(path) if name == keyword]
    assert found, f"no {keyword} in {path}"
    return found[-1]


def exec_form(arguments: str) -> list[str]:
    """Parse a JSON (exec-form) argument list; shell form is refused."""
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    assert value and all(isinstance(item, str) for item in value), f"not exec form: {arguments}"
    return value


def entrypoint(path: Path = DOCKERFILE) -> list[str]:
    return exec_form(last("ENTRYPOINT", path))


def healthcheck(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[str]]:
    """Return the HEALTHCHECK options (``{"timeout": "5s", ...}``) and its exec-form command."""
    arguments = last("HEALTHCHECK", path)
    head, sep, command = arguments.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {arguments}"
    options = {}
    for option in shlex.split(head):
        name, _, value = option.removeprefix("--").partition("=")
        options[name] = value
    return options, exec_form(command)


def copy_sources(path: Path = DOCKERFILE) -> list[str]:
    """Return the build-context paths that COPY instructions take (``COPY --from=...`` excluded)."""
    sources: list[str] = []
    for name, arguments in instructions(path):
        if name != "COPY" or arguments.startswith("--from"):
            continue
        words = exec_form(arguments) if arguments.startswith("[") else shlex.split(arguments)
        sources.extend(word for word in words[:-1] if not word.startswith("--"))
    return sources


def seconds(duration: str) -> float:
    """Convert a Docker duration such as ``5s``, ``15m`` or ``1m30s`` to seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, number = 0.0, ""
    index = 0
    while index < len(duration):
        char = duration[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = "ms" if duration.startswith("ms", index) else char
        assert number and unit in units, f"not a duration: {duration}"
        total += float(number) * units[unit]
        number = ""
        index += len(unit)
    assert not number, f"duration without a unit: {duration}"
    return total
