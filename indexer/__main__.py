"""``python -m indexer`` / ``attestmesh-indexer``: load settings, configure logging, run the service.

Exit codes: 0 after a clean shutdown (or ``--version``: the version and git commit, ``sidecar.buildinfo``),
2 for invalid configuration (every problem listed on stderr).
Must not read anything but ``ATTESTMESH_INDEXER_*`` (and the dstack SDK's own ``DSTACK_SIMULATOR_ENDPOINT``).
"""

from __future__ import annotations

import asyncio
import os
import sys

from indexer.service import IndexerService
from indexer.settings import EXIT_BAD_CONFIGURATION, SettingsError, load_settings
from sidecar.buildinfo import build_info
from sidecar.logs import configure_logging


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        print(build_info().line("attestmesh-indexer"))  # noqa: T201
        return 0
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"attestmesh-indexer: {exc}", file=sys.stderr)  # noqa: T201 - "invalid configuration:" and every problem
        return EXIT_BAD_CONFIGURATION
    configure_logging(settings.log_level.value)
    return asyncio.run(IndexerService(settings).run())


if __name__ == "__main__":
    sys.exit(main())
