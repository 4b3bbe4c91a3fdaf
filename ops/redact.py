"""What may be shown of a URL that can carry credentials.

Owns ``display_url`` and ``scrub``: an RPC URL can carry an API key in its user info, path or query, so only
its scheme, host and port are ever shown to an operator.
Must not: import anything heavier than ``urllib.parse`` (every command uses it).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

REDACTED: Final = "<redacted>"
_MIN_SECRET_LEN: Final = 6  # shorter path or user-name fragments are not worth hiding (and are common words)


def display_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what may be shown of a URL that can carry credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.hostname:
        return REDACTED
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def scrub(text: str, url: str, *, path_is_secret: bool = True) -> str:
    """``text`` with every part of ``url`` that may be a credential replaced: user info, query, fragment and
    (unless ``path_is_secret`` is False: a node's ``/healthz`` path is not) the path, where providers such as
    ``/v2/<api key>`` put their keys."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text.replace(url, REDACTED) if url else text
    secrets = [url, url.rstrip("/")]
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        secrets += [userinfo, parts.password or "", parts.username or ""]
    secrets += [parts.query, parts.fragment, *(value for _, value in parse_qsl(parts.query))]
    if path_is_secret:
        secrets += [parts.path.strip("/"), *parts.path.split("/")]
    secrets += [unquote(s) for s in secrets]  # a library may show the decoded form
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    if at and parts.password:  # even a short password is never shown
        for password in (parts.password, unquote(parts.password)):
            text = text.replace(password, REDACTED)
    return text
