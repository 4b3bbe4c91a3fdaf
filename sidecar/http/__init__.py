"""The HTTP adapter (aiohttp): the health surface, the App API on a unix socket and the peer API.

Owns only HTTP mapping, binding and bounded shutdown; what is served comes from the drivers through small
protocols (a status callable, ``AppView``, ``CskResponder``). Must not import another adapter.
"""

from sidecar.http.server import Runner, start_tcp, start_unix

__all__ = ["Runner", "start_tcp", "start_unix"]
