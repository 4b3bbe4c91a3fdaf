"""Argument types and shared options of the ``attestmesh`` command line.

Owns the argparse ``type`` functions (an ``ArgumentTypeError``'s message is shown as is: no value echoed
unless the message quotes it; URLs are never quoted), the chain options every chain command takes (the
sidecar's variables as defaults: ``ATTESTMESH_RPC_URL``, ``ATTESTMESH_CHAIN_ID``, ``ATTESTMESH_CLUSTER``,
``ATTESTMESH_INDEXER_REGISTRY``) and the node-name rule of ``chain member-app``.
Must not: import web3, eth_utils or structlog at module level (``--help`` and ``health`` start fast: the
parsers that need them import them when they run).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ops.amounts import parse_eth
from sidecar.envkit import parse_address, parse_http_url, parse_int, parse_seconds

if TYPE_CHECKING:
    from sidecar.core.ids import Address, Bytes32

RPC_TIMEOUT: Final = 10.0
MAX_NODE_NAME: Final = 24
# The devnet's rule too (devnet.topology.validate_node_name); its lab-only names are reserved here as well
# so a name accepted by one is accepted by the other.
_NODE_NAME: Final = re.compile(rf"[a-z0-9](?:[a-z0-9-]{{0,{MAX_NODE_NAME - 2}}}[a-z0-9])?")
_RESERVED_NODE_NAMES: Final = frozenset({"hub", "root", "idx"})

Subcommands = argparse._SubParsersAction  # the type of add_subparsers()' result (no public name)


def env_default(name: str) -> str | None:
    """An environment default; blank counts as unset (as for the sidecar)."""
    return os.environ.get(name, "").strip() or None


def from_env(variable: str) -> dict[str, Any]:
    """``default`` (parsed by the option's ``type``) and ``required`` of an option the environment can set."""
    value = env_default(variable)
    return {"default": value, "required": value is None}


def url_arg(text: str) -> str:
    try:
        return parse_http_url(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an http:// or https:// URL with a host") from None


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address: {exc}") from None


def address_arg(text: str) -> Address:
    address = _address(text)
    if address.is_zero:
        raise argparse.ArgumentTypeError("the zero address names no contract")
    return address


def address_list_arg(text: str) -> tuple[Address, ...]:
    """Comma-separated distinct non-zero addresses (the KMS roots)."""
    addresses: list[Address] = []
    for item in text.split(","):
        address = _address(item.strip())
        if address.is_zero or address in addresses:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is the zero address or named twice")
        addresses.append(address)
    return tuple(addresses)


def account_arg(text: str) -> Address:
    address = _address(text)
    if address.is_zero:
        raise argparse.ArgumentTypeError("refusing to send to the zero address")
    return address


def eth_arg(text: str) -> int:
    try:
        return parse_eth(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None


def positive_eth_arg(text: str) -> int:
    wei = eth_arg(text)
    if wei == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return wei


def file_arg(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return path


def bytes32_arg(text: str) -> Bytes32:
    from sidecar.core.ids import Bytes32  # noqa: PLC0415 - eth_utils only when a value is parsed

    try:
        return Bytes32.from_hex(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def node_name_arg(text: str) -> str:
    if not _NODE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"node name must be 1-{MAX_NODE_NAME} of [a-z0-9-], not starting or ending with '-', got {text!r}"
        )
    if text in _RESERVED_NODE_NAMES:
        raise argparse.ArgumentTypeError(f"node name {text!r} is reserved")
    return text


_DOMAIN: Final = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
)
_HOST: Final = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]")


def domain_arg(text: str) -> str:
    """A DNS domain (the gateway's), lowercase, without a trailing dot."""
    domain = text.strip().lower().removesuffix(".")
    if not _DOMAIN.fullmatch(domain):
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS domain")
    return domain


def port_arg(text: str) -> int:
    try:
        port = parse_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is 1-65535")
    return port


def connect_to_arg(text: str) -> tuple[str, int | None]:
    """``ADDRESS`` or ``ADDRESS:PORT`` (``[v6]:PORT``): where to connect instead of resolving a name."""
    host, port = text.strip(), None
    if host.count(":") == 1 or (host.startswith("[") and "]:" in host):
        host, _, port_text = host.rpartition(":")
        port = port_arg(port_text)
    if not _HOST.fullmatch(host):
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDRESS or ADDRESS:PORT")
    return host.strip("[]"), port


def ca_file_arg(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return text


def chain_id_arg(text: str) -> int:
    try:
        value = parse_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("a chain id is at least 1")
    return value


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
    if value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError("must be 0 or more" if zero else "must be greater than 0")
    return value


def seconds_arg(text: str) -> float:
    return _seconds(text, zero=False)


def wait_arg(text: str) -> float:
    return _seconds(text, zero=True)


def chain_options(parser: argparse.ArgumentParser, *, cluster: bool) -> None:
    """The chain options (and ``--cluster`` when asked), the sidecar's variables as defaults."""
    parser.add_argument(
        "--rpc-url",
        type=url_arg,
        help="chain JSON-RPC URL; may carry an API key, never printed (env ATTESTMESH_RPC_URL)",
        **from_env("ATTESTMESH_RPC_URL"),
    )
    parser.add_argument(
        "--chain-id", type=chain_id_arg, help="expected chain id (env ATTESTMESH_CHAIN_ID)",
        **from_env("ATTESTMESH_CHAIN_ID"),
    )  # fmt: skip
    if cluster:
        parser.add_argument(
            "--cluster", type=address_arg, help="Cluster address (env ATTESTMESH_CLUSTER)",
            **from_env("ATTESTMESH_CLUSTER"),
        )  # fmt: skip
    parser.add_argument(
        "--timeout",
        type=seconds_arg,
        default=RPC_TIMEOUT,
        metavar="SECONDS",
        help=f"per RPC call (default {RPC_TIMEOUT:g})",
    )


def registry_options(parser: argparse.ArgumentParser) -> None:
    """The chain options and ``--registry``, the sidecar's variables as defaults."""
    chain_options(parser, cluster=False)
    parser.add_argument(
        "--registry", type=address_arg, help="IndexerRegistry address (env ATTESTMESH_INDEXER_REGISTRY)",
        **from_env("ATTESTMESH_INDEXER_REGISTRY"),
    )  # fmt: skip
