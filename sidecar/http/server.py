"""Serving an aiohttp application: binding (TCP or unix socket), JSON errors, bounded shutdown.

Owns: ``Runner`` (what ``start_tcp``/``start_unix`` return; ``close()`` is bounded), the one middleware
that turns every HTTP error into a JSON body, counts 4xx rejections per surface and counts a client that
hangs up mid-request as ``client_gone`` (a debug line, never a traceback), and the unix-socket
rules: parent directory created 0700, socket file 0600 from the moment it exists (bound under a umask),
a stale socket removed only when nothing answers on it.

Must not: log request bodies, or leak exception text to clients (500 bodies are generic; details go to the
log).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from sidecar.http.limits import ConnectionLimits, GuardedTCPSite
from sidecar.metricvocab import ConnectionDrop, HttpSurface
from sidecar.observability import Metrics

log = structlog.get_logger("sidecar.http")

DEFAULT_CLOSE_TIMEOUT: Final = 5.0
KEEPALIVE_TIMEOUT: Final = 30.0
STALE_PROBE_TIMEOUT: Final = 1.0
SOCKET_MODE: Final = 0o600
SOCKET_DIR_MODE: Final = 0o700

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error body ``{"error": message}`` with ``status``."""
    return web.json_response({"error": message}, status=status, headers=headers)


def json_errors(surface: HttpSurface, metrics: Metrics) -> Middleware:
    """Turn every HTTP error into JSON, count 4xx answers and clients gone for ``surface``."""
    return error_middleware(
        surface,
        rejected=lambda: metrics.http_rejection(surface),
        client_gone=lambda: metrics.http_client_gone(surface),
    )


def error_middleware(
    surface: str, *, rejected: Callable[[], None], client_gone: Callable[[], None]
) -> Middleware:
    """The one error middleware: HTTP errors become JSON (4xx counted by ``rejected``), a client that hangs
    up mid-request is counted by ``client_gone`` and logged at debug, a crash becomes a bare 500."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status < 500:
                rejected()
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(exc.status, exc.reason.lower(), headers)
        except ConnectionError as exc:  # the client went away (e.g. mid-body): not a server error
            client_gone()
            log.debug("http.client_gone", surface=surface, path=request.path, error=type(exc).__name__)
            return error_response(400, "connection closed by the client")  # nobody reads it
        except Exception:
            log.exception("http.handler_failed", surface=surface, path=request.path, method=request.method)
            return error_response(500, "internal error")
        if 400 <= response.status < 500:
            rejected()
        return response

    return middleware


class Runner:
    """A serving application; ``close()`` stops accepting, lets in-flight requests finish, and is bounded."""

    def __init__(
        self,
        runner: web.AppRunner,
        *,
        name: str,
        close_timeout: float,
        unix_path: Path | None = None,
        unix_inode: int | None = None,
    ) -> None:
        self._runner = runner
        self._name = name
        self._close_timeout = close_timeout
        self._unix_path = unix_path
        self._unix_inode = unix_inode
        self._closed = False

    @property
    def addresses(self) -> list[object]:
        """What the listening sockets are bound to (``(host, port)`` tuples or a socket path)."""
        return list(self._runner.addresses)

    @property
    def port(self) -> int:
        """The bound TCP port (useful after binding port 0)."""
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return int(address[1])
        raise ValueError("not a TCP listener")

    async def close(self) -> None:
        """Stop serving; waits at most the close timeout (plus a small margin) for in-flight requests."""
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(self._close_timeout + 1.0):
                await self._runner.cleanup()
        except TimeoutError:
            log.warning("http.close_timed_out", server=self._name, timeout=self._close_timeout)
        finally:
            self._remove_own_socket()
        log.info("http.server_stopped", server=self._name)

    def _remove_own_socket(self) -> None:
        if self._unix_path is None:
            return
        try:
            if os.lstat(self._unix_path).st_ino == self._unix_inode:
                self._unix_path.unlink()
        except FileNotFoundError:
            pass


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, with a request aiohttp could not parse (bad bytes from a client, answered
    400 before any handler runs; aiohttp logs it at error) demoted to a debug line."""

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError):
            log.debug("http.request_unparsable", error=type(error).__name__)
            return
        super().exception(msg, *args, **kwargs)


def _runner(
    app: web.Application, close_timeout: float, keepalive: float = KEEPALIVE_TIMEOUT
) -> web.AppRunner:
    return web.AppRunner(
        app,
        access_log=None,  # steady-state requests are not logged; rejections are counted instead
        logger=_ServerLog(logging.getLogger("aiohttp.server")),
        keepalive_timeout=keepalive,
        shutdown_timeout=close_timeout,
    )


async def start_tcp(
    app: web.Application,
    host: str,
    port: int,
    *,
    name: str = "http",
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    limits: ConnectionLimits | None = None,
    on_drop: Callable[[ConnectionDrop], None] = lambda reason: None,
) -> Runner:
    """Bind ``app`` to ``host:port`` (port 0 picks a free port) and start serving; with ``limits``, behind
    a connection cap and a request-head deadline (``sidecar.http.limits``; each drop reported to
    ``on_drop``)."""
    # behind limits, an idle keep-alive connection holds a slot no longer than a late head would
    runner = _runner(app, close_timeout, KEEPALIVE_TIMEOUT if limits is None else limits.header_timeout)
    await runner.setup()
    try:
        site = (
            web.TCPSite(runner, host, port, reuse_address=True)
            if limits is None
            else GuardedTCPSite(runner, host, port, limits=limits, on_drop=on_drop)
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    served = Runner(runner, name=name, close_timeout=close_timeout)
    log.info("http.server_started", server=name, address=f"{host}:{served.port}")
    return served


async def _socket_answers(path: Path) -> bool:
    try:
        async with asyncio.timeout(STALE_PROBE_TIMEOUT):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # something holds the socket but is slow: do not steal it
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _clear_stale_socket(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket; refusing to replace it", str(path))
    if await _socket_answers(path):
        raise OSError(errno.EADDRINUSE, "another process is serving on this socket", str(path))
    _unlink(path)
    log.info("http.stale_socket_removed", path=str(path))


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _ensure_private_parent(path: Path) -> None:
    """Create the socket directory 0700 when missing; an existing one keeps the mode its owner chose."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=SOCKET_DIR_MODE)
        os.chmod(path.parent, SOCKET_DIR_MODE)  # mkdir's mode is filtered by the umask


def _bind_private_unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o177)  # the socket file is born 0600: no window where others can connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(previous)
        os.chmod(path, SOCKET_MODE)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_unix(
    app: web.Application,
    path: str | os.PathLike[str],
    *,
    name: str = "app_api",
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> Runner:
    """Serve ``app`` on a unix socket at ``path`` (mode 0600; parent created 0700 when missing)."""
    socket_path = Path(path)
    _ensure_private_parent(socket_path)
    await _clear_stale_socket(socket_path)
    sock = _bind_private_unix_socket(socket_path)
    inode = os.lstat(socket_path).st_ino
    runner = _runner(app, close_timeout)
    try:
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        _unlink(socket_path)
        raise
    log.info("http.server_started", server=name, address=f"unix:{socket_path}")
    return Runner(runner, name=name, close_timeout=close_timeout, unix_path=socket_path, unix_inode=inode)
