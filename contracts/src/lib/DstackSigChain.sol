// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title DstackSigChain
/// @notice Rebuilds, on chain, the two messages of dstack's key-derivation signature chain
///         (KMS root -> app key -> derived key) and recovers their signers.
/// @dev dstack signs raw keccak256 digests (no EIP-191 prefix) with 65-byte r‖s‖v signatures whose v is the
///      bare recovery id (0/1), and both messages embed *compressed* SEC1 public keys. Callers pass 64-byte
///      uncompressed keys instead, because compressing on chain is a parity check while decompressing needs a
///      modular square root; the uncompressed form also hashes directly to the key's address.
///      Every function is internal and pure so the library is inlined and never needs linking.
library DstackSigChain {
    /// @dev secp256k1n / 2: larger s values are the malleable twin of a valid signature.
    uint256 internal constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    /// @dev The purpose dstack's guest agent prefixes when the sidecar asks GetKey for an Ethereum key.
    bytes internal constant ETHEREUM_PURPOSE = "ethereum";
    /// @dev The KMS's fixed domain tag for app keys it issues.
    bytes internal constant KMS_ISSUED_PREFIX = "dstack-kms-issued:";

    bytes16 private constant _HEX_DIGITS = "0123456789abcdef";

    /// @notice True for a 64-byte x ‖ y key. Anything else cannot be compressed or hashed to an address.
    function isUncompressedPubkey(bytes memory pubkey) internal pure returns (bool) {
        return pubkey.length == 64;
    }

    /// @notice True when `signature` is in the only shape dstack produces and ecrecover can use unambiguously:
    ///         65 bytes, v a recovery id (0/1, or 27/28 as some tools re-encode it), and low s.
    /// @dev Checked before any recovery so a malformed signature is reported as such rather than as a
    ///      mismatch against some random recovered address.
    function isWellFormedSignature(bytes memory signature) internal pure returns (bool) {
        if (signature.length != 65) return false;
        (, bytes32 s, uint8 v) = _split(signature);
        if (v != 0 && v != 1 && v != 27 && v != 28) return false;
        return uint256(s) <= HALF_ORDER;
    }

    /// @notice Signer of `digest`, or address(0) when the signature is malformed or does not recover.
    /// @dev dstack's v is 0/1; ecrecover (and OpenZeppelin) only accept 27/28, hence the normalisation.
    function recover(bytes32 digest, bytes memory signature) internal pure returns (address) {
        if (!isWellFormedSignature(signature)) return address(0);
        (bytes32 r, bytes32 s, uint8 v) = _split(signature);
        if (v < 27) v += 27;
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, v, r, s);
        return err == ECDSA.RecoverError.NoError ? signer : address(0);
    }

    /// @notice Ethereum address of a 64-byte uncompressed public key.
    function pubkeyToAddress(bytes memory pubkey) internal pure returns (address) {
        return address(uint160(uint256(keccak256(pubkey))));
    }

    /// @notice 33-byte SEC1 compressed form: the representation dstack signs over.
    function compress(bytes memory pubkey) internal pure returns (bytes memory) {
        bytes32 x;
        bytes32 y;
        assembly ("memory-safe") {
            x := mload(add(pubkey, 32))
            y := mload(add(pubkey, 64))
        }
        return bytes.concat(bytes1(uint8(2) + uint8(uint256(y) & 1)), x);
    }

    /// @notice Lowercase hex without 0x: how dstack's guest agent spells the derived key in the app's message.
    function toHexLower(bytes memory data) internal pure returns (bytes memory out) {
        out = new bytes(data.length * 2);
        for (uint256 i = 0; i < data.length; ++i) {
            uint8 b = uint8(data[i]);
            out[2 * i] = _HEX_DIGITS[b >> 4];
            out[2 * i + 1] = _HEX_DIGITS[b & 0x0f];
        }
    }

    /// @notice Digest the app key signs when GetKey issues a derived key for `purpose`:
    ///         keccak256(purpose ‖ ":" ‖ hex(compressed derived key)).
    function appMessageDigest(bytes memory purpose, bytes memory derivedPubkey) internal pure returns (bytes32) {
        return keccak256(bytes.concat(purpose, ":", toHexLower(compress(derivedPubkey))));
    }

    /// @notice Digest the KMS root signs when it releases an app key:
    ///         keccak256("dstack-kms-issued:" ‖ appId (20 B) ‖ compressed app key (33 B)).
    /// @dev Binding the app id here is what stops a chain issued for one app from registering another.
    function kmsMessageDigest(address appId, bytes memory appPubkey) internal pure returns (bytes32) {
        return keccak256(bytes.concat(KMS_ISSUED_PREFIX, bytes20(appId), compress(appPubkey)));
    }

    /// @notice Recovers the app-key signer of a derived key's "ethereum" chain link.
    function recoverAppSigner(bytes memory derivedPubkey, bytes memory appSignature) internal pure returns (address) {
        return recover(appMessageDigest(ETHEREUM_PURPOSE, derivedPubkey), appSignature);
    }

    /// @notice Recovers the KMS signer that issued `appPubkey` to `appId`.
    function recoverKmsSigner(address appId, bytes memory appPubkey, bytes memory kmsSignature)
        internal
        pure
        returns (address)
    {
        return recover(kmsMessageDigest(appId, appPubkey), kmsSignature);
    }

    function _split(bytes memory signature) private pure returns (bytes32 r, bytes32 s, uint8 v) {
        assembly ("memory-safe") {
            r := mload(add(signature, 32))
            s := mload(add(signature, 64))
            v := byte(0, mload(add(signature, 96)))
        }
    }
}
