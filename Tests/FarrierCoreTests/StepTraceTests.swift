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

    /// What comes from outside keeps only the W3C fields, checked: a bad tracestate is dropped
    /// and the traceparent kept; a bad traceparent keeps nothing.
    @Test func carriersFromOutsideAreSanitized() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        #expect(
            StepTrace.sanitized([
                "traceparent": parent, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
                "authorization": "Bearer x",
            ])
                == ["traceparent": parent, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]
        )
        for state in [
            "", "no-equals", "Upper=1", "a=b,c", String(repeating: "a=b,", count: 40) + "a=b",
            "k=" + String(repeating: "v", count: 600), "k=a=b",
        ] {
            #expect(
                StepTrace.sanitized(["traceparent": parent, "tracestate": state]) == ["traceparent": parent],
                "\(state)"
            )
        }
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "",
        ] {
            #expect(StepTrace.sanitized(["traceparent": bad, "tracestate": "a=b"]) == nil, "\(bad)")
        }
        #expect(StepTrace.sanitized(nil) == nil)
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
