"""``python -m bench [--only NAME ...] [--plots DIR]``: run the benchmarks (default: all), print their figures
and write their SVG plots (``bench.plots``; default ``docs/perf/``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from bench import cli_start, devnet, fanout, gas, labkit, plots, reconcile, transport

BENCHMARKS: dict[str, Callable[[], None]] = {
    "gas": lambda: asyncio.run(gas.main()),
    "reconcile": lambda: asyncio.run(reconcile.main()),
    "fanout": lambda: asyncio.run(fanout.main()),
    "cli_start": lambda: asyncio.run(cli_start.main()),
    "transport": transport.main,
}
ALL = (*BENCHMARKS, *devnet.LAB_BENCHMARKS)


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every lab is brought down by its context manager.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=ALL,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(ALL)}",
    )
    parser.add_argument(
        "--plots",
        type=Path,
        default=plots.DEFAULT_DIR,
        metavar="DIR",
        help=f"write the SVG plots here (default: {plots.DEFAULT_DIR})",
    )
    args = parser.parse_args(argv)
    plots.Output.directory = args.plots
    selected = [name for name in ALL if args.only is None or name in args.only]
    signal.signal(signal.SIGTERM, _terminate)
    print(f"machine: {_machine()}; {_load()}")
    started = time.perf_counter()
    for name in selected:
        if name in BENCHMARKS:
            print(f"== {name}", flush=True)
            BENCHMARKS[name]()
            print(flush=True)
    lab = [name for name in selected if name in devnet.LAB_BENCHMARKS]
    if lab:
        print(f"== {', '.join(lab)} (devnet lab {labkit.LAB})", flush=True)
        devnet.main(lab)
    print(f"done in {time.perf_counter() - started:.0f} s; {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
