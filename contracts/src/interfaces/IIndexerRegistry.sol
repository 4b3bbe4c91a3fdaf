// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice One per chain: names the shared indexer (endpoint, code id, Ed25519 public key). An empty endpoint
///         means none is registered. Owner-only writes, two-step ownership.
interface IIndexerRegistry {
    error EndpointTooLong(uint256 length);
    error RenounceDisabled();

    event IndexerUpdated(string endpoint, bytes32 indexed codeId, bytes32 pubKey, uint64 updatedAt);

    function setIndexer(string calldata endpoint, bytes32 codeId, bytes32 pubKey) external;
    function current()
        external
        view
        returns (string memory endpoint, bytes32 codeId, bytes32 pubKey, uint64 updatedAt);
}
