"""The devnet's UAPI client: parsing ``get=1`` replies without ever keeping a secret key (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from devnet.wireguard import UapiError, WireGuardError, parse_get_reply, start_wireguard_go, uapi_set

PRIVATE = X25519PrivateKey.from_private_bytes(bytes(range(32)))
PRIVATE_HEX = bytes(range(32)).hex()
PUBLIC_HEX = PRIVATE.public_key().public_bytes_raw().hex()
PEER_HEX = "ab" * 32
PSK_HEX = "cd" * 32


def _reply(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines) + "\n"


def test_parse_full_reply() -> None:
    device = parse_get_reply(
        _reply(
            f"private_key={PRIVATE_HEX}",
            "listen_port=51820",
            "fwmark=7",
            f"public_key={PEER_HEX}",
            f"preshared_key={PSK_HEX}",
            "protocol_version=1",
            "endpoint=10.214.0.12:51820",
            "last_handshake_time_sec=1700000000",
            "last_handshake_time_nsec=5",
            "tx_bytes=92",
            "rx_bytes=180",
            "persistent_keepalive_interval=25",
            "allowed_ip=10.14.0.2/32",
            "allowed_ip=10.14.9.0/24",
            "errno=0",
        )
    )
    assert device["public_key"] == PUBLIC_HEX
    assert (device["listen_port"], device["fwmark"]) == (51820, 7)
    peer = device["peers"][PEER_HEX]
    assert peer == {
        "public_key": PEER_HEX,
        "has_preshared_key": True,
        "protocol_version": 1,
        "endpoint": "10.214.0.12:51820",
        "last_handshake_time_sec": 1700000000,
        "last_handshake_time_nsec": 5,
        "tx_bytes": 92,
        "rx_bytes": 180,
        "persistent_keepalive_interval": 25,
        "allowed_ips": ["10.14.0.2/32", "10.14.9.0/24"],
    }
    assert PRIVATE_HEX not in repr(device) and PSK_HEX not in repr(device)


def test_parse_empty_device() -> None:
    assert parse_get_reply(_reply("listen_port=40000", "errno=0")) == {
        "public_key": None,
        "listen_port": 40000,
        "fwmark": 0,
        "peers": {},
    }


def test_all_zero_preshared_key_means_none_set() -> None:
    device = parse_get_reply(_reply(f"public_key={PEER_HEX}", f"preshared_key={'0' * 64}", "errno=0"))
    assert device["peers"][PEER_HEX]["has_preshared_key"] is False


@pytest.mark.parametrize(
    "text",
    [
        _reply("listen_port=1", "errno=-22"),
        _reply("listen_port=1"),
        _reply("listen_port=x", "errno=0"),
        _reply("garbage", "errno=0"),
        _reply(f"private_key={PRIVATE_HEX[:-2]}", "errno=0"),
        _reply("public_key=zz", "errno=0"),
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(UapiError) as info:
        parse_get_reply(text)
    assert PRIVATE_HEX[:-2] not in str(info.value)


def test_errno_is_kept() -> None:
    with pytest.raises(UapiError) as info:
        parse_get_reply(_reply("errno=-22"))
    assert info.value.errno == -22


@pytest.mark.parametrize("line", ["no-equals", f"private_key={PRIVATE_HEX}\nlisten_port=1", "=value"])
def test_set_rejects_malformed_lines_without_echoing_them(tmp_path: Path, line: str) -> None:
    with pytest.raises(UapiError) as info:
        uapi_set(tmp_path / "absent.sock", [line])
    assert PRIVATE_HEX not in str(info.value)


@pytest.mark.parametrize("ifname", ["--help", "-f", "", "a" * 16, "wg 0", "wg/0"])
def test_start_refuses_unsafe_interface_names(tmp_path: Path, ifname: str) -> None:
    with pytest.raises(WireGuardError, match="interface name"):
        start_wireguard_go("amtc-none", tmp_path / "wg", ifname=ifname, log_path=tmp_path / "wg.log")
    assert not (tmp_path / "wg").exists()
