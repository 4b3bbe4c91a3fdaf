// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title EndpointGrammar
/// @notice The member endpoint forms the sidecar accepts (sidecar/core/endpoint.py), checked character by
///         character so that a record no node can use never reaches the member list:
///
///             udp://<IPv4>:<port>   udp://[<IPv6>]:<port>   <IPv4>:<port>   [<IPv6>]:<port>   tls://<DNS name>:<port>
///
/// @dev Deliberately a subset of what the sidecar parses, never more (a property test feeds random strings to
///      both): ports are 1..65535 without leading zeros, IPv4 octets without leading zeros, IPv6 as RFC 4291
///      text (1..4 hex digits per group, at most one "::", an optional trailing dotted quad) without a zone,
///      DNS names of at least two labels of [A-Za-z0-9-] (1..63, no leading or trailing '-') whose last label
///      is not all digits. One pass over calldata, no allocation: characters are read with calldataload and
///      classified with one bit test against a 256-bit class mask. Every index stays below e.length (checked
///      before each read), so the arithmetic is unchecked.
library EndpointGrammar {
    uint256 internal constant MAX_LENGTH = 255;

    uint256 private constant COLON = 0x3a;
    uint256 private constant DOT = 0x2e;
    uint256 private constant DASH = 0x2d;
    uint256 private constant OPEN = 0x5b; // '['
    uint256 private constant CLOSE = 0x5d; // ']'
    uint256 private constant ZERO = 0x30;
    /// @dev Bit c set <=> character c belongs to the class.
    uint256 private constant DIGIT = 0x3ff << 0x30; // 0-9
    uint256 private constant HEX = DIGIT | (0x3f << 0x41) | (0x3f << 0x61); // 0-9 A-F a-f
    uint256 private constant LETTER = (0x3ffffff << 0x41) | (0x3ffffff << 0x61); // A-Z a-z
    uint256 private constant LABEL = DIGIT | LETTER | (1 << DASH); // a DNS label's characters
    /// @dev The first six bytes of the two schemes, as a big-endian integer.
    uint256 private constant TLS = 0x746c733a2f2f; // "tls://"
    uint256 private constant UDP = 0x7564703a2f2f; // "udp://"

    function isValid(bytes calldata e) internal pure returns (bool) {
        uint256 n = e.length;
        if (n == 0 || n > MAX_LENGTH) return false;
        unchecked {
            uint256 colon = n; // becomes the index of the last ':' (the port separator)
            while (colon != 0 && _at(e, colon - 1) != COLON) --colon;
            if (colon == 0) return false;
            --colon;
            if (!_isPort(e, colon + 1, n)) return false;
            uint256 scheme = n > 6 ? _head6(e) : 0;
            if (scheme == TLS) return _isDnsName(e, 6, colon);
            uint256 start = scheme == UDP ? 6 : 0;
            if (colon > start && _at(e, start) == OPEN) {
                return _at(e, colon - 1) == CLOSE && _isIPv6(e, start + 1, colon - 1);
            }
            return _isIPv4(e, start, colon);
        }
    }

    /// @dev The byte at `i` (the caller guarantees i < e.length).
    function _at(bytes calldata e, uint256 i) private pure returns (uint256 c) {
        assembly ("memory-safe") {
            c := byte(0, calldataload(add(e.offset, i)))
        }
    }

    /// @dev The first six bytes (the caller guarantees e.length > 6).
    function _head6(bytes calldata e) private pure returns (uint256 w) {
        assembly ("memory-safe") {
            w := shr(208, calldataload(e.offset))
        }
    }

    function _in(uint256 class, uint256 c) private pure returns (bool) {
        return (class >> c) & 1 == 1;
    }

    /// @dev A decimal number in [from, to) without leading zeros, at most `maxDigits` digits; its value.
    function _decimal(bytes calldata e, uint256 from, uint256 to, uint256 maxDigits)
        private
        pure
        returns (bool ok, uint256 value)
    {
        unchecked {
            uint256 len = to - from;
            if (len == 0 || len > maxDigits || (len > 1 && _at(e, from) == ZERO)) return (false, 0);
            for (uint256 i = from; i < to; ++i) {
                uint256 c = _at(e, i);
                if (!_in(DIGIT, c)) return (false, 0);
                value = value * 10 + c - ZERO;
            }
            return (true, value);
        }
    }

    function _isPort(bytes calldata e, uint256 from, uint256 to) private pure returns (bool) {
        (bool ok, uint256 port) = _decimal(e, from, to, 5);
        return ok && port != 0 && port <= 65535;
    }

    /// @dev Dotted quad in [from, to): four octets 0..255 without leading zeros.
    function _isIPv4(bytes calldata e, uint256 from, uint256 to) private pure returns (bool) {
        unchecked {
            uint256 octets = 0;
            uint256 i = from;
            while (true) {
                uint256 j = i;
                while (j < to && _at(e, j) != DOT) ++j;
                (bool ok, uint256 octet) = _decimal(e, i, j, 3);
                if (!ok || octet > 255) return false;
                ++octets;
                if (j == to) break;
                i = j + 1;
            }
            return octets == 4;
        }
    }

    /// @dev IPv6 text in [from, to), the form Python's ipaddress accepts minus zones: groups of 1..4 hex
    ///      digits split by ':', at most one "::" (standing for at least one zero group), and a dotted quad
    ///      allowed as the last two groups.
    function _isIPv6(bytes calldata e, uint256 from, uint256 to) private pure returns (bool) {
        unchecked {
            if (to < from + 2) return false;
            uint256 groups = 0;
            bool elided = false;
            uint256 i = from;
            if (_at(e, i) == COLON) {
                if (_at(e, i + 1) != COLON) return false;
                elided = true;
                i += 2;
                if (i == to) return true; // "::"
            }
            while (true) {
                uint256 j = i;
                while (j < to && _in(HEX, _at(e, j))) ++j;
                if (j < to && _at(e, j) == DOT) {
                    if (!_isIPv4(e, i, to)) return false;
                    groups += 2;
                    break;
                }
                if (j == i || j - i > 4) return false;
                ++groups;
                if (j == to) break;
                if (_at(e, j) != COLON) return false;
                ++j;
                if (j == to) return false; // a single trailing ':'
                if (_at(e, j) == COLON) {
                    if (elided) return false;
                    elided = true;
                    ++j;
                    if (j == to) break; // trailing "::"
                }
                i = j;
            }
            return elided ? groups <= 7 : groups == 8;
        }
    }

    /// @dev A DNS name in [from, to): at least two labels, each 1..63 of [A-Za-z0-9-] not starting or ending
    ///      with '-', the last not all digits (that would be an IP address).
    function _isDnsName(bytes calldata e, uint256 from, uint256 to) private pure returns (bool) {
        unchecked {
            uint256 labels = 0;
            uint256 start = from; // of the current label
            bool allDigits = true;
            for (uint256 j = from; j <= to; ++j) {
                uint256 c = j == to ? DOT : _at(e, j);
                if (c == DOT) {
                    uint256 len = j - start;
                    if (len == 0 || len > 63 || _at(e, start) == DASH || _at(e, j - 1) == DASH) return false;
                    ++labels;
                    if (j == to) return labels >= 2 && !allDigits;
                    start = j + 1;
                    allDigits = true;
                } else if (_in(LETTER, c) || c == DASH) {
                    allDigits = false;
                } else if (!_in(DIGIT, c)) {
                    return false;
                }
            }
            return false;
        }
    }
}
