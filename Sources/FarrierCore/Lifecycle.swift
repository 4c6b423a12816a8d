/// The machine lifecycle as a pure state machine: states, events and the allowed transitions,
/// each with a reason. No I/O: the reconciler commits a transition, then acts on it.
///
/// ```
/// discovered ─enroll─▶ enrolled ─commission─▶ commissioning ─▶ ready
/// ready ─deploy─▶ deploying ─▶ deployed ─release─▶ releasing (wipe) ─▶ ready
/// deployed ─rescue─▶ rescuing ─▶ rescue ─exit─▶ exiting-rescue ─▶ deployed
/// any step ─fail/timeout─▶ failed(step, reason) ─retry─▶ the step again
///                                               ─abort─▶ the safe state before the step
/// ```
///
/// The disk-dirty invariant: a machine whose disk may hold a tenant's data (a deploy began
/// since its last completed wipe) never reaches `ready` without a completed wipe. Entering
/// `deploying` marks the disk dirty; only `releasing ─step-succeeded─▶ ready` clears it; a
/// dirty machine that is commissioned again goes on to `releasing` instead of `ready`.
public enum Lifecycle {
    /// The stages where work is in progress (a step the reconciler drives).
    public static let steps: Set<MachineState> = [.commissioning, .deploying, .releasing, .rescuing, .exitingRescue]

    public enum Event: Hashable, Sendable, CustomStringConvertible {
        case enroll
        case commission
        case deploy
        case release
        case rescue
        case exitRescue
        /// An enrolled machine already running an OS Farrier did not install is recorded as
        /// deployed, its disk untouched.
        case adopt
        /// The current step finished (agent reported success, power and boot applied).
        case stepSucceeded
        /// The current step failed or timed out.
        case stepFailed(reason: String)
        /// Out of `failed`: run the failed step again.
        case retry
        /// Out of `failed`: go back to the safe state before the step.
        case abort

        public var description: String {
            switch self {
            case .enroll: "enroll"
            case .commission: "commission"
            case .deploy: "deploy"
            case .release: "release"
            case .rescue: "rescue"
            case .exitRescue: "exit-rescue"
            case .adopt: "adopt"
            case .stepSucceeded: "step-succeeded"
            case .stepFailed: "step-failed"
            case .retry: "retry"
            case .abort: "abort"
            }
        }

        /// Whether the event is a request that begins a step (its trace starts here). A step
        /// can also follow another's end (a dirty machine's commissioning goes on to a release):
        /// that one continues the ended step's trace.
        public var beginsStep: Bool {
            switch self {
            case .commission, .deploy, .release, .rescue, .exitRescue, .retry: true
            default: false
            }
        }

        /// One of each event, for exhaustive tests.
        public static let all: [Event] = [
            .enroll, .commission, .deploy, .release, .rescue, .exitRescue, .adopt, .stepSucceeded,
            .stepFailed(reason: "x"), .retry, .abort,
        ]
    }

    /// Where a machine is: its state, and for `failed` the step that failed and why.
    public struct Status: Hashable, Sendable, Codable {
        public var state: MachineState
        /// For `failed`: the step (an in-progress state) that failed.
        public var failedStep: MachineState?
        /// Why the last transition happened (shown to users).
        public var reason: String
        /// The disk may hold a tenant's data: set when a deploy begins, cleared only by a
        /// completed wipe.
        public var diskDirty: Bool

        public init(state: MachineState, failedStep: MachineState? = nil, reason: String = "", diskDirty: Bool = false)
        {
            self.state = state
            self.failedStep = failedStep
            self.reason = reason
            self.diskDirty = diskDirty
        }
    }

    public struct Refusal: Error, Hashable, Sendable, CustomStringConvertible {
        public var state: MachineState
        public var event: String
        public var description: String
    }

    /// The next status for `event`, or a refusal that says what is allowed instead.
    public static func apply(_ event: Event, to status: Status) -> Result<Status, Refusal> {
        let dirty = status.diskDirty
        func to(_ s: MachineState, _ reason: String, dirty: Bool = dirty) -> Result<Status, Refusal> {
            .success(Status(state: s, reason: reason, diskDirty: dirty))
        }
        func refuse(_ why: String) -> Result<Status, Refusal> {
            .failure(
                Refusal(
                    state: status.state,
                    event: event.description,
                    description: "cannot \(event) a machine that is \(status.state.rawValue): \(why)"
                )
            )
        }
        switch (status.state, event) {
        case (.discovered, .enroll), (.enrolled, .enroll):
            return to(.enrolled, "enrolled with its BMC")
        case (_, .enroll):
            return refuse("it is already enrolled and in use; release it first")

        case (.enrolled, .commission), (.ready, .commission):
            return to(.commissioning, "commissioning: inventory in the ramdisk")
        case (.discovered, .commission):
            return refuse("enroll it with its BMC first")

        case (.ready, .deploy):
            return to(.deploying, "deploying", dirty: true)
        case (.discovered, .deploy), (.enrolled, .deploy):
            return refuse("it must be commissioned and ready first")
        case (.deployed, .deploy):
            return refuse("it is already deployed; release it first")

        // The disk holds an OS and whatever its users wrote: dirty, as after a deploy.
        case (.enrolled, .adopt):
            return to(.deployed, "adopted: deployed outside Farrier, disk untouched", dirty: true)
        case (_, .adopt):
            return refuse("only an enrolled machine (never commissioned: its disk untouched) can be adopted")

        case (.deployed, .release), (.rescue, .release):
            return to(.releasing, "releasing: wiping the disks")
        case (.ready, .release):
            return refuse("it is not deployed")

        case (.deployed, .rescue):
            return to(.rescuing, "booting the rescue ramdisk")
        case (.rescue, .exitRescue):
            return to(.exitingRescue, "booting the deployed system again")

        case (.commissioning, .stepSucceeded):
            // A machine that may still hold a tenant's data (an aborted deploy or wipe) is
            // wiped before it joins the pool.
            if dirty { return to(.releasing, "commissioned; wiping: the disk may hold a previous tenant's data") }
            return to(.ready, "commissioned")
        case (.deploying, .stepSucceeded): return to(.deployed, "deployed")
        case (.releasing, .stepSucceeded): return to(.ready, "released and wiped", dirty: false)
        case (.rescuing, .stepSucceeded): return to(.rescue, "in rescue")
        case (.exitingRescue, .stepSucceeded): return to(.deployed, "back from rescue")

        case (let s, .stepFailed(let reason)) where steps.contains(s):
            return .success(
                Status(state: .failed, failedStep: s, reason: "\(s.rawValue) failed: \(reason)", diskDirty: dirty)
            )

        case (.failed, .retry):
            guard let step = status.failedStep else { return refuse("it does not record which step failed") }
            return to(step, "retrying \(step.rawValue)")
        case (.failed, .abort):
            guard let step = status.failedStep else { return to(.enrolled, "aborted") }
            return to(abortTarget(of: step), "aborted \(step.rawValue)")
        case (_, .retry), (_, .abort):
            return refuse("only a failed machine can be retried or aborted")
        case (_, .stepSucceeded), (_, .stepFailed):
            return refuse("no step is in progress")
        default:
            return refuse("not allowed from this state")
        }
    }

    /// The safe state an aborted step returns to. A machine whose deploy or wipe was cut short
    /// may hold a half-written disk: abort of those steps lands on `enrolled` with the disk
    /// still marked dirty, and commissioning it again ends in a wipe (`releasing`), never on
    /// `ready` with unknown disk contents.
    public static func abortTarget(of step: MachineState) -> MachineState {
        switch step {
        case .commissioning: .enrolled
        case .deploying, .releasing: .enrolled
        case .rescuing, .exitingRescue: .deployed
        default: .enrolled
        }
    }

    /// What a machine should boot next from the network, decided by its state alone.
    public enum NextBoot: String, Sendable, Codable {
        /// The Farrier ramdisk, for the agent (commission, deploy, wipe).
        case ramdisk
        /// The rescue ramdisk with SSH.
        case rescue
        /// The local disk: never the ramdisk by accident.
        case disk
        /// Hold in the iPXE wait loop: nothing to do.
        case wait
    }

    /// The next boot within a step: once the agent has finished (phase `finish`), a deploy's
    /// next boot is the disk it wrote and a wipe's or inventory's is the wait loop, so a reboot
    /// at that moment never runs the ramdisk (and its task) a second time.
    ///
    /// A step still `queued` (waiting for a deploy or wipe slot) holds the machine in the wait
    /// loop: it gets no ramdisk, so its agent cannot start ahead of the concurrency cap.
    public static func nextBoot(_ state: MachineState, phase: StepPhase) -> NextBoot {
        if phase == .queued, steps.contains(state), nextBoot(state) != .disk { return .wait }
        // Once the agent is done (and while the OS comes up) a deploy boots its disk.
        guard phase == .finish || phase == .os else { return nextBoot(state) }
        switch state {
        case .deploying: return .disk
        case .commissioning, .releasing: return .wait
        default: return nextBoot(state)
        }
    }

    public static func nextBoot(_ state: MachineState) -> NextBoot {
        switch state {
        case .commissioning, .deploying, .releasing: .ramdisk
        case .rescuing, .rescue: .rescue
        case .deployed, .exitingRescue: .disk
        case .discovered, .enrolled, .ready, .failed: .wait
        }
    }
}
