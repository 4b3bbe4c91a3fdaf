"""``python -m sidecar`` / ``attestmesh-sidecar``: load settings, configure logging, run the daemon.

Exit codes: 0 after a clean shutdown, 1 when a surface cannot bind (the health port or the app API socket
is another process's: ``sidecar.start_failed`` says which), 2 for invalid configuration (every problem
listed on stderr: the variables, and once the guest agent answers, an environment that overrides a measured
trust anchor of the compose, ``sidecar.core.measured``) or for any command-line argument: the sidecar takes
none but ``--version`` alone (prints the version and git commit, ``sidecar.buildinfo``, and exits 0). It is
the image's entrypoint, so a compose ``command:`` would arrive here as arguments (``command:
[attestmesh-indexer]`` runs the sidecar, not the indexer); that must fail loudly instead of silently
starting the wrong service.
"""

from __future__ import annotations

import asyncio
import os
import sys

from sidecar.buildinfo import build_info
from sidecar.daemon import Daemon
from sidecar.logs import configure_logging
from sidecar.settings import SettingsError, load_settings

EXIT_CONFIG = 2


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        print(build_info().line("attestmesh-sidecar"))  # noqa: T201
        return 0
    if len(sys.argv) > 1:
        print(  # noqa: T201
            "attestmesh-sidecar: takes no arguments, only ATTESTMESH_* environment variables; "
            "to run another program from the image (e.g. the indexer) override the entrypoint "
            "(compose: entrypoint: [attestmesh-indexer])",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"attestmesh-sidecar: {exc}", file=sys.stderr)  # noqa: T201 - "invalid configuration:" and every problem
        return EXIT_CONFIG
    configure_logging(settings.log_level.value)
    daemon = Daemon(settings, env=os.environ)
    code = asyncio.run(daemon.run())
    if daemon.refused:  # the measured anchors: also logged (config.measured_refused), one line each
        print(f"attestmesh-sidecar: {SettingsError(daemon.refused)}", file=sys.stderr)  # noqa: T201
    return code


if __name__ == "__main__":
    sys.exit(main())
