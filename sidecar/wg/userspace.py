"""Running wireguard-go for the userspace backend when nothing else runs it: a CVM or container whose kernel
has no WireGuard (the image ships wireguard-go for exactly that).

Owns: the decision whether the sidecar starts wireguard-go itself (``should_start``: the userspace backend,
the UAPI directory is wireguard-go's own fixed ``/var/run/wireguard``, and the binary is there), and
``WireGuardGo``: an eternal task that keeps one ``wireguard-go -f IFNAME`` child running while no other
process serves the interface's UAPI socket, restarts it when it exits after a delay from the shared
``Backoff`` (capped, jittered, reset after a healthy run), and at cancellation stops it (SIGTERM, a bounded
wait, SIGKILL). Its output is logged line by line.
Must not: configure the device (``UapiDevice.ensure_up`` does, level-triggered, after every restart),
signal any process but its own child, or start a second wireguard-go while a socket answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path
from typing import Final

import structlog

from sidecar.core.backoff import Backoff
from sidecar.wg.device import validate_ifname

log = structlog.get_logger("attestmesh.wg")

#: Where wireguard-go 0.0.2022x always puts its UAPI sockets (not configurable in that version).
WIREGUARD_GO_SOCKET_DIR: Final = Path("/var/run/wireguard")
BACKOFF_MIN: Final = 1.0
BACKOFF_MAX: Final = 30.0
STOP_TIMEOUT: Final = 3.0
CHECK_INTERVAL: Final = 5.0  # how often an external wireguard-go's socket is checked
MAX_LOGGED_LINE: Final = 500


def owns_socket_dir(uapi_dir: Path) -> bool:
    """Whether ``uapi_dir`` is wireguard-go's own socket directory (so a child we start serves it)."""
    return uapi_dir.resolve() == WIREGUARD_GO_SOCKET_DIR.resolve()


def should_start(backend: str, uapi_dir: Path, binary: str = "wireguard-go") -> tuple[bool, str]:
    """Whether the sidecar should run wireguard-go itself, and why (or why not), for the log."""
    if backend != "userspace":
        return False, f"the {backend} backend needs no wireguard-go"
    if not owns_socket_dir(uapi_dir):
        return (
            False,
            f"UAPI directory {uapi_dir} is not wireguard-go's own; whoever made it runs wireguard-go",
        )
    if shutil.which(binary) is None:
        return False, f"{binary} is not installed"
    return True, "userspace backend on wireguard-go's own socket directory"


async def socket_answers(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path`` now (within a second)."""
    try:
        async with asyncio.timeout(1.0):
            _reader, writer = await asyncio.open_unix_connection(str(path))
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class WireGuardGo:
    """Keeps ``wireguard-go -f IFNAME`` running as our child while no other process serves its socket."""

    def __init__(
        self,
        ifname: str,
        *,
        binary: str = "wireguard-go",
        socket_dir: Path = WIREGUARD_GO_SOCKET_DIR,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        stop_timeout: float = STOP_TIMEOUT,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.ifname = validate_ifname(ifname)
        self.binary = binary
        self.socket_path = socket_dir / f"{self.ifname}.sock"
        self.restart = Backoff(backoff_min, backoff_max)
        self.stop_timeout = stop_timeout
        self.check_interval = check_interval
        self.child: asyncio.subprocess.Process | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"WireGuardGo({self.ifname!r}, pid={self.child.pid if self.child else None})"

    async def run(self) -> None:
        """Eternal: start, watch and restart the child; on cancellation stop it, then re-raise."""
        backoff = self.restart
        external_logged = False
        while True:
            if await socket_answers(self.socket_path):
                if not external_logged:
                    log.info("wg.userspace_external", interface=self.ifname, socket=str(self.socket_path))
                    external_logged = True
                await asyncio.sleep(self.check_interval)
                continue
            external_logged = False
            started = time.monotonic()
            returncode = await self._run_child()
            ran = time.monotonic() - started
            backoff.ran(ran)
            delay = backoff.next()
            log.warning(
                "wg.userspace_exited",
                interface=self.ifname,
                returncode=returncode,
                ran_s=round(ran, 1),
                retry_in_s=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _run_child(self) -> int:
        try:
            child = await asyncio.create_subprocess_exec(
                self.binary, "-f", self.ifname,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        except OSError as exc:
            log.error("wg.userspace_start_failed", interface=self.ifname, error=str(exc))
            return -1
        self.child = child
        self.starts += 1
        log.info("wg.userspace_started", interface=self.ifname, pid=child.pid, starts=self.starts)
        try:
            await self._pump(child)
            return await child.wait()
        except asyncio.CancelledError:
            await self._stop(child)
            raise
        finally:
            self.child = None

    async def _pump(self, child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        async for raw in child.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                log.debug("wg.userspace_output", interface=self.ifname, line=line[:MAX_LOGGED_LINE])

    async def _stop(self, child: asyncio.subprocess.Process) -> None:
        """SIGTERM, wait ``stop_timeout``, SIGKILL; shielded, so the caller's cancellation cannot cut it."""

        async def stop() -> None:
            if child.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
            try:
                async with asyncio.timeout(self.stop_timeout):
                    await child.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
            log.info(
                "wg.userspace_stopped", interface=self.ifname, pid=child.pid, returncode=child.returncode
            )

        await asyncio.shield(stop())
