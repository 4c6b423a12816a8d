import FarrierCore
import Synchronization

/// A task's phases, timed on the monotonic clock from the task's start (`begin`), for the
/// result's `phases`: the server draws them into the step's trace.
final class PhaseClock: Sendable {
    private let origin = Mutex<ContinuousClock.Instant>(.now)
    private let recorded = Mutex<[AgentPhase]>([])

    /// The task starts now: no phase so far.
    func begin() {
        origin.withLock { $0 = .now }
        recorded.withLock { $0 = [] }
    }

    /// Seconds from the task's start to `instant`.
    func offset(_ instant: ContinuousClock.Instant) -> Double {
        let d = instant - origin.withLock { $0 }
        return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    func add(
        _ name: String,
        from: ContinuousClock.Instant,
        to: ContinuousClock.Instant = .now,
        bytes: Int64? = nil,
        busy: Duration? = nil
    ) {
        let phase = AgentPhase(
            name: name,
            start: offset(from),
            end: offset(to),
            bytes: bytes,
            busySeconds: busy.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
        )
        recorded.withLock { $0.append(phase) }
    }

    /// Runs `body` as the phase `name`; a phase that throws is recorded too, up to the throw.
    func measure<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        let start = ContinuousClock.now
        defer { add(name, from: start) }
        return try body()
    }

    var phases: [AgentPhase] { recorded.withLock { $0 } }
}
