"""A probe the e2e tests run inside a node's network namespace (``ip netns exec NS python -m …``).

The peer API and the heartbeat socket are bound to mesh IPs, reachable only from inside the mesh, so
crafted requests must come from a node's namespace. Prints one JSON line with what happened.

    python -m tests.e2e.probe http METHOD URL [BODY_HEX]      → {"status": int, "body": str}
    python -m tests.e2e.probe udp SRC_IP DST_IP PORT HEX       → {"sent": int}
    python -m tests.e2e.probe ping DST_IP                      → {"ok": bool}
    python -m tests.e2e.probe transport URL UP DOWN TIMEOUT    → {"first", "at", "seen"}

``transport`` polls a node's ``/healthz`` (on loopback: the gateway may be down) every 20 ms until its
``peers.transport.gateway`` is ``{"up": UP, "down": DOWN}`` and prints the wall-clock time it first saw that
(``time.time()``, comparable across namespaces), or null at the deadline; ``first`` is when it began
polling, ``seen`` the last reading.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def http(method: str, url: str, body_hex: str = "") -> dict[str, object]:
    data = bytes.fromhex(body_hex) if body_hex else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return {"status": response.status, "body": response.read().decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")}


def udp(src: str, dst: str, port: str, payload_hex: str) -> dict[str, object]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((src, 0))
        return {"sent": sock.sendto(bytes.fromhex(payload_hex), (dst, int(port)))}


def ping(dst: str) -> dict[str, object]:
    proc = subprocess.run(["ping", "-c", "1", "-W", "1", dst], capture_output=True, check=False)
    return {"ok": proc.returncode == 0}


def transport(url: str, up: str, down: str, timeout: str) -> dict[str, object]:
    want = {"up": int(up), "down": int(down)}
    deadline = time.monotonic() + float(timeout)
    first, seen = time.time(), None
    while time.monotonic() < deadline:
        try:  # an unhealthy node answers 503 with the same body
            seen = json.loads(str(http("GET", url)["body"]))["peers"]["transport"].get("gateway")
        except (OSError, ValueError, KeyError) as exc:  # not answering yet: keep polling
            seen = repr(exc)
        if seen == want:
            return {"first": first, "at": time.time(), "seen": seen}
        time.sleep(0.02)  # the polling period: the figure's resolution
    return {"first": first, "at": None, "seen": seen}


def main(argv: list[str]) -> int:
    verb, *args = argv
    verbs: dict[str, Callable[..., dict[str, object]]] = {
        "http": http, "udp": udp, "ping": ping, "transport": transport,
    }  # fmt: skip
    result = verbs[verb](*args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
