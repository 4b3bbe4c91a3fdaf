"""``python -m sidecar.healthcheck [URL]``: the image's health probe (exit 0 iff ``/healthz`` answers 200).

Owns the command that the Dockerfile's ``HEALTHCHECK`` and the compose files' ``healthcheck`` run inside the
container, where the slim image has neither curl nor wget. Without a URL it probes the sidecar's own
``/healthz`` at ``ATTESTMESH_HEALTH_ADDR`` (default ``0.0.0.0:9090``; a wildcard host is probed on loopback),
so moving the health port in the environment does not leave the container unhealthy forever. The indexer,
which runs from the same image, passes its URL explicitly.

Exit codes follow Docker's convention: 0 healthy, 1 unhealthy (any status but 200, no answer, a timeout or
an unusable address). One line on stdout says why; Docker keeps it in ``docker inspect``.

Must not: import anything beyond the standard library (it runs every few seconds; the daemon's settings
module alone costs half a second to import) or read any other setting.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import os
import sys
import urllib.error
import urllib.request

HEALTH_ADDR_ENV = "ATTESTMESH_HEALTH_ADDR"
DEFAULT_HEALTH_ADDR = "0.0.0.0:9090"  # the sidecar's default; probed on loopback
DEFAULT_TIMEOUT = 4.0  # below the image's HEALTHCHECK --timeout, so the probe reports instead of being killed
EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
_MAX_BODY = 4096


def health_url(health_addr: str) -> str:
    """Return the ``/healthz`` URL of a listen address ``host:port`` or ``[v6]:port`` (wildcard: loopback)."""
    if health_addr.startswith("["):
        host, sep, port = health_addr[1:].partition("]:")
    else:
        host, sep, port = health_addr.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"{HEALTH_ADDR_ENV} is not host:port: {health_addr[:64]!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{int(port)}/healthz"  # localhost (the sidecar accepts no other name)
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"http://{literal}:{int(port)}/healthz"


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """GET ``url`` once; return (healthy, a one-line summary)."""
    if not url.startswith(("http://", "https://")):
        return False, f"not an http(s) URL: {url[:64]!r}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 -- http(s) URLs only
            status, body = response.status, response.read(_MAX_BODY)
    except urllib.error.HTTPError as exc:  # any status >= 400 (503 while not healthy)
        try:
            status, body = exc.code, exc.read(_MAX_BODY)
        finally:
            exc.close()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return False, f"no answer from {url}: {reason}"
    summary = " ".join(body.decode("utf-8", "replace").split())[:200]
    return status == 200, f"{url} answered {status}: {summary}"


def main(argv: list[str] | None = None) -> int:
    """Probe once and return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.healthcheck", description="Exit 0 iff the health URL answers 200."
    )
    parser.add_argument("url", nargs="?", help=f"health URL (default: /healthz at ${HEALTH_ADDR_ENV})")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        url = args.url or health_url(os.environ.get(HEALTH_ADDR_ENV, "").strip() or DEFAULT_HEALTH_ADDR)
    except ValueError as exc:
        print(f"unhealthy: {exc}")  # noqa: T201
        return EXIT_UNHEALTHY
    healthy, summary = probe(url, args.timeout)
    print(("healthy: " if healthy else "unhealthy: ") + summary)  # noqa: T201
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
