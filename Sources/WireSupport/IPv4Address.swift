/// An IPv4 address held as a host-order 32-bit integer.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad notation; returns nil for anything else.
    public init?(_ text: some StringProtocol) {
        var parts: [UInt32] = []
        for piece in text.split(separator: ".", omittingEmptySubsequences: false) {
            guard !piece.isEmpty, piece.count <= 3, piece.allSatisfy({ ("0"..."9").contains($0) }),
                let n = UInt32(piece),
                n <= 255
            else { return nil }
            parts.append(n)
        }
        guard parts.count == 4 else { return nil }
        value = parts[0] << 24 | parts[1] << 16 | parts[2] << 8 | parts[3]
    }

    public static let any = IPv4Address(0)
    public static let broadcast = IPv4Address(0xFFFF_FFFF)

    public var bytes: [UInt8] {
        [
            UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8),
            UInt8(truncatingIfNeeded: value),
        ]
    }

    public var description: String {
        "\(value >> 24).\((value >> 16) & 0xFF).\((value >> 8) & 0xFF).\(value & 0xFF)"
    }

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.value < rhs.value }
}

/// An IPv4 network in CIDR form, e.g. 198.18.0.0/24.
public struct IPv4Network: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    public var prefixLength: Int

    public init(address: IPv4Address, prefixLength: Int) {
        precondition((0...32).contains(prefixLength))
        self.prefixLength = prefixLength
        self.address = IPv4Address(address.value & Self.mask(prefixLength))
    }

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", maxSplits: 1)
        guard parts.count == 2, let addr = IPv4Address(parts[0]), let len = Int(parts[1]), (0...32).contains(len)
        else { return nil }
        self.init(address: addr, prefixLength: len)
    }

    static func mask(_ length: Int) -> UInt32 { length == 0 ? 0 : UInt32.max << (32 - UInt32(length)) }

    public var netmask: IPv4Address { IPv4Address(Self.mask(prefixLength)) }
    public var broadcast: IPv4Address { IPv4Address(address.value | ~Self.mask(prefixLength)) }

    public func contains(_ ip: IPv4Address) -> Bool {
        ip.value & Self.mask(prefixLength) == address.value
    }

    public var description: String { "\(address)/\(prefixLength)" }
}
