"""Deploying a contract from its committed artifact.

Owns: ``deploy_contract`` (init code = artifact bytecode ‖ ABI-encoded constructor arguments, sent through
a ``TxSubmitter``; the address comes from the receipt and is checked to hold code).

Must not: compile, link libraries, or decide what to deploy (that is the devnet's and the operator CLI's job).
"""

from __future__ import annotations

from typing import Any

from sidecar.chain.abi import contract_abi
from sidecar.chain.artifacts import load_artifact
from sidecar.chain.errors import UnexpectedChainError, translated
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import TxSubmitter
from sidecar.core.ids import Address
from sidecar.core.model import TxReceipt


def init_code(conn: ChainConnection, name: str, *args: Any) -> bytes:
    """Return the creation bytecode of contract ``name`` with its constructor arguments encoded."""
    artifact = load_artifact(name)
    if not artifact.bytecode:
        raise UnexpectedChainError(f"artifact {name} has no bytecode (an interface or abstract contract?)")
    with translated():
        return artifact.bytecode + contract_abi(name).encode_constructor(args)


async def deploy_contract(
    conn: ChainConnection, submitter: TxSubmitter, name: str, *args: Any
) -> tuple[Address, TxReceipt]:
    """Deploy contract ``name`` from its artifact with constructor ``args`` (``eth_abi``-encodable values)."""
    receipt = await submitter.send(None, init_code(conn, name, *args))
    if receipt.contract_address is None:
        raise UnexpectedChainError(f"deployment of {name} in {receipt.tx_hash} has no contract address")
    if not await conn.get_code(receipt.contract_address):
        raise UnexpectedChainError(f"deployment of {name} left no code at {receipt.contract_address}")
    return receipt.contract_address, receipt
