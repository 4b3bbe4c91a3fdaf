"""Command line: run one guest-agent simulator until SIGTERM/SIGINT.

``python -m devnet.simulator --config node.json --socket PATH``

The KMS seed comes from the environment variable ``ATTESTMESH_DEVNET_KMS_SEED`` (hex, ≥ 16 bytes) or,
when unset, the public ``devnet.kms.DEVNET_KMS_SEED``. The first SIGTERM/SIGINT stops the server within
a bounded time and removes its socket; a second one exits at once (still removing the socket). Exit codes:
0 after a clean stop, 2 for a bad configuration or environment, 1 when serving fails.

Must not: write key material (or the seed) to disk or to the log; the seed's value never appears in an
error message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from devnet.kms import DevnetKms
from devnet.simulator.config import ConfigError, SimulatorConfig
from devnet.simulator.quote import parse_hex
from devnet.simulator.server import serve_unix

SEED_ENV = "ATTESTMESH_DEVNET_KMS_SEED"
SHUTDOWN_TIMEOUT_SECONDS = 5.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("devnet.simulator")


def kms_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> DevnetKms:
    """Build the devnet KMS from ``ATTESTMESH_DEVNET_KMS_SEED`` (hex) or the public default seed."""
    text = environ.get(SEED_ENV)
    if text is None:
        return DevnetKms()
    try:
        return DevnetKms(parse_hex(text.strip(), SEED_ENV))
    except ValueError:
        raise ConfigError(f"{SEED_ENV} must be hex for at least 16 bytes") from None


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


async def run(socket_path: Path, config: SimulatorConfig, kms: DevnetKms) -> int:
    """Serve until the first SIGTERM/SIGINT, then stop within a bounded time."""
    running = await serve_unix(socket_path, config, kms=kms)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("simulator.forced_exit signal=%s", signal.Signals(signum).name)
            _unlink_quietly(socket_path)
            os._exit(EXIT_FAILED)
        log.info("simulator.stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info("simulator.ready socket=%s", socket_path)
    try:
        await stop.wait()
    finally:
        try:
            await asyncio.wait_for(running.close(), SHUTDOWN_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("simulator.shutdown_timed_out seconds=%s", SHUTDOWN_TIMEOUT_SECONDS)
            _unlink_quietly(socket_path)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devnet.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="node config JSON (public data only)")
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket path to serve on")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        kms = kms_from_env()
        config = SimulatorConfig.load(args.config)
        return asyncio.run(run(args.socket, config, kms))
    except (ConfigError, FileExistsError, ValueError) as exc:
        log.error("simulator.start_failed error=%s", exc)
        return EXIT_USAGE
    except OSError as exc:
        log.error("simulator.start_failed error=%s", exc)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
