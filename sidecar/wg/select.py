"""Choosing the WireGuard backend: ``open_device`` returns the ``WgDevice`` for a configured backend name.

``auto`` means the kernel backend where the kernel speaks WireGuard (a CVM), else wireguard-go's UAPI.
Must not: start wireguard-go (``sidecar.wg.userspace`` does, when nothing else does), create or configure
anything (that is ``ensure_up``'s job).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from sidecar.wg.device import DEFAULT_IFNAME, WgDevice
from sidecar.wg.kernel import KernelDevice, kernel_available
from sidecar.wg.uapi import UapiDevice

Backend = Literal["userspace", "kernel", "auto"]
BACKENDS: tuple[Backend, ...] = ("userspace", "kernel", "auto")


def uapi_socket_path(uapi_dir: Path, ifname: str = DEFAULT_IFNAME) -> Path:
    """Return where wireguard-go puts the UAPI socket of ``ifname`` (``<dir>/<ifname>.sock``)."""
    return uapi_dir / f"{ifname}.sock"


@functools.cache
def _kernel_speaks_wireguard() -> bool:
    return kernel_available()


def resolve_backend(backend: Backend | str) -> Literal["userspace", "kernel"]:
    """The backend ``auto`` means here (kernel when this kernel speaks WireGuard, else userspace); other
    names as they are. The kernel is probed once per process, briefly blocking the caller (a start-up step).
    """
    if backend == "auto":
        return "kernel" if _kernel_speaks_wireguard() else "userspace"
    if backend == "kernel":
        return "kernel"
    if backend == "userspace":
        return "userspace"
    raise ValueError(f"WireGuard backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def open_device(backend: Backend | str, *, ifname: str = DEFAULT_IFNAME, uapi_dir: Path) -> WgDevice:
    """Return the device adapter for ``backend`` (``auto``: kernel when available, else userspace).

    ``backend`` is one of ``BACKENDS`` (a ``str`` enum of those values works too); anything else is a
    ``ValueError``.
    """
    backend = resolve_backend(backend)
    if backend == "kernel":
        return KernelDevice(ifname)
    return UapiDevice(uapi_socket_path(uapi_dir, ifname), ifname)
