/// Why a DHCP datagram could not be decoded. Equatable on `code` only.
public struct DHCPWireError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        case truncatedHeader = "truncated header"
        case badMagicCookie = "bad magic cookie"
        case badHardwareAddressLength = "bad hardware address length"
        case truncatedOption = "truncated option"
        case missingEndOption = "options not terminated"
        case badOptionLength = "bad option length"
    }

    public let code: Code
    public let detail: String

    @inline(never)
    public init(_ code: Code, _ detail: String = "") {
        self.code = code
        self.detail = detail
    }

    public var description: String { detail.isEmpty ? code.rawValue : "\(code.rawValue): \(detail)" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code }
    public func hash(into h: inout Hasher) { h.combine(code) }
}
