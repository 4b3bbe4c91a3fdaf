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
    /// @notice The CREATE2 salt an app was deployed with (zero if not ours): with this factory's address and
    ///         the app's init code (which embeds its cluster) it recomputes the app id, so a node can prove
    ///         "my app id is this cluster's member app" to a peer that reads nothing from the chain.
    function saltOf(address app) external view returns (bytes32);
}
