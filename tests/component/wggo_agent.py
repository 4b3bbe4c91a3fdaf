"""Runs the sidecar's ``WireGuardGo`` supervisor INSIDE a network namespace whose private mount namespace has
a test directory bind-mounted over /run/wireguard (``ip netns exec NS sh -c 'mount --bind DIR /run/wireguard
&& exec python -m tests.component.wggo_agent'``), as the sidecar runs it inside a container.

Protocol: one command per line on stdin, one JSON reply per line on stdout; EOF ends the agent.
    start           start the supervisor; reply when its child serves the UAPI socket: pid, starts, link
    kill            SIGKILL the current child; reply when a new child serves the socket: pid, starts, link
    read            the device over UAPI (``UapiDevice.public_key``): proves the socket is usable
    external        stop the supervisor, run a wireguard-go of our own, start a new supervisor; reply after
                    a few of its checks: starts (0: it left the external one alone)
    stop            cancel the supervisor; reply when done: whether the last child is gone, link
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from sidecar.wg.uapi import UapiDevice
from sidecar.wg.userspace import WireGuardGo, socket_answers

IFNAME = "attestmesh0"
SOCKET = Path("/run/wireguard") / f"{IFNAME}.sock"


def link_exists() -> bool:
    return Path(f"/sys/class/net/{IFNAME}").exists()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] not in "ZX"


async def serving(supervisor: WireGuardGo, not_pid: int | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        child = supervisor.child
        if child is not None and child.pid != not_pid and await socket_answers(SOCKET) and link_exists():
            return {"pid": child.pid, "starts": supervisor.starts, "link": True}
        await asyncio.sleep(0.02)
    return {"error": "no child served the socket within 10 s", "starts": supervisor.starts}


def new_supervisor() -> WireGuardGo:
    return WireGuardGo(IFNAME, backoff_min=0.2, backoff_max=1.0, check_interval=0.1, stop_timeout=2.0)


async def main() -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the protocol
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    supervisor = new_supervisor()
    task: asyncio.Task[None] | None = None
    last_pid: int | None = None
    while line := (await reader.readline()).decode().strip():
        reply: dict[str, Any]
        if line == "start":
            task = asyncio.create_task(supervisor.run())
            reply = await serving(supervisor)
            last_pid = reply.get("pid")
        elif line == "kill":
            assert supervisor.child is not None
            old = supervisor.child.pid
            os.kill(old, signal.SIGKILL)
            reply = await serving(supervisor, not_pid=old)
            last_pid = reply.get("pid")
        elif line == "read":
            device = UapiDevice(SOCKET, IFNAME)
            reply = {"public_key": None if (key := await device.public_key()) is None else key.hex}
            await device.close()
        elif line == "stop":
            assert task is not None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            gone = last_pid is None or not alive(last_pid)
            reply = {"child_gone": gone, "link": link_exists()}
        elif line == "external":
            external = await asyncio.create_subprocess_exec(
                "wireguard-go",
                "-f",
                IFNAME,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            for _ in range(500):  # up to 10 s for its socket
                if await socket_answers(SOCKET):
                    break
                await asyncio.sleep(0.02)
            supervisor = new_supervisor()
            task = asyncio.create_task(supervisor.run())
            await asyncio.sleep(1.0)  # ten of its 0.1 s checks: it must start nothing meanwhile
            reply = {"starts": supervisor.starts, "external_alive": external.returncode is None}
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            external.terminate()
            await asyncio.wait_for(external.wait(), 5)
        else:
            reply = {"error": f"unknown command {line!r}"}
        print(json.dumps(reply), flush=True)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
