"""The measured trust anchors: the values a node trusts must be literals of its measured compose.

Owns ``MEASURED`` (the ``ATTESTMESH_*`` names that decide trust: the chain id, the cluster, the member-app
factory, the KMS roots and the indexer registry), ``measured_problems``, which checks the app compose the
guest agent reports (``Info().tcb_info.app_compose``, whose sha256 is the compose hash the KMS gate and the
cluster's allowlist judged) against this process's environment, and ``kms_root_problems``. The rules:

- the app compose hashes to the compose hash (otherwise nothing in it is measured);
- its ``docker_compose_file`` (YAML) defines every measured variable, in the service that runs the sidecar
  (the one service whose ``environment`` names a measured variable, or the one named ``sidecar``), as a
  literal: no ``$`` (a ``${VAR}`` is filled from the sealed env, which the host operator writes); the
  indexer registry may be left out (or empty) by the compose and the environment alike: no registry;
- no measured name is in ``allowed_envs`` (the sealed env's names);
- the environment's value equals the literal, compared as values: addresses case-insensitively, the chain
  id as a number, the KMS roots as a set.

Every problem is returned, one line each, naming the variable; garbage input (not JSON, not YAML, the wrong
shapes) is a problem, never an exception. Must not: do I/O, read ``os.environ`` (the caller passes the
mapping), or echo anything but the measured variables' own values (public addresses and a chain id),
shortened.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

import yaml

from sidecar.core.ids import Address, Bytes32

CHAIN_ID: Final = "ATTESTMESH_CHAIN_ID"
CLUSTER: Final = "ATTESTMESH_CLUSTER"
MEMBER_APP_FACTORY: Final = "ATTESTMESH_MEMBER_APP_FACTORY"
KMS_ROOTS: Final = "ATTESTMESH_KMS_ROOTS"
INDEXER_REGISTRY: Final = "ATTESTMESH_INDEXER_REGISTRY"

#: The variables whose values decide whom a node trusts: literals of the measured compose, never sealed.
MEASURED: Final = (CHAIN_ID, CLUSTER, MEMBER_APP_FACTORY, KMS_ROOTS, INDEXER_REGISTRY)
#: Measured, but may be absent (in the compose and the environment alike): no indexer registry.
OPTIONAL: Final = frozenset({INDEXER_REGISTRY})
SIDECAR_SERVICE: Final = "sidecar"
_ECHO = 240  # a few KMS roots fit


def _shown(text: str) -> str:
    return text if len(text) <= _ECHO else text[: _ECHO - 1] + "…"


def _chain_id(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError("a chain id in decimal digits")
    value = int(text)
    if value < 1:
        raise ValueError("a chain id of at least 1")
    return value


def _address(text: str) -> Address:
    try:
        return Address.from_hex(text)
    except ValueError:
        raise ValueError("a 20-byte hex address") from None


def _address_set(text: str) -> frozenset[Address]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError("comma-separated 20-byte hex addresses")
    try:
        return frozenset(Address.from_hex(item) for item in items)
    except ValueError:
        raise ValueError("comma-separated 20-byte hex addresses") from None


_PARSERS: Final[Mapping[str, Callable[[str], object]]] = {
    CHAIN_ID: _chain_id,
    CLUSTER: _address,
    MEMBER_APP_FACTORY: _address,
    KMS_ROOTS: _address_set,
    INDEXER_REGISTRY: _address,
}


def _environment(service: Any) -> dict[str, str | None] | str:
    """A service's ``environment`` as name → value (None: passed through from the host, no value); a
    string says why it cannot be read."""
    if not isinstance(service, dict):
        return "is not a mapping"
    env = service.get("environment")
    if env is None:
        return {}
    result: dict[str, str | None] = {}
    if isinstance(env, list):
        for item in env:
            if not isinstance(item, str):
                return "has an environment list item that is not a string"
            name, sep, value = item.partition("=")
            result[name.strip()] = value if sep else None
        return result
    if isinstance(env, dict):
        for name, value in env.items():
            if value is None:
                result[str(name)] = None
            elif isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
                result[str(name)] = str(value)
            else:
                result[str(name)] = repr(value)  # not a literal a variable can hold: reported below
        return result
    return "has an environment that is neither a list nor a mapping"


def _services(compose_text: str) -> dict[str, Any] | str:
    try:
        document = yaml.safe_load(compose_text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        return f"docker_compose_file is not valid YAML ({type(exc).__name__})"
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        return "docker_compose_file has no services mapping"
    return {str(name): service for name, service in document["services"].items()}


def _sidecar_environment(compose_text: str) -> tuple[str, dict[str, str | None]] | str:
    """The sidecar's service name and environment (the one service that names a measured variable, or the
    one named ``sidecar`` among several); a string says why there is none."""
    services = _services(compose_text)
    if isinstance(services, str):
        return services
    found: dict[str, dict[str, str | None]] = {}
    for name, service in services.items():
        env = _environment(service)
        if isinstance(env, str):
            if name == SIDECAR_SERVICE:
                return f"the compose service {name!r} {env}"
            continue
        if any(variable in env for variable in MEASURED):
            found[name] = env
    if not found:
        return "no service of the compose defines a measured variable"
    if len(found) > 1:
        if SIDECAR_SERVICE in found:
            return SIDECAR_SERVICE, found[SIDECAR_SERVICE]
        return f"several compose services ({', '.join(sorted(found))}) define measured variables"
    ((name, env),) = found.items()
    return name, env


def _compose_document(app_compose: str, compose_hash: Bytes32) -> dict[str, Any] | str:
    try:
        data = app_compose.encode("utf-8")
    except UnicodeEncodeError:
        return "the app compose is not UTF-8 text"
    actual = hashlib.sha256(data).hexdigest()
    if actual != compose_hash.hex:
        return (
            f"the app compose the guest agent reports hashes to 0x{actual}, not to the compose hash "
            f"{compose_hash}: none of its values can be trusted as measured"
        )
    try:
        document = json.loads(app_compose)
    except (ValueError, RecursionError):
        return "the app compose is not JSON"
    if not isinstance(document, dict):
        return "the app compose is not a JSON object"
    return document


def _allowed_envs_problems(document: Mapping[str, Any]) -> list[str]:
    allowed = document.get("allowed_envs", [])
    if not isinstance(allowed, list):
        return ["the app compose's allowed_envs is not a list"]
    return [
        f"{name} is in the app compose's allowed_envs: a measured value must not come from the sealed env "
        "(remove it from the sealed env file)"
        for name in MEASURED
        if name in allowed
    ]


def _absent_problem(name: str, present: bool, raw: str) -> str | None:
    """The problem of a variable the compose leaves out or empty (None: an optional one, unset here too)."""
    if name not in OPTIONAL:
        how = "is empty" if present else "is not defined"
        return f"{name} {how} in the compose: a trust anchor must be a literal value there"
    if raw:
        return f"{name}={_shown(raw)} is not measured: the compose names no indexer registry"
    return None


def _literal_problem(name: str, literal: str | None, raw: str) -> str | None:
    """The problem of a variable the compose defines (None: a literal the environment agrees with)."""
    if literal is None or "$" in literal:
        written = f"'{_shown(literal)}'" if literal is not None else "passed through from the host"
        return (
            f"{name} is not a literal in the compose ({written}): a trust anchor must be written into the "
            "compose, not taken from the sealed env"
        )
    parse, literal = _PARSERS[name], literal.strip()
    try:
        measured = parse(literal)
    except ValueError as exc:
        return f"{name}='{_shown(literal)}' in the compose is not {exc}"
    problem = None
    if not raw:
        problem = f"{name} is not set, but the compose measures {_shown(literal)}"
    else:
        try:
            if parse(raw) != measured:
                value = _shown(literal)
                problem = f"{name}={_shown(raw)} overrides the measured value {value} in the compose"
        except ValueError as exc:
            problem = f"{name}='{_shown(raw)}' is not {exc}"
    return problem


def measured_problems(app_compose: str, compose_hash: Bytes32, env: Mapping[str, str]) -> list[str]:
    """Every problem of this process's measured variables against the app compose (empty: all measured)."""
    document = _compose_document(app_compose, compose_hash)
    if isinstance(document, str):
        return [document]
    problems = _allowed_envs_problems(document)
    compose_text = document.get("docker_compose_file")
    if not isinstance(compose_text, str):
        return [*problems, "the app compose has no docker_compose_file: the measured values cannot be read"]
    found = _sidecar_environment(compose_text)
    if isinstance(found, str):
        return [*problems, f"{found}: the measured values cannot be read"]
    _, environment = found
    for name in MEASURED:
        raw = env.get(name, "").strip()
        literal, present = environment.get(name), name in environment
        if present and literal != "":
            problem = _literal_problem(name, literal, raw)
        else:
            problem = _absent_problem(name, present, raw)
        if problem is not None:
            problems.append(problem)
    return problems


def measured_literals(compose_text: str) -> dict[str, str] | str:
    """The measured variables a docker compose file writes as literals in the sidecar's service (the
    operator's renderer checks its output with it); a string says why they cannot be read."""
    found = _sidecar_environment(compose_text)
    if isinstance(found, str):
        return found
    _, environment = found
    return {name: value for name, value in environment.items() if name in MEASURED and value is not None}


def kms_root_problems(root: Address, trusted: Collection[Address]) -> list[str]:
    """The problem when this node's own signer proof comes from a KMS root it does not trust."""
    if root in trusted:
        return []
    return [
        f"{KMS_ROOTS} does not name the KMS root {root} that signed this node's keys: the node would "
        "distrust its own key provider (add the root to the compose, or boot under a trusted KMS)"
    ]
