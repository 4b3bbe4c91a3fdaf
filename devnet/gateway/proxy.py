"""The stand-in's TCP listener: each connection is read, routed by SNI, refused or relayed, and counted once.

Owns ``GatewayProxy`` (bind, serve, bounded ``close``) and the per-connection sequence, in dstack-gateway's
order (``proxy.rs`` ``handle_connection``, ``tls_passthough.rs``, ``tls_terminate.rs``):

1. read the ClientHello within ``handshake_timeout`` (``not_tls``, ``no_sni``, ``handshake_timeout``);
2. route its SNI (``bad_name``, ``foreign_domain``, ``reserved_id``) through the route table
   (``unknown_route``, ``port_policy_unknown``, ``port_not_allowed``);
3. terminated routes (no suffix, ``g``): the TLS handshake, again within ``handshake_timeout``
   (``tls_failed``, ``handshake_timeout``; a ``g`` route refuses a client whose ALPN list lacks ``h2``, as
   rustls does);
4. take a slot of the app's ``max_connections_per_app`` (``app_limit``), then connect to the candidates,
   racing, within ``connect_timeout`` (``connect_failed``);
5. relay (``relayed``): passthrough sends the buffered ClientHello first, then raw bytes both ways;
   terminated routes relay plaintext. It ends by ``eof``, ``idle`` or ``error`` (``devnet.gateway.relay``),
   by ``lifetime`` (``lifetime`` seconds after the accept, like dstack's ``timeouts.total``) or by
   ``shutdown``. Forced ends drop both sockets (no ``close_notify``), as dstack does.

Refusals close the client connection; the SNI name and the refusal are logged (repeats rate-limited).
Connections still before step 5 when the gateway stops are closed without an outcome.

Must not: look into the relayed bytes, log them, or resolve names (the route table holds IP literals).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import structlog

from devnet.gateway.config import GatewayConfig
from devnet.gateway.metrics import (
    ActiveConnections,
    CloseReason,
    Direction,
    GatewayMetrics,
    KindLabel,
    Outcome,
)
from devnet.gateway.relay import relay
from devnet.gateway.routes import Candidates, Instance, RouteRefused, RouteWatcher
from devnet.gateway.sni import (
    MAX_HELLO_BYTES,
    ClientHello,
    HelloError,
    NameRefused,
    RouteKind,
    parse_client_hello,
    route_for,
)
from devnet.gateway.streams import End, TcpEnd, TlsEnd
from sidecar.core.repeats import Repeats

LISTEN_BACKLOG: Final = 1024
REFUSAL_LOG_INTERVAL: Final = 30.0

log = structlog.get_logger("devnet.gateway.proxy")


class _Refused(Exception):
    """Ends a connection before it relays, with its outcome."""

    def __init__(self, kind: KindLabel, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.kind: KindLabel = kind
        self.outcome: Outcome = outcome
        self.detail = detail


class ConnectFailed(Exception):
    """No candidate instance accepted the connection."""


@dataclass(slots=True)
class _Connection:
    """What is known about one connection so far (for its log lines)."""

    peer: str
    accepted_at: float
    server_name: str | None = None
    kind: KindLabel = "none"


async def connect_first(
    instances: tuple[Instance, ...], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Instance]:
    """Connect to every candidate at once; keep the first that connects and close the rest."""
    attempts = {asyncio.create_task(asyncio.open_connection(i.address, port)): i for i in instances}
    pending = set(attempts)
    failures: list[str] = []
    winner: asyncio.Task[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
    try:
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None:
                    failures.append(f"{attempts[task].address}: {type(error).__name__}")
                elif winner is None:
                    winner = task
                else:
                    task.result()[1].close()
        if winner is None:
            raise ConnectFailed("; ".join(failures))
        reader, writer = winner.result()
        return reader, writer, attempts[winner]
    finally:
        for task in pending:
            task.cancel()
        for result in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(result, tuple):
                result[1].close()


class GatewayProxy:
    """The SNI-routing TCP listener of the stand-in."""

    def __init__(
        self,
        config: GatewayConfig,
        routes: RouteWatcher,
        metrics: GatewayMetrics,
        active: ActiveConnections,
        contexts: Mapping[RouteKind, ssl.SSLContext],
    ) -> None:
        self._config = config
        self._routes = routes
        self._metrics = metrics
        self._active = active
        self._contexts = contexts
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._refusals = Repeats(interval=REFUSAL_LOG_INTERVAL)

    @property
    def port(self) -> int:
        """The bound TCP port (useful after binding port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the proxy is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind the listener and start accepting."""
        listen = self._config.listen
        self._server = await asyncio.start_server(
            self._accepted, listen.host, listen.port, reuse_address=True, backlog=LISTEN_BACKLOG
        )

    async def close(self, grace: float) -> None:
        """Stop accepting, drop every connection (counted ``shutdown``), wait at most ``grace`` seconds."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            if late:
                log.warning("gateway.shutdown_timed_out", connections=len(late))
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), grace)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping:
            writer.transport.abort()
            return
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        conn = _Connection(peer=f"{peer[0]}:{peer[1]}" if peer else "?", accepted_at=self._now())
        try:
            await self._serve(conn, reader, writer)
        except _Refused as refused:
            self._refused(conn, refused)
            writer.close()
        except asyncio.CancelledError:
            writer.transport.abort()
            if not self._stopping:
                raise
        except Exception:  # the one broad catch of a connection: it must never take the listener down
            log.exception(
                "gateway.connection_failed", peer=conn.peer, kind=conn.kind, server_name=conn.server_name
            )
            writer.transport.abort()
        finally:
            self._tasks.discard(task)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _refused(self, conn: _Connection, refused: _Refused) -> None:
        self._metrics.connection(refused.kind, refused.outcome)
        report = self._refusals.failed(refused.outcome, f"{conn.server_name} {refused.detail}", self._now())
        if report is not None:
            log.info(
                "gateway.connection_refused",
                reason=refused.outcome,
                kind=refused.kind,
                server_name=conn.server_name,
                detail=refused.detail,
                peer=conn.peer,
                repeats=report.repeats,
            )

    async def _read_hello(self, reader: asyncio.StreamReader) -> tuple[ClientHello, bytes]:
        received = bytearray()
        try:
            async with asyncio.timeout(self._config.handshake_timeout):
                while (hello := parse_client_hello(bytes(received))) is None:
                    chunk = await reader.read(MAX_HELLO_BYTES)
                    if not chunk:
                        raise _Refused("none", "not_tls", "the client closed before a complete ClientHello")
                    received += chunk
        except HelloError as exc:
            raise _Refused("none", "not_tls", str(exc)) from None
        except TimeoutError:
            raise _Refused("none", "handshake_timeout", "no complete ClientHello in time") from None
        return hello, bytes(received)

    def _route(self, conn: _Connection, hello: ClientHello) -> tuple[RouteKind, int, Candidates]:
        if hello.server_name is None:
            raise _Refused("none", "no_sni", "the ClientHello carries no server name")
        conn.server_name = hello.server_name[:253]
        dst = route_for(hello.server_name, self._config.domain)
        if isinstance(dst, NameRefused):
            raise _Refused(dst.kind or "none", dst.reason, dst.detail)
        conn.kind = dst.kind
        found = self._routes.table.resolve(dst.id, dst.port)
        if isinstance(found, RouteRefused):
            raise _Refused(dst.kind, found.reason, found.detail)
        return dst.kind, dst.port, found

    async def _terminate(
        self,
        kind: RouteKind,
        hello: ClientHello,
        received: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> TlsEnd:
        if kind == "h2" and hello.alpn is not None and "h2" not in hello.alpn:
            raise _Refused(kind, "tls_failed", "the client's ALPN list lacks h2")
        try:
            async with asyncio.timeout(self._config.handshake_timeout):
                return await TlsEnd.accept(reader, writer, self._contexts[kind], received)
        except ssl.SSLError as exc:
            raise _Refused(
                kind, "tls_failed", f"TLS handshake failed: {exc.reason or type(exc).__name__}"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise _Refused(kind, "tls_failed", f"TLS handshake failed: {type(exc).__name__}") from None
        except TimeoutError:
            raise _Refused(kind, "handshake_timeout", "the TLS handshake did not finish in time") from None

    async def _connect(self, kind: RouteKind, port: int, found: Candidates) -> tuple[TcpEnd, Instance]:
        if not self._active.reserve(found.app_id):
            raise _Refused(
                kind, "app_limit", f"the app has {self._config.max_connections_per_app} connections"
            )
        try:
            async with asyncio.timeout(self._config.connect_timeout):
                reader, writer, instance = await connect_first(found.instances, port)
        except (ConnectFailed, TimeoutError) as exc:
            self._active.release(found.app_id)
            detail = str(exc) if isinstance(exc, ConnectFailed) else "timed out"
            raise _Refused(
                kind, "connect_failed", f"connecting to the app on port {port}: {detail}"
            ) from None
        except BaseException:
            self._active.release(found.app_id)
            raise
        return TcpEnd(reader, writer), instance

    async def _serve(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        hello, received = await self._read_hello(reader)
        kind, port, found = self._route(conn, hello)
        client: End
        if kind == "passthrough":
            client = TcpEnd(reader, writer)
        else:
            client = await self._terminate(kind, hello, received, reader, writer)
        app, instance = await self._connect(kind, port, found)
        self._metrics.connection(kind, "relayed")
        self._active.opened(instance.app_id, kind)
        reason: CloseReason = "error"
        error: str | None = None
        to_app = to_client = 0

        def counted(direction: Direction, count: int) -> None:
            nonlocal to_app, to_client
            if direction == "to_app":
                to_app += count
            else:
                to_client += count
            self._metrics.relayed_bytes(kind, direction, count)

        try:
            async with asyncio.timeout_at(conn.accepted_at + self._config.lifetime) as lifetime:
                if kind == "passthrough":
                    await app.write(received)
                    counted("to_app", len(received))
                result = await relay(
                    client,
                    app,
                    idle=self._config.idle_timeout,
                    checks=self._config.idle_checks_per_window,
                    on_bytes=counted,
                )
            reason, error = result.end, result.error
        except TimeoutError:
            reason = "lifetime" if lifetime.expired() else "error"
        except asyncio.CancelledError:
            reason = "shutdown" if self._stopping else "error"
            raise
        except (ConnectionError, OSError) as exc:
            reason, error = "error", type(exc).__name__
        finally:
            if reason == "eof":
                client.close()
                app.close()
            else:
                client.abort()
                app.abort()
            self._active.closed(instance.app_id, kind)
            self._active.release(found.app_id)
            self._metrics.connection_closed(kind, reason)
            (log.debug if reason == "eof" else log.info)(
                "gateway.connection_closed",
                reason=reason,
                kind=kind,
                app_id=instance.app_id,
                instance_id=instance.instance_id,
                port=port,
                server_name=conn.server_name,
                peer=conn.peer,
                to_app=to_app,
                to_client=to_client,
                seconds=round(self._now() - conn.accepted_at, 3),
                error=error,
            )
