"""The lab's DNS in gateway mode: dnsmasq (Debian) in the gateway namespace, answering the gateway domain.

Owns the dnsmasq command line (``dnsmasq_argv``: ``<domain>`` and every name under it answer the gateway's
address, AAAA gets an empty answer, every other name is refused; no upstream, no hosts file, no config
file, bound to the gateway address only, in the foreground), starting it (``start_dns``), and a minimal
DNS client over UDP (``encode_query``/``decode_response``, pure; ``query``, I/O) that waits for it and lets
tests look a name up from inside a namespace.
Must not: forward a query anywhere (dnsmasq gets no upstream server), listen anywhere but the gateway's
lab address, or send a query to any address but a lab's DNS server.
"""

from __future__ import annotations

import secrets
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Final

from devnet import procs

DNS_PORT: Final = 53
_TYPE_A: Final = 1
_CLASS_IN: Final = 1
_FLAG_RD: Final = 0x0100
_FLAG_QR: Final = 0x8000
_MAX_LABEL: Final = 63
RCODE_NOERROR: Final = 0
RCODE_NXDOMAIN: Final = 3
RCODE_REFUSED: Final = 5


class DnsError(ValueError):
    """A DNS message that cannot be built or parsed."""


def dnsmasq_argv(listen: IPv4Address, domain: str, *, port: int = DNS_PORT) -> list[str]:
    """dnsmasq answering ``domain`` and ``*.domain`` with ``listen`` and nothing else, in the foreground."""
    return [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",  # never the machine's /etc/dnsmasq.conf
        "--no-resolv",  # no upstream server: nothing is ever forwarded
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        f"--listen-address={listen}",  # and not loopback: no --interface given
        f"--port={port}",
        f"--local=/{domain}/",  # the zone is ours: AAAA for its names is an empty answer, not a refusal
        f"--address=/{domain}/{listen}",
        "--log-facility=-",  # stderr: the lab's log file
        "--log-queries",
        "--pid-file",  # none: the lab records the process itself
    ]


def start_dns(
    *, netns: str, listen: IPv4Address, domain: str, log_path: Path, port: int = DNS_PORT
) -> procs.ProcRecord:
    """Start the lab's dnsmasq in ``netns`` (recorded by ``procs.spawn``, so the lab's sweep ends it)."""
    return procs.spawn(dnsmasq_argv(listen, domain, port=port), name="dns", netns=netns, log_path=log_path)


# --- a DNS client, just enough to ask for A records ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """A response's code and its A records (empty for a refusal, NXDOMAIN or an empty answer)."""

    rcode: int
    addresses: tuple[IPv4Address, ...]


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not raw or len(raw) > _MAX_LABEL:
            raise DnsError(f"bad DNS name {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def encode_query(name: str, query_id: int) -> bytes:
    """A standard query for the A records of ``name`` (recursion desired, one question)."""
    return (
        struct.pack("!HHHHHH", query_id, _FLAG_RD, 1, 0, 0, 0)
        + _encode_name(name)
        + struct.pack("!HH", _TYPE_A, _CLASS_IN)
    )


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        if offset >= len(data):
            raise DnsError("name runs past the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def decode_response(data: bytes, query_id: int) -> DnsAnswer:
    """The rcode and A records of the response to query ``query_id``; ``DnsError`` for anything else."""
    if len(data) < 12:
        raise DnsError("short DNS message")
    qid, flags, qdcount, ancount, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
    if qid != query_id or not flags & _FLAG_QR:
        raise DnsError("not the response to our query")
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(data, offset) + 4
    addresses = []
    for _ in range(ancount):
        offset = _skip_name(data, offset)
        if offset + 10 > len(data):
            raise DnsError("answer runs past the message")
        rtype, rclass, _ttl, rdlength = struct.unpack("!HHIH", data[offset : offset + 10])
        offset += 10
        rdata = data[offset : offset + rdlength]
        if len(rdata) != rdlength:
            raise DnsError("record data runs past the message")
        offset += rdlength
        if rtype == _TYPE_A and rclass == _CLASS_IN and rdlength == 4:
            addresses.append(IPv4Address(rdata))
    return DnsAnswer(rcode=flags & 0x000F, addresses=tuple(addresses))


def query(server: IPv4Address, name: str, *, timeout: float = 1.0, port: int = DNS_PORT) -> DnsAnswer | None:
    """Ask ``server`` (a lab DNS server) for the A records of ``name``; None when it does not answer."""
    query_id = secrets.randbelow(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((str(server), port))
            sock.send(encode_query(name, query_id))
            while True:
                try:
                    return decode_response(sock.recv(4096), query_id)
                except DnsError:
                    continue  # a stray or late datagram: keep waiting until the timeout
        except OSError:  # refused (nothing listens yet) or timed out
            return None


def wait_for_dns(rec: procs.ProcRecord, server: IPv4Address, domain: str, timeout: float) -> None:
    """Poll until the lab's dnsmasq answers ``domain`` with ``server``; ``ProcError`` if it exits first."""

    def answers() -> bool:
        if not procs.is_alive(rec):
            raise procs.ProcError(f"{rec.name} (dnsmasq) exited during start-up")
        answer = query(server, domain, timeout=0.2)
        return answer is not None and server in answer.addresses

    procs.wait_for(answers, timeout, interval=0.05, what=f"dnsmasq at {server} to answer {domain}")
