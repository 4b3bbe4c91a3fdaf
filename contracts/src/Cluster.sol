// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

import {AppBootInfo, IAppAuth} from "./interfaces/IAppAuth.sol";
import {ICluster} from "./interfaces/ICluster.sol";
import {IClusterFactory} from "./interfaces/IClusterFactory.sol";
import {IClusterMemberApp, IClusterMemberAppFactory} from "./interfaces/IClusterMemberApp.sol";
import {DstackSigChain} from "./lib/DstackSigChain.sol";
import {EndpointGrammar} from "./lib/EndpointGrammar.sol";

/// @title Cluster
/// @notice One AttestMesh cluster: the boot policy the dstack KMS consults (through each node's
///         ClusterMemberApp), the KMS roots it trusts, and the membership every sidecar reconciles against.
/// @dev Membership is self-service but gated three times: the app id must be a member app the measured factory
///      deployed for this very cluster, the owner must pre-approve it, and the caller must prove with dstack's
///      signature chain that it holds a key the trusted KMS released to that app id. The contract, not the
///      nodes, allocates mesh IPs so that concurrent registrations can never collide, and refuses records no
///      node could use (an endpoint outside the sidecar's grammar, a public key another member holds).
contract Cluster is ICluster, Ownable2Step {
    bytes32 private constant TCB_UP_TO_DATE = keccak256("UpToDate");

    /// @inheritdoc ICluster
    mapping(bytes32 composeHash => bool) public allowedComposeHashes;
    /// @inheritdoc ICluster
    mapping(bytes32 deviceId => bool) public allowedDeviceIds;
    bool private _allowAnyDevice;
    bool private _requireTcbUpToDate;
    /// @inheritdoc ICluster
    uint64 public cskEpoch = 1;
    /// @inheritdoc ICluster
    bool public rotateCskOnRemove;
    /// @inheritdoc ICluster
    /// @dev Packed with the flags and cskEpoch: setAllowAnyDevice, setRequireTcbUpToDate and
    ///      setRotateCskOnRemove already write this slot.
    uint64 public policyVersion;
    /// @inheritdoc ICluster
    mapping(address appId => bool) public allowedAppIds;
    /// @inheritdoc ICluster
    mapping(address kmsRoot => bool) public allowedKmsRoots;
    /// @inheritdoc ICluster
    mapping(uint64 epoch => bytes32) public cskCommitmentOf;
    /// @inheritdoc ICluster
    address public immutable memberAppFactory;

    uint32 private immutable _meshBase;
    uint8 private immutable _meshPrefixLength;
    /// @dev Host index of the next member. Only ever grows, so an evicted member's address is never handed to a
    ///      newcomer whose peers may still hold stale routes for it.
    uint32 private _nextHostIndex = 1;
    /// @inheritdoc ICluster
    /// @dev Packed with _nextHostIndex, which register already writes, so a registration pays a warm write.
    uint64 public membershipVersion;

    mapping(bytes32 memberId => Member) private _members;
    /// @dev Registration order matters: index 0 is the CSK originator.
    bytes32[] private _memberIds;
    mapping(address appId => bytes32) private _idByAppId;
    mapping(address signer => bytes32) private _idBySigner;
    /// @dev Current holder of each published public key, per kind: a key identifies one member, so a member
    ///      cannot publish a victim's WireGuard key (and cut it off) or its identity or seal key. Freed on eviction.
    mapping(bytes32 wgPub => bytes32 memberId) private _wgHolder;
    mapping(bytes32 identityPub => bytes32 memberId) private _identityHolder;
    mapping(bytes32 sealPub => bytes32 memberId) private _sealHolder;

    constructor(IClusterFactory.ClusterConfig memory config) Ownable(config.owner) {
        if (config.memberAppFactory.code.length == 0) revert InvalidMemberAppFactory(config.memberAppFactory);
        memberAppFactory = config.memberAppFactory;
        uint8 prefix = config.meshPrefixLength;
        if (prefix < 8 || prefix > 30) revert InvalidMeshCidr(config.meshCidrBase, prefix);
        uint32 hostMask = uint32((uint256(1) << (32 - prefix)) - 1);
        if (config.meshCidrBase & hostMask != 0) revert InvalidMeshCidr(config.meshCidrBase, prefix);
        _meshBase = config.meshCidrBase;
        _meshPrefixLength = prefix;

        // Initial policy goes through the same paths as later admin calls so that an indexer replaying events
        // from the deployment block reconstructs the full policy. App ids are not part of it: a member app's
        // address depends on its cluster's, which would depend on the app ids in this config (CREATE2), so
        // nodes are approved with addAllowedAppId once the cluster exists.
        for (uint256 i = 0; i < config.kmsRoots.length; ++i) _addKmsRoot(config.kmsRoots[i]);
        for (uint256 i = 0; i < config.composeHashes.length; ++i) _addComposeHash(config.composeHashes[i]);
        for (uint256 i = 0; i < config.deviceIds.length; ++i) _addDevice(config.deviceIds[i]);
        _setAllowAnyDevice(config.allowAnyDevice);
        _setRequireTcbUpToDate(config.requireTcbUpToDate);
    }

    // ------------------------------------------------------------------ ownership

    /// @notice Disabled: an ownerless cluster could never evict a compromised member or rotate its policy.
    function renounceOwnership() public pure override {
        revert RenounceDisabled();
    }

    // ------------------------------------------------------------------ boot policy

    /// @inheritdoc IAppAuth
    /// @dev Fails closed: with empty allowlists nothing boots. A registered member stays bootable even after its
    ///      pre-approval is consumed, because eviction (removeMember) is the way to revoke it.
    function isAppAllowed(AppBootInfo calldata bootInfo) external view returns (bool isAllowed, string memory reason) {
        if (!allowedComposeHashes[bootInfo.composeHash]) return (false, "compose hash not allowed");
        if (!_allowAnyDevice && !allowedDeviceIds[bootInfo.deviceId]) return (false, "device not allowed");
        if (!allowedAppIds[bootInfo.appId] && _idByAppId[bootInfo.appId] == 0) return (false, "app id not allowed");
        if (_requireTcbUpToDate && keccak256(bytes(bootInfo.tcbStatus)) != TCB_UP_TO_DATE) {
            return (false, "tcb status not up to date");
        }
        return (true, "");
    }

    function addComposeHash(bytes32 composeHash) external onlyOwner {
        _addComposeHash(composeHash);
    }

    function removeComposeHash(bytes32 composeHash) external onlyOwner {
        if (!allowedComposeHashes[composeHash]) return;
        allowedComposeHashes[composeHash] = false;
        ++policyVersion;
        emit ComposeHashRemoved(composeHash);
    }

    function addDevice(bytes32 deviceId) external onlyOwner {
        _addDevice(deviceId);
    }

    function removeDevice(bytes32 deviceId) external onlyOwner {
        if (!allowedDeviceIds[deviceId]) return;
        allowedDeviceIds[deviceId] = false;
        ++policyVersion;
        emit DeviceRemoved(deviceId);
    }

    function setAllowAnyDevice(bool allowed) external onlyOwner {
        _setAllowAnyDevice(allowed);
    }

    function setRequireTcbUpToDate(bool required) external onlyOwner {
        _setRequireTcbUpToDate(required);
    }

    /// @dev Only this cluster's member apps: approving any other address would let its boot policy (another
    ///      cluster's, or none) stand in for this cluster's compose and TCB policy.
    function addAllowedAppId(address appId) external onlyOwner {
        _addAllowedAppId(appId);
    }

    function removeAllowedAppId(address appId) external onlyOwner {
        _removeAllowedAppId(appId);
    }

    function addKmsRoot(address kmsRoot) external onlyOwner {
        _addKmsRoot(kmsRoot);
    }

    function removeKmsRoot(address kmsRoot) external onlyOwner {
        if (!allowedKmsRoots[kmsRoot]) return;
        allowedKmsRoots[kmsRoot] = false;
        ++policyVersion;
        emit KmsRootRemoved(kmsRoot);
    }

    // ------------------------------------------------------------------ membership

    /// @inheritdoc ICluster
    /// @dev Cheap policy checks run before signature recovery so that a refused caller pays little. The chain's
    ///      internal consistency (KmsSignatureMismatch) is checked before the KMS allowlist so that a chain made
    ///      for another app id is reported as such rather than as an unknown root. The member-app check repeats
    ///      addAllowedAppId's so that another cluster's app id is named as such, not merely "not allowed".
    function register(SigChainProof calldata proof, MemberKeys calldata keys, string calldata endpoint)
        external
        returns (bytes32 memberId)
    {
        address appId = proof.appId;
        _checkMemberApp(appId);
        if (!allowedAppIds[appId]) revert AppIdNotAllowed(appId);
        if (_idByAppId[appId] != 0) revert AlreadyRegistered(appId, _idByAppId[appId]);

        address signer = _verifySigChain(proof);
        // dstack derives keys per app id, so a signer already in use means a replayed or shared key: one signer
        // must identify one member for memberIdOfSigner and the member-gated calls to be unambiguous.
        bytes32 existing = _idBySigner[signer];
        if (existing != 0) revert AlreadyRegistered(_members[existing].appId, existing);

        if (keys.sealPub == 0 || keys.wgPub == 0 || keys.identityPub == 0) revert ZeroKey();
        _checkEndpoint(endpoint);

        memberId = computeMemberId(appId);
        _claimKey(_wgHolder, "wireguard", keys.wgPub, memberId);
        _claimKey(_identityHolder, "identity", keys.identityPub, memberId);
        _claimKey(_sealHolder, "seal", keys.sealPub, memberId);
        uint32 meshIp = _allocateMeshIp();
        _members[memberId] = Member({
            id: memberId,
            appId: appId,
            signer: signer,
            sealPub: keys.sealPub,
            wgPub: keys.wgPub,
            identityPub: keys.identityPub,
            endpoint: endpoint,
            meshIp: meshIp,
            registeredAt: uint64(block.timestamp)
        });
        _memberIds.push(memberId);
        _idByAppId[appId] = memberId;
        _idBySigner[signer] = memberId;
        ++membershipVersion;
        emit MemberRegistered(memberId, appId, signer, meshIp);
    }

    function setEndpoint(string calldata endpoint) external {
        bytes32 memberId = _idBySigner[msg.sender];
        if (memberId == 0) revert NotMember(msg.sender);
        _checkEndpoint(endpoint);
        _members[memberId].endpoint = endpoint;
        ++membershipVersion;
        emit EndpointChanged(memberId, endpoint);
    }

    /// @inheritdoc ICluster
    /// @dev Set once per epoch: the commitment lets every later member check the CSK it receives, so changing it
    ///      would let whoever controls index 0 swap the key under the whole cluster. Only the current epoch: the
    ///      caller names it, so a commitment computed before a rotation cannot land in the rotated epoch.
    function setCskCommitment(uint64 epoch, bytes32 commitment) external {
        bytes32 originatorId = originator();
        if (originatorId == 0 || _members[originatorId].signer != msg.sender) revert NotOriginator(msg.sender);
        if (commitment == 0) revert ZeroCommitment();
        uint64 current = cskEpoch;
        if (epoch != current) revert WrongEpoch(current, epoch);
        bytes32 existing = cskCommitmentOf[epoch];
        if (existing != 0) revert CskCommitmentAlreadySet(epoch, existing);
        cskCommitmentOf[epoch] = commitment;
        emit CskCommitmentSet(originatorId, epoch, commitment);
    }

    /// @inheritdoc ICluster
    function cskCommitment() external view returns (bytes32) {
        return cskCommitmentOf[cskEpoch];
    }

    /// @inheritdoc ICluster
    /// @dev Allowed before the current epoch is committed (that epoch then simply never gets a key).
    function rotateCsk() external onlyOwner {
        _rotateCsk();
    }

    /// @inheritdoc ICluster
    function setRotateCskOnRemove(bool rotate) external onlyOwner {
        if (rotateCskOnRemove == rotate) return;
        rotateCskOnRemove = rotate;
        ++policyVersion;
        emit RotateCskOnRemoveSet(rotate);
    }

    /// @inheritdoc ICluster
    /// @dev Clearing the pre-approval means the evicted node's app id can neither boot (its keys are no longer
    ///      released) nor re-register until the owner approves it again; its public keys are freed so that, once
    ///      approved again, it can register with the same (deterministic) keys.
    function removeMember(bytes32 memberId) external onlyOwner {
        Member storage member = _members[memberId];
        if (member.id == 0) revert UnknownMember(memberId);
        address appId = member.appId;
        address signer = member.signer;
        delete _wgHolder[member.wgPub];
        delete _identityHolder[member.identityPub];
        delete _sealHolder[member.sealPub];

        // Shift rather than swap-and-pop: registration order (and so the originator) must stay stable.
        uint256 n = _memberIds.length;
        uint256 i = 0;
        while (_memberIds[i] != memberId) ++i;
        for (; i + 1 < n; ++i) _memberIds[i] = _memberIds[i + 1];
        _memberIds.pop();

        delete _members[memberId];
        delete _idByAppId[appId];
        delete _idBySigner[signer];
        ++membershipVersion;
        emit MemberRemoved(memberId, appId);
        _removeAllowedAppId(appId);
        if (rotateCskOnRemove) _rotateCsk();
    }

    // ------------------------------------------------------------------ views

    function allowAnyDevice() external view returns (bool) {
        return _allowAnyDevice;
    }

    function requireTcbUpToDate() external view returns (bool) {
        return _requireTcbUpToDate;
    }

    function memberCount() external view returns (uint256) {
        return _memberIds.length;
    }

    function memberIdOf(address appId) external view returns (bytes32) {
        return _idByAppId[appId];
    }

    function memberIdOfSigner(address signer) external view returns (bytes32) {
        return _idBySigner[signer];
    }

    /// @dev Namespaced by the cluster address so the same node app id in two clusters yields distinct ids.
    function computeMemberId(address appId) public view returns (bytes32) {
        return keccak256(abi.encode(address(this), appId));
    }

    function listMembers() external view returns (bytes32[] memory) {
        return _memberIds;
    }

    function originator() public view returns (bytes32) {
        return _memberIds.length == 0 ? bytes32(0) : _memberIds[0];
    }

    function memberById(bytes32 memberId) external view returns (Member memory) {
        return _members[memberId];
    }

    /// @dev One call returns the whole desired state, so a reconcile pass is a single consistent eth_call.
    function members() external view returns (Member[] memory) {
        uint256 n = _memberIds.length;
        Member[] memory all = new Member[](n);
        for (uint256 i = 0; i < n; ++i) all[i] = _members[_memberIds[i]];
        return all;
    }

    /// @inheritdoc ICluster
    /// @dev The limit is clamped to what is left, so `offset + limit` cannot overflow.
    function membersPage(uint256 offset, uint256 limit)
        external
        view
        returns (Member[] memory page, uint256 total)
    {
        total = _memberIds.length;
        if (offset >= total) return (new Member[](0), total);
        uint256 count = total - offset < limit ? total - offset : limit;
        page = new Member[](count);
        for (uint256 i = 0; i < count; ++i) page[i] = _members[_memberIds[offset + i]];
    }

    /// @inheritdoc ICluster
    function syncState()
        external
        view
        returns (
            uint64 membershipVersion_,
            uint64 policyVersion_,
            uint64 cskEpoch_,
            bytes32 cskCommitment_,
            uint256 memberCount_
        )
    {
        uint64 epoch = cskEpoch;
        return (membershipVersion, policyVersion, epoch, cskCommitmentOf[epoch], _memberIds.length);
    }

    function meshCidr() external view returns (uint32 base, uint8 prefixLength) {
        return (_meshBase, _meshPrefixLength);
    }

    function meshIpOf(bytes32 memberId) external view returns (uint32) {
        return _members[memberId].meshIp;
    }

    // ------------------------------------------------------------------ internals

    /// @dev Returns the derived key's address (== msg.sender) once every link of the chain checks out.
    function _verifySigChain(SigChainProof calldata proof) private view returns (address derived) {
        bytes memory derivedPubkey = proof.derivedPubkey;
        bytes memory appPubkey = proof.appPubkey;
        bytes memory appSignature = proof.appSignature;
        bytes memory kmsSignature = proof.kmsSignature;
        if (!DstackSigChain.isUncompressedPubkey(derivedPubkey) || !DstackSigChain.isUncompressedPubkey(appPubkey)) {
            revert InvalidPubkey();
        }
        if (!DstackSigChain.isWellFormedSignature(appSignature) || !DstackSigChain.isWellFormedSignature(kmsSignature))
        {
            revert InvalidSignature();
        }

        derived = DstackSigChain.pubkeyToAddress(derivedPubkey);
        if (msg.sender != derived) revert SenderNotDerivedKey(msg.sender, derived);

        address appKey = DstackSigChain.pubkeyToAddress(appPubkey);
        // A well-formed signature that recovers no key (r off the curve) reports recovered == address(0): to the
        // caller it is the same mistake as a signature by the wrong key.
        address appSigner = DstackSigChain.recoverAppSigner(derivedPubkey, appSignature);
        if (appSigner == address(0) || appSigner != appKey) revert AppSignatureMismatch(appKey, appSigner);

        address kmsSigner = DstackSigChain.recoverKmsSigner(proof.appId, appPubkey, kmsSignature);
        // The zero check matters: a claimed root of address(0) would otherwise "match" a failed recovery.
        if (kmsSigner == address(0) || kmsSigner != proof.kmsRoot) revert KmsSignatureMismatch(proof.kmsRoot, kmsSigner);
        if (!allowedKmsRoots[proof.kmsRoot]) revert KmsRootNotAllowed(proof.kmsRoot);
    }

    function _allocateMeshIp() private returns (uint32) {
        uint256 index = _nextHostIndex;
        // The last address of the block is the broadcast address; the first (index 0) is the network itself.
        if (index >= (uint256(1) << (32 - _meshPrefixLength)) - 1) revert MeshExhausted();
        _nextHostIndex = uint32(index + 1);
        return _meshBase + uint32(index);
    }

    /// @dev The length limit has its own error so that an oversized string is not echoed back in the revert.
    function _checkEndpoint(string calldata endpoint) private pure {
        if (bytes(endpoint).length > EndpointGrammar.MAX_LENGTH) revert EndpointTooLong(bytes(endpoint).length);
        if (!EndpointGrammar.isValid(bytes(endpoint))) revert InvalidEndpoint(endpoint);
    }

    /// @dev The factory's registry says the app is its ClusterMemberApp (so `cluster()` is safe to call and
    ///      cannot lie); the app's immutable cluster says whose it is. An EOA or any other contract is not ours.
    function _checkMemberApp(address appId) private view {
        if (!IClusterMemberAppFactory(memberAppFactory).isOurApp(appId)) revert NotMemberApp(appId);
        address cluster = IClusterMemberApp(appId).cluster();
        if (cluster != address(this)) revert ForeignApp(appId, cluster);
    }

    function _claimKey(
        mapping(bytes32 => bytes32) storage holders,
        string memory kind,
        bytes32 key,
        bytes32 memberId
    ) private {
        bytes32 holder = holders[key];
        if (holder != 0) revert KeyInUse(kind, key, holder);
        holders[key] = memberId;
    }

    function _rotateCsk() private {
        uint64 epoch = cskEpoch + 1;
        cskEpoch = epoch;
        emit CskRotated(epoch);
    }

    function _addComposeHash(bytes32 composeHash) private {
        if (allowedComposeHashes[composeHash]) return;
        allowedComposeHashes[composeHash] = true;
        ++policyVersion;
        emit ComposeHashAdded(composeHash);
    }

    function _addDevice(bytes32 deviceId) private {
        if (allowedDeviceIds[deviceId]) return;
        allowedDeviceIds[deviceId] = true;
        ++policyVersion;
        emit DeviceAdded(deviceId);
    }

    function _setAllowAnyDevice(bool value) private {
        if (_allowAnyDevice == value) return;
        _allowAnyDevice = value;
        ++policyVersion;
        emit AllowAnyDeviceSet(value);
    }

    function _setRequireTcbUpToDate(bool value) private {
        if (_requireTcbUpToDate == value) return;
        _requireTcbUpToDate = value;
        ++policyVersion;
        emit RequireTcbUpToDateSet(value);
    }

    function _addAllowedAppId(address appId) private {
        if (allowedAppIds[appId]) return;
        _checkMemberApp(appId);
        allowedAppIds[appId] = true;
        ++policyVersion;
        emit AppIdAllowed(appId);
    }

    function _removeAllowedAppId(address appId) private {
        if (!allowedAppIds[appId]) return;
        allowedAppIds[appId] = false;
        ++policyVersion;
        emit AppIdDisallowed(appId);
    }

    function _addKmsRoot(address kmsRoot) private {
        if (allowedKmsRoots[kmsRoot]) return;
        allowedKmsRoots[kmsRoot] = true;
        ++policyVersion;
        emit KmsRootAdded(kmsRoot);
    }
}
