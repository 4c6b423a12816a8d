/// A 48-bit Ethernet MAC address.
public struct MACAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var octets: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

    @inlinable
    public init(_ bytes: some Collection<UInt8>) {
        precondition(bytes.count >= 6)
        var i = bytes.startIndex
        func next() -> UInt8 {
            defer { i = bytes.index(after: i) }
            return bytes[i]
        }
        octets = (next(), next(), next(), next(), next(), next())
    }

    /// The six octets in the low 48 bits, first octet highest: equality, hashing and ordering
    /// use it, so a MAC keys a dictionary without allocating.
    @inlinable
    public var packed: UInt64 {
        UInt64(octets.0) << 40 | UInt64(octets.1) << 32 | UInt64(octets.2) << 24 | UInt64(octets.3) << 16
            | UInt64(octets.4) << 8 | UInt64(octets.5)
    }

    /// Parses `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabbccddeeff` (any case).
    public init?(_ text: some StringProtocol) {
        let hex = String(text.filter { $0 != ":" && $0 != "-" })
        let separators = text.count - hex.count
        guard hex.count == 12, separators == 0 || separators == 5, hex.allSatisfy(\.isHexDigit) else { return nil }
        var out: [UInt8] = []
        var i = hex.startIndex
        for _ in 0..<6 {
            let j = hex.index(i, offsetBy: 2)
            guard let v = UInt8(hex[i..<j], radix: 16) else { return nil }
            out.append(v)
            i = j
        }
        if separators == 5 {
            // Separators must sit between every pair of digits.
            let parts = text.split(whereSeparator: { $0 == ":" || $0 == "-" })
            guard parts.count == 6, parts.allSatisfy({ $0.count == 2 }) else { return nil }
        }
        self.init(out)
    }

    public var bytes: [UInt8] { [octets.0, octets.1, octets.2, octets.3, octets.4, octets.5] }

    private static let hexDigits = Array("0123456789abcdef")

    public func formatted(separator: Character) -> String {
        var s = ""
        s.reserveCapacity(17)
        for (i, b) in bytes.enumerated() {
            if i > 0 { s.append(separator) }
            s.append(Self.hexDigits[Int(b >> 4)])
            s.append(Self.hexDigits[Int(b & 0xF)])
        }
        return s
    }

    /// Lower-case, colon separated: the canonical form Farrier stores and prints.
    public var description: String { formatted(separator: ":") }

    @inlinable public static func == (a: MACAddress, b: MACAddress) -> Bool { a.packed == b.packed }
    @inlinable public func hash(into h: inout Hasher) { h.combine(packed) }
    @inlinable public static func < (a: MACAddress, b: MACAddress) -> Bool { a.packed < b.packed }
}
