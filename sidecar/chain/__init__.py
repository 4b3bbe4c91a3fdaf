"""The chain adapter (web3): typed async bindings for our contracts, transaction submission, typed errors.

Owns everything that talks to an Ethereum node. Callers get value objects from ``sidecar.core.model`` and
``sidecar.core.ids`` and only ``ChainError`` subclasses (``errors``), never web3 types or exceptions.
Must not import another adapter (``sidecar.dstack``) or the devnet; import-linter enforces both.

Modules: ``rpc`` (connection), ``tx`` (signing, nonces, fees, receipts), ``contracts`` (bindings),
``deploy`` (deploy from artifacts), ``artifacts`` (ABI/bytecode), ``codec`` (ABI values and events),
``errors`` (every error name callers import: our contracts' custom errors, classification), with
``failures`` (the taxonomy) and ``reverts`` (revert decoding) behind it.
"""
