"""The App API: what application containers on the same node read over a unix socket.

Owns the HTTP mapping of ``GET /v1/status``, ``/v1/self``, ``/v1/peers`` and ``/v1/csk`` (the current
epoch's key, its epoch and commitment, and the previous epoch's key while its grace period lasts, so
applications can re-encrypt: docs/sidecar.md "CSK epochs"). The socket's file
mode (0600) is the access control: only processes with the sidecar's uid reach it, which is why this is the
one surface allowed to return key material (the CSK).

Must not: be bound to a TCP address; return any private value other than the CSK on ``/v1/csk``.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from sidecar.core.cskepochs import PreviousCsk
from sidecar.core.ids import SecretBytes
from sidecar.core.status import NodeStatus, PeerView, SelfView, healthz_body, peers_body
from sidecar.http.server import Runner, error_response, json_errors, start_unix
from sidecar.observability import Metrics

__all__ = ["AppView", "Runner", "app_api", "start_unix"]

NO_STORE = {"Cache-Control": "no-store"}
NOT_REGISTERED = "node is not registered yet"
CSK_NOT_HELD = "cluster shared key not held yet"


class AppView(Protocol):
    """What the App API reads; the drivers implement it over their current state (synchronous reads)."""

    def status(self) -> NodeStatus: ...

    def self_view(self) -> SelfView | None: ...

    def peers(self) -> list[PeerView]: ...

    def csk(self) -> SecretBytes | None: ...

    def csk_previous(self) -> PreviousCsk | None: ...


def app_api(view: AppView, metrics: Metrics) -> web.Application:
    """Build the App API application (serve it with ``start_unix``)."""

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(healthz_body(view.status()), headers=NO_STORE)

    async def self_(_request: web.Request) -> web.Response:
        me = view.self_view()
        if me is None:
            return error_response(503, NOT_REGISTERED, NO_STORE)
        return web.json_response(me.to_json(), headers=NO_STORE)

    async def peers(_request: web.Request) -> web.Response:
        return web.json_response(peers_body(view.peers()), headers=NO_STORE)

    async def csk(_request: web.Request) -> web.Response:
        key = view.csk()
        if key is None:
            return error_response(503, CSK_NOT_HELD, NO_STORE)
        status, previous = view.status(), view.csk_previous()
        body: dict[str, object] = {
            "csk": key.reveal().hex(),
            "epoch": status.csk_epoch,
            "commitment": status.csk_commitment,
            "previous": None,
        }
        if previous is not None:
            body["previous"] = {
                "epoch": previous.epoch,
                "csk": previous.value.reveal().hex(),
                "commitment": str(previous.commitment),
                "until": previous.until_unix,
            }
        return web.json_response(body, headers=NO_STORE)

    app = web.Application(middlewares=[json_errors("app", metrics)], client_max_size=1024)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/self", self_)
    app.router.add_get("/v1/peers", peers)
    app.router.add_get("/v1/csk", csk)
    return app
