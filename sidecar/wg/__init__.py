"""The WireGuard adapter: the only sidecar code that touches WireGuard devices and network links.

One port (``device``: ``WgDevice``, ``InterfaceConfig``, ``WgError``), two backends: ``uapi``
(wireguard-go over its UAPI unix socket, with the pure ``uapi_codec``) and ``kernel`` (pyroute2's
WireGuard generic-netlink family); ``link`` configures the interface through rtnetlink for both, and
``select.open_device`` picks a backend. Callers see our value types (``sidecar.core.peerplan``) and
``WgError`` only, never pyroute2 objects. Must not import another adapter or the devnet.
"""

from sidecar.wg.device import DeviceState, InterfaceConfig, WgDevice, WgError
from sidecar.wg.kernel import KernelDevice, kernel_available
from sidecar.wg.select import Backend, open_device
from sidecar.wg.uapi import UapiDevice

__all__ = [
    "Backend",
    "DeviceState",
    "InterfaceConfig",
    "KernelDevice",
    "UapiDevice",
    "WgDevice",
    "WgError",
    "kernel_available",
    "open_device",
]
