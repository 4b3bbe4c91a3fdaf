"""The userspace backend: wireguard-go, driven over its UAPI unix socket; the link through rtnetlink.

Owns ``UapiDevice``. wireguard-go creates the TUN interface and the socket; this adapter never starts or
stops it, so a missing socket is a transient error ("not found": wireguard-go is not running yet). Each
exchange opens a fresh connection (a restarted wireguard-go is picked up with no reconnect logic), runs
under a timeout, and holds the adapter's lock, so exchanges never interleave.

Must not: log, or put a request into an error (a ``set=1`` may carry the private key); write a key to a
file; touch peers in ``ensure_up``; remove the interface.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from sidecar.core.keys import x25519_public_key
from sidecar.core.peerplan import ActualPeer, PeerPlan, WgKey
from sidecar.wg.device import (
    DEFAULT_IFNAME,
    DeviceState,
    InterfaceConfig,
    WgError,
    checked_plan,
    raise_problems,
    validate_ifname,
)
from sidecar.wg.link import configure_link
from sidecar.wg.uapi_codec import (
    GET_REQUEST,
    check_set_reply,
    device_set_request,
    parse_get_reply,
    peer_set_request,
)

DEFAULT_TIMEOUT = 5.0
#: Replies grow with the peer count (~300 bytes a peer); the stream reader's default 64 KiB is too small.
_READ_LIMIT = 16 * 1024 * 1024
_REPLY_END = b"\n\n"


class UapiDevice:
    """A wireguard-go device: UAPI socket ``socket_path``, TUN interface ``ifname`` in this namespace."""

    def __init__(
        self, socket_path: Path, ifname: str = DEFAULT_IFNAME, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.socket_path = socket_path
        self.ifname = validate_ifname(ifname)
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"UapiDevice({str(self.socket_path)!r}, {self.ifname!r})"

    async def ensure_up(self, config: InterfaceConfig) -> None:
        """Set key and port where they differ, then MTU, address, link state and mesh route."""
        if config.name != self.ifname:
            raise WgError(f"config is for interface {config.name}, this adapter drives {self.ifname}")
        async with self._lock:
            self._check_open()
            state = await self._get()
            key_differs = state.public_key != WgKey(x25519_public_key(config.private_key))
            request = device_set_request(
                private_key=config.private_key if key_differs else None,
                listen_port=config.listen_port if state.listen_port != config.listen_port else None,
            )
            if request is not None:
                check_set_reply(await self._exchange(request))
            try:
                async with asyncio.timeout(self.timeout):
                    await configure_link(self.ifname, config.address, config.mtu, create_kind=None)
            except TimeoutError:
                raise WgError(
                    f"rtnetlink: no answer within {self.timeout:.1f}s configuring {self.ifname}",
                    transient=True,
                ) from None

    async def read_peers(self) -> list[ActualPeer]:
        """Return the device's peers, sorted by public key."""
        async with self._lock:
            self._check_open()
            return list((await self._get()).peers)

    async def apply(self, plan: PeerPlan) -> None:
        """Apply ``plan`` as one ``set=1`` transaction; nothing is sent for an empty plan.

        Peers ``checked_plan`` holds back are reported in a terminal ``WgError`` after the rest is applied.
        """
        valid, problems = checked_plan(plan)
        request = peer_set_request(valid)
        if request is not None:
            async with self._lock:
                self._check_open()
                check_set_reply(await self._exchange(request))
        raise_problems(problems)

    async def public_key(self) -> WgKey | None:
        """Return the public key of the device's private key (None when it has none)."""
        async with self._lock:
            self._check_open()
            return (await self._get()).public_key

    async def close(self) -> None:
        """Stop using the socket; wireguard-go, the interface and its peers stay."""
        async with self._lock:
            self._closed = True

    # --- the socket ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise WgError(f"{self!r} is closed")

    async def _get(self) -> DeviceState:
        return parse_get_reply(await self._exchange(GET_REQUEST))

    async def _exchange(self, request: bytes) -> str:
        """Send one request and return its reply (through ``errno=N``). The caller holds the lock."""
        path = self.socket_path
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=_READ_LIMIT)
                writer.write(request)
                await writer.drain()
                reply = await reader.readuntil(_REPLY_END)
        except FileNotFoundError:
            raise WgError(
                f"wireguard-go socket {path} not found (is wireguard-go running?)", transient=True
            ) from None
        except ConnectionRefusedError:
            raise WgError(
                f"wireguard-go socket {path} refused the connection (stale socket?)", transient=True
            ) from None
        except TimeoutError:
            raise WgError(
                f"wireguard-go socket {path}: no reply within {self.timeout:.1f}s", transient=True
            ) from None
        except asyncio.IncompleteReadError:
            raise WgError(
                f"wireguard-go socket {path} closed the connection mid-reply", transient=True
            ) from None
        except asyncio.LimitOverrunError:
            raise WgError(f"wireguard-go socket {path}: reply larger than {_READ_LIMIT} bytes") from None
        except OSError as exc:
            # Only the errno and its text: the exception may carry nothing of the request, but be sure.
            raise WgError(
                f"wireguard-go socket {path}: {exc.strerror or type(exc).__name__}", transient=True
            ) from None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        try:
            return reply.decode()
        except UnicodeDecodeError:
            raise WgError(f"wireguard-go socket {path} sent a reply that is not UTF-8") from None
