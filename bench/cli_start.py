"""Start-up time of the operator command line: ``attestmesh --help``, ``--version`` and ``health URL``.

Each command runs RUNS times as a fresh process (the venv's ``attestmesh`` console script, as an operator
runs it); the figure is the median wall time (``time.perf_counter`` around the whole process), with the
interpreter's own start (``python -c pass``) beside it. ``health`` asks a real aiohttp server on 127.0.0.1
whose ``/healthz`` answers a health document. Issue 10 asks for well under half a second; the lazy imports
(web3, eth_utils and structlog load only for the commands that use them) are what keeps it there.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

from aiohttp import web

RUNS = 11


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "attestmesh"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ops"]


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"healthy": True, "phase": "ready", "reason": None})


async def _median_seconds(argv: list[str]) -> tuple[float, int]:
    samples, code = [], 0
    for _ in range(RUNS):
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        code = await process.wait()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), code


async def main() -> None:
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cli = _cli()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "attestmesh --help": [*cli, "--help"],
        "attestmesh --version": [*cli, "--version"],
        "attestmesh health URL": [*cli, "health", f"http://127.0.0.1:{port}/healthz"],
        "attestmesh chain status --help": [*cli, "chain", "status", "--help"],
    }
    try:
        print(f"operator CLI start-up — median of {RUNS} fresh processes ({' '.join(cli)})")
        print(f"{'command':34} {'median ms':>10} {'exit':>5}")
        for name, argv in commands.items():
            seconds, code = await _median_seconds(argv)
            print(f"{name:34} {seconds * 1000:>10.0f} {code:>5}")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
