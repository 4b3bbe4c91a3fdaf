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
///      is not all digits. No allocation, no copying: one pass over calldata.
library EndpointGrammar {
    uint256 internal constant MAX_LENGTH = 255;

    function isValid(bytes calldata e) internal pure returns (bool) {
        uint256 n = e.length;
        if (n == 0 || n > MAX_LENGTH) return false;
        uint256 colon = n; // index of the last ':' (the port separator)
        while (colon > 0 && e[colon - 1] != ":") --colon;
        if (colon == 0) return false;
        --colon;
        if (!_isPort(e, colon + 1, n)) return false;
        if (_hasScheme(e, "tls")) return _isDnsName(e, 6, colon);
        uint256 start = _hasScheme(e, "udp") ? 6 : 0;
        if (colon > start && e[start] == "[") return e[colon - 1] == "]" && _isIPv6(e, start + 1, colon - 1);
        return _isIPv4(e, start, colon);
    }

    /// @dev "<scheme>://" at the start, for a three-letter scheme.
    function _hasScheme(bytes calldata e, bytes3 scheme) private pure returns (bool) {
        return e.length > 6 && bytes3(e[0:3]) == scheme && bytes3(e[3:6]) == "://";
    }

    function _isDigit(bytes1 c) private pure returns (bool) {
        return c >= "0" && c <= "9";
    }

    function _isHex(bytes1 c) private pure returns (bool) {
        return _isDigit(c) || (c >= "a" && c <= "f") || (c >= "A" && c <= "F");
    }

    /// @dev A decimal number in [from, to) without leading zeros, at most `maxDigits` digits; its value.
    function _decimal(bytes calldata e, uint256 from, uint256 to, uint256 maxDigits)
        private
        pure
        returns (bool ok, uint256 value)
    {
        uint256 len = to - from;
        if (len == 0 || len > maxDigits || (len > 1 && e[from] == "0")) return (false, 0);
        for (uint256 i = from; i < to; ++i) {
            if (!_isDigit(e[i])) return (false, 0);
            value = value * 10 + uint8(e[i]) - 48;
        }
        return (true, value);
    }

    function _isPort(bytes calldata e, uint256 from, uint256 to) private pure returns (bool) {
        (bool ok, uint256 port) = _decimal(e, from, to, 5);
        return ok && port >= 1 && port <= 65535;
    }

    /// @dev Dotted quad in [from, to): four octets 0..255 without leading zeros.
    function _isIPv4(bytes calldata e, uint256 from, uint256 to) private pure returns (bool) {
        uint256 octets = 0;
        uint256 i = from;
        while (true) {
            uint256 j = i;
            while (j < to && e[j] != ".") ++j;
            (bool ok, uint256 octet) = _decimal(e, i, j, 3);
            if (!ok || octet > 255) return false;
            ++octets;
            if (j == to) break;
            i = j + 1;
        }
        return octets == 4;
    }

    /// @dev IPv6 text in [from, to), the form Python's ipaddress accepts minus zones: groups of 1..4 hex
    ///      digits split by ':', at most one "::" (standing for at least one zero group), and a dotted quad
    ///      allowed as the last two groups.
    function _isIPv6(bytes calldata e, uint256 from, uint256 to) private pure returns (bool) {
        if (to < from + 2) return false;
        uint256 groups = 0;
        bool elided = false;
        uint256 i = from;
        if (e[i] == ":") {
            if (e[i + 1] != ":") return false;
            elided = true;
            i += 2;
            if (i == to) return true; // "::"
        }
        while (true) {
            uint256 j = i;
            while (j < to && _isHex(e[j])) ++j;
            if (j < to && e[j] == ".") {
                if (!_isIPv4(e, i, to)) return false;
                groups += 2;
                break;
            }
            if (j == i || j - i > 4) return false;
            ++groups;
            if (j == to) break;
            if (e[j] != ":") return false;
            ++j;
            if (j == to) return false; // a single trailing ':'
            if (e[j] == ":") {
                if (elided) return false;
                elided = true;
                ++j;
                if (j == to) break; // trailing "::"
            }
            i = j;
        }
        return elided ? groups <= 7 : groups == 8;
    }

    /// @dev A DNS name in [from, to): at least two labels, each 1..63 of [A-Za-z0-9-] not starting or ending
    ///      with '-', the last not all digits (that would be an IP address).
    function _isDnsName(bytes calldata e, uint256 from, uint256 to) private pure returns (bool) {
        uint256 labels = 0;
        uint256 start = from; // of the current label
        bool allDigits = true;
        for (uint256 j = from; j <= to; ++j) {
            if (j == to || e[j] == ".") {
                uint256 len = j - start;
                if (len == 0 || len > 63 || e[start] == "-" || e[j - 1] == "-") return false;
                ++labels;
                if (j == to) return labels >= 2 && !allDigits;
                start = j + 1;
                allDigits = true;
                continue;
            }
            bytes1 c = e[j];
            if ((c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c == "-") allDigits = false;
            else if (!_isDigit(c)) return false;
        }
        return false;
    }
}
