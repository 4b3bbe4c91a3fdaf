"""``attestmesh compose node``: render a node's docker compose with its cluster's measured trust anchors.

Owns ``render_node_compose``: the template (``compose/node.yaml``) writes every variable as ``${NAME}``;
the trust anchors (``sidecar.core.measured.MEASURED``: chain id, cluster, member-app factory, KMS roots,
indexer registry) are substituted with the cluster's values, so they become literals the compose hash
covers, and every other ``${NAME}`` stays for the sealed env. The result is checked with the sidecar's own
reader (``measured_literals``) before it is printed: what the operator allowlists is what the sidecar will
accept. Also ``--image`` (pin the sidecar's image by digest). Order of a bring-up: deploy the cluster,
render this with its address, allowlist the app compose's hash, then deploy the nodes.
Must not: touch the chain or the sealed env, or substitute anything but the measured names.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from ops.errors import OperatorError
from sidecar.core.measured import INDEXER_REGISTRY, MEASURED, measured_literals

EXIT_OK, EXIT_FAILED = 0, 1
#: The template in a checkout (the image has no compose/: pass --template).
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "compose" / "node.yaml"
_SIDECAR_IMAGE = re.compile(r"^(\s*image:\s*)ghcr\.io/attestmesh/attestmesh-sidecar\S*\s*$", re.MULTILINE)
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


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
        if not _IMAGE.fullmatch(image):
            raise OperatorError(f"{image!r} is not an image reference")
        text, count = _SIDECAR_IMAGE.subn(lambda m: m.group(1) + image, text, count=1)
        if count != 1:
            raise OperatorError("the template has no ghcr.io/attestmesh/attestmesh-sidecar image line")
    literals = measured_literals(text)
    if isinstance(literals, str):
        raise OperatorError(f"the rendered compose cannot be read: {literals}")
    for name in MEASURED:
        if literals.get(name, "") != anchors.get(name, ""):
            raise OperatorError(f"the rendered compose does not measure {name} as given (template?)")
    return text


def run_compose(args: argparse.Namespace) -> int:
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
    if args.output is None:
        sys.stdout.write(rendered)
    else:
        Path(args.output).write_text(rendered, encoding="utf-8")
        image = f", image {args.image}" if args.image else ""
        print(
            f"compose node: wrote {args.output} (cluster {args.cluster}'s trust anchors as literals{image})"
        )
    return EXIT_OK
