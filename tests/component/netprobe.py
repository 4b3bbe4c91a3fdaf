"""A network probe for the lab-network component tests, run INSIDE a lab namespace
(``ip netns exec NS python -m tests.component.netprobe …``), so what it sees is what a node's process sees.

Verbs: ``serve IP PORT`` (a UDP and a TCP listener on IP:PORT; prints ``udp SRC`` per datagram and ``tcp SRC``
per accepted connection, flushed; runs until ended, at most ``--max-seconds``); ``send-udp IP PORT`` (one
datagram); ``connect-tcp IP PORT SECONDS`` (exit 0 when the connection is accepted, 1 when not); ``resolve
NAME`` (the IPv4 addresses the namespace's resolver gives, one a line; exit 1 when it gives none).
Only ever targets the address it is given, which the tests take from the lab plan.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time


def serve(ip: str, port: int, max_seconds: float) -> int:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((ip, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((ip, port))
    tcp.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ, "udp")
    sel.register(tcp, selectors.EVENT_READ, "tcp")
    print("ready", flush=True)
    deadline = time.monotonic() + max_seconds
    while (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(timeout=left):
            if key.data == "udp":
                _data, src = udp.recvfrom(2048)
            else:
                conn, src = tcp.accept()
                conn.close()
            print(f"{key.data} {src[0]}", flush=True)
    return 0


def send_udp(ip: str, port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"probe", (ip, port))
    return 0


def connect_tcp(ip: str, port: int, seconds: float) -> int:
    try:
        with socket.create_connection((ip, port), timeout=seconds):
            return 0
    except OSError:
        return 1


def resolve(name: str) -> int:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return 1
    for info in infos:
        print(info[4][0])
    return 0 if infos else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="netprobe")
    verbs = parser.add_subparsers(dest="verb", required=True)
    s = verbs.add_parser("serve")
    s.add_argument("ip")
    s.add_argument("port", type=int)
    s.add_argument("--max-seconds", type=float, default=60.0)
    u = verbs.add_parser("send-udp")
    u.add_argument("ip")
    u.add_argument("port", type=int)
    t = verbs.add_parser("connect-tcp")
    t.add_argument("ip")
    t.add_argument("port", type=int)
    t.add_argument("seconds", type=float)
    r = verbs.add_parser("resolve")
    r.add_argument("name")
    args = parser.parse_args()
    if args.verb == "serve":
        return serve(args.ip, args.port, args.max_seconds)
    if args.verb == "send-udp":
        return send_udp(args.ip, args.port)
    if args.verb == "connect-tcp":
        return connect_tcp(args.ip, args.port, args.seconds)
    return resolve(args.name)


if __name__ == "__main__":
    sys.exit(main())
