"""The chain adapter: typed async bindings for our contracts, transaction submission, typed errors.

Owns everything that talks to an Ethereum node, over its own JSON-RPC client (aiohttp) and ``eth_abi``;
it does not use web3. Callers get value objects from ``sidecar.core.model`` and ``sidecar.core.ids`` and
only ``ChainError`` subclasses (``errors``), never raw JSON-RPC values or client exceptions.
Must not import another adapter (``sidecar.dstack``) or the devnet; import-linter enforces both.

Modules: ``jsonrpc`` (the JSON-RPC client), ``rpc`` (connection), ``abi`` (encoding calls, decoding
results), ``tx`` (signing, nonces, fees, receipts; ``eth_account`` loads at the first signer),
``contracts`` (bindings), ``deploy`` (deploy from artifacts), ``artifacts`` (ABI/bytecode), ``codec``
(ABI values, JSON-RPC receipts/logs/blocks, events),
``errors`` (every error name callers import: our contracts' custom errors, classification), with
``failures`` (the taxonomy) and ``reverts`` (revert decoding) behind it.
"""
