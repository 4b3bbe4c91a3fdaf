"""``python -m bench``: run every benchmark and print its figures."""

from __future__ import annotations

import asyncio
import sys

from bench import gas


def main() -> int:
    asyncio.run(gas.main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
