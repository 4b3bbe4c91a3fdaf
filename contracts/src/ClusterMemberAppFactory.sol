// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ClusterMemberApp} from "./ClusterMemberApp.sol";
import {IClusterMemberAppFactory} from "./interfaces/IClusterMemberApp.sol";

/// @title ClusterMemberAppFactory
/// @notice CREATE2 factory of ClusterMemberApps.
/// @dev Deterministic addresses let an operator know a node's app id (and so approve it on the cluster)
///      before anything is deployed, and make a retried deployment converge on the same app.
contract ClusterMemberAppFactory is IClusterMemberAppFactory {
    mapping(address app => bool) private _ours;
    /// @inheritdoc IClusterMemberAppFactory
    mapping(address app => bytes32) public saltOf;

    /// @inheritdoc IClusterMemberAppFactory
    /// @dev Idempotent so that a deploy script can be re-run after a partial failure.
    function deploy(address cluster, string calldata name) external returns (address app) {
        app = predict(cluster, name);
        if (app.code.length != 0) return app;
        ClusterMemberApp created = new ClusterMemberApp{salt: _salt(cluster, name)}(cluster);
        app = address(created);
        _ours[app] = true;
        saltOf[app] = _salt(cluster, name);
        emit MemberAppDeployed(app, cluster, name);
    }

    function predict(address cluster, string calldata name) public view returns (address app) {
        bytes32 initCodeHash = keccak256(abi.encodePacked(type(ClusterMemberApp).creationCode, abi.encode(cluster)));
        app = address(
            uint160(uint256(keccak256(abi.encodePacked(bytes1(0xff), address(this), _salt(cluster, name), initCodeHash))))
        );
    }

    function isOurApp(address app) external view returns (bool) {
        return _ours[app];
    }

    function _salt(address cluster, string calldata name) private pure returns (bytes32) {
        return keccak256(abi.encode(cluster, name));
    }
}
