"""WireGuard's cross-platform UAPI text protocol (wireguard-go's unix socket): pure encode and parse.

Owns: the ``get=1`` request; ``set=1`` requests for the device's own settings and for a ``PeerPlan``
(remove, then add, then update; keys hex); parsing a ``get=1`` reply into a ``DeviceState`` (peers as
``ActualPeer``); reading the ``errno=N`` line and classifying it (transient or not).

Must not: do I/O; keep a private or preshared key from a reply (the private key becomes its public key at
once); put a request, or a value from a reply, into an exception message (requests carry the private key,
so only well-known key names and numbers are ever quoted).
"""

from __future__ import annotations

import errno as errno_codes
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_network

from sidecar.core.ids import SecretBytes
from sidecar.core.keys import x25519_public_key
from sidecar.core.peerplan import WG_KEY_BYTES, ActualPeer, DesiredPeer, PeerPlan, WgKey
from sidecar.wg.device import DeviceState, WgError, canonical_endpoint, checked_plan, raise_problems

GET_REQUEST = b"get=1\n\n"
#: Errnos after which the same request can succeed later: an I/O hiccup, or a port another socket holds.
TRANSIENT_ERRNOS = frozenset({-errno_codes.EIO, -errno_codes.EADDRINUSE})
_KEY_HEX = re.compile(r"[0-9a-f]{64}")
_PEER_INTS = frozenset(
    {
        "last_handshake_time_sec",
        "last_handshake_time_nsec",
        "rx_bytes",
        "tx_bytes",
        "persistent_keepalive_interval",
    }
)


# --- requests ----------------------------------------------------------------------------------------------


def _request(lines: Iterable[str]) -> bytes:
    return ("set=1\n" + "".join(f"{line}\n" for line in lines) + "\n").encode()


def device_set_request(
    *, private_key: SecretBytes | None = None, listen_port: int | None = None
) -> bytes | None:
    """Return the ``set=1`` request that sets the given device settings; None when there is nothing to set."""
    lines: list[str] = []
    if private_key is not None:
        if len(private_key) != WG_KEY_BYTES:
            raise WgError(f"private key must be {WG_KEY_BYTES} bytes, got {len(private_key)}")
        lines.append("private_key=" + private_key.reveal().hex())
    if listen_port is not None:
        if isinstance(listen_port, bool) or not 0 <= listen_port <= 65535:
            raise WgError(f"listen port must be in 0..65535, got {listen_port!r}")
        lines.append(f"listen_port={listen_port}")
    return _request(lines) if lines else None


def _peer_lines(peer: DesiredPeer) -> list[str]:
    lines = [f"public_key={peer.public_key.hex}"]
    if peer.endpoint is not None:
        lines.append("endpoint=" + canonical_endpoint(peer.endpoint))
    lines.append(f"persistent_keepalive_interval={peer.keepalive}")
    lines.append("replace_allowed_ips=true")
    lines += [f"allowed_ip={net}" for net in sorted(set(peer.allowed_ips))]
    return lines


def peer_set_request(plan: PeerPlan) -> bytes | None:
    """Return the one ``set=1`` transaction that applies ``plan``; None for an empty plan.

    Removals go first, so an allowed IP a removed peer held is free before a new peer claims it. An update
    re-sends the peer's full configuration (``replace_allowed_ips``): the result is the desired peer.
    The plan must pass ``checked_plan`` whole (``WgError`` otherwise): only valid values are encoded, so no
    chain-supplied text can add a line to the request.
    """
    if plan.empty:
        return None
    _valid, problems = checked_plan(plan)
    raise_problems(problems)
    lines: list[str] = []
    for key in plan.remove:
        lines += [f"public_key={key.hex}", "remove=true"]
    for peer in (*plan.add, *plan.update):
        lines += _peer_lines(peer)
    return _request(lines)


# --- replies -----------------------------------------------------------------------------------------------


def describe_errno(errno: int) -> str:
    """Render a UAPI errno (negative) with its name, e.g. ``errno=-98 (Address already in use)``."""
    return f"errno={errno} ({os.strerror(-errno)})" if errno < 0 else f"errno={errno}"


def reply_errno(text: str) -> int:
    """Return the ``errno`` a reply ends with; raise a terminal ``WgError`` when it has none."""
    last = text.rstrip("\n").rpartition("\n")[2]
    if not last.startswith("errno="):
        raise WgError("UAPI reply does not end with an errno line")
    try:
        return int(last.removeprefix("errno="))
    except ValueError:
        raise WgError("UAPI reply has a malformed errno line") from None


def _raise_for(errno: int, what: str) -> None:
    if errno != 0:
        raise WgError(
            f"wireguard-go UAPI {what} failed: {describe_errno(errno)}",
            transient=errno in TRANSIENT_ERRNOS,
            errno=errno,
        )


def check_set_reply(text: str) -> None:
    """Raise ``WgError`` (with the errno, never the request) unless a ``set=1`` reply says success."""
    _raise_for(reply_errno(text), "set")


@dataclass(slots=True)
class _PeerFields:
    public_key: WgKey
    endpoint: str | None = None
    allowed_ips: list[IPv4Network] = field(default_factory=list)
    ints: dict[str, int] = field(default_factory=dict)

    def build(self) -> ActualPeer:
        sec = self.ints.get("last_handshake_time_sec", 0)
        nsec = self.ints.get("last_handshake_time_nsec", 0)
        return ActualPeer(
            public_key=self.public_key,
            endpoint=self.endpoint,
            allowed_ips=tuple(self.allowed_ips),
            keepalive=self.ints.get("persistent_keepalive_interval", 0),
            last_handshake=None if sec == 0 and nsec == 0 else sec + nsec / 1e9,
            rx_bytes=self.ints.get("rx_bytes", 0),
            tx_bytes=self.ints.get("tx_bytes", 0),
        )


def _is_uint(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _key(value: str, what: str) -> bytes:
    if not _KEY_HEX.fullmatch(value):
        raise WgError(f"UAPI reply has a malformed {what}")  # the value is never quoted: it may be secret
    return bytes.fromhex(value)


def _peer_field(peer: _PeerFields, key: str, value: str) -> None:
    if key == "endpoint":
        try:
            peer.endpoint = canonical_endpoint(value)
        except WgError:
            raise WgError(f"UAPI reply has a malformed endpoint for peer {peer.public_key!r}") from None
    elif key == "allowed_ip":
        try:
            net = ip_network(value)
        except ValueError:
            raise WgError(f"UAPI reply has a malformed allowed_ip for peer {peer.public_key!r}") from None
        if isinstance(net, IPv4Network):  # the mesh is IPv4; IPv6 entries are not ours to plan
            peer.allowed_ips.append(net)
    elif key in _PEER_INTS:
        if not _is_uint(value):
            raise WgError(f"UAPI reply has a malformed {key} for peer {peer.public_key!r}")
        peer.ints[key] = int(value)
    # preshared_key (secret), protocol_version and keys of newer versions are not kept


def parse_get_reply(text: str) -> DeviceState:
    """Parse a ``get=1`` reply; raise ``WgError`` on a non-zero errno or on anything malformed."""
    _raise_for(reply_errno(text), "get")
    public_key: WgKey | None = None
    listen_port = 0
    peers: dict[WgKey, _PeerFields] = {}
    current: _PeerFields | None = None
    for line in text.rstrip("\n").split("\n")[:-1]:
        key, sep, value = line.partition("=")
        if not sep:
            raise WgError("UAPI reply has a line without '='")
        if key == "public_key":
            peer_key = WgKey(_key(value, "peer public_key"))
            if peer_key in peers:
                raise WgError(f"UAPI reply lists peer {peer_key!r} twice")
            current = peers[peer_key] = _PeerFields(peer_key)
        elif current is not None:
            _peer_field(current, key, value)
        elif key == "private_key":
            public_key = WgKey(x25519_public_key(SecretBytes(_key(value, "private_key"))))
        elif key == "listen_port":
            if not _is_uint(value) or int(value) > 65535:
                raise WgError("UAPI reply has a malformed listen_port")
            listen_port = int(value)
        # fwmark and keys of newer versions are not needed
    return DeviceState(
        public_key=public_key,
        listen_port=listen_port,
        peers=tuple(peers[k].build() for k in sorted(peers)),
    )
