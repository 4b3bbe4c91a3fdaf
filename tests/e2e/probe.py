"""A probe the e2e tests run inside a node's network namespace (``ip netns exec NS python -m …``).

The peer API and the heartbeat socket are bound to mesh IPs, reachable only from inside the mesh, so
crafted requests must come from a node's namespace. Prints one JSON line with what happened.

    python -m tests.e2e.probe http METHOD URL [BODY_HEX]      → {"status": int, "body": str}
    python -m tests.e2e.probe udp SRC_IP DST_IP PORT HEX       → {"sent": int}
    python -m tests.e2e.probe ping DST_IP                      → {"ok": bool}
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request


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


def main(argv: list[str]) -> int:
    verb, *args = argv
    result = {"http": http, "udp": udp, "ping": ping}[verb](*args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
