// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AppBootInfo, IAppAuth} from "./IAppAuth.sol";

/// @notice One AttestMesh cluster: boot policy, KMS roots, membership with contract-allocated mesh IPs and the
///         CSK commitment of each CSK epoch. Owner-only administration uses OpenZeppelin's two-step ownership.
interface ICluster is IAppAuth {
    /// @notice The dstack signature chain for the node's signer key, as obtained from `GetKey`.
    struct SigChainProof {
        address appId; // dstack app id the keys were issued for (the node's ClusterMemberApp)
        address kmsRoot; // KMS root the chain claims to end at
        bytes derivedPubkey; // 64 B uncompressed secp256k1 (x ‖ y) of the derived key; its address must be msg.sender
        bytes appPubkey; // 64 B uncompressed secp256k1 (x ‖ y) of the app key
        bytes appSignature; // 65 B r‖s‖v (v 0/1 or 27/28) by the app key over keccak256("ethereum:" ‖ hex(compressed derived))
        bytes kmsSignature; // 65 B r‖s‖v by the KMS root over keccak256("dstack-kms-issued:" ‖ appId ‖ compressed app pubkey)
    }

    /// @notice Public keys a member publishes at registration (all derived from dstack GetKey paths).
    struct MemberKeys {
        bytes32 sealPub; // X25519: sealed boxes addressed to the member (CSK delivery)
        bytes32 wgPub; // X25519 WireGuard public key
        bytes32 identityPub; // Ed25519: heartbeats, CSK requests, indexer hello
    }

    struct Member {
        bytes32 id; // keccak256(abi.encode(cluster, appId))
        address appId;
        address signer; // address of the derived signer key; sends the member's transactions
        bytes32 sealPub;
        bytes32 wgPub;
        bytes32 identityPub;
        string endpoint; // udp://ip:port, [v6]/ip:port (legacy) or tls://name:port: the forms the sidecar parses
        uint32 meshIp; // allocated by the contract from meshCidr(), never reused
        uint64 registeredAt; // block timestamp
    }

    // --- errors (the chain adapter maps each one to a typed Python exception of the same name) ---
    error AppIdNotAllowed(address appId);
    error NotMemberApp(address appId); // not a ClusterMemberApp of memberAppFactory (an EOA, another contract)
    error ForeignApp(address appId, address cluster); // a member app of another cluster
    error InvalidMemberAppFactory(address factory); // construction: zero or no code
    error KeyInUse(string kind, bytes32 key, bytes32 holder); // kind: "wireguard", "identity" or "seal"
    error InvalidEndpoint(string endpoint);
    error AlreadyRegistered(address appId, bytes32 memberId);
    error KmsRootNotAllowed(address kmsRoot);
    error KmsSignatureMismatch(address claimedRoot, address recovered);
    error AppSignatureMismatch(address appKey, address recovered);
    error InvalidSignature();
    error InvalidPubkey();
    error SenderNotDerivedKey(address sender, address derived);
    error ZeroKey();
    error EndpointTooLong(uint256 length);
    error MeshExhausted();
    error InvalidMeshCidr(uint32 base, uint8 prefixLength);
    error NotMember(address sender);
    error UnknownMember(bytes32 memberId);
    error NotOriginator(address sender);
    error CskCommitmentAlreadySet(uint64 epoch, bytes32 commitment);
    error WrongEpoch(uint64 expected, uint64 given);
    error ZeroCommitment();
    error RenounceDisabled();

    // --- events: one for every state change ---
    event MemberRegistered(bytes32 indexed memberId, address indexed appId, address indexed signer, uint32 meshIp);
    event MemberRemoved(bytes32 indexed memberId, address indexed appId);
    event EndpointChanged(bytes32 indexed memberId, string endpoint);
    event CskCommitmentSet(bytes32 indexed originator, uint64 indexed epoch, bytes32 commitment);
    event CskRotated(uint64 epoch);
    event RotateCskOnRemoveSet(bool rotateCskOnRemove);
    event ComposeHashAdded(bytes32 indexed composeHash);
    event ComposeHashRemoved(bytes32 indexed composeHash);
    event DeviceAdded(bytes32 indexed deviceId);
    event DeviceRemoved(bytes32 indexed deviceId);
    event AllowAnyDeviceSet(bool allowAnyDevice);
    event RequireTcbUpToDateSet(bool requireTcbUpToDate);
    event AppIdAllowed(address indexed appId);
    event AppIdDisallowed(address indexed appId);
    event KmsRootAdded(address indexed kmsRoot);
    event KmsRootRemoved(address indexed kmsRoot);

    // --- boot policy admin (owner only; adding what is present or removing what is absent is a no-op) ---
    function addComposeHash(bytes32 composeHash) external;
    function removeComposeHash(bytes32 composeHash) external;
    function addDevice(bytes32 deviceId) external;
    function removeDevice(bytes32 deviceId) external;
    function setAllowAnyDevice(bool allowed) external;
    function setRequireTcbUpToDate(bool required) external;
    /// @notice Pre-approve a node: `appId` must be a ClusterMemberApp that memberAppFactory deployed for this
    ///         cluster (NotMemberApp, ForeignApp otherwise).
    function addAllowedAppId(address appId) external;
    function removeAllowedAppId(address appId) external;
    function addKmsRoot(address kmsRoot) external;
    function removeKmsRoot(address kmsRoot) external;

    function allowedComposeHashes(bytes32 composeHash) external view returns (bool);
    function allowedDeviceIds(bytes32 deviceId) external view returns (bool);
    function allowAnyDevice() external view returns (bool);
    function requireTcbUpToDate() external view returns (bool);
    function allowedAppIds(address appId) external view returns (bool);
    function allowedKmsRoots(address kmsRoot) external view returns (bool);
    /// @notice The ClusterMemberAppFactory whose apps (deployed for this cluster) may be approved; fixed at deployment.
    function memberAppFactory() external view returns (address);

    // --- membership ---
    /// @notice Register msg.sender's node. Verifies the dstack chain on chain; allocates the mesh IP. The app id must
    ///         be this cluster's approved member app, the three public keys held by no other member, the endpoint
    ///         one of the sidecar's forms (InvalidEndpoint).
    function register(SigChainProof calldata proof, MemberKeys calldata keys, string calldata endpoint)
        external
        returns (bytes32 memberId);
    /// @notice Member-gated: change the caller's endpoint (validated as in register).
    function setEndpoint(string calldata endpoint) external;
    /// @notice Originator (listMembers()[0]) only, once per epoch and only for the current epoch (WrongEpoch
    ///         otherwise): keccak256 of that epoch's cluster shared key.
    function setCskCommitment(uint64 epoch, bytes32 commitment) external;
    /// @notice Owner-only: start the next CSK epoch (CskRotated); its originator then commits the new key.
    function rotateCsk() external;
    /// @notice Owner-only: whether removeMember also rotates the CSK (so an evicted member never learns the next key).
    function setRotateCskOnRemove(bool rotate) external;
    /// @notice Owner-only eviction. Also revokes the app id's pre-approval and frees its public keys; the mesh IP
    ///         is never reused. Rotates the CSK when rotateCskOnRemove is set.
    function removeMember(bytes32 memberId) external;

    function memberCount() external view returns (uint256);
    function memberIdOf(address appId) external view returns (bytes32); // zero when not a member
    function memberIdOfSigner(address signer) external view returns (bytes32); // zero when not a member
    function computeMemberId(address appId) external view returns (bytes32);
    function listMembers() external view returns (bytes32[] memory); // registration order; [0] is the originator
    function originator() external view returns (bytes32); // zero when the cluster is empty
    function memberById(bytes32 memberId) external view returns (Member memory); // id == 0 when absent
    function members() external view returns (Member[] memory); // every record, registration order, one call
    function meshCidr() external view returns (uint32 base, uint8 prefixLength);
    function meshIpOf(bytes32 memberId) external view returns (uint32); // zero when absent
    function cskEpoch() external view returns (uint64); // the current CSK epoch; starts at 1
    function cskCommitmentOf(uint64 epoch) external view returns (bytes32); // zero until that epoch's is set
    function cskCommitment() external view returns (bytes32); // the current epoch's; zero until set
    function rotateCskOnRemove() external view returns (bool);

    // --- change detection and paged reads (a node skips re-reading what has not changed) ---
    /// @notice Bumped by every change to what members() / membersPage return: register, setEndpoint, removeMember.
    function membershipVersion() external view returns (uint64);
    /// @notice Bumped by every change to the rest of what a sidecar's snapshot reads: compose hashes, devices,
    ///         allow-any-device, the TCB rule, app ids, KMS roots, rotate-on-remove. (The CSK epoch and
    ///         commitment are in syncState itself; the mesh CIDR never changes.)
    function policyVersion() external view returns (uint64);
    /// @notice Members [offset, offset + limit) in registration order, the same records as members(), and the
    ///         member count; an offset at or past the end gives an empty page.
    function membersPage(uint256 offset, uint256 limit) external view returns (Member[] memory page, uint256 total);
    /// @notice One call telling a node whether anything it holds changed: both versions, the current CSK epoch and
    ///         its commitment (zero until set), the member count.
    function syncState()
        external
        view
        returns (
            uint64 membershipVersion_,
            uint64 policyVersion_,
            uint64 cskEpoch_,
            bytes32 cskCommitment_,
            uint256 memberCount_
        );
}
