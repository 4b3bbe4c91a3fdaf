"""``attestmesh compose node``: render a node's docker compose with its cluster's measured trust anchors.

Owns ``render_node_compose``: the template (``compose/node.yaml``) writes every variable as ``${NAME}``;
the trust anchors (``sidecar.core.measured.MEASURED``: chain id, cluster, member-app factory, KMS roots,
indexer registry) are substituted with the cluster's values, so they become literals the compose hash
covers, and every other ``${NAME}`` stays for the sealed env. The result is checked with the sidecar's own
reader (``measured_literals``) before it is printed: what the operator allowlists is what the sidecar will
accept. Also ``pin_image`` (``--image``, and ``attestmesh compose pin`` alone: what the publish workflow
prints): the sidecar's image line and the ``pull_policy`` after it, ``always`` for a tag (a boot pulls
what the tag names now: dstack keeps /var/lib/docker on the data disk, so compose's default would reuse
the old image) and ``missing`` for a digest (the cached image is that digest: no registry needed at boot).
Order of a bring-up: deploy the cluster, render this with its address, allowlist the app compose's hash,
then deploy the nodes.
Must not: touch the chain or the sealed env, or substitute anything but the measured names and the image.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from ops.errors import OperatorError
from sidecar.core.measured import INDEXER_REGISTRY, MEASURED, measured_literals

EXIT_OK, EXIT_FAILED = 0, 1
#: The template in a checkout (the image has no compose/: pass --template).
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "compose" / "node.yaml"
#: The sidecar's image line (any registry and owner: a pinned template may be pinned again) and the
#: ``pull_policy`` line that must follow it.
_SIDECAR_IMAGE = re.compile(
    r"^(?P<image>[ \t]*image:[ \t]*)\S*/attestmesh-sidecar[:@]\S*[ \t]*\n"
    r"(?:(?P<pull>[ \t]*pull_policy:[ \t]*)\S+(?P<comment>[ \t]+#[^\n]*)?\n)?",
    re.MULTILINE,
)
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")
_PINNED = re.compile(r"[^@]+@sha256:[0-9a-f]{64}")


def is_pinned(image: str) -> bool:
    """Whether ``image`` names its content (``…@sha256:<64 hex>``) rather than a mutable tag."""
    return _PINNED.fullmatch(image) is not None


def pull_policy(image: str) -> str:
    """The compose ``pull_policy`` for ``image``: ``missing`` by digest, ``always`` for a tag."""
    return "missing" if is_pinned(image) else "always"


def pin_image(template: str, image: str) -> str:
    """``template`` with the sidecar's image set to ``image`` and the ``pull_policy`` line after it set to
    ``pull_policy(image)``; every other byte unchanged."""
    if not _IMAGE.fullmatch(image):
        raise OperatorError(f"{image!r} is not an image reference")
    if "@" in image and not is_pinned(image):
        raise OperatorError(f"{image!r}: a digest must be @sha256: and 64 lower-case hex digits")
    found = list(_SIDECAR_IMAGE.finditer(template))
    if len(found) != 1:
        raise OperatorError("the template has no single attestmesh-sidecar image line")
    match = found[0]
    if match.group("pull") is None:
        raise OperatorError("the template's sidecar image line is not followed by its pull_policy line")
    replaced = (
        f"{match.group('image')}{image}\n"
        f"{match.group('pull')}{pull_policy(image)}{match.group('comment') or ''}\n"
    )
    return template[: match.start()] + replaced + template[match.end() :]


def render_node_compose(template: str, anchors: Mapping[str, str], image: str | None = None) -> str:
    """``template`` with each measured ``${NAME}`` replaced by ``anchors[NAME]`` (the indexer registry may
    be absent: an empty literal, no registry) and, given ``image``, the sidecar's image replaced."""
    unknown = sorted(set(anchors) - set(MEASURED))
    if unknown:
        raise OperatorError(f"not measured variables: {', '.join(unknown)}")
    text = template
    for name in MEASURED:
        value = anchors.get(name, "")
        if not value and name != INDEXER_REGISTRY:
            raise OperatorError(f"{name} needs a value")
        if "$" in value or any(c.isspace() for c in value):
            raise OperatorError(f"{name} must be a plain value")
        placeholder = "${" + name + "}"
        if placeholder not in text:
            raise OperatorError(f"the template does not take {placeholder}")
        text = text.replace(placeholder, value)
    if image is not None:
        text = pin_image(text, image)
    literals = measured_literals(text)
    if isinstance(literals, str):
        raise OperatorError(f"the rendered compose cannot be read: {literals}")
    for name in MEASURED:
        if literals.get(name, "") != anchors.get(name, ""):
            raise OperatorError(f"the rendered compose does not measure {name} as given (template?)")
    return text


def run_compose(args: argparse.Namespace) -> int:
    if args.verb == "pin":
        return _run_pin(args)
    anchors = {
        "ATTESTMESH_CHAIN_ID": str(args.chain_id),
        "ATTESTMESH_CLUSTER": str(args.cluster),
        "ATTESTMESH_MEMBER_APP_FACTORY": str(args.member_app_factory),
        "ATTESTMESH_KMS_ROOTS": ",".join(str(root) for root in args.kms_roots),
        "ATTESTMESH_INDEXER_REGISTRY": str(args.indexer_registry) if args.indexer_registry else "",
    }
    path = Path(args.template) if args.template else DEFAULT_TEMPLATE
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"attestmesh: cannot read the template {path} (give --template): {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        rendered = render_node_compose(template, anchors, args.image)
    except OperatorError as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
    image = f", image {args.image}" if args.image else ""
    _emit(
        rendered,
        args.output,
        lambda path: (
            f"compose node: wrote {path} (cluster {args.cluster}'s trust anchors as literals{image})"
        ),
    )
    return EXIT_OK


def _run_pin(args: argparse.Namespace) -> int:
    """``compose pin``: the template with only the image pinned (the anchors stay ``${VAR}``): a template
    for ``attestmesh compose node`` / ``deploy/node.sh`` (``COMPOSE=``)."""
    path = Path(args.template) if args.template else DEFAULT_TEMPLATE
    try:
        pinned = pin_image(path.read_text(encoding="utf-8"), args.image)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"attestmesh: cannot read the template {path} (give --template): {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OperatorError as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _emit(
        pinned,
        args.output,
        lambda path: f"compose pin: wrote {path} (the template with the sidecar image {args.image})",
    )
    return EXIT_OK


def _emit(text: str, output: str | None, said: Callable[[str], str]) -> None:
    """``text`` to stdout, or to the file ``output`` and what was written (``said(output)``) on stdout."""
    if output is None:
        sys.stdout.write(text)
        return
    Path(output).write_text(text, encoding="utf-8")
    print(said(str(output)))
