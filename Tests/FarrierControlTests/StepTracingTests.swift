import Crypto
import FarrierBMC
import FarrierCore
import FarrierStore
import Foundation
import InMemoryTracing
import Logging
import Testing
import Tracing

@testable import FarrierControl

/// An in-memory tracer that propagates W3C `traceparent` (32 and 16 hex digits), as
/// OpenTelemetry's does: the stored steps and the failure lines then carry real trace IDs.
struct W3CTestTracer: Tracer {
    let inner = InMemoryTracer(
        idGenerator: .init(
            nextTraceID: { (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 1...255)) }.joined() },
            nextSpanID: { (0..<8).map { _ in String(format: "%02x", UInt8.random(in: 1...255)) }.joined() }
        )
    )

    func startSpan<Instant: TracerInstant>(
        _ operationName: String,
        context: @autoclosure () -> InstrumentationContext,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        function: String,
        file fileID: String,
        line: UInt
    ) -> InMemorySpan {
        inner.startSpan(
            operationName,
            context: context(),
            ofKind: kind,
            at: instant(),
            function: function,
            file: fileID,
            line: line
        )
    }

    func forceFlush() {}

    func inject<Carrier, Inject: Injector>(
        _ context: InstrumentationContext,
        into carrier: inout Carrier,
        using injector: Inject
    ) where Inject.Carrier == Carrier {
        guard let c = context.inMemorySpanContext else { return }
        injector.inject("00-\(c.traceID)-\(c.spanID)-01", forKey: "traceparent", into: &carrier)
    }

    func extract<Carrier, Extract: Extractor>(
        _ carrier: Carrier,
        into context: inout InstrumentationContext,
        using extractor: Extract
    ) where Extract.Carrier == Carrier {
        guard let p = extractor.extract(key: "traceparent", from: carrier) else { return }
        let parts = p.split(separator: "-")
        guard parts.count == 4 else { return }
        context.inMemorySpanContext = InMemorySpanContext(
            traceID: String(parts[1]),
            spanID: String(parts[2]),
            parentSpanID: nil
        )
    }

    var finished: [FinishedInMemorySpan] { inner.finishedSpans }
    func named(_ name: String) -> [FinishedInMemorySpan] { finished.filter { $0.operationName == name } }
}

/// A step's trace (issue 17 point 3): the context it began in is stored with the machine, and
/// its later parts (the agent, the step's end) are recorded under it; the failure line carries
/// its trace ID (point 8).
@Suite struct StepTracingTests {
    let store: SQLiteStore
    let logs = CapturedLogs()
    let controller: Controller
    let tracer = W3CTestTracer()

    init() throws {
        store = try SQLiteStore()
        controller = Controller(
            store: store,
            pool: BMCPool(vault: CredentialVault(key: SymmetricKey(size: .bits256))),
            agentKey: SymmetricKey(size: .bits256),
            logger: logs.logger
        )
    }

    func enrolled(_ name: String, _ mac: String) async throws -> Machine {
        try await store.enroll(
            name: name,
            mac: MACAddress(mac)!,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9623"),
            sealedPassword: [1],
            at: Date()
        )
    }

    @Test func aStepBegunInACallKeepsItsContextAndEndsInItsTrace() async throws {
        let m = try await enrolled("a", "52:54:00:00:01:01")
        let (traceID, apiSpanID) = try await withTracer(tracer) {
            try await withSpan("api call") { span in
                _ = try await controller.apply(.commission, machineID: m.id)
                let c = try #require(span.context.inMemorySpanContext)
                return (c.traceID, c.spanID)
            }
        }
        let stored = try #require(try await store.machine(id: m.id)?.trace)
        #expect(stored.traceID == traceID)
        #expect(stored.phaseSince != nil)
        // No root of its own: the call's span is the step's.
        #expect(tracer.named("lifecycle.commission").isEmpty)
        await withTracer(tracer) {
            await controller.fail(machineID: m.id, generation: 1, reason: "timed out", failure: .timeout)
        }
        let step = try #require(tracer.named("step.commissioning").first)
        #expect(step.spanContext.traceID == traceID && step.spanContext.parentSpanID == apiSpanID)
        #expect(step.status?.code == .error && step.status?.message == "timed out")
        let line = try #require(logs.matching("lifecycle step failed").first)
        #expect(line.metadata["trace_id"] == traceID, "\(line.metadata)")
    }

    @Test func aStepBegunOutsideAnySpanHasARootOfItsOwn() async throws {
        let m = try await enrolled("b", "52:54:00:00:01:02")
        _ = try await withTracer(tracer) { try await controller.apply(.commission, machineID: m.id) }
        let root = try #require(tracer.named("lifecycle.commission").first)
        #expect(root.spanContext.parentSpanID == nil)
        #expect(try await store.machine(id: m.id)?.trace?.traceID == root.spanContext.traceID)
        // Without a tracer nothing is stored, and the failure line says so.
        let n = try await enrolled("c", "52:54:00:00:01:03")
        _ = try await controller.apply(.commission, machineID: n.id)
        #expect(try await store.machine(id: n.id)?.trace == nil)
        await controller.fail(machineID: n.id, generation: 1, reason: "x", failure: .timeout)
        #expect(logs.matching("lifecycle step failed").last?.metadata["trace_id"] == "-")
    }

    /// The agent's echo of its hello's context is the parent of its task only within the
    /// step's own trace: a context from anywhere else leaves the task under the stored one.
    @Test func anAgentsEchoIsTrustedOnlyInItsStepsTrace() {
        let stored = StepTrace(carrier: [
            "traceparent": "00-\(String(repeating: "ab", count: 16))-\(String(repeating: "01", count: 8))-01"
        ])
        let same = ["traceparent": "00-\(String(repeating: "ab", count: 16))-\(String(repeating: "02", count: 8))-01"]
        let other = ["traceparent": "00-\(String(repeating: "cd", count: 16))-\(String(repeating: "02", count: 8))-01"]
        #expect(Controller.agentParent(stored: stored, echoed: same) == (same, true))
        // The agent's own tracestate is not taken: the step's is.
        let withState = StepTrace(carrier: stored.carrier.merging(["tracestate": "farrier=1"]) { $1 })
        let echoedState = same.merging(["tracestate": String(repeating: "x", count: 100)]) { $1 }
        #expect(
            Controller.agentParent(stored: withState, echoed: echoedState)
                == (same.merging(["tracestate": "farrier=1"]) { $1 }, true)
        )
        // The step's own trace ID with a span ID that is not one, another version, or flags
        // that are not hex: not a context at all.
        let id = String(repeating: "ab", count: 16)
        for echoed in [
            other, [:], ["traceparent": "garbage"], nil,
            ["traceparent": "00-\(id)-zz\(String(repeating: "0", count: 14))-01"],
            ["traceparent": "00-\(id)-\(String(repeating: "0", count: 16))-01"],
            ["traceparent": "01-\(id)-\(String(repeating: "02", count: 8))-01"],
            ["traceparent": "00-\(id)-\(String(repeating: "02", count: 8))-0g"],
        ] {
            #expect(
                Controller.agentParent(stored: stored, echoed: echoed) == (stored.carrier, false),
                "\(String(describing: echoed))"
            )
        }
    }

    /// The agent's phases are anchored at its result's arrival, clamped into its task's time,
    /// and only known names are kept.
    @Test func anAgentsPhasesAreAnchoredAndClamped() async throws {
        let m = try await enrolled("d", "52:54:00:00:01:04")
        _ = try await withTracer(tracer) { try await controller.apply(.commission, machineID: m.id) }
        // (The step began a minute ago: an agent's 2 s fit in it. Its time is bounded by the step's.)
        _ = try await store.update(machineID: m.id) { x in
            x.phase = .agent
            x.stepStarted = Date().addingTimeInterval(-60)
            x.trace?.phaseSince = Date().addingTimeInterval(-60)
            return []
        }
        let task = try await withTracer(tracer) {
            try await controller.agentHello(
                peer: m.mac,
                hello: AgentHello(agentVersion: "test", inventory: nil, nonce: String(repeating: "n", count: 32))
            )
        }
        let hello = try #require(tracer.named("agent.hello").first)
        #expect(task.trace?["traceparent"]?.contains(hello.spanContext.spanID) == true)
        let inventory = Inventory(
            cpuModel: "QEMU",
            cores: 2,
            memoryBytes: 1 << 30,
            disks: [],
            nics: [],
            vendor: "QEMU",
            product: "pc",
            serial: "",
            firmware: .uefi
        )
        var result = AgentResult(ok: true, inventory: inventory, seconds: 2)
        result.trace = task.trace
        result.phases = [
            AgentPhase(name: "lldp", start: 0.5, end: 1.5),
            AgentPhase(name: "lldp", start: -5, end: 1000),
            AgentPhase(name: "exfiltrate", start: 0, end: 1),
        ]
        let before = Date()
        try await withTracer(tracer) { try await controller.agentDone(token: task.token, peer: m.mac, result: result) }
        let agentTask = try #require(tracer.named("agent.task").first)
        #expect(agentTask.spanContext.parentSpanID == hello.spanContext.spanID)
        #expect(agentTask.attributes["farrier.trace.from_agent"]?.toSpanAttribute() == .bool(true))
        #expect(tracer.named("agent.exfiltrate").isEmpty)
        let phases = tracer.named("agent.lldp")
        #expect(phases.count == 2)
        let start = agentTask.startInstant.nanosecondsSinceEpoch
        let end = agentTask.endInstant.nanosecondsSinceEpoch
        #expect(end >= UInt64(before.timeIntervalSince1970 * 1e9) && end - start <= 2_000_000_000)
        for p in phases {
            #expect(p.spanContext.parentSpanID == agentTask.spanContext.spanID)
            #expect(p.startInstant.nanosecondsSinceEpoch >= start && p.endInstant.nanosecondsSinceEpoch <= end)
        }
        // The same phases in the boot timeline (the waterfall), at their starts, and the end.
        let timeline = try await store.timeline(mac: m.mac, limit: 10).filter { $0.stage == .agent }
        #expect(timeline.map(\.event).sorted() == ["done", "lldp", "lldp"], "\(timeline)")
        #expect(timeline.first { $0.event == "done" }?.detail == "commissioning succeeded")
        let nanos = phases.map { $0.endInstant.nanosecondsSinceEpoch - $0.startInstant.nanosecondsSinceEpoch }
        #expect(nanos.map { ($0 + 500_000) / 1_000_000 } == [1000, 2000], "\(nanos)")
    }

    /// An agent that claims more time than its phase has had, or none, or a negative time,
    /// gets only what the phase had: its task never starts before Farrier booted the machine.
    @Test(arguments: [1000.0, nil, -5.0]) func anAgentsClaimedTimeIsBoundedByItsPhase(_ seconds: Double?) async throws {
        let m = try await enrolled("e", "52:54:00:00:01:05")
        _ = try await withTracer(tracer) { try await controller.apply(.commission, machineID: m.id) }
        let phaseStart = Date().addingTimeInterval(-1)
        _ = try await store.update(machineID: m.id) { x in
            x.phase = .agent
            x.trace?.phaseSince = phaseStart
            return []
        }
        let task = try await controller.agentHello(
            peer: m.mac,
            hello: AgentHello(agentVersion: "test", inventory: nil, nonce: String(repeating: "n", count: 32))
        )
        var result = AgentResult(ok: false, error: String(repeating: "e", count: 5000), seconds: seconds)
        result.phases = [AgentPhase(name: "lldp", start: -1e300, end: 1e300)]
        try await withTracer(tracer) { try await controller.agentDone(token: task.token, peer: m.mac, result: result) }
        let agentTask = try #require(tracer.named("agent.task").first)
        let start = agentTask.startInstant.nanosecondsSinceEpoch
        let end = agentTask.endInstant.nanosecondsSinceEpoch
        #expect(start >= UInt64(phaseStart.timeIntervalSince1970 * 1e9) - 1_000_000, "\(start)")
        // 1000 s claimed: only the phase's time (the start bound above); none or negative: none.
        if let s = seconds, s > 0 { #expect(end > start) } else { #expect(end == start, "\(end - start)") }
        #expect((agentTask.status?.message?.count ?? 0) <= 1024)
        let phase = try #require(tracer.named("agent.lldp").first)
        #expect(phase.startInstant.nanosecondsSinceEpoch >= start && phase.endInstant.nanosecondsSinceEpoch <= end)
    }
}
