"""The WireGuard interface's link in the current network namespace, through rtnetlink (pyroute2).

Owns ``configure_link``, shared by both backends: the link exists (created with a given kind, or required
to exist), its MTU, its one IPv4 mesh address (any other IPv4 address on the interface goes), the link is
up, and the connected route for the mesh prefix points at it. Each step reads first and writes only what
differs, so a second call with the same settings sends no change to the kernel.

Must not: touch any other interface, delete the interface, or touch WireGuard keys and peers.
"""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Interface, IPv4Network

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from sidecar.wg.device import WgError

IFF_UP = 0x1
MAIN_TABLE = 254
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
#: Netlink errors that a later attempt can get past (the link vanished while wireguard-go restarted, …).
TRANSIENT_NETLINK_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ENOBUFS, errno.ENODEV})


async def _index(ipr: AsyncIPRoute, ifname: str) -> int | None:
    found: list[int] = await ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


async def _ensure_exists(ipr: AsyncIPRoute, ifname: str, create_kind: str | None) -> int:
    index = await _index(ipr, ifname)
    if index is not None:
        return index
    if create_kind is None:
        raise WgError(f"interface {ifname} not found (the backend did not create it)", transient=True)
    try:
        await ipr.link("add", ifname=ifname, kind=create_kind)
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            raise WgError(
                f"cannot create {ifname}: the kernel does not support links of kind {create_kind!r} ({exc})"
            ) from None
        raise
    index = await _index(ipr, ifname)
    if index is None:
        raise WgError(f"interface {ifname} vanished right after it was created", transient=True)
    return index


async def _ensure_address(ipr: AsyncIPRoute, index: int, address: IPv4Interface) -> None:
    want = (str(address.ip), address.network.prefixlen)
    present = [
        (str(entry.get("local") or entry.get("address")), int(entry["prefixlen"]))
        async for entry in await ipr.addr("dump", family=socket.AF_INET, index=index)
        if entry["index"] == index
    ]
    for local, prefixlen in present:
        if (local, prefixlen) != want:
            await ipr.addr("del", index=index, address=local, prefixlen=prefixlen)
    if want not in present:
        await ipr.addr("add", index=index, address=want[0], prefixlen=want[1])


async def _ensure_route(ipr: AsyncIPRoute, index: int, address: IPv4Interface) -> None:
    network: IPv4Network = address.network
    if network.prefixlen == 32:
        return  # a /32 has no connected prefix; peers' allowed IPs route through the device by themselves
    async for route in await ipr.route("dump", family=socket.AF_INET):
        if (
            route.get("table") == MAIN_TABLE
            and route.get("oif") == index
            and route["dst_len"] == network.prefixlen
            and route.get("dst") == str(network.network_address)
            and route["type"] == RTN_UNICAST
        ):
            return
    await ipr.route(
        "replace",
        dst=str(network),
        oif=index,
        scope=RT_SCOPE_LINK,
        prefsrc=str(address.ip),
        table=MAIN_TABLE,
    )


async def configure_link(ifname: str, address: IPv4Interface, mtu: int, *, create_kind: str | None) -> None:
    """Bring ``ifname`` to: present, ``mtu``, only IPv4 address ``address``, up, mesh route present.

    ``create_kind`` creates a missing link of that kind (kernel "wireguard"); None requires it to exist
    (wireguard-go's TUN). Raises ``WgError``; the caller bounds the time.
    """
    try:
        async with AsyncIPRoute() as ipr:
            index = await _ensure_exists(ipr, ifname, create_kind)
            (link,) = await ipr.link("get", index=index)
            if link.get("mtu") != mtu:
                await ipr.link("set", index=index, mtu=mtu)
            await _ensure_address(ipr, index, address)
            if not link["flags"] & IFF_UP:
                await ipr.link("set", index=index, state="up")
            await _ensure_route(ipr, index, address)
    except NetlinkError as exc:
        raise WgError(
            f"rtnetlink refused configuring {ifname}: {exc}",
            transient=exc.code in TRANSIENT_NETLINK_ERRNOS,
            errno=exc.code,
        ) from None
    except OSError as exc:
        raise WgError(f"rtnetlink failed configuring {ifname}: {exc.strerror}", transient=True) from None
