// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Cluster} from "./Cluster.sol";
import {IClusterFactory} from "./interfaces/IClusterFactory.sol";

/// @title ClusterFactory
/// @notice One per chain: deploys clusters and announces them.
/// @dev The indexer discovers clusters from ClusterDeployed and starts its catch-up at deploymentBlock, so it
///      never has to scan from genesis. Salts are namespaced by the deployer so nobody can squat another
///      deployer's predicted cluster address.
contract ClusterFactory is IClusterFactory {
    /// @inheritdoc IClusterFactory
    uint256 public immutable deploymentBlock;
    /// @inheritdoc IClusterFactory
    uint256 public clusterCount;
    /// @inheritdoc IClusterFactory
    mapping(address cluster => bool) public isDeployedCluster;

    constructor() {
        deploymentBlock = block.number;
    }

    function deployCluster(ClusterConfig calldata config, bytes32 salt) external returns (address cluster) {
        cluster = address(new Cluster{salt: keccak256(abi.encode(msg.sender, salt))}(config));
        isDeployedCluster[cluster] = true;
        ++clusterCount;
        emit ClusterDeployed(cluster, config.owner, salt);
    }
}
