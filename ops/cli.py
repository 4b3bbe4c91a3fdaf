"""``attestmesh``: the operator command line.

Owns the entry point (``ops.cli:main``), the top-level parser, ``--version``, logging (structlog, one line
per step, to stderr; results go to stdout) and exit codes (0 done, 1 failed, 2 bad usage). The commands:
``attestmesh chain status|allow-compose|fund|member-app|rotate-csk`` (``ops.chain_cmds``), ``attestmesh
cluster status`` (``ops.cluster_cmd``), ``attestmesh indexer register|verify|status`` (``ops.indexer_cmds``),
``attestmesh compose node`` (``ops.compose_cmd``) and ``attestmesh health URL`` (``ops.health_cmd``), each
imported only when it runs, so ``--help`` and ``health`` never load web3. The development lab adds its
``attestmesh devnet …`` verbs when the ``devnet`` package is installed: ``devnet.cli`` provides
``add_parser(top)`` and ``run(args)``; without it, ``attestmesh devnet …`` says so and exits 2.
Must not: import ``devnet`` by name (the image has none; it is looked up by a string, once), hold logic of
its own, or show an RPC URL beyond its scheme, host and port.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any, Final, Protocol, cast

from ops.args import Subcommands
from ops.parser import add_operator_parsers

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEVNET_CLI: Final = "devnet.cli"
_VERBOSE: Final = ("-v", "--verbose")


class DevnetVerbs(Protocol):
    """What ``devnet.cli`` offers the command line: the ``devnet`` parser and its runner."""

    def add_parser(self, top: Subcommands[argparse.ArgumentParser]) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def devnet_verbs() -> DevnetVerbs | None:
    """``devnet.cli`` when the devnet is installed, else None."""
    try:
        return cast(DevnetVerbs, importlib.import_module(DEVNET_CLI))
    except ModuleNotFoundError as exc:
        if exc.name in ("devnet", DEVNET_CLI):
            return None
        raise


class _Version(argparse.Action):
    """``--version``: the version and git commit that run (``sidecar.buildinfo``; read only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from sidecar.buildinfo import build_info  # noqa: PLC0415 - only for --version

        print(build_info().line("attestmesh"))
        parser.exit()


def build_parser(devnet: DevnetVerbs | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attestmesh", description="AttestMesh operator command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_Version, help="print the version and git commit, and exit")
    top = parser.add_subparsers(dest="command", required=True)
    if devnet is not None:
        devnet.add_parser(top)
    else:
        top.add_parser(
            "devnet", help="a local cluster on this machine: not installed here (development only)"
        )
    add_operator_parsers(top)
    return parser


def configure_logging(verbose: bool) -> None:
    import structlog  # noqa: PLC0415 - only for the commands that log (health does not)

    level = logging.DEBUG if verbose else logging.INFO
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg not in _VERBOSE), None)


def _run(args: argparse.Namespace, devnet: DevnetVerbs | None) -> int:
    # Each command's module is imported only when it runs (web3 costs more than the rest of a start).
    if args.command == "health":
        from ops.health_cmd import run_health  # noqa: PLC0415

        return run_health(args)
    configure_logging(args.verbose)
    if args.command == "chain":
        from ops.chain_cmds import run_chain  # noqa: PLC0415

        return run_chain(args)
    if args.command == "cluster":
        from ops.cluster_cmd import run_cluster  # noqa: PLC0415

        return run_cluster(args)
    if args.command == "compose":
        from ops.compose_cmd import run_compose  # noqa: PLC0415

        return run_compose(args)
    if args.command == "indexer":
        from ops.indexer_cmds import run_indexer  # noqa: PLC0415

        return run_indexer(args)
    assert devnet is not None  # main() stops a devnet command when the devnet is not installed
    return devnet.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    devnet = devnet_verbs()
    if devnet is None and _command(argv) == "devnet":
        print(
            "attestmesh: the devnet is not installed here: `attestmesh devnet` is the development lab "
            "(a checkout with `make setup`); this installation has the operator commands only "
            "(chain, cluster, compose, indexer, health)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return _run(build_parser(devnet).parse_args(argv), devnet)


if __name__ == "__main__":
    sys.exit(main())
