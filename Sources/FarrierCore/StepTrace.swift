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

    /// The W3C fields of a carrier from outside (a caller's metadata, an agent's echo, a request's
    /// headers), within bounds: a valid `traceparent`, and its `tracestate` up to 512 characters
    /// (the W3C limit). Nil without a valid `traceparent`.
    public static func sanitized(_ carrier: [String: String]?) -> [String: String]? {
        guard let parent = carrier?["traceparent"], isTraceparent(parent) else { return nil }
        var out = ["traceparent": parent]
        if let state = carrier?["tracestate"], !state.isEmpty, state.utf8.count <= 512 { out["tracestate"] = state }
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
