import WireSupport

/// The options of a DHCP message, in the order they appeared (or were set).
///
/// Repeated occurrences of one code are concatenated on decode (RFC 3396 §7) and long values are
/// split across occurrences on encode, so each code appears here once.
public struct DHCPOptions: Hashable, Sendable, Sequence {
    public private(set) var entries: [(code: DHCPOptionCode, value: [UInt8])] = []

    public init() {}

    public init(_ entries: [(DHCPOptionCode, [UInt8])]) {
        for (c, v) in entries { append(c, v) }
    }

    public subscript(code: DHCPOptionCode) -> [UInt8]? {
        get { entries.first(where: { $0.code == code })?.value }
        set {
            if let i = entries.firstIndex(where: { $0.code == code }) {
                if let newValue { entries[i].value = newValue } else { entries.remove(at: i) }
            } else if let newValue {
                entries.append((code, newValue))
            }
        }
    }

    /// Appends `value`, concatenating onto an existing occurrence of `code` (RFC 3396).
    public mutating func append(_ code: DHCPOptionCode, _ value: some Sequence<UInt8>) {
        if let i = entries.firstIndex(where: { $0.code == code }) {
            entries[i].value.append(contentsOf: value)
        } else {
            entries.append((code, Array(value)))
        }
    }

    public var count: Int { entries.count }
    public var codes: [DHCPOptionCode] { entries.map(\.code) }

    public func makeIterator() -> IndexingIterator<[(code: DHCPOptionCode, value: [UInt8])]> {
        entries.makeIterator()
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.entries.count == b.entries.count
            && zip(a.entries, b.entries).allSatisfy { $0.code == $1.code && $0.value == $1.value }
    }

    public func hash(into h: inout Hasher) {
        for e in entries {
            h.combine(e.code)
            h.combine(e.value)
        }
    }
}

// MARK: Typed accessors (RFC 2132, 3004, 4578, 6842)

extension DHCPOptions {
    public var messageType: DHCPMessageType? {
        get { self[.messageType].flatMap { $0.count == 1 ? DHCPMessageType(rawValue: $0[0]) : nil } }
        set { self[.messageType] = newValue.map { [$0.rawValue] } }
    }

    public func ipv4(_ code: DHCPOptionCode) -> IPv4Address? {
        guard let v = self[code], v.count == 4 else { return nil }
        return IPv4Address(v[0], v[1], v[2], v[3])
    }

    public func ipv4List(_ code: DHCPOptionCode) -> [IPv4Address]? {
        guard let v = self[code], !v.isEmpty, v.count % 4 == 0 else { return nil }
        return stride(from: 0, to: v.count, by: 4).map { IPv4Address(v[$0], v[$0 + 1], v[$0 + 2], v[$0 + 3]) }
    }

    public func uint32(_ code: DHCPOptionCode) -> UInt32? {
        guard let v = self[code], v.count == 4 else { return nil }
        return UInt32(v[0]) << 24 | UInt32(v[1]) << 16 | UInt32(v[2]) << 8 | UInt32(v[3])
    }

    /// The value as text; non-printable bytes make it nil. Trailing NULs are dropped.
    public func string(_ code: DHCPOptionCode) -> String? {
        guard var v = self[code] else { return nil }
        while v.last == 0 { v.removeLast() }
        guard v.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return nil }
        return String(decoding: v, as: UTF8.self)
    }

    public mutating func set(_ code: DHCPOptionCode, ipv4 addresses: IPv4Address...) {
        self[code] = addresses.flatMap(\.bytes)
    }

    public mutating func set(_ code: DHCPOptionCode, ipv4List addresses: [IPv4Address]) {
        self[code] = addresses.flatMap(\.bytes)
    }

    public mutating func set(_ code: DHCPOptionCode, uint32 value: UInt32) {
        var b: [UInt8] = []
        b.appendUInt32(value)
        self[code] = b
    }

    public mutating func set(_ code: DHCPOptionCode, string: String) {
        self[code] = Array(string.utf8)
    }

    public var requestedIPAddress: IPv4Address? { ipv4(.requestedIPAddress) }
    public var serverIdentifier: IPv4Address? { ipv4(.serverIdentifier) }
    public var parameterRequestList: [UInt8] { self[.parameterRequestList] ?? [] }
    public var vendorClassIdentifier: String? { string(.vendorClassIdentifier) }

    public var maximumMessageSize: Int? {
        guard let v = self[.maximumMessageSize], v.count == 2 else { return nil }
        return Int(v[0]) << 8 | Int(v[1])
    }

    /// User classes (option 77). RFC 3004 frames each class with a length byte; iPXE and some
    /// firmware send one raw string instead. Both are accepted: when the RFC framing does not
    /// account for every byte, the whole value is one class.
    public var userClasses: [[UInt8]] {
        guard let v = self[.userClass], !v.isEmpty else { return [] }
        var classes: [[UInt8]] = []
        var i = 0
        while i < v.count {
            let n = Int(v[i])
            guard n > 0, i + 1 + n <= v.count else { return [v] }
            classes.append(Array(v[(i + 1)..<(i + 1 + n)]))
            i += 1 + n
        }
        return classes
    }

    /// Client system architectures (option 93, RFC 4578 §2.1): a list of 16-bit types.
    public var clientArchitectures: [UInt16]? {
        guard let v = self[.clientSystemArchitecture], !v.isEmpty, v.count % 2 == 0 else { return nil }
        return stride(from: 0, to: v.count, by: 2).map { UInt16(v[$0]) << 8 | UInt16(v[$0 + 1]) }
    }

    /// Client machine identifier (option 97, RFC 4578 §2.3): type 0 followed by a 16-byte GUID.
    /// Other lengths or types are rejected.
    public var clientMachineIdentifier: [UInt8]? {
        guard let v = self[.clientMachineIdentifier], v.count == 17, v[0] == 0 else { return nil }
        return v
    }

    /// The sub-options of an encapsulated option such as 43 or 175 (code, length, value),
    /// or nil if they are malformed.
    public func encapsulated(_ code: DHCPOptionCode) -> [UInt8: [UInt8]]? {
        guard let v = self[code] else { return nil }
        var out: [UInt8: [UInt8]] = [:]
        var i = 0
        while i < v.count {
            let sub = v[i]
            if sub == 0 {
                i += 1
                continue
            }
            if sub == 255 { break }
            guard i + 1 < v.count else { return nil }
            let n = Int(v[i + 1])
            guard i + 2 + n <= v.count else { return nil }
            out[sub] = Array(v[(i + 2)..<(i + 2 + n)])
            i += 2 + n
        }
        return out
    }
}
