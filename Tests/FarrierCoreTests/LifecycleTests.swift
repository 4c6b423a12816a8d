import FarrierCore
import Testing

/// Every state × event pair of the lifecycle, against an explicit table of what is allowed.
@Suite struct LifecycleTests {
    typealias S = MachineState

    /// The allowed transitions: (from, event) → to. Everything else must be refused.
    static let allowed: [S: [String: S]] = [
        .discovered: ["enroll": .enrolled],
        .enrolled: ["enroll": .enrolled, "commission": .commissioning],
        .commissioning: ["step-succeeded": .ready, "step-failed": .failed],
        .ready: ["commission": .commissioning, "deploy": .deploying],
        .deploying: ["step-succeeded": .deployed, "step-failed": .failed],
        .deployed: ["release": .releasing, "rescue": .rescuing],
        .releasing: ["step-succeeded": .ready, "step-failed": .failed],
        .rescuing: ["step-succeeded": .rescue, "step-failed": .failed],
        .rescue: ["exit-rescue": .exitingRescue, "release": .releasing],
        .exitingRescue: ["step-succeeded": .deployed, "step-failed": .failed],
        .failed: ["retry": .deploying, "abort": .enrolled],  // for a failed deploy; see below
    ]

    @Test func everyStateAndEventPair() {
        var checked = 0
        for state in S.allCases {
            for event in Lifecycle.Event.all {
                let status = Lifecycle.Status(state: state, failedStep: state == .failed ? .deploying : nil)
                let result = Lifecycle.apply(event, to: status)
                let expected = Self.allowed[state]?[event.description]
                switch result {
                case .success(let next):
                    #expect(next.state == expected, "\(state) --\(event)--> \(next.state), expected \(String(describing: expected))")
                    #expect(!next.reason.isEmpty)
                case .failure(let refusal):
                    #expect(expected == nil, "\(state) --\(event)--> refused: \(refusal)")
                    #expect(refusal.description.contains(state.rawValue) && refusal.description.contains(event.description))
                }
                checked += 1
            }
        }
        #expect(checked == S.allCases.count * Lifecycle.Event.all.count)
    }

    @Test func failureRecordsTheStepAndRetryOrAbortLeaveIt() throws {
        for step in Lifecycle.steps {
            let failed = try Lifecycle.apply(.stepFailed(reason: "timeout after 600 s"), to: .init(state: step)).get()
            #expect(failed.state == .failed && failed.failedStep == step)
            #expect(failed.reason == "\(step.rawValue) failed: timeout after 600 s")
            #expect(try Lifecycle.apply(.retry, to: failed).get().state == step)
            let aborted = try Lifecycle.apply(.abort, to: failed).get().state
            #expect(aborted == Lifecycle.abortTarget(of: step))
            // An aborted deploy or wipe never lands on ready: the disk's contents are unknown.
            #expect(aborted != .ready)
        }
    }

    @Test func nextBootIsExplicitAndSafe() {
        // A deployed machine never re-enters the ramdisk; one being deployed never boots its disk.
        #expect(Lifecycle.nextBoot(.deployed) == .disk)
        #expect(Lifecycle.nextBoot(.deploying) == .ramdisk)
        #expect(Lifecycle.nextBoot(.releasing) == .ramdisk)
        #expect(Lifecycle.nextBoot(.rescue) == .rescue)
        // Once the agent finished, a reboot never runs the ramdisk again.
        #expect(Lifecycle.nextBoot(.deploying, phase: .finish) == .disk)
        #expect(Lifecycle.nextBoot(.releasing, phase: .finish) == .wait)
        #expect(Lifecycle.nextBoot(.commissioning, phase: .finish) == .wait)
        #expect(Lifecycle.nextBoot(.deploying, phase: .agent) == .ramdisk)
        for s in S.allCases where Lifecycle.steps.contains(s) && s != .exitingRescue {
            #expect(Lifecycle.nextBoot(s) != .disk, "\(s) would boot a stale disk")
        }
        for s in [S.discovered, .enrolled, .ready, .failed] { #expect(Lifecycle.nextBoot(s) == .wait) }
    }
}
