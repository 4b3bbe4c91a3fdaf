"""One JSON GET for every operator read: a node's ``/healthz``, an indexer's ``/healthz`` and ``/status``,
and the lab's health probes.

Owns ``get_json``: GET a URL, return its status, text and decoded JSON (2xx or not: a 503 carries a health
document), and ``Unreachable``, the one error raised when nothing answers.
Must not: retry, log, interpret the document (its callers do), or import anything heavier than urllib.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

MAX_BODY: Final = 1 << 20


class Unreachable(OSError):
    """Nothing answered (refused, timed out, malformed URL, broken HTTP); ``reason`` is the bare cause."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """An HTTP answer: its status, its body as text, and the body decoded (``None`` when not JSON)."""

    status: int
    text: str
    data: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _get(url: str, timeout: float, limit: int) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - operator URL
            return int(response.status), response.read(limit)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(limit)


def get_json(url: str, timeout: float, limit: int = MAX_BODY) -> JsonAnswer:
    """GET ``url``: status, text and decoded JSON of (at most ``limit`` bytes of) the body, 2xx or not.

    Raises ``Unreachable`` when nothing answers.
    """
    try:
        status, raw = _get(url, timeout, limit)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise Unreachable(str(exc), str(reason)) from None
    text = raw.decode(errors="replace")
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    return JsonAnswer(status, text, data)
