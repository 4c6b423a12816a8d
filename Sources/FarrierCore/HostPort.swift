/// A configuration value that cannot be used, with a message saying what was expected.
public struct ConfigurationError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Splits `HOST:PORT` (an IPv6 host may be bracketed, `[::1]:7700`); an empty host means 0.0.0.0.
public func splitHostPort(_ s: String) throws -> (String, Int) {
    guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port)
    else { throw ConfigurationError("expected HOST:PORT, got '\(s)'") }
    var host = String(s[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    return (host.isEmpty ? "0.0.0.0" : host, port)
}
