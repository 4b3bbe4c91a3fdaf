"""The gateway stand-in's relay ends cleanly when both directions fail at once: the error is reported and
neither direction's failure is left for asyncio to log as "Task exception was never retrieved" (the lab's
gateway logged that at error level when a client kept sending into a connection its app had reset)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from devnet.gateway.relay import relay


class BrokenEnd:
    """An end that has one chunk to give and whose every write fails (the peer reset the connection)."""

    def __init__(self) -> None:
        self.chunks = [b"payload"]

    async def read(self) -> bytes:
        return self.chunks.pop() if self.chunks else b""

    async def write(self, data: bytes) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    async def close_write(self) -> None:
        return None

    def close(self) -> None:
        return None


async def test_both_directions_failing_together_leave_no_unretrieved_exception() -> None:
    unhandled: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        result = await relay(BrokenEnd(), BrokenEnd(), idle=10.0, checks=4, on_bytes=lambda _d, _n: None)
        gc.collect()  # an unretrieved task exception is reported when the task is collected
    finally:
        loop.set_exception_handler(None)
    assert result.end == "error" and result.error is not None and "BrokenPipeError" in result.error
    assert [c["message"] for c in unhandled] == []
