import FarrierCore
import Foundation
import Testing

struct StepTraceTests {
    @Test func traceIDIsAW3CTraceparentsSecondField() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736"
        #expect(StepTrace(carrier: ["traceparent": "00-\(id)-00f067aa0ba902b7-01"]).traceID == id)
        #expect(StepTrace(carrier: ["traceparent": "00-\(id.uppercased())-00f067aa0ba902b7-00"]).traceID == id)
        // Anything else has none: no header, another tracer's keys, a short, non-hex or all-zero ID.
        for carrier in [
            [:], ["in-memory-trace-id": id], ["traceparent": "00-\(id.dropLast())-00f067aa0ba902b7-01"],
            ["traceparent": "00-\(id.dropLast())x-00f067aa0ba902b7-01"],
            ["traceparent": "00-\(String(repeating: "0", count: 32))-00f067aa0ba902b7-01"],
            ["traceparent": id],
        ] {
            #expect(StepTrace(carrier: carrier).traceID == nil, "\(carrier)")
        }
    }

    @Test func aStepTraceSurvivesJSON() throws {
        let t = StepTrace(
            carrier: ["traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "a=b"],
            phaseSince: Date(timeIntervalSince1970: 1_800_000_000.25)
        )
        #expect(try JSONDecoder().decode(StepTrace.self, from: JSONEncoder().encode(t)) == t)
    }

    /// The requests that begin a step; a step that follows another's end (a dirty machine's
    /// commissioning going on to a release) continues that one's trace.
    @Test func requestsBeginSteps() {
        let begins = Lifecycle.Event.all.filter(\.beginsStep).map(\.description)
        #expect(begins == ["commission", "deploy", "release", "rescue", "exit-rescue", "retry"])
    }
}
