"""``python -m sidecar`` / ``attestmesh-sidecar``: load settings, configure logging, run the daemon.

Exit codes: 0 after a clean shutdown, 2 for invalid configuration (every problem listed on stderr).
"""

from __future__ import annotations

import asyncio
import os
import sys

from sidecar.daemon import Daemon
from sidecar.observability import configure_logging
from sidecar.settings import SettingsError, load_settings

EXIT_CONFIG = 2


def main() -> int:
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print("attestmesh-sidecar: invalid configuration:", file=sys.stderr)  # noqa: T201
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG
    configure_logging(settings.log_level.value)
    return asyncio.run(Daemon(settings).run())


if __name__ == "__main__":
    sys.exit(main())
