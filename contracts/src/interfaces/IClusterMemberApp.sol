// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IAppAuth} from "./IAppAuth.sol";

/// @notice One per node: the node's dstack app contract (its address is the node's app id). Its boot policy
///         forwards to the cluster, so the cluster's allowlist gates every node's boot.
interface IClusterMemberApp is IAppAuth {
    function cluster() external view returns (address);
    function supportsInterface(bytes4 interfaceId) external view returns (bool);
}

/// @notice CREATE2 factory of ClusterMemberApps: the address is deterministic per (cluster, node name).
interface IClusterMemberAppFactory {
    event MemberAppDeployed(address indexed app, address indexed cluster, string name);

    /// @notice Deploy the app for (cluster, name); returns the existing one when already deployed.
    function deploy(address cluster, string calldata name) external returns (address app);
    function predict(address cluster, string calldata name) external view returns (address app);
    function isOurApp(address app) external view returns (bool);
}
