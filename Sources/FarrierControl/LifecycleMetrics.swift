import CoreMetrics
import FarrierCore
import Foundation
import Metrics
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
    /// A commissioning test found a hardware fault (a test failed or ran past its limit).
    case hardwareTest = "hardware-test"
}

/// The lifecycle's metrics: failed steps by step and class (counted where a failure is
/// committed, so a failure that lost a race, the step having moved on, is not counted), how
/// long steps took by step and outcome, and the agents' deploy throughput.
public final class LifecycleMetrics: Sendable {
    struct Key: Hashable {
        var step: MachineState
        var failure: FailureClass
    }
    let failures = Mutex<[Key: Int]>([:])
    /// Every step and class, made up front so each series reads 0 from the start (a rate works).
    let failureCounters: [Key: CoreMetrics.Counter]
    let deployBytes = CoreMetrics.Counter(label: "farrier_agent_deploy_bytes_total")
    let deployThroughput = CoreMetrics.Recorder(label: "farrier_agent_deploy_throughput_bytes_per_second")

    public init() {
        var counters: [Key: CoreMetrics.Counter] = [:]
        for step in Lifecycle.steps {
            for failure in FailureClass.allCases {
                counters[Key(step: step, failure: failure)] = CoreMetrics.Counter(
                    label: "farrier_lifecycle_step_failures_total",
                    dimensions: [("step", step.rawValue), ("failure", failure.rawValue)]
                )
            }
        }
        failureCounters = counters
    }

    func failed(_ step: MachineState, _ failure: FailureClass) {
        let key = Key(step: step, failure: failure)
        failures.withLock { $0[key, default: 0] += 1 }
        failureCounters[key]?.increment()
    }

    /// A step ended (succeeded or failed) after `seconds` from its start.
    func stepEnded(_ step: MachineState, succeeded: Bool, seconds: Double) {
        CoreMetrics.Timer(
            label: "farrier_lifecycle_step_duration_seconds",
            dimensions: [("step", step.rawValue), ("outcome", succeeded ? "succeeded" : "failed")]
        ).recordSeconds(max(0, seconds))
    }

    /// An agent's deploy wrote `bytes` in `seconds` (download, write and verify).
    func deployed(bytes: Int64, seconds: Double) {
        deployBytes.increment(by: bytes)
        if seconds > 0 { deployThroughput.record(Double(bytes) / seconds) }
    }

    /// How many steps failed in `step` for `failure`.
    public func failures(_ step: MachineState, _ failure: FailureClass) -> Int {
        failures.withLock { $0[Key(step: step, failure: failure)] ?? 0 }
    }
}
