"""A node's ``/healthz`` as an operator reads it.

Owns ``fetch_health`` (GET a node's ``/healthz``, 200 and 503 alike, and check that the answer is a health
document) and ``HealthReport``.
Must not: retry, print (the CLI renders it), show a URL's credentials, or import web3 or structlog
(``attestmesh health URL`` starts fast).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from ops.errors import OperatorError
from ops.jsonget import Unreachable, get_json
from ops.redact import display_url, scrub

HEALTH_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A node's answer on ``/healthz``: the HTTP status, the raw body and the decoded document."""

    url: str  # as shown (``display_url`` plus the path), never with credentials
    status: int
    text: str
    body: Mapping[str, Any]

    @property
    def healthy(self) -> bool:
        """Healthy iff the node answered 200 and its document says so (the two never disagree honestly)."""
        return self.status == 200 and self.body.get("healthy") is True


def _is_health_document(data: object) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("phase"), str)
        and isinstance(data.get("healthy"), bool)
        and "reason" in data
    )


def fetch_health(
    url: str, timeout: float = HEALTH_TIMEOUT, ca_file: str | None = None, connect_to: str | None = None
) -> HealthReport:
    """GET ``url`` (a node's ``/healthz``) and return its health document, healthy (200) or not (503).

    Raises ``OperatorError`` when nothing answers, or the answer is not a health document.
    """
    shown = display_url(url) + urlsplit(url).path  # no user info, no query
    try:
        answer = get_json(url, timeout, ca_file=ca_file, connect_to=connect_to)
    except Unreachable as exc:
        why = scrub(exc.reason, url, path_is_secret=False)
        raise OperatorError(f"{shown} did not answer: {why}") from None
    if not _is_health_document(answer.data):
        path = urlsplit(url).path.rstrip("/")
        hint = "" if path.endswith(("/healthz", "/v1/status")) else " (is the path /healthz?)"
        raise OperatorError(f"{shown} answered HTTP {answer.status} but not a health document{hint}")
    return HealthReport(url=shown, status=answer.status, text=answer.text, body=answer.data)
