"""wireguard-go inside a lab namespace, and a minimal synchronous UAPI client for the devnet and tests.

Owns: ``start_wireguard_go`` (one userspace device per node, its UAPI socket in a private directory
bind-mounted over /run/wireguard inside the process's own mount namespace, so several ``attestmesh0``
devices in several namespaces never share or shadow a socket), ``uapi_get``/``uapi_set`` and the pure
``parse_get_reply``.
Must not: log, return or put in an error message a private or preshared key (``uapi_get`` reports the
public key derived from the private key instead); run wireguard-go without ``-f`` (it would daemonise and
the PID would be lost) or with an argument that starts with ``-`` (it has no ``--help``: it would create an
interface by that name). The sidecar has its own async WireGuard adapter; this stays small.
"""

from __future__ import annotations

import re
import socket
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from devnet import procs
from devnet.netns import link_names

WG_RUN_DIR = Path("/run/wireguard")
DEFAULT_IFNAME = "attestmesh0"
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
_KEY_HEX = re.compile(r"[0-9a-f]{64}")
_ZERO_KEY = "0" * 64
_START_TIMEOUT = 5.0
_UAPI_TIMEOUT = 2.0
_LOG_TAIL = 2000
# "$1" is the private UAPI directory, "$2" the interface; the bind mount lives in the private mount
# namespace `ip netns exec` gives the process, so it vanishes with it.
_LAUNCH = 'mount --bind "$1" /run/wireguard && exec wireguard-go -f "$2"'


class WireGuardError(RuntimeError):
    """wireguard-go did not start, or its UAPI socket could not be used."""


class UapiError(WireGuardError):
    """The UAPI answered with a non-zero errno or something that does not parse."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class UapiPeer(TypedDict):
    public_key: str
    has_preshared_key: bool
    protocol_version: int
    endpoint: str | None
    last_handshake_time_sec: int
    last_handshake_time_nsec: int
    tx_bytes: int
    rx_bytes: int
    persistent_keepalive_interval: int
    allowed_ips: list[str]


class UapiDevice(TypedDict):
    """A device as ``get=1`` reports it, keys hex; the private key is replaced by its public key."""

    public_key: str | None
    listen_port: int
    fwmark: int
    peers: dict[str, UapiPeer]


def uapi_socket(uapi_dir: Path, ifname: str = DEFAULT_IFNAME) -> Path:
    """Return the path of the UAPI socket wireguard-go creates in ``uapi_dir``."""
    return uapi_dir / f"{ifname}.sock"


def start_wireguard_go(
    netns: str, uapi_dir: Path, *, ifname: str = DEFAULT_IFNAME, log_path: Path
) -> procs.ProcRecord:
    """Start wireguard-go for ``ifname`` inside ``netns``; return once its socket and link exist."""
    if not _IFNAME.fullmatch(ifname):
        raise WireGuardError(f"interface name must match {_IFNAME.pattern}, got {ifname!r}")
    WG_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)  # the bind mount's target, in the root fs
    uapi_dir = uapi_dir.resolve()
    uapi_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    uapi_dir.chmod(0o700)
    sock = uapi_socket(uapi_dir, ifname)
    _clear_stale_socket(sock)
    rec = procs.spawn(
        ["sh", "-c", _LAUNCH, "sh", str(uapi_dir), ifname],
        name=f"wireguard-go@{netns}",
        netns=netns,
        log_path=log_path,
    )
    try:
        procs.wait_for(
            lambda: _is_ready(rec, sock, netns, ifname, log_path),
            _START_TIMEOUT,
            what=f"wireguard-go {ifname} in {netns}",
        )
    except BaseException:
        procs.terminate(rec)
        raise
    return rec


def _is_ready(rec: procs.ProcRecord, sock: Path, netns: str, ifname: str, log_path: Path) -> bool:
    if not procs.is_alive(rec):
        tail = log_path.read_text(errors="replace")[-_LOG_TAIL:] if log_path.exists() else ""
        raise WireGuardError(f"wireguard-go in {netns} exited during start-up; log tail:\n{tail}")
    try:
        is_socket = stat.S_ISSOCK(sock.stat().st_mode)
    except FileNotFoundError:
        return False
    return is_socket and ifname in link_names(netns)


def _clear_stale_socket(sock: Path) -> None:
    """Remove a socket left by a dead wireguard-go; refuse if a live one still answers on it."""
    if not sock.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            sock.unlink(missing_ok=True)
            return
    raise WireGuardError(f"{sock} is in use by a running wireguard-go")


def _exchange(sock: Path, request: bytes, timeout: float) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(sock))
            conn.sendall(request)
            reply = bytearray()
            # The reply ends with "errno=N\n\n"; the connection then stays open for another operation.
            while not reply.endswith(b"\n\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except OSError as exc:
            raise WireGuardError(f"UAPI {sock}: {exc}") from exc
    return reply.decode()


def _errno(lines: list[str]) -> int:
    if not lines or not lines[-1].startswith("errno="):
        raise UapiError("UAPI reply has no errno line")
    try:
        return int(lines[-1].removeprefix("errno="))
    except ValueError:
        raise UapiError("UAPI reply has a malformed errno line") from None


def _public_of(private_hex: str) -> str:
    public = X25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex)).public_key()
    return public.public_bytes_raw().hex()


def _new_peer(public_key: str) -> UapiPeer:
    return UapiPeer(
        public_key=public_key,
        has_preshared_key=False,
        protocol_version=0,
        endpoint=None,
        last_handshake_time_sec=0,
        last_handshake_time_nsec=0,
        tx_bytes=0,
        rx_bytes=0,
        persistent_keepalive_interval=0,
        allowed_ips=[],
    )


_PEER_INT_KEYS = (
    "protocol_version",
    "last_handshake_time_sec",
    "last_handshake_time_nsec",
    "tx_bytes",
    "rx_bytes",
    "persistent_keepalive_interval",
)


def _apply_device_key(device: UapiDevice, key: str, value: str) -> None:
    if key == "private_key":
        if not _KEY_HEX.fullmatch(value):
            raise UapiError("UAPI reply has a malformed private_key")  # the value is never shown
        device["public_key"] = _public_of(value)
    elif key == "listen_port":
        device["listen_port"] = int(value)
    elif key == "fwmark":
        device["fwmark"] = int(value)


def _apply_peer_key(peer: UapiPeer, key: str, value: str) -> None:
    if key == "preshared_key":
        peer["has_preshared_key"] = value != _ZERO_KEY
    elif key == "endpoint":
        peer["endpoint"] = value
    elif key == "allowed_ip":
        peer["allowed_ips"].append(value)
    elif key in _PEER_INT_KEYS:
        peer[key] = int(value)  # type: ignore[literal-required]


def parse_get_reply(text: str) -> UapiDevice:
    """Parse a ``get=1`` reply; raise ``UapiError`` on a non-zero errno. Never keeps secret keys."""
    lines = text.rstrip("\n").split("\n")
    errno = _errno(lines)
    if errno != 0:
        raise UapiError(f"UAPI get failed: errno={errno}", errno)
    device = UapiDevice(public_key=None, listen_port=0, fwmark=0, peers={})
    peer: UapiPeer | None = None
    for line in lines[:-1]:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"UAPI reply line without '=' (key {key[:32]!r})")
        try:
            if key == "public_key":
                if not _KEY_HEX.fullmatch(value):
                    raise UapiError("UAPI reply has a malformed peer public_key")
                peer = device["peers"][value] = _new_peer(value)
            elif peer is None:
                _apply_device_key(device, key, value)
            else:
                _apply_peer_key(peer, key, value)
        except ValueError:
            raise UapiError(f"UAPI reply has a malformed {key!r} value") from None
    return device


def uapi_get(sock: Path, *, timeout: float = _UAPI_TIMEOUT) -> UapiDevice:
    """Read the device behind UAPI socket ``sock``."""
    return parse_get_reply(_exchange(sock, b"get=1\n\n", timeout))


def uapi_set(sock: Path, lines: Iterable[str], *, timeout: float = _UAPI_TIMEOUT) -> None:
    """Apply ``key=value`` lines (``set=1`` operation) through UAPI socket ``sock``."""
    body: list[str] = []
    for line in lines:
        key, sep, _value = line.partition("=")
        # Never echo a line: it may carry a private or preshared key.
        if not sep or not key or "\n" in line:
            raise UapiError(f"UAPI set line must be one 'key=value' (key {key[:32]!r})")
        body.append(line)
    request = "set=1\n" + "".join(f"{line}\n" for line in body) + "\n"
    reply = _exchange(sock, request.encode(), timeout).rstrip("\n").split("\n")
    errno = _errno(reply)
    if errno != 0:
        raise UapiError(f"UAPI set failed: errno={errno}", errno)
