// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

import {IIndexerRegistry} from "./interfaces/IIndexerRegistry.sol";

/// @title IndexerRegistry
/// @notice One per chain: tells sidecars where the shared indexer is and which code and key to expect from it.
/// @dev Sidecars pin the indexer's code id and Ed25519 key from here rather than trusting whatever answers at the
///      endpoint, so only the owner may write, and ownership moves in two steps to avoid a typo orphaning it.
contract IndexerRegistry is IIndexerRegistry, Ownable2Step {
    uint256 private constant MAX_ENDPOINT_LENGTH = 255;

    struct Entry {
        string endpoint;
        bytes32 codeId;
        bytes32 pubKey;
        uint64 updatedAt;
    }

    Entry private _current;

    constructor(address owner_) Ownable(owner_) {}

    /// @notice Disabled: without an owner the indexer could never be moved or its key rotated.
    function renounceOwnership() public pure override {
        revert RenounceDisabled();
    }

    function setIndexer(string calldata endpoint, bytes32 codeId, bytes32 pubKey) external onlyOwner {
        if (bytes(endpoint).length > MAX_ENDPOINT_LENGTH) revert EndpointTooLong(bytes(endpoint).length);
        uint64 updatedAt = uint64(block.timestamp);
        _current = Entry({endpoint: endpoint, codeId: codeId, pubKey: pubKey, updatedAt: updatedAt});
        emit IndexerUpdated(endpoint, codeId, pubKey, updatedAt);
    }

    /// @inheritdoc IIndexerRegistry
    function current()
        external
        view
        returns (string memory endpoint, bytes32 codeId, bytes32 pubKey, uint64 updatedAt)
    {
        Entry storage e = _current;
        return (e.endpoint, e.codeId, e.pubKey, e.updatedAt);
    }
}
