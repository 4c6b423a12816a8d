import FarrierCore
import Foundation
import Logging
import Tracing

/// Writes a context's fields into a dictionary (a stored step's carrier, a JSON body's field).
public struct DictionaryInjector: Injector {
    public init() {}
    public func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}

/// Reads a context's fields from a dictionary.
public struct DictionaryExtractor: Extractor {
    public init() {}
    public func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}

/// A step's trace across replicas: the context it began in is stored with the machine
/// (`Machine.trace`), and each later part of it becomes that context's child on whichever
/// replica does it. No span stays open across a step (a span cannot outlive its process); a
/// part that ends somewhere else than it began is recorded, with its own start and end, when
/// it ends.
public enum StepTracing {
    /// The context injected (W3C `traceparent` under OpenTelemetry); nil when there is none, or
    /// the tracer injects nothing (no tracer bootstrapped).
    public static func carrier(_ context: InstrumentationContext? = InstrumentationContext.current) -> [String: String]?
    {
        guard let context else { return nil }
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &carrier, using: DictionaryInjector())
        return carrier.isEmpty ? nil : carrier
    }

    /// The context a carrier holds; nil for none, or one the tracer could not read (a new root
    /// is never made of it).
    public static func context(_ carrier: [String: String]?) -> InstrumentationContext? {
        guard let carrier, !carrier.isEmpty else { return nil }
        var context = InstrumentationContext.topLevel
        InstrumentationSystem.instrument.extract(carrier, into: &context, using: DictionaryExtractor())
        return Self.carrier(context) == nil ? nil : context
    }

    /// The stored step's context; nil for none.
    public static func context(_ trace: StepTrace?) -> InstrumentationContext? { context(trace?.carrier) }

    static func instant(_ date: Date) -> DefaultTracerClock.Timestamp {
        .init(nanosecondsSinceEpoch: UInt64(max(0, date.timeIntervalSince1970) * 1_000_000_000))
    }

    /// A message for a span's status: at most 1 KiB of UTF-8 (an agent's error can be long).
    public static func bounded(_ message: String) -> String {
        message.utf8.count <= 1024 ? message : String(decoding: Array(message.utf8.prefix(1024)), as: UTF8.self)
    }

    /// Records a span that already happened: `from` to `to`, under `parent`. An `error` marks it
    /// failed with that message.
    public static func record(
        _ name: String,
        parent: InstrumentationContext,
        from: Date,
        to: Date,
        kind: SpanKind = .internal,
        error: String? = nil,
        attributes: (inout SpanAttributes) -> Void = { _ in }
    ) {
        let span = InstrumentationSystem.tracer.startSpan(
            name,
            context: parent,
            ofKind: kind,
            at: instant(from)
        )
        var a = span.attributes
        attributes(&a)
        span.attributes = a
        if let error { span.setStatus(SpanStatus(code: .error, message: bounded(error))) }
        span.end(at: instant(max(from, to)))
    }

    /// Runs `body` in a span that is the child of the step's stored context; with none stored,
    /// runs it untraced.
    public static func withStepSpan<T>(
        _ name: String,
        trace: StepTrace?,
        ofKind kind: SpanKind = .internal,
        attributes: (inout SpanAttributes) -> Void = { _ in },
        _ body: () async throws -> T
    ) async rethrows -> T {
        guard let parent = context(trace) else { return try await body() }
        return try await withSpan(name, context: parent, ofKind: kind) { span in
            var a = span.attributes
            attributes(&a)
            span.attributes = a
            return try await body()
        }
    }

    /// The attributes every span of a machine's step carries.
    public static func machineAttributes(_ m: Machine) -> (inout SpanAttributes) -> Void {
        let name = m.name
        let id = m.id
        let step = m.state.rawValue
        let generation = m.generation
        let phase = m.phase.rawValue
        return { a in
            a["farrier.machine.name"] = name
            a["farrier.machine.id"] = id
            a["farrier.step"] = step
            a["farrier.generation"] = generation
            a["farrier.phase"] = phase
        }
    }
}

/// A step that an event ended: its state, start and trace, read in the commit's transaction.
struct EndedStep: Sendable {
    var state: MachineState
    var started: Date
    var trace: StepTrace?

    init(_ state: MachineState, _ started: Date, _ trace: StepTrace?) {
        self.state = state
        self.started = started
        self.trace = trace
    }

    /// The step's end: one log line, `lifecycle step ended`, with its outcome (`succeeded` or
    /// `failed`) and seconds (what the log-based SLO counts, README: Logs), and its
    /// span, `step.<state>`, from its start to now, an error unless it succeeded.
    func ended(_ m: Machine, outcome: String, error: String?, logger: Logger) {
        let now = Date()
        logger.info(
            "lifecycle step ended",
            metadata: [
                "machine": "\(m.name)", "step": "\(state.rawValue)", "outcome": "\(outcome)",
                "seconds": "\(String(format: "%.3f", max(0, now.timeIntervalSince(started))))",
                "trace_id": "\(trace?.traceID ?? "-")",
            ]
        )
        guard let parent = StepTracing.context(trace) else { return }
        let step = state.rawValue
        let name = m.name
        let id = m.id
        StepTracing.record("step.\(step)", parent: parent, from: started, to: now, error: error) { a in
            a["farrier.machine.name"] = name
            a["farrier.machine.id"] = id
            a["farrier.step"] = step
            a["farrier.outcome"] = outcome
        }
    }
}

extension Controller {
    /// The parent of an agent's task: the context it echoed (the hello's span) when that is a
    /// valid `traceparent` in the step's own trace, with the step's own `tracestate`; else the
    /// step's stored context.
    static func agentParent(
        stored: StepTrace,
        echoed: [String: String]?
    ) -> (carrier: [String: String], fromAgent: Bool) {
        guard let parent = StepTrace.sanitized(echoed)?["traceparent"],
            let id = StepTrace(carrier: ["traceparent": parent]).traceID, id == stored.traceID
        else {
            return (stored.carrier, false)
        }
        var carrier = ["traceparent": parent]
        if let state = stored.carrier["tracestate"] { carrier["tracestate"] = state }
        return (carrier, true)
    }

    /// The agent's phases in the machine's boot timeline (the waterfall's rows): each at its
    /// start, and `done` at the task's end, on the same anchor as the trace. Diagnostics: a
    /// store that cannot take them loses only them.
    func recordAgentTimeline(_ m: Machine, _ result: AgentResult, _ times: AgentTimes) async {
        var events: [TimelineEvent] = []
        for (phase, from, to) in times.phases {
            var detail = String(format: "%.3f s", to.timeIntervalSince(from))
            if let b = phase.bytes, b >= 0 { detail += ", \(b) bytes" }
            if let busy = phase.busySeconds, busy.isFinite, busy >= 0 {
                detail += String(format: ", busy %.3f s", busy)
            }
            events.append(
                TimelineEvent(
                    mac: m.mac,
                    time: from,
                    stage: .agent,
                    event: phase.name,
                    detail: detail
                )
            )
        }
        guard !events.isEmpty else { return }
        events.sort { $0.time < $1.time }
        events.append(
            TimelineEvent(
                mac: m.mac,
                time: times.end,
                stage: .agent,
                event: "done",
                detail: result.ok ? "\(m.state.rawValue) succeeded" : "\(m.state.rawValue) failed"
            )
        )
        do { try await store.appendTimeline(events) } catch {
            logger.debug("agent phases not recorded", metadata: ["machine": "\(m.name)", "error": "\(error)"])
        }
    }

    /// The agent's task in the step's trace: `agent.task` over the task's seconds, ending now,
    /// with the phases the agent timed. The agent's echo of the hello's context is its parent
    /// only when it is this step's trace: its result cannot graft spans onto another trace.
    func traceAgentTask(_ m: Machine, _ result: AgentResult, _ times: AgentTimes) {
        guard let stored = m.trace else { return }
        let (carrier, fromAgent) = Self.agentParent(stored: stored, echoed: result.trace)
        guard let parent = StepTracing.context(carrier) else { return }
        let span = InstrumentationSystem.tracer.startSpan(
            "agent.task",
            context: parent,
            ofKind: .internal,
            at: StepTracing.instant(times.start)
        )
        var a = span.attributes
        StepTracing.machineAttributes(m)(&a)
        a["farrier.agent.ok"] = result.ok
        a["farrier.trace.from_agent"] = fromAgent
        if let rss = result.peakRSSBytes { a["farrier.agent.peak_rss_bytes"] = Int(rss) }
        span.attributes = a
        if !result.ok {
            span.setStatus(SpanStatus(code: .error, message: StepTracing.bounded(result.error ?? "agent failed")))
        }
        for (phase, from, to) in times.phases {
            StepTracing.record("agent.\(phase.name)", parent: span.context, from: from, to: to) { a in
                if let b = phase.bytes { a["farrier.agent.bytes"] = Int(b) }
                if let s = phase.busySeconds { a["farrier.agent.busy_seconds"] = s }
            }
        }
        span.end(at: StepTracing.instant(times.end))
    }
}

/// An agent task's times on the server's clock, for its spans and its timeline rows: anchored
/// at its result's arrival (`end`), over the agent's own measure bounded by its phase (from
/// Farrier powering the machine on), with at most 16 phases of known names, each clamped
/// into the task.
struct AgentTimes {
    var start: Date
    var end: Date
    var phases: [(phase: AgentPhase, from: Date, to: Date)]

    init(_ m: Machine, _ result: AgentResult, end: Date) {
        let bound = (m.trace?.phaseSince ?? m.stepStarted).map { max(0, end.timeIntervalSince($0)) } ?? 0
        let seconds = min(max(0, result.seconds ?? 0), bound)
        let start = end.addingTimeInterval(-seconds)
        self.start = start
        self.end = end
        phases = (result.phases ?? []).prefix(16).filter { AgentPhase.names.contains($0.name) }.map { phase in
            let from = min(max(0, phase.start), seconds)
            let to = min(max(from, phase.end), seconds)
            return (phase, start.addingTimeInterval(from), start.addingTimeInterval(to))
        }
    }
}
