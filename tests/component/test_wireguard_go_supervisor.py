"""The sidecar runs wireguard-go itself for the userspace backend on wireguard-go's own socket directory (the
image's fallback on a kernel without WireGuard): a real wireguard-go, in a network namespace of the test's
own with a private directory bind-mounted over /run/wireguard (as a container has its own), driven by
``tests.component.wggo_agent``. The supervisor starts it, a killed child is replaced and the new socket is
usable over UAPI, a wireguard-go someone else runs is left alone, and cancellation stops the child (the
interface goes with it). Nothing is addressed: no traffic leaves the namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.wg.userspace import WIREGUARD_GO_SOCKET_DIR, owns_socket_dir, should_start
from tests.conftest import require

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


class Agent:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def call(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert line, f"the agent exited during {command!r}"
        reply: dict[str, Any] = json.loads(line)
        assert "error" not in reply, reply
        return reply


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    require(os.geteuid() == 0, "root (network namespaces)")
    ns = f"amtw-{os.getpid()}"
    await asyncio.to_thread(subprocess.run, ["ip", "netns", "add", ns], check=True)
    run_dir = tmp_path / "run-wireguard"
    run_dir.mkdir()
    launch = 'mount --bind "$1" /run/wireguard && exec "$2" -m tests.component.wggo_agent'
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, "sh", "-c", launch, "sh", str(run_dir), sys.executable,
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Agent(proc)
    finally:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        pids = await asyncio.to_thread(
            subprocess.run, ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
        )
        await asyncio.to_thread(subprocess.run, ["ip", "netns", "del", ns], check=False)
        assert not pids.stdout.split(), f"processes left in {ns}: {pids.stdout}"


async def test_supervisor_starts_replaces_leaves_alone_and_stops_wireguard_go(agent: Agent) -> None:
    first = await agent.call("start")
    assert first["starts"] == 1 and first["link"]
    assert (await agent.call("read"))["public_key"] is None  # a fresh device, usable over its UAPI socket

    second = await agent.call("kill")
    assert second["pid"] != first["pid"] and second["starts"] == 2 and second["link"]
    assert (await agent.call("read"))["public_key"] is None

    stopped = await agent.call("stop")
    assert stopped == {"child_gone": True, "link": False}

    external = await agent.call("external")
    assert external == {"starts": 0, "external_alive": True}


def test_only_the_userspace_backend_on_wireguard_go_s_own_directory_starts_it(tmp_path: Path) -> None:
    assert owns_socket_dir(WIREGUARD_GO_SOCKET_DIR) and owns_socket_dir(Path("/run/wireguard"))
    assert not owns_socket_dir(tmp_path)
    assert should_start("userspace", Path("/run/wireguard"))[0]
    kernel = should_start("kernel", Path("/run/wireguard"))
    assert kernel == (False, "the kernel backend needs no wireguard-go")
    assert not should_start("userspace", tmp_path)[0]  # the devnet's per-node directories
    missing = should_start("userspace", Path("/run/wireguard"), binary="no-such-wireguard-go")
    assert missing == (False, "no-such-wireguard-go is not installed")
