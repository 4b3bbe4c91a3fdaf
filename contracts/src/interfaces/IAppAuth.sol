// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice What the dstack KMS knows about a booting CVM (field order is ABI-significant and matches dstack's
///         auth-eth `AppBootInfo`).
struct AppBootInfo {
    address appId;
    bytes32 composeHash;
    address instanceId;
    bytes32 deviceId;
    bytes32 mrAggregated;
    bytes32 mrSystem;
    bytes32 osImageHash;
    string tcbStatus;
    string[] advisoryIds;
}

/// @notice dstack's boot-policy interface: the KMS releases keys to a CVM only when this answers true.
interface IAppAuth {
    function isAppAllowed(AppBootInfo calldata bootInfo) external view returns (bool isAllowed, string memory reason);
}
