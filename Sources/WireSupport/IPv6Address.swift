/// An IPv6 address held as two host-order 64-bit halves (`high` holds the first four groups).
public struct IPv6Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// From eight 16-bit groups, first group first.
    public init(groups: [UInt16]) {
        precondition(groups.count == 8)
        high = groups[0..<4].reduce(0) { $0 << 16 | UInt64($1) }
        low = groups[4..<8].reduce(0) { $0 << 16 | UInt64($1) }
    }

    public static let unspecified = IPv6Address(high: 0, low: 0)

    /// The eight 16-bit groups, first group first.
    public var groups: [UInt16] {
        (0..<4).map { UInt16(truncatingIfNeeded: high >> (48 - 16 * UInt64($0))) }
            + (0..<4).map { UInt16(truncatingIfNeeded: low >> (48 - 16 * UInt64($0))) }
    }

    /// Parses RFC 4291 §2.2 text: eight groups of one to four hex digits separated by `:`, at
    /// most one `::` standing for one or more groups of zeros, and optionally a dotted-quad IPv4
    /// address as the last 32 bits. A zone index (`%eth0`) or a prefix length is not an address;
    /// anything else returns nil.
    public init?(_ text: some StringProtocol) {
        let s = String(text)
        guard !s.isEmpty, s.count <= 45, s.allSatisfy(\.isASCII) else { return nil }
        let halves = Self.halves(s)
        var groups: [UInt16]
        switch halves.count {
        case 1:
            guard let all = Self.pieces(halves[0], ipv4Last: true), all.count == 8 else { return nil }
            groups = all
        case 2:
            guard let head = Self.pieces(halves[0], ipv4Last: false),
                let tail = Self.pieces(halves[1], ipv4Last: true),
                head.count + tail.count <= 7
            else { return nil }
            groups = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        default:
            return nil
        }
        self.init(groups: groups)
    }

    /// The text split at each `::` (one piece if there is none).
    private static func halves(_ s: String) -> [String] {
        let chars = Array(s)
        var out: [String] = []
        var start = 0
        var i = 0
        while i + 1 < chars.count {
            if chars[i] == ":", chars[i + 1] == ":" {
                out.append(String(chars[start..<i]))
                i += 2
                start = i
            } else {
                i += 1
            }
        }
        out.append(String(chars[start...]))
        return out
    }

    /// The groups of one side of `::` (empty text: none), or nil if a piece is not 1-4 hex
    /// digits (or, last and allowed, a dotted quad).
    private static func pieces(_ text: String, ipv4Last: Bool) -> [UInt16]? {
        if text.isEmpty { return [] }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        var out: [UInt16] = []
        for (i, part) in parts.enumerated() {
            if ipv4Last, i == parts.count - 1, part.contains(".") {
                guard let v4 = IPv4Address(part) else { return nil }
                out += [UInt16(v4.value >> 16), UInt16(truncatingIfNeeded: v4.value)]
            } else {
                guard (1...4).contains(part.count), part.allSatisfy(\.isHexDigit), let g = UInt16(part, radix: 16)
                else { return nil }
                out.append(g)
            }
        }
        return out
    }

    /// RFC 5952 text: lower-case hex without leading zeros, the longest run of two or more
    /// zero groups (the first of equally long runs) as `::`, and an IPv4-mapped address
    /// (`::ffff:0:0/96`) with its last 32 bits as a dotted quad.
    public var description: String {
        let g = groups
        if high == 0, low >> 32 == 0xFFFF {
            return "::ffff:" + IPv4Address(UInt32(truncatingIfNeeded: low)).description
        }
        var best = (start: -1, count: 0)
        var i = 0
        while i < 8 {
            if g[i] == 0 {
                var j = i
                while j < 8, g[j] == 0 { j += 1 }
                if j - i > best.count { best = (i, j - i) }
                i = j
            } else {
                i += 1
            }
        }
        func hex(_ range: Range<Int>) -> String { g[range].map { String($0, radix: 16) }.joined(separator: ":") }
        guard best.count >= 2 else { return hex(0..<8) }
        return hex(0..<best.start) + "::" + hex((best.start + best.count)..<8)
    }

    /// The address `n` after this one, or nil past the last address.
    public func advanced(by n: UInt64) -> IPv6Address? {
        let (newLow, carry) = low.addingReportingOverflow(n)
        if !carry { return IPv6Address(high: high, low: newLow) }
        let (newHigh, overflow) = high.addingReportingOverflow(1)
        return overflow ? nil : IPv6Address(high: newHigh, low: newLow)
    }

    public static func < (lhs: IPv6Address, rhs: IPv6Address) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }
}

/// An IPv6 network in CIDR form, e.g. fd98:18:100::/64 (its host bits cleared).
public struct IPv6Network: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv6Address
    public var prefixLength: Int

    public init(address: IPv6Address, prefixLength: Int) {
        precondition((0...128).contains(prefixLength))
        self.prefixLength = prefixLength
        let (high, low) = Self.mask(prefixLength)
        self.address = IPv6Address(high: address.high & high, low: address.low & low)
    }

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, let addr = IPv6Address(parts[0]), parts[1].allSatisfy({ ("0"..."9").contains($0) }),
            let len = Int(parts[1]), (0...128).contains(len)
        else { return nil }
        self.init(address: addr, prefixLength: len)
    }

    /// The mask's two halves.
    static func mask(_ length: Int) -> (UInt64, UInt64) {
        func half(_ bits: Int) -> UInt64 { bits <= 0 ? 0 : bits >= 64 ? .max : UInt64.max << UInt64(64 - bits) }
        return (half(length), half(length - 64))
    }

    public func contains(_ ip: IPv6Address) -> Bool {
        let (high, low) = Self.mask(prefixLength)
        return ip.high & high == address.high && ip.low & low == address.low
    }

    /// Its last address (all host bits set).
    public var last: IPv6Address {
        let (high, low) = Self.mask(prefixLength)
        return IPv6Address(high: address.high | ~high, low: address.low | ~low)
    }

    public var description: String { "\(address)/\(prefixLength)" }
}
