"""A WireGuard adapter agent for the component tests: runs the sidecar's ``sidecar.wg`` adapter INSIDE a
node's network namespace (``ip netns exec NS python -m tests.component.wg_agent``), as the sidecar does.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout; EOF ends the agent.
Requests: ``open`` (backend, ifname, uapi_dir; replaces the adapter object, i.e. a sidecar restart),
``ensure_up`` (config), ``read_peers``, ``apply`` (plan), ``public_key``, ``close``, ``hold_udp`` (bind a
UDP port and keep it, to make a port busy). Replies: ``{"ok": true, "result": …, "seconds": …}`` (the
adapter call's own duration) or ``{"ok": false, "error": {"message", "transient", "errno"}}``.

The private key arrives over the pipe and is never printed: errors are reported through ``WgError``'s
message, which never carries one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from sidecar.core.ids import MemberId, SecretBytes
from sidecar.core.peerplan import ActualPeer, DesiredPeer, PeerPlan, WgKey
from sidecar.wg.device import InterfaceConfig, WgDevice, WgError
from sidecar.wg.select import open_device

# --- JSON forms shared with the tests ---------------------------------------------------------------------


def desired_to_json(peer: DesiredPeer) -> dict[str, Any]:
    return {
        "member_id": peer.member_id.hex,
        "public_key": peer.public_key.hex,
        "endpoint": peer.endpoint,
        "allowed_ips": [str(n) for n in peer.allowed_ips],
        "keepalive": peer.keepalive,
    }


def desired_from_json(data: dict[str, Any]) -> DesiredPeer:
    return DesiredPeer(
        member_id=MemberId(bytes.fromhex(data["member_id"])),
        public_key=WgKey(bytes.fromhex(data["public_key"])),
        endpoint=data["endpoint"],
        allowed_ips=tuple(IPv4Network(n) for n in data["allowed_ips"]),
        keepalive=data["keepalive"],
    )


def plan_to_json(plan: PeerPlan) -> dict[str, Any]:
    return {
        "add": [desired_to_json(p) for p in plan.add],
        "remove": [k.hex for k in plan.remove],
        "update": [desired_to_json(p) for p in plan.update],
    }


def plan_from_json(data: dict[str, Any]) -> PeerPlan:
    return PeerPlan(
        add=tuple(desired_from_json(p) for p in data["add"]),
        remove=tuple(WgKey(bytes.fromhex(k)) for k in data["remove"]),
        update=tuple(desired_from_json(p) for p in data["update"]),
    )


def actual_to_json(peer: ActualPeer) -> dict[str, Any]:
    return {
        "public_key": peer.public_key.hex,
        "endpoint": peer.endpoint,
        "allowed_ips": [str(n) for n in peer.allowed_ips],
        "keepalive": peer.keepalive,
        "last_handshake": peer.last_handshake,
        "rx_bytes": peer.rx_bytes,
        "tx_bytes": peer.tx_bytes,
    }


def actual_from_json(data: dict[str, Any]) -> ActualPeer:
    return ActualPeer(
        public_key=WgKey(bytes.fromhex(data["public_key"])),
        endpoint=data["endpoint"],
        allowed_ips=tuple(IPv4Network(n) for n in data["allowed_ips"]),
        keepalive=data["keepalive"],
        last_handshake=data["last_handshake"],
        rx_bytes=data["rx_bytes"],
        tx_bytes=data["tx_bytes"],
    )


def config_to_json(config: InterfaceConfig) -> dict[str, Any]:
    return {
        "name": config.name,
        "private_key": config.private_key.reveal().hex(),
        "listen_port": config.listen_port,
        "address": str(config.address),
        "mtu": config.mtu,
    }


def config_from_json(data: dict[str, Any]) -> InterfaceConfig:
    return InterfaceConfig(
        name=data["name"],
        private_key=SecretBytes(bytes.fromhex(data["private_key"])),
        listen_port=data["listen_port"],
        address=IPv4Interface(data["address"]),
        mtu=data["mtu"],
    )


# --- the agent --------------------------------------------------------------------------------------------


class Agent:
    def __init__(self) -> None:
        self.device: WgDevice | None = None
        self.held: list[socket.socket] = []

    def _device(self) -> WgDevice:
        if self.device is None:
            raise RuntimeError("no device: send 'open' first")
        return self.device

    async def handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        if op == "open":
            if self.device is not None:
                await self.device.close()
            self.device = open_device(
                request["backend"], ifname=request["ifname"], uapi_dir=Path(request["uapi_dir"])
            )
            return type(self.device).__name__
        if op == "ensure_up":
            return await self._device().ensure_up(config_from_json(request["config"]))
        if op == "read_peers":
            return [actual_to_json(p) for p in await self._device().read_peers()]
        if op == "apply":
            return await self._device().apply(plan_from_json(request["plan"]))
        if op == "public_key":
            key = await self._device().public_key()
            return None if key is None else key.hex
        if op == "close":
            return await self._device().close()
        if op == "hold_udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", request["port"]))  # inside the node's namespace only
            self.held.append(sock)
            return None
        raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    agent = Agent()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        request = json.loads(line)
        started = time.perf_counter()
        try:
            result = await agent.handle(request)
            reply: dict[str, Any] = {"ok": True, "result": result, "seconds": time.perf_counter() - started}
        except WgError as exc:
            reply = {
                "ok": False,
                "error": {"message": str(exc), "transient": exc.transient, "errno": exc.errno},
            }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    if agent.device is not None:
        await agent.device.close()


if __name__ == "__main__":
    asyncio.run(main())
