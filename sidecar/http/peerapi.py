"""The peer API: ``POST /v1/csk`` served on the node's mesh IP, and its client ``fetch_csk``.

Owns only HTTP: body size limit, content type, JSON decoding, the remote IP, and mapping the responder's
answer to a response. Whether a request is served (membership, signature, freshness, liveness) is decided
by the ``CskResponder`` the caller passes (pure logic in ``sidecar.core.csk`` behind it). Requests the HTTP
layer cannot decode never reach the responder and are counted here as refused (``malformed``); what the
responder decides, it counts itself.

Must not: bind itself (the caller binds it to the mesh IP only), or put anything but a sealed box (useless
to anyone but the requester) and public values (the responder's member proof and signature) into a
response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final, Literal, Protocol

import aiohttp
import structlog
from aiohttp import web

from sidecar.http.server import error_response, json_errors
from sidecar.observability import Metrics

log = structlog.get_logger("sidecar.http.peer")

MAX_REQUEST_BYTES: Final = 4096
MAX_RESPONSE_BYTES: Final = 16384
MAX_DETAIL_CHARS: Final = 200
CSK_PATH: Final = "/v1/csk"

CskFetchErrorKind = Literal["refused", "unreachable", "invalid"]


@dataclass(frozen=True, slots=True)
class CskAnswer:
    """The responder's decision: HTTP ``status`` and JSON ``body`` (``{"sealed": hex}`` when served)."""

    status: int
    body: Mapping[str, object]


class CskResponder(Protocol):
    def respond(self, body: object, remote_ip: IPv4Address) -> CskAnswer: ...


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _decode_json(raw: bytes) -> object:
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def peer_api(responder: CskResponder, metrics: Metrics) -> web.Application:
    """Build the peer API application (the caller binds it to the mesh IP)."""

    def malformed(status: int, message: str) -> web.Response:
        metrics.csk_refused("malformed")
        return error_response(status, message)

    async def csk(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return malformed(415, "content type must be application/json")
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return malformed(413, f"request body exceeds {MAX_REQUEST_BYTES} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return malformed(413, f"request body exceeds {MAX_REQUEST_BYTES} bytes")
        try:
            body = _decode_json(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return malformed(400, "request body is not valid JSON")
        try:
            remote = IPv4Address(request.remote or "")
        except ValueError:
            return malformed(400, "request did not come from an IPv4 peer")

        answer = responder.respond(body, remote)
        return web.json_response(dict(answer.body), status=answer.status)

    app = web.Application(middlewares=[json_errors("peer", metrics)], client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post(CSK_PATH, csk)
    return app


class CskFetchError(Exception):
    """A CSK pull from one peer failed: ``refused`` (the peer answered no), ``unreachable`` (no answer in
    time), or ``invalid`` (the answer was not a JSON object)."""

    def __init__(self, kind: CskFetchErrorKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: CskFetchErrorKind = kind
        self.detail = detail


def _printable(text: str) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned[:MAX_DETAIL_CHARS]


def _peer_error(raw: bytes) -> str:
    try:
        decoded = _decode_json(raw)
    except (ValueError, RecursionError):
        return "no error message"
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return _printable(decoded["error"])
    return "no error message"


def _answer_from(raw: bytes) -> dict[str, object]:
    try:
        decoded = _decode_json(raw)
    except (ValueError, RecursionError):
        raise CskFetchError("invalid", "response is not JSON") from None
    if not isinstance(decoded, dict):
        raise CskFetchError("invalid", "response is not a JSON object")
    return decoded


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    if response.content_length is not None and response.content_length > MAX_RESPONSE_BYTES:
        raise CskFetchError("invalid", f"response exceeds {MAX_RESPONSE_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.read(MAX_RESPONSE_BYTES + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise CskFetchError("invalid", f"response exceeds {MAX_RESPONSE_BYTES} bytes")
    return b"".join(chunks)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}{CSK_PATH}" if ":" in host else f"http://{host}:{port}{CSK_PATH}"


async def fetch_csk(
    session: aiohttp.ClientSession,
    host: str,
    port: int,
    request: Mapping[str, object],
    timeout: float,  # noqa: ASYNC109  (the bound is the aiohttp client timeout, applied per call)
) -> dict[str, object]:
    """POST ``request`` to a peer's ``/v1/csk`` and return its JSON answer (a 200's object, for the caller
    to check: ``sidecar.core.csk.check_response``); raise ``CskFetchError``.

    The whole exchange (connect, send, read) is bounded by ``timeout`` seconds.
    """
    payload = json.dumps(dict(request), separators=(",", ":"), allow_nan=False).encode()
    deadline = aiohttp.ClientTimeout(total=timeout, connect=timeout, sock_connect=timeout, sock_read=timeout)
    try:
        async with session.post(
            _url(host, port),
            data=payload,
            headers={"Content-Type": "application/json"},
            timeout=deadline,
            allow_redirects=False,
        ) as response:
            raw = await _read_bounded(response)
            status = response.status
    except CskFetchError:
        raise
    except TimeoutError:
        raise CskFetchError("unreachable", f"no answer within {timeout:g}s") from None
    except aiohttp.ClientPayloadError:
        raise CskFetchError("invalid", "response body was cut short or malformed") from None
    except aiohttp.ClientResponseError as exc:
        raise CskFetchError("invalid", f"malformed HTTP response ({exc.status})") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise CskFetchError("unreachable", type(exc).__name__) from None

    if status == 200:
        return _answer_from(raw)
    if 400 <= status < 600:
        return_detail = f"HTTP {status}: {_peer_error(raw)}"
        raise CskFetchError("refused", return_detail)
    raise CskFetchError("invalid", f"unexpected HTTP status {status}")
