"""A small JSON-RPC 2.0 client over one aiohttp session: the adapter's only wire to an Ethereum node.

Owns: the HTTP session (created on first use, so inside the running loop; one per connection), request ids,
the per-request timeout, reporting every method sent to the ``on_rpc`` hook, and turning the node's answer
into a result or a typed exception: ``RpcError`` (the node's JSON-RPC error object: code, message, data),
``RpcResponseError`` (an answer that is not a JSON-RPC response), or aiohttp's own (HTTP status, transport).

Must not: retry (the drivers own backoff), interpret results or error objects (``sidecar.chain.errors``
classifies them), or log request bodies (signed transactions are public, but nothing here needs them).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp


class RpcError(Exception):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: object, message: str, data: object = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data


class RpcResponseError(Exception):
    """The answer is not a JSON-RPC 2.0 response to our request (not JSON, no result, wrong id)."""


class JsonRpcClient:
    """JSON-RPC requests to one URL; ``close()`` releases the session."""

    def __init__(self, url: str, *, timeout: float, on_rpc: Callable[[str], None] | None = None) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._on_rpc = on_rpc
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Send one request; return its ``result`` or raise ``RpcError``, ``RpcResponseError``, aiohttp's."""
        request_id = next(self._ids)
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
        if self._on_rpc is not None:
            self._on_rpc(method)
        async with self._open().post(self.url, json=payload) as response:
            response.raise_for_status()
            body = await response.read()
        return _result(method, request_id, body)

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _result(method: str, request_id: int, body: bytes) -> Any:
    try:
        reply = json.loads(body)
    except ValueError:
        raise RpcResponseError(f"{method}: the answer is not JSON ({len(body)} bytes)") from None
    if not isinstance(reply, dict):
        raise RpcResponseError(f"{method}: the answer is not a JSON-RPC object")
    error = reply.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise RpcResponseError(f"{method}: the error member is not an object")
        raise RpcError(method, error.get("code"), str(error.get("message", "")), error.get("data"))
    if "result" not in reply:
        raise RpcResponseError(f"{method}: the answer has neither result nor error")
    if reply.get("id") != request_id:
        raise RpcResponseError(f"{method}: the answer's id {reply.get('id')!r} is not {request_id}")
    return reply["result"]
