// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";

import {AppBootInfo, IAppAuth} from "./interfaces/IAppAuth.sol";
import {IClusterMemberApp} from "./interfaces/IClusterMemberApp.sol";

/// @title ClusterMemberApp
/// @notice A node's dstack app contract: its address is the node's app id.
/// @dev dstack derives keys per app id (identical for every instance of one app), so each node needs its own app
///      to get its own keys. The policy itself lives in the cluster, so one owner transaction there gates every
///      node's boot; this contract only makes sure it is asked about itself.
contract ClusterMemberApp is IClusterMemberApp {
    /// @inheritdoc IClusterMemberApp
    address public immutable cluster;

    constructor(address cluster_) {
        cluster = cluster_;
    }

    /// @inheritdoc IAppAuth
    /// @dev Refuses boot info for any other app id: otherwise this contract would vouch for whatever app the
    ///      caller names, and the cluster treats approved app ids as node identities.
    function isAppAllowed(AppBootInfo calldata bootInfo)
        external
        view
        returns (bool isAllowed, string memory reason)
    {
        if (bootInfo.appId != address(this)) return (false, "app id mismatch");
        return IAppAuth(cluster).isAppAllowed(bootInfo);
    }

    /// @dev The dstack KMS probes IAppAuth through ERC-165 before trusting an app contract. Virtual (and view,
    ///      as declared in IClusterMemberApp) so that a specialised app can add interfaces.
    function supportsInterface(bytes4 interfaceId) external view virtual returns (bool) {
        return interfaceId == type(IERC165).interfaceId || interfaceId == type(IAppAuth).interfaceId;
    }
}
