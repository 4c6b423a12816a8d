import FarrierCore
import Foundation
import Synchronization

/// Why a step failed, by class: a label small and fixed enough for Prometheus (the reason
/// itself, with names and numbers, is in the machine's reason and the log).
public enum FailureClass: String, Sendable, CaseIterable {
    /// The step ran past its limit (`lifecycle.timeouts`).
    case timeout
    /// The agent stopped reporting progress.
    case stalled
    /// The BMC did not do what was asked, after every retry.
    case bmc
    /// The agent reported a failure.
    case agent
    /// The agent read back a non-zero byte after erasing a disk: the machine is not clean.
    case wipeNotVerified = "wipe-not-verified"
}

/// The lifecycle's counters for `/metrics`: failed steps by step and class. Counted where a
/// failure is committed, so a failure that lost a race (the step had moved on) is not counted.
public final class LifecycleMetrics: Sendable {
    struct Key: Hashable {
        var step: MachineState
        var failure: FailureClass
    }
    let failures = Mutex<[Key: Int]>([:])

    public init() {}

    func failed(_ step: MachineState, _ failure: FailureClass) {
        failures.withLock { $0[Key(step: step, failure: failure), default: 0] += 1 }
    }

    /// How many steps failed in `step` for `failure`.
    public func failures(_ step: MachineState, _ failure: FailureClass) -> Int {
        failures.withLock { $0[Key(step: step, failure: failure)] ?? 0 }
    }

    /// Prometheus text: every step and class, zeros included, so a rate works from the start.
    public func render() -> String {
        let counts = failures.withLock { $0 }
        var text = """
            # HELP farrier_lifecycle_step_failures_total Lifecycle steps that failed, by step and class of failure
            # TYPE farrier_lifecycle_step_failures_total counter

            """
        for step in Lifecycle.steps.sorted(by: { $0.rawValue < $1.rawValue }) {
            for failure in FailureClass.allCases {
                text +=
                    "farrier_lifecycle_step_failures_total{step=\"\(step.rawValue)\",failure=\"\(failure.rawValue)\"} \(counts[Key(step: step, failure: failure)] ?? 0)\n"
            }
        }
        return text
    }
}
