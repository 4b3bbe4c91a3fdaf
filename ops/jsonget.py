"""One JSON GET for every operator read: a node's ``/healthz``, an indexer's ``/healthz`` and ``/status``,
and the lab's health probes.

Owns ``get_json``: GET a URL, return its status, text and decoded JSON (2xx or not: a 503 carries a health
document), and ``Unreachable``, the one error raised when nothing answers. An ``https://`` URL (a node or
an indexer through the dstack gateway) is verified against the system roots plus the CA file given, or
else ``ATTESTMESH_CA_FILE`` when set (the devnet's lab CA). ``connect_to`` (or ``ATTESTMESH_CONNECT_TO``)
sends the request to that address while the URL's host still names the server — SNI, certificate check,
``Host`` header — as ``curl --connect-to`` does: how the devnet's root namespace, which has no resolver for
the lab's gateway domain, reads a node through the gateway.
Must not: retry, log, interpret the document (its callers do), or import anything heavier than urllib.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
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


CA_FILE_VARIABLE: Final = "ATTESTMESH_CA_FILE"
CONNECT_TO_VARIABLE: Final = "ATTESTMESH_CONNECT_TO"


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to ``host`` (SNI, certificate check, Host header) over a TCP connection to ``address``."""

    def __init__(self, host: str, port: int, *, address: str, context: ssl.SSLContext, timeout: float):
        super().__init__(host, port, context=context, timeout=timeout)
        self._address, self._tls = address, context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def _get_pinned(url: str, timeout: float, limit: int, ca_file: str | None, address: str) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"only an https:// URL can be sent to another address than its host: {url}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = _PinnedHTTPS(
        parts.hostname, parts.port or 443, address=address, context=tls_context(ca_file), timeout=timeout
    )
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        return response.status, response.read(limit)
    finally:
        conn.close()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify servers against the system roots, plus the CAs in ``ca_file`` when given."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _get(url: str, timeout: float, limit: int, ca_file: str | None) -> tuple[int, bytes]:
    context = tls_context(ca_file) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
            return int(response.status), response.read(limit)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(limit)


def get_json(
    url: str,
    timeout: float,
    limit: int = MAX_BODY,
    ca_file: str | None = None,
    connect_to: str | None = None,
) -> JsonAnswer:
    """GET ``url``: status, text and decoded JSON of (at most ``limit`` bytes of) the body, 2xx or not.
    ``ca_file`` (default: ``ATTESTMESH_CA_FILE``) adds trusted CAs for an ``https://`` URL; ``connect_to``
    (default: ``ATTESTMESH_CONNECT_TO``) is the address to connect to instead of the URL's host.

    Raises ``Unreachable`` when nothing answers (a certificate that does not verify included).
    """
    ca_file = ca_file or os.environ.get(CA_FILE_VARIABLE) or None
    connect_to = connect_to or os.environ.get(CONNECT_TO_VARIABLE) or None
    try:
        if connect_to is not None:
            status, raw = _get_pinned(url, timeout, limit, ca_file, connect_to)
        else:
            status, raw = _get(url, timeout, limit, ca_file)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise Unreachable(str(exc), str(reason)) from None
    text = raw.decode(errors="replace")
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    return JsonAnswer(status, text, data)
