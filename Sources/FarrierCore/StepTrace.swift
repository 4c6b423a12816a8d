import Foundation

/// The trace context a step began in, as its tracer injected it (W3C `traceparent` and
/// `tracestate` under OpenTelemetry), kept with the machine: a step outlives any one span, and
/// its later parts (the reconciler's phases, the agent, the OS reporting in) run on whichever
/// replica takes them, each one a child of this context.
public struct StepTrace: Codable, Sendable, Hashable {
    /// The injected context: header names to values.
    public var carrier: [String: String]
    /// When the step entered its current phase: the start of the span recorded when it ends.
    public var phaseSince: Date?

    public init(carrier: [String: String], phaseSince: Date? = nil) {
        self.carrier = carrier
        self.phaseSince = phaseSince
    }

    /// Whether `s` is a W3C `traceparent` Farrier takes: version 00, a trace ID of 32 and a
    /// span ID of 16 lowercase hex digits, neither all zeros, and 2 hex digits of flags.
    public static func isTraceparent(_ s: String) -> Bool {
        let parts = s.split(separator: "-", omittingEmptySubsequences: false)
        func hex(_ p: Substring, _ n: Int) -> Bool {
            p.utf8.count == n && p.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
        }
        return parts.count == 4 && parts[0] == "00" && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2)
            && parts[1].contains { $0 != "0" } && parts[2].contains { $0 != "0" }
    }

    /// Whether `s` is a W3C `tracestate` within its bounds: at most 32 comma-separated
    /// `key=value` members and 512 characters, keys of lowercase letters, digits and `_-*/@`,
    /// values of printable ASCII without `,` and `=`.
    public static func isTracestate(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 512 else { return false }
        let members = s.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: CharacterSet(charactersIn: " \t"))
        }
        guard members.count <= 32 else { return false }
        return members.allSatisfy { m in
            guard let eq = m.firstIndex(of: "=") else { return false }
            let key = m[..<eq].utf8
            let value = m[m.index(after: eq)...].utf8
            return !key.isEmpty && key.count <= 256
                && key.allSatisfy { (97...122).contains($0) || (48...57).contains($0) || "_-*/@".utf8.contains($0) }
                && !value.isEmpty && value.count <= 256
                && value.allSatisfy { (0x20...0x7e).contains($0) && $0 != UInt8(ascii: ",") && $0 != UInt8(ascii: "=") }
        }
    }

    /// The W3C fields of a carrier from outside (a caller's metadata, an agent's echo, a request's
    /// headers), checked: a valid `traceparent`, and its `tracestate` when that is valid too (a
    /// bad one is dropped, the `traceparent` kept, as W3C asks). Nil without a valid `traceparent`.
    public static func sanitized(_ carrier: [String: String]?) -> [String: String]? {
        guard let parent = carrier?["traceparent"], isTraceparent(parent) else { return nil }
        var out = ["traceparent": parent]
        if let state = carrier?["tracestate"], isTracestate(state) { out["tracestate"] = state }
        return out
    }

    /// The trace ID (32 hex digits) of a W3C `traceparent` (`00-TRACEID-SPANID-FLAGS`); nil for
    /// anything else.
    public var traceID: String? {
        guard let p = carrier["traceparent"] else { return nil }
        let parts = p.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[1].count == 32, parts[1].allSatisfy(\.isHexDigit),
            parts[1] != String(repeating: "0", count: 32)
        else { return nil }
        return String(parts[1]).lowercased()
    }
}
