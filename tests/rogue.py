"""A rogue indexer for tests: a small aiohttp WebSocket server that speaks the push protocol with
``indexerwire.PushSigner`` and sends whatever its ``script`` returns after a welcome.

Shared by the component tier (on 127.0.0.1) and the e2e tier (bound to the lab's root-side address, which
the node namespaces reach through the lab bridge). It holds its Ed25519 seed in memory only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Literal

from aiohttp import web

from indexer.follower import MEMBER_REGISTERED
from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.indexerwire import (
    PROTOCOL_VERSION,
    Hello,
    Message,
    PushSigner,
    decode,
    encode,
    sign_welcome,
)
from sidecar.core.keys import ed25519_public_key
from sidecar.core.model import ChainLog

Script = Callable[["RogueIndexer", Hello, bytes], list[Message]]
#: How the rogue signs its welcome: with its own key over the hello's nonce (``signed``), with another key
#: (``forged``), over another nonce (``other_nonce``: a welcome recorded for an earlier hello), or not at all
#: (``unsigned``: the welcome of protocol version 1 before issue 12, without a signature field).
WelcomeMode = Literal["signed", "forged", "other_nonce", "unsigned"]


class RogueIndexer:
    """A WebSocket server that answers any hello with a welcome and the messages its ``script`` returns."""

    def __init__(self, seed: SecretBytes, host: str = "127.0.0.1") -> None:
        self.seed = seed
        self.host = host
        self.script: Script = lambda rogue, hello, session: []
        self.welcome_mode: WelcomeMode = "signed"
        self.connections = 0
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.cluster: Address | None = None
        self.sockets: set[web.WebSocketResponse] = set()

    @property
    def public_key(self) -> Bytes32:
        return Bytes32(ed25519_public_key(self.seed))

    @property
    def endpoint(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/subscribe"

    async def __aenter__(self) -> RogueIndexer:
        app = web.Application()
        app.router.add_get("/v1/subscribe", self._subscribe)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        for ws in list(self.sockets):
            await ws.close()
        await self.runner.cleanup()

    async def _subscribe(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.add(ws)
        self.connections += 1
        hello = decode((await ws.receive(timeout=10)).data)
        assert isinstance(hello, Hello) and hello.cursor is not None
        session = os.urandom(16)
        await ws.send_str(self._welcome(hello, session))
        for message in self.script(self, hello, session):
            await ws.send_str(encode(message))
        async for _ in ws:  # until the client tears the stream down
            pass
        self.sockets.discard(ws)
        return ws

    def _welcome(self, hello: Hello, session: bytes) -> str:
        assert hello.cursor is not None
        mode = self.welcome_mode
        welcome = sign_welcome(
            nonce=os.urandom(16) if mode == "other_nonce" else hello.nonce,
            session=session,
            indexer=hello.indexer,
            head=hello.cursor.block,
            protocol=PROTOCOL_VERSION,
            start=hello.cursor,
            indexer_key=SecretBytes(os.urandom(32)) if mode == "forged" else self.seed,
        )
        if mode != "unsigned":
            return encode(welcome)
        frame = json.loads(encode(welcome))
        del frame["signature"]
        return json.dumps(frame)

    def signer(self, hello: Hello, session: bytes, *, cluster: Address | None = None) -> PushSigner:
        assert hello.cursor is not None
        return PushSigner(cluster or hello.cluster, hello.cursor, self.seed)


def fake_log(hello: Hello, *, cluster: Address | None = None, topics: tuple[Bytes32, ...] = ()) -> ChainLog:
    assert hello.cursor is not None
    return ChainLog(
        address=cluster or hello.cluster,
        topics=topics or (MEMBER_REGISTERED, Bytes32(os.urandom(32))),
        data=b"\x00" * 32,
        block_number=hello.cursor.next_block,
        block_hash=Bytes32(os.urandom(32)),
        tx_hash=Bytes32(os.urandom(32)),
        log_index=0,
    )


def forge_next_event(rogue: RogueIndexer, hello: Hello, session: bytes) -> list[Message]:
    return [rogue.signer(hello, session).event(fake_log(hello))]


def tampered(rogue: RogueIndexer, hello: Hello, session: bytes) -> list[Message]:
    event = rogue.signer(hello, session).event(fake_log(hello))
    return [dataclasses.replace(event, log=dataclasses.replace(event.log, data=b"\x01" * 32))]


def other_cluster(rogue: RogueIndexer, hello: Hello, session: bytes) -> list[Message]:
    assert rogue.cluster is not None
    signer = rogue.signer(hello, session, cluster=rogue.cluster)
    return [signer.event(fake_log(hello, cluster=rogue.cluster))]


def replayed(rogue: RogueIndexer, hello: Hello, session: bytes) -> list[Message]:
    """A correctly signed event the client has already handled (at or before its cursor), sent again: v2
    signs per cluster, so a replay is caught by its position, not by a session id."""
    cursor = hello.cursor
    assert cursor is not None
    block = cursor.block if cursor.log_index >= 0 else max(0, cursor.block - 1)
    old = dataclasses.replace(
        fake_log(hello),
        block_number=block,
        log_index=0,
        block_hash=cursor.block_hash if not cursor.block_hash.is_zero else Bytes32(os.urandom(32)),
    )
    return [PushSigner(hello.cluster, Cursor.start(block), rogue.seed).event(old)]


def fake_member(member_id: Bytes32, block: int, block_hash: Bytes32) -> Script:
    def script(rogue: RogueIndexer, hello: Hello, session: bytes) -> list[Message]:
        log = ChainLog(
            address=hello.cluster,
            topics=(MEMBER_REGISTERED, member_id),
            data=b"\x00" * 32,
            block_number=block,
            block_hash=block_hash,
            tx_hash=Bytes32(os.urandom(32)),
            log_index=0,
        )
        assert hello.cursor is not None
        if (block, 0) <= (hello.cursor.block, hello.cursor.log_index):
            return []
        return [rogue.signer(hello, session).event(log)]

    return script
