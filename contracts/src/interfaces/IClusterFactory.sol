// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice One per chain: deploys clusters and announces them, so the indexer can follow every cluster.
interface IClusterFactory {
    struct ClusterConfig {
        address owner;
        address memberAppFactory; // the ClusterMemberAppFactory whose apps for this cluster may be approved
        uint32 meshCidrBase; // network address, host bits zero
        uint8 meshPrefixLength; // 8..30
        address[] kmsRoots;
        bytes32[] composeHashes;
        bytes32[] deviceIds;
        bool allowAnyDevice;
        bool requireTcbUpToDate;
    }

    event ClusterDeployed(address indexed cluster, address indexed owner, bytes32 salt);

    /// @notice CREATE2-deploy a cluster (salt is namespaced by msg.sender).
    function deployCluster(ClusterConfig calldata config, bytes32 salt) external returns (address cluster);
    function isDeployedCluster(address cluster) external view returns (bool);
    function clusterCount() external view returns (uint256);
    /// @notice Block of the factory's own deployment: the indexer's catch-up floor.
    function deploymentBlock() external view returns (uint256);
}
