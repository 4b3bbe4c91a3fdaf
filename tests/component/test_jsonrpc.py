"""The chain adapter's JSON-RPC client against a real aiohttp server on 127.0.0.1 answering hostile things.

Every bad answer (not JSON, not an object, no result, a foreign id, an error object, an HTTP status, a
server that never answers, a closed port) leaves as a ``ChainError`` of the right kind, without retries:
the server counts exactly one request per call, and the ``on_rpc`` hook saw every method sent.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from sidecar.chain.errors import (
    ChainError,
    ChainIdMismatch,
    ChainUnavailable,
    RevertWithReason,
    RpcRejected,
    UnexpectedChainError,
    UnknownRevert,
)
from sidecar.chain.rpc import connect
from sidecar.core.ids import Bytes32

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

REASON = (
    bytes.fromhex("08c379a0") + (32).to_bytes(32, "big") + (3).to_bytes(32, "big") + b"bad".ljust(32, b"\0")
)

Answer = Callable[[dict[str, Any]], web.StreamResponse | Any]


class Node:
    """A JSON-RPC 'node' whose answer to each method is set by the test; it counts every request."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {"eth_chainId": lambda req: _ok(req, "0x7a69")}
        self.seen: list[str] = []
        self.release = asyncio.Event()  # set at teardown: a hanging answer then ends

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body["method"])
        body["node"] = self
        answer = self.answers[body["method"]](body)
        if asyncio.iscoroutine(answer):
            answer = await answer
        assert isinstance(answer, web.StreamResponse)
        return answer

    async def hang(self, request: dict[str, Any]) -> web.Response:
        await self.release.wait()
        return _ok(request, "0x1")


def _ok(request: dict[str, Any], result: Any) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": request["id"], "result": result})


def _error(request: dict[str, Any], code: int, message: str, data: Any = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return web.json_response({"jsonrpc": "2.0", "id": request["id"], "error": error})


@pytest.fixture
async def node() -> AsyncIterator[tuple[Node, str]]:
    fake = Node()
    app = web.Application()
    app.router.add_post("/", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fake, f"http://127.0.0.1:{port}/"
    finally:
        fake.release.set()
        await runner.cleanup()


def _hang(request: dict[str, Any]) -> Any:
    """Answer only when the node is released (the fixture's teardown): long after the client gave up."""
    return request["node"].hang(request)


HOSTILE: dict[str, tuple[Answer, type[ChainError], str]] = {
    "not json": (lambda req: web.Response(body=b"<html>busy</html>"), UnexpectedChainError, "not JSON"),
    "a list": (lambda req: web.json_response([1, 2]), UnexpectedChainError, "not a JSON-RPC object"),
    "no result": (
        lambda req: web.json_response({"jsonrpc": "2.0", "id": req["id"]}),
        UnexpectedChainError,
        "neither",
    ),
    "foreign id": (lambda req: _ok({"id": req["id"] + 7}, "0x1"), UnexpectedChainError, "id"),
    "error not an object": (
        lambda req: web.json_response({"jsonrpc": "2.0", "id": req["id"], "error": "boom"}),
        UnexpectedChainError,
        "not an object",
    ),
    "invalid params": (lambda req: _error(req, -32602, "invalid params"), RpcRejected, "invalid params"),
    "rate limited": (lambda req: _error(req, -32005, "limit exceeded"), ChainUnavailable, "limit"),
    "HTTP 503": (lambda req: web.Response(status=503), ChainUnavailable, "HTTP 503"),
    "HTTP 401": (lambda req: web.Response(status=401), RpcRejected, "HTTP 401"),
    "revert with reason": (
        lambda req: _error(req, 3, "execution reverted: bad", "0x" + REASON.hex()),
        RevertWithReason,
        "bad",
    ),
    "revert without data": (lambda req: _error(req, -32000, "execution reverted"), UnknownRevert, "reverted"),
    "never answers": (_hang, ChainUnavailable, "unreachable"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_every_hostile_answer_is_one_request_and_a_typed_error(
    node: tuple[Node, str], case: str
) -> None:
    fake, url = node
    answer, expected, text = HOSTILE[case]
    fake.answers["eth_blockNumber"] = answer
    sent: list[str] = []
    async with await connect(url, timeout=0.5, expected_chain_id=31337, on_rpc=sent.append) as conn:
        with pytest.raises(expected, match=text) as caught:
            await conn.block_number()
        assert type(caught.value) is expected
    assert fake.seen == ["eth_chainId", "eth_blockNumber"]  # no hidden retry
    assert sent == fake.seen


async def test_results_and_the_chain_id_check(node: tuple[Node, str]) -> None:
    fake, url = node
    fake.answers["eth_blockNumber"] = lambda req: _ok(req, "0x2a")
    fake.answers["eth_call"] = lambda req: _ok(req, "0x" + "00" * 31 + "05")
    fake.answers["eth_getTransactionReceipt"] = lambda req: _ok(req, None)
    sent: list[str] = []
    async with await connect(url, expected_chain_id=31337, on_rpc=sent.append) as conn:
        assert await conn.block_number() == 42
        assert await conn.chain_id() == 31337  # cached: not asked again
        assert await conn.call({"to": "0x" + "11" * 20, "data": "0x"}) == bytes(31) + b"\x05"
        assert await conn.transaction_receipt(Bytes32(b"\x01" * 32)) is None
    assert sent == ["eth_chainId", "eth_blockNumber", "eth_call", "eth_getTransactionReceipt"]
    assert fake.seen == sent
    with pytest.raises(ChainIdMismatch):
        await connect(url, expected_chain_id=1)


async def test_a_closed_port_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ChainUnavailable):
        await connect(f"http://127.0.0.1:{port}/", timeout=1.0)
