"""The dstack guest-agent adapter: the only sidecar code that talks to the agent (through ``dstack-sdk``).

Owns ``GuestAgent`` (an async facade over the official ``dstack_sdk.AsyncDstackClient``, used unchanged),
the value types it returns (``NodeInfo``, ``DerivedKey``, ``Quote``) and the classification of failures:

- ``GuestAgentUnavailable`` (transient, retry with backoff): the socket is missing or refuses
  connections, the request timed out, the transport failed, or the agent answered 5xx;
- ``GuestAgentRejected`` (terminal, do not retry): the agent answered 4xx, its answer does not parse, the
  agent is too old for a request, or the endpoint path exists but is not a Unix socket (Docker creates an
  empty *directory* at a bind-mount source that was missing when the container started, dstack.md §2.1:
  only restarting the container helps).

The endpoint is resolved by the SDK's own rules (explicit argument, then ``DSTACK_SIMULATOR_ENDPOINT``,
then the standard socket paths), so one image runs in a CVM and in the devnet. The SDK client is built
lazily, so constructing a ``GuestAgent`` never fails on a socket that does not exist yet.

Must not: log or expose key material (``DerivedKey`` hides its key in repr; error messages never include
response bodies of key requests), or retry by itself (callers own the retry policy).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

import httpx
from dstack_sdk import AsyncDstackClient
from dstack_sdk.dstack_client import get_endpoint
from pydantic import ValidationError

from sidecar.core.ids import ZERO32, Address, Bytes32, SecretBytes

REPORT_DATA_MAX_BYTES = 64


class GuestAgentError(Exception):
    """A guest-agent call failed. ``transient`` tells whether retrying later can help."""

    transient: bool = False


class GuestAgentUnavailable(GuestAgentError):
    """The agent could not be reached or answered 5xx: retry with backoff."""

    transient = True


class GuestAgentRejected(GuestAgentError):
    """The agent refused the request (4xx) or answered nonsense: retrying the same call will not help."""

    transient = False


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the agent's ``Info`` says about this CVM (public values)."""

    app_id: Address
    instance_id: bytes  # 20 bytes, or empty on images without instance ids
    compose_hash: Bytes32
    app_compose: str
    app_name: str
    device_id: Bytes32
    mr_aggregated: Bytes32  # ZERO32 when the agent omits it
    os_image_hash: Bytes32  # ZERO32 when the agent omits it
    key_provider: str  # the key_provider_info JSON's "name" ("kms", "local-sgx", "tpm", "none")
    tcb_info: Mapping[str, Any]  # the parsed tcb_info JSON (read-only)
    key_provider_id: str = ""  # the key_provider_info JSON's "id" (hex)
    vm_config: str = ""


@dataclass(frozen=True, slots=True)
class DerivedKey:
    """A GetKey result: the 32-byte key and its signature chain ``[app signature, KMS signature]``."""

    key: SecretBytes = field(repr=False)
    signature_chain: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Quote:
    """A GetQuote result: quote bytes (a TDX quote, or a devnet development quote), log and report data."""

    quote: bytes
    event_log: tuple[Mapping[str, Any], ...]
    report_data: bytes  # 64 bytes, right-padded with zeros
    vm_config: str = ""


def _fail_http(exc: httpx.HTTPStatusError, what: str) -> NoReturn:
    status = exc.response.status_code
    detail = ""
    try:
        body = exc.response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            detail = f": {body['error'][:200]}"
    except ValueError:
        pass
    message = f"guest agent {what} failed with HTTP {status}{detail}"
    if status >= 500:
        raise GuestAgentUnavailable(message) from None
    raise GuestAgentRejected(message) from None


def _bytes32(text: str, name: str) -> Bytes32:
    if text == "":
        return ZERO32
    try:
        return Bytes32(bytes.fromhex(text))
    except ValueError:
        raise ValueError(f"{name} is not 32 bytes of hex") from None


def _check_socket(endpoint: str) -> None:
    """Refuse an endpoint path that is missing (transient) or not a Unix socket (terminal)."""
    try:
        mode = os.stat(endpoint).st_mode
    except FileNotFoundError:
        raise GuestAgentUnavailable(f"guest agent socket {endpoint} does not exist (yet)") from None
    except OSError as exc:
        raise GuestAgentUnavailable(f"guest agent socket {endpoint}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a socket"
        raise GuestAgentRejected(
            f"guest agent endpoint {endpoint} is {kind}, not a Unix socket; if it is a Docker bind mount, "
            "the socket was missing when the container started: restart the container"
        )


class GuestAgent:
    """Async access to the dstack guest agent through ``dstack_sdk.AsyncDstackClient``."""

    def __init__(self, endpoint: str | None = None, *, timeout: float = 3.0) -> None:
        self._endpoint = get_endpoint(endpoint)
        self._is_path = not self._endpoint.startswith(("http://", "https://"))
        self._timeout = timeout
        self._client: AsyncDstackClient | None = None

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def __repr__(self) -> str:
        return f"GuestAgent(endpoint={self._endpoint!r})"

    async def _sdk(self) -> AsyncDstackClient:
        if self._is_path:
            _check_socket(self._endpoint)
        if self._client is None:
            try:
                client = AsyncDstackClient(self._endpoint, timeout=self._timeout)
            except FileNotFoundError:
                raise GuestAgentUnavailable(f"guest agent socket {self._endpoint} does not exist") from None
            self._client = client
            await client.__aenter__()  # type: ignore[no-untyped-call]  # the SDK lifecycle, untyped
        return self._client

    async def _call(self, what: str, method: str, *args: Any) -> Any:
        client = await self._sdk()
        try:
            return await getattr(client, method)(*args)
        except httpx.HTTPStatusError as exc:
            _fail_http(exc, what)
        except httpx.TimeoutException:
            raise GuestAgentUnavailable(f"guest agent {what} timed out after {self._timeout}s") from None
        except httpx.TransportError as exc:
            raise GuestAgentUnavailable(f"guest agent {what}: {type(exc).__name__}") from None
        except RuntimeError as exc:  # the SDK's "OS version too old" probe
            raise GuestAgentRejected(f"guest agent {what}: {exc}") from None
        except (ValidationError, ValueError) as exc:  # pydantic or JSON: the answer has the wrong shape
            raise GuestAgentRejected(
                f"guest agent {what} returned a malformed response ({type(exc).__name__})"
            ) from None

    async def info(self) -> NodeInfo:
        """Read ``Info``: this CVM's app id, instance id, compose hash and measurements."""
        resp = await self._call("Info", "info")
        try:
            provider = json.loads(resp.key_provider_info) if resp.key_provider_info else {}
            if not isinstance(provider, dict):
                provider = {}
            tcb = resp.tcb_info.model_dump()
            return NodeInfo(
                app_id=Address(bytes.fromhex(resp.app_id)),
                instance_id=bytes.fromhex(resp.instance_id),
                compose_hash=_bytes32(resp.compose_hash, "compose_hash"),
                app_compose=resp.tcb_info.app_compose,
                app_name=resp.app_name,
                device_id=_bytes32(resp.device_id, "device_id"),
                mr_aggregated=_bytes32(resp.mr_aggregated, "mr_aggregated"),
                os_image_hash=_bytes32(resp.os_image_hash, "os_image_hash"),
                key_provider=str(provider.get("name", "")),
                key_provider_id=str(provider.get("id", "")),
                tcb_info=MappingProxyType(tcb),
                vm_config=resp.vm_config,
            )
        except ValueError as exc:
            raise GuestAgentRejected(f"guest agent Info returned a malformed field: {exc}") from None

    async def get_key(self, path: str, purpose: str = "", algorithm: str = "secp256k1") -> DerivedKey:
        """Derive the app-bound key at ``path`` (deterministic per app id and KMS) with its chain."""
        resp = await self._call("GetKey", "get_key", path, purpose, algorithm)
        try:
            key = bytes.fromhex(resp.key)
            chain = tuple(bytes.fromhex(sig) for sig in resp.signature_chain)
        except ValueError:
            raise GuestAgentRejected("guest agent GetKey returned non-hex data") from None
        if len(key) != 32:
            raise GuestAgentRejected(f"guest agent GetKey returned a {len(key)}-byte key, expected 32")
        return DerivedKey(SecretBytes(key), chain)

    async def get_quote(self, report_data: bytes) -> Quote:
        """Request a quote over ``report_data`` (1 to 64 bytes; the agent right-pads it to 64)."""
        if not 0 < len(report_data) <= REPORT_DATA_MAX_BYTES:
            raise ValueError(f"report data must be 1 to 64 bytes, got {len(report_data)}")
        resp = await self._call("GetQuote", "get_quote", report_data)
        try:
            events = json.loads(resp.event_log) if resp.event_log else []
            if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
                raise ValueError("event_log is not a list of objects")
            return Quote(
                quote=bytes.fromhex(resp.quote),
                event_log=tuple(MappingProxyType(e) for e in events),
                report_data=bytes.fromhex(resp.report_data),
                vm_config=resp.vm_config,
            )
        except ValueError as exc:
            raise GuestAgentRejected(f"guest agent GetQuote returned a malformed field: {exc}") from None

    async def version(self) -> str | None:
        """Return the agent version, or None for agents that predate the ``Version`` RPC (OS < 0.5.7)."""
        await self._sdk()  # an unusable endpoint is an error, not an old agent
        try:
            resp = await self._call("Version", "version")
        except GuestAgentRejected:
            return None
        return str(resp.version)

    async def emit_event(self, event: str, payload: bytes) -> None:
        """Append a runtime event (extends RTMR3; dstack OS 0.5.0 to 0.5.11 only)."""
        if not event:
            raise ValueError("event name must not be empty")
        await self._call("EmitEvent", "emit_event", event, payload)

    async def close(self) -> None:
        """Release the HTTP connection pool; the agent may be used again afterwards."""
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(None, None, None)  # type: ignore[no-untyped-call]


__all__ = [
    "DerivedKey",
    "GuestAgent",
    "GuestAgentError",
    "GuestAgentRejected",
    "GuestAgentUnavailable",
    "NodeInfo",
    "Quote",
]
