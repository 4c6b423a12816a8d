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
