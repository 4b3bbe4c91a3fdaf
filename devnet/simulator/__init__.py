"""A dstack guest-agent simulator for the devnet, spoken to by the official ``dstack-sdk`` unchanged.

Run one per node: ``python -m devnet.simulator --config node.json --socket PATH``. Keys come from the
devnet KMS (``devnet.kms``); quotes are development quotes, never TDX quotes. See ``server`` for the
wire contract and ``quote`` for the event log and quote format.
"""

from devnet.simulator.config import ConfigError, SimulatorConfig
from devnet.simulator.quote import DevQuote, DevQuoteError, parse_dev_quote
from devnet.simulator.server import RunningSimulator, Simulator, create_app, serve_unix

__all__ = [
    "ConfigError",
    "DevQuote",
    "DevQuoteError",
    "RunningSimulator",
    "Simulator",
    "SimulatorConfig",
    "create_app",
    "parse_dev_quote",
    "serve_unix",
]
