/// Why a codec refused bytes, for every protocol: a code that callers branch on and count, and
/// a detail for the log. Equal (and hashed) on `code` only, so a test names the code it expects
/// without the detail. Each codec names its codes in an extension of `WireError.Code`.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }

        /// Fewer bytes than the structure needs.
        public static let truncated = Code("truncated")
        /// A field holds a value the protocol does not allow.
        public static let invalid = Code("invalid")
    }

    public let code: Code
    public let detail: String

    @inline(never)
    public init(_ code: Code, _ detail: String = "") {
        self.code = code
        self.detail = detail
    }

    /// `truncated` for the named structure.
    public static func truncated(_ what: String) -> WireError { WireError(.truncated, what) }
    /// `invalid` for the named field.
    public static func invalid(_ what: String) -> WireError { WireError(.invalid, what) }

    public var description: String { detail.isEmpty ? code.description : "\(code.description): \(detail)" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code }
    public func hash(into h: inout Hasher) { h.combine(code) }
}
