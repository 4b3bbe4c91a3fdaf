"""The kernel backend: a ``wireguard`` link driven through rtnetlink and the WireGuard generic-netlink family.

Owns ``KernelDevice`` (pyroute2's ``AsyncWireGuard`` for key, port and peers; ``link.configure_link`` for
the link, creating it as kind ``wireguard`` when missing), ``kernel_available`` (does this kernel speak
the family?), and the pure translations between pyroute2 messages and our value types
(``peer_requests``, ``device_state``), which unit tests exercise without a kernel module.

Where the module is missing (this development machine) everything constructs and imports fine, and every
operation raises a terminal ``WgError("kernel WireGuard not available: …")`` before touching any link.
Must not: log, or put a request into an error (it may carry the private key); remove the interface; touch
peers in ``ensure_up``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network, ip_address, ip_network
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.wireguard import AsyncWireGuard

from sidecar.core.ids import SecretBytes
from sidecar.core.keys import x25519_public_key
from sidecar.core.peerplan import ActualPeer, DesiredPeer, PeerPlan, WgKey
from sidecar.wg.device import (
    DEFAULT_IFNAME,
    DeviceState,
    InterfaceConfig,
    WgError,
    checked_plan,
    format_endpoint,
    parse_endpoint,
    raise_problems,
    validate_ifname,
)
from sidecar.wg.link import TRANSIENT_NETLINK_ERRNOS, configure_link

DEFAULT_TIMEOUT = 5.0
UNAVAILABLE = "kernel WireGuard not available"

#: pyroute2's peer request: the keyword structure ``AsyncWireGuard.set(peer=…)`` takes.
PeerRequest = dict[str, Any]


# --- pure translations -------------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _peer_request(peer: DesiredPeer) -> PeerRequest:
    request: PeerRequest = {
        "public_key": _b64(peer.public_key.raw),
        "persistent_keepalive": peer.keepalive,
        "replace_allowed_ips": True,
        "allowed_ips": [str(net) for net in sorted(set(peer.allowed_ips))],
    }
    if peer.endpoint is not None:
        addr, port = parse_endpoint(peer.endpoint)
        request["endpoint_addr"] = str(addr)
        request["endpoint_port"] = port
    return request


def peer_requests(plan: PeerPlan) -> list[PeerRequest]:
    """Translate ``plan`` into pyroute2 peer requests, removals first (it must pass ``checked_plan``)."""
    _valid, problems = checked_plan(plan)
    raise_problems(problems)
    return [
        *({"public_key": _b64(key.raw), "remove": True} for key in plan.remove),
        *(_peer_request(peer) for peer in (*plan.add, *plan.update)),
    ]


def _key(value: object, what: str) -> WgKey:
    try:
        raw = base64.b64decode(value if isinstance(value, (bytes, str)) else b"", validate=True)
        return WgKey(raw)
    except ValueError:
        raise WgError(f"netlink reply has a malformed {what}") from None


def _endpoint(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return format_endpoint(ip_address(value["addr"]), int(value["port"]))
    except (KeyError, TypeError, ValueError):
        raise WgError("netlink reply has a malformed peer endpoint") from None


def _allowed_ips(values: Iterable[Any]) -> list[IPv4Network]:
    nets: list[IPv4Network] = []
    for value in values:
        try:
            net = ip_network(value["addr"])
        except (KeyError, TypeError, ValueError):
            raise WgError("netlink reply has a malformed allowed IP") from None
        if isinstance(net, IPv4Network):  # the mesh is IPv4; IPv6 entries are not ours to plan
            nets.append(net)
    return nets


def _handshake(value: Any) -> float | None:
    if value is None:
        return None
    sec, nsec = int(value["tv_sec"]), int(value["tv_nsec"])
    return None if sec == 0 and nsec == 0 else sec + nsec / 1e9


def device_state(messages: Iterable[Any]) -> DeviceState:
    """Fold a ``WG_CMD_GET_DEVICE`` dump into a ``DeviceState``.

    A large device spans several messages, and one peer may continue into the next message with more
    allowed IPs (as wg(8) handles it): such a continuation is merged into the peer.
    """
    public_key: WgKey | None = None
    listen_port = 0
    peers: dict[WgKey, ActualPeer] = {}
    for msg in messages:
        if (raw := msg.get_attr("WGDEVICE_A_PUBLIC_KEY")) is not None:
            public_key = _key(raw, "device public key")
        if (port := msg.get_attr("WGDEVICE_A_LISTEN_PORT")) is not None:
            listen_port = int(port)
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = _key(peer.get_attr("WGPEER_A_PUBLIC_KEY"), "peer public key")
            nets = _allowed_ips(peer.get_attr("WGPEER_A_ALLOWEDIPS") or ())
            seen = peers.get(key)
            if seen is not None:
                peers[key] = dataclasses.replace(seen, allowed_ips=(*seen.allowed_ips, *nets))
                continue
            peers[key] = ActualPeer(
                public_key=key,
                endpoint=_endpoint(peer.get_attr("WGPEER_A_ENDPOINT")),
                allowed_ips=tuple(nets),
                keepalive=int(peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0),
                last_handshake=_handshake(peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")),
                rx_bytes=int(peer.get_attr("WGPEER_A_RX_BYTES") or 0),
                tx_bytes=int(peer.get_attr("WGPEER_A_TX_BYTES") or 0),
            )
    return DeviceState(public_key, listen_port, tuple(peers[k] for k in sorted(peers)))


# --- availability ------------------------------------------------------------------------------------------


def _new_socket() -> AsyncWireGuard:
    wg = AsyncWireGuard()
    wg.module_err_level = "debug"  # "family not found" is an answer here, not an error worth a log line
    return wg


async def _probe() -> bool:
    wg = _new_socket()
    try:
        await wg.setup_endpoint()  # binds and resolves the "wireguard" family
        return True
    except (NetlinkError, OSError):
        return False
    finally:
        wg.close()


def kernel_available(timeout: float = 2.0) -> bool:
    """Tell whether this kernel speaks the WireGuard generic-netlink family (asking may load the module).

    Safe to call with or without a running event loop: the probe runs on its own loop in a worker thread.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wg-kernel-probe") as pool:
        try:
            return pool.submit(asyncio.run, asyncio.wait_for(_probe(), timeout)).result()
        except TimeoutError:
            return False


# --- the device --------------------------------------------------------------------------------------------


class KernelDevice:
    """A kernel WireGuard interface ``ifname`` in the current network namespace."""

    def __init__(self, ifname: str = DEFAULT_IFNAME, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.ifname = validate_ifname(ifname)
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._wg: AsyncWireGuard | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"KernelDevice({self.ifname!r})"

    async def ensure_up(self, config: InterfaceConfig) -> None:
        """Create the link if missing; set MTU, address, link state, route; key and port where they differ."""
        if config.name != self.ifname:
            raise WgError(f"config is for interface {config.name}, this adapter drives {self.ifname}")
        async with self._lock:
            wg = await self._socket()  # first: no link is touched on a kernel without WireGuard
            await self._call(
                "link setup",
                functools.partial(
                    configure_link, self.ifname, config.address, config.mtu, create_kind="wireguard"
                ),
            )
            state = await self._get(wg)
            wanted = WgKey(x25519_public_key(config.private_key))
            private_key = _secret_b64(config.private_key) if state.public_key != wanted else None
            listen_port = config.listen_port if state.listen_port != config.listen_port else None
            if private_key is not None or listen_port is not None:
                await self._call(
                    "set device",
                    functools.partial(wg.set, self.ifname, private_key=private_key, listen_port=listen_port),
                )

    async def read_peers(self) -> list[ActualPeer]:
        """Return the device's peers, sorted by public key."""
        async with self._lock:
            return list((await self._get(await self._socket())).peers)

    async def apply(self, plan: PeerPlan) -> None:
        """Apply ``plan`` peer by peer (removals first); nothing is sent for an empty plan.

        Peers ``checked_plan`` holds back are reported in a terminal ``WgError`` after the rest is applied.
        """
        valid, problems = checked_plan(plan)
        if not valid.empty:
            requests = peer_requests(valid)
            async with self._lock:
                wg = await self._socket()
                for request in requests:
                    await self._call("set peer", functools.partial(wg.set, self.ifname, peer=request))
        raise_problems(problems)

    async def public_key(self) -> WgKey | None:
        """Return the device's public key (None when it has no private key)."""
        async with self._lock:
            return (await self._get(await self._socket())).public_key

    async def close(self) -> None:
        """Close the netlink socket; the interface and its peers stay."""
        async with self._lock:
            self._closed = True
            if self._wg is not None:
                self._wg.close()
                self._wg = None

    # --- netlink ---------------------------------------------------------------------------------------

    async def _socket(self) -> AsyncWireGuard:
        if self._closed:
            raise WgError(f"{self!r} is closed")
        if self._wg is not None:
            return self._wg
        wg = _new_socket()
        try:
            async with asyncio.timeout(self.timeout):
                await wg.setup_endpoint()
        except NetlinkError as exc:
            wg.close()
            if exc.code == errno.ENOENT:
                raise WgError(
                    f"{UNAVAILABLE}: the kernel has no 'wireguard' generic-netlink family "
                    "(module not loaded or not built; use the userspace backend)",
                    errno=exc.code,
                ) from None
            raise WgError(f"{UNAVAILABLE}: {exc}", errno=exc.code) from None
        except (TimeoutError, OSError) as exc:
            wg.close()
            raise WgError(f"{UNAVAILABLE}: {exc or type(exc).__name__}", transient=True) from None
        self._wg = wg
        return wg

    async def _get(self, wg: AsyncWireGuard) -> DeviceState:
        async def dump() -> list[Any]:
            replies: AsyncIterator[Any] = await wg.info(self.ifname)
            return [msg async for msg in replies]

        return device_state(await self._call("get device", dump))

    async def _call(self, what: str, operation: Callable[[], Awaitable[Any]]) -> Any:
        """Run one netlink operation under the timeout; errors carry the errno, never the request."""
        try:
            async with asyncio.timeout(self.timeout):
                return await operation()
        except TimeoutError:
            raise WgError(
                f"WireGuard netlink {what} on {self.ifname}: no answer within {self.timeout:.1f}s",
                transient=True,
            ) from None
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise WgError(f"interface {self.ifname} not found", transient=True, errno=exc.code) from None
            raise WgError(
                f"WireGuard netlink {what} on {self.ifname} failed: {exc}",
                transient=exc.code in TRANSIENT_NETLINK_ERRNOS,
                errno=exc.code,
            ) from None
        except OSError as exc:
            raise WgError(
                f"WireGuard netlink {what} on {self.ifname} failed: {exc.strerror}", transient=True
            ) from None


def _secret_b64(key: SecretBytes) -> str:
    return _b64(key.reveal())
