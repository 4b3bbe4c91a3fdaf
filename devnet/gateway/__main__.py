"""Command line: run the dstack-gateway stand-in in the foreground until SIGTERM/SIGINT.

``python -m devnet.gateway --config FILE [--log-level info]``

Logs are JSON lines on stdout (``sidecar.logs``), events named ``gateway.*`` in the past tense. The first
SIGTERM/SIGINT closes the listener and every connection and exits within ``SHUTDOWN_SECONDS`` (plus the
metrics surface's own bound); a second one exits at once. Exit codes: 0 after a clean stop, 2 for an
invalid configuration (every problem listed, in the ``gateway.config_invalid`` line and on stderr), 1 when
the gateway cannot start (an address in use) or fails.

Must not: log payload bytes or key material.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import structlog

from devnet.gateway.config import ConfigError, GatewayConfig
from devnet.gateway.service import GatewayService
from sidecar.logs import configure_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

log = structlog.get_logger("devnet.gateway")


async def run(config: GatewayConfig) -> int:
    """Serve until the first SIGTERM/SIGINT, then stop within a bounded time."""
    service = await GatewayService.start(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("gateway.forced_exit", signal=signal.Signals(signum).name)
            os._exit(EXIT_FAILED)
        log.info("gateway.stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
    finally:
        await service.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, load the configuration and run the gateway; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m devnet.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the gateway's JSON configuration")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = GatewayConfig.load(args.config)
        return asyncio.run(run(config))
    except ConfigError as exc:
        log.error("gateway.config_invalid", config=str(args.config), problems=exc.problems)
        for problem in exc.problems:
            sys.stderr.write(f"{args.config}: {problem}\n")
        return EXIT_USAGE
    except OSError as exc:
        log.error("gateway.start_failed", error=f"{type(exc).__name__}: {exc.strerror or exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
