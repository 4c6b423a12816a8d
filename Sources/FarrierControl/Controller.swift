import Crypto
import FarrierBMC
import FarrierCore
import Foundation
import Logging
import Synchronization
import Tracing

/// Lifecycle settings of the server.
public struct ControlConfiguration: Sendable, Hashable {
    /// Deploys in their boot, agent or finish phase at once; more wait `queued`.
    public var maxConcurrentDeploys = 8
    /// Wipes (releases) at once.
    public var maxConcurrentWipes = 8
    /// How long each step may take, from the moment it is entered (time spent `queued` for a
    /// slot counts) to its end: no phase, queued included, can outlive it.
    /// A full wipe writes every byte (a 4 TB disk at 200 MB/s is over 5 hours), so releasing
    /// gets a long limit; a stalled agent is caught sooner by `progressStall`.
    public var timeouts: [MachineState: Duration] = [
        .commissioning: .seconds(30 * 60), .deploying: .seconds(60 * 60), .releasing: .seconds(24 * 3600),
        .rescuing: .seconds(30 * 60), .exitingRescue: .seconds(15 * 60),
    ]
    /// An agent that reported progress, then nothing for this long, has stalled: the step fails.
    public var progressStall: Duration = .seconds(15 * 60)
    /// How often the reconciler looks at every machine, besides being woken by transitions.
    public var tick: Duration = .seconds(2)
    /// Attempts of one BMC action before the step fails.
    public var bmcAttempts = 3
    public var bmcRetryDelay: Duration = .seconds(2)
    /// This server's name among the replicas sharing a database: the owner of its work claims.
    public var replica = "replica-\(ProcessInfo.processInfo.hostName)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    /// How long a replica's claim on a machine's work lasts without renewal (a worker renews it
    /// every third of this): a replica that dies leaves its machines to the others after it.
    public var claimTTL: Duration = .seconds(20)
    /// BMC workers (the boot and finish phases) running at once on this replica; machines past
    /// it wait for the next scan. Ironic's conductor has 100 workers by default.
    public var maxWorkers = 100
    /// How often the power sync reads every enrolled BMC's power (zero: never). Ironic syncs
    /// every 60 s; 300 s keeps a 10 000-machine fleet at about 33 BMC reads a second.
    public var powerSyncInterval: Duration = .seconds(300)
    /// BMC reads the power sync has in flight at once.
    public var powerSyncConcurrency = 16
    /// How long a commissioning agent listens for LLDP on each NIC with a link (zero: not at
    /// all). Switches send every 30 s by default; it stops as soon as every NIC heard one.
    public var lldpWait: Duration = .zero

    public init() {}

    public func timeout(_ step: MachineState) -> Duration { timeouts[step] ?? .seconds(60 * 60) }
}

/// A request that cannot be done as asked, with a message the user can act on.
public struct ControlError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable { case notFound, invalid, conflict, permission, unavailable }
    public var kind: Kind
    public var description: String
    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}

/// The lifecycle's single writer of transitions: every transition is committed here (state,
/// phase, generation and its event in one transaction) before anything acts on it. The API,
/// the agent endpoints and the reconciler all go through it.
public final class Controller: Sendable {
    public let store: any StateStore
    public let pool: any BMCProvider
    public let hub: EventHub
    public let configuration: ControlConfiguration
    /// Failed steps by step and class, for `/metrics`.
    public let metrics = LifecycleMetrics()
    let agentKey: SymmetricKey
    let logger: Logger

    public init(
        store: any StateStore,
        pool: any BMCProvider,
        agentKey: SymmetricKey,
        configuration: ControlConfiguration = .init(),
        logger: Logger = Logger(label: "farrier.control")
    ) {
        self.store = store
        self.pool = pool
        self.agentKey = agentKey
        self.configuration = configuration
        self.hub = EventHub()
        self.logger = logger
    }

    // MARK: Transitions

    /// Applies a lifecycle event to a machine and commits it, with `change` for what else the
    /// event carries (the deployment, inventory…). `guardGeneration` makes the commit conditional
    /// on the step being the one the caller saw (a stale worker or agent changes nothing).
    @discardableResult
    public func apply(
        _ event: Lifecycle.Event,
        machineID: String,
        guardGeneration: Int? = nil,
        reasonSuffix: String = "",
        fence: WorkClaim? = nil,
        change: @escaping @Sendable (inout Machine) throws -> Void = { _ in },
        events: @escaping @Sendable (Machine) -> [MachineEvent] = { _ in [] }
    ) async throws -> Machine {
        // The step a success or failure ends, when it began and its trace: for its duration's
        // histogram and its span.
        let ended = TransactionNote<EndedStep?>(nil)
        let begun = Self.beginTrace(event)
        defer { begun.root?.end() }
        let m = try await store.update(machineID: machineID, fence: fence) { m in
            if let g = guardGeneration, m.generation != g {
                throw ControlError(.conflict, "machine \(m.name) moved on to another step")
            }
            let project = m.project
            ended.set(
                Lifecycle.steps.contains(m.state) ? m.stepStarted.map { EndedStep(m.state, $0, m.trace) } : nil
            )
            try Self.transition(&m, event, reasonSuffix: reasonSuffix, trace: begun.trace)
            try change(&m)
            // A transition out of a project (the end of a release, an abort) is that project's
            // event: its members' watches see how their machine left them.
            var e = MachineEvent(m, kind: .transition, message: m.reason)
            e.project = m.project ?? project
            return events(m) + [e]
        }
        Failpoint.hit("controller.after-commit.\(m.state.rawValue)")
        if let step = ended.value {
            switch event {
            case .stepSucceeded:
                metrics.stepEnded(step.state, succeeded: true, seconds: Date().timeIntervalSince(step.started))
                step.ended(m, outcome: "succeeded", error: nil, logger: logger)
            case .stepFailed(let reason):
                metrics.stepEnded(step.state, succeeded: false, seconds: Date().timeIntervalSince(step.started))
                step.ended(m, outcome: "failed", error: reason, logger: logger)
            default: break
            }
        }
        logger.info(
            "transition",
            metadata: [
                "machine": "\(m.name)", "event": "\(event)", "state": "\(m.state.rawValue)", "reason": "\(m.reason)",
            ]
        )
        hub.notify()
        return m
    }

    /// Changes what is not lifecycle state (labels, tags, zone, rack, name) and records it as an
    /// action event; or, with no change, only records the action (a restart, a BMC action).
    @discardableResult
    public func record(
        _ message: String,
        machineID: String,
        fence: WorkClaim? = nil,
        change: @escaping @Sendable (inout Machine) throws -> Void = { _ in }
    ) async throws -> Machine {
        let m = try await store.update(machineID: machineID, fence: fence) { x in
            try change(&x)
            return [MachineEvent(x, kind: .action, message: message)]
        }
        hub.notify()
        return m
    }

    /// Deploys the smallest pool machine that `accept` takes (the `deploy` transition, then
    /// `fill`), in one transaction: two allocations never get the same machine. Nil when none fits.
    public func allocate(
        _ accept: @escaping @Sendable (Machine) -> Bool,
        fill: @escaping @Sendable (inout Machine) -> Void
    ) async throws -> Machine? {
        // A machine in maintenance is never picked.
        let pick: @Sendable (Machine) -> Bool = { $0.maintenance == nil && accept($0) }
        let begun = Self.beginTrace(.deploy)
        defer { begun.root?.end() }
        let m = try await store.allocate(pick) { x in
            try Self.transition(&x, .deploy, trace: begun.trace)
            fill(&x)
            return [MachineEvent(x, kind: .transition, message: x.reason)]
        }
        if let m {
            logger.info(
                "transition",
                metadata: [
                    "machine": "\(m.name)", "event": "deploy", "state": "\(m.state.rawValue)", "reason": "\(m.reason)",
                ]
            )
            hub.notify()
        }
        return m
    }

    /// Enrolls a machine with its BMC (see `MachineStore.enroll`).
    public func enroll(
        name: String,
        mac: MACAddress,
        bmc: BMCReference,
        sealedPassword: [UInt8],
        credential: String? = nil
    ) async throws -> Machine {
        let m = try await store.enroll(
            name: name,
            mac: mac,
            bmc: bmc,
            sealedPassword: sealedPassword,
            credential: credential,
            at: Date()
        )
        hub.notify()
        return m
    }

    /// Enrolls every machine of `batch`, or none (see `MachineStore.enroll(_:at:)`).
    public func enroll(_ batch: [Enrollment]) async throws -> [Machine] {
        let machines = try await store.enroll(batch, at: Date())
        logger.info("machines enrolled", metadata: ["count": "\(machines.count)"])
        hub.notify()
        return machines
    }

    /// Removes a machine with its timeline and events, and forgets its BMC driver.
    public func delete(machineID: String) async throws {
        try await store.deleteMachine(id: machineID)
        await pool.forget(machineID: machineID)
        hub.notify()
    }

    /// Wakes the reconciler and watchers without a commit (a worker finished).
    func wake() { hub.notify() }

    /// The pure part of a transition, on a machine value: state, and the step bookkeeping. A
    /// step that begins keeps `trace`, the context it began in.
    static func transition(
        _ m: inout Machine,
        _ event: Lifecycle.Event,
        reasonSuffix: String = "",
        trace: StepTrace? = nil,
        now: Date = Date()
    ) throws {
        let from = m.state
        // An admin's hold: no transition at all (setting it is refused while a step runs, so
        // no step's own events are pending).
        if let hold = m.maintenance {
            throw ControlError(.conflict, Self.inMaintenance(m.name, hold))
        }
        switch Lifecycle.apply(event, to: m.status) {
        case .failure(let refusal): throw ControlError(.conflict, "machine \(m.name): \(refusal.description)")
        case .success(var status):
            status.reason += reasonSuffix
            m.status = status
        }
        // A new state expects its own power: the power sync judges it again at its next read.
        m.power?.expected = nil
        let stepBefore = m.generation
        if Lifecycle.steps.contains(m.state) {
            m.generation += 1
            m.testAllowance = nil
            m.agentNonce = nil
            m.phase = .queued
            // The step's clock starts now: a step that waits for a slot times out like any other.
            m.stepStarted = now
            m.progress = nil
            if let trace { m.trace = trace }
            m.trace?.phaseSince = now
        } else {
            m.phase = .none
            m.stepStarted = nil
            m.testAllowance = nil
        }
        // A quick wipe completed the step but erased almost nothing: the disk stays dirty and
        // the machine stays the project's to reuse, never another's.
        if from == .releasing, m.state == .ready, m.deployment?.wipe == .quick {
            m.diskDirty = true
            m.dirtyFor = m.project
        } else if !m.diskDirty {
            m.dirtyFor = nil
        }
        m.releasedFrom = from == .releasing && m.state == .ready ? m.project : nil
        // Back in the pool: no project, no deployment, no deploy tags.
        if m.state == .ready || m.state == .enrolled {
            m.project = nil
            m.deployment = nil
        }
        if m.state != .failed { m.failedStep = nil }
        // The OS is not up in rescue: its next report (leaving rescue) is awaited.
        if m.state == .rescuing { m.deployment?.os?.awaiting = true }
        Self.carryTests(&m, event, failedStep: stepBefore, now: now)
    }

    /// What a commission's commit adds for its test run (nil: none): the run, for the step
    /// just begun, and the time its tests add to the step's limit. Scripts are refused on a
    /// machine whose disks may hold a tenant's data (a script could send them away; the
    /// built-ins only read and report numbers).
    public static func openTestRun(_ run: BurnIn?) -> @Sendable (inout Machine) throws -> Void {
        { m in
            guard var run else { return }
            if m.diskDirty, run.tests.contains(where: { $0.kind == .script }) {
                throw ControlError(
                    .conflict,
                    "machine \(m.name) may hold a tenant's data: commission it without scripts first (that wipes it)"
                )
            }
            run.step = m.generation
            m.burnIn = run
            m.testAllowance = TestPlan.allowance(run.tests, disks: m.inventory?.disks.count)
        }
    }

    /// A test run across a transition. A retry of the commissioning step that ran it runs it
    /// again, as a new run; any other commission or an abort closes a run left open (the
    /// commission's own request, if it has tests, then opens its run).
    static func carryTests(_ m: inout Machine, _ event: Lifecycle.Event, failedStep: Int, now: Date) {
        guard var run = m.burnIn else { return }
        switch event {
        case .retry where m.state == .commissioning && run.step == failedStep:
            run = BurnIn(tests: run.tests, requestedBy: run.requestedBy, requested: now, step: m.generation)
            m.testAllowance = TestPlan.allowance(run.tests, disks: m.inventory?.disks.count)
        case .commission, .retry, .abort:
            if run.open { run.finished = now }
        default: return
        }
        m.burnIn = run
    }

    /// The context a step begins in: the caller's (the API call's span), or, for a step begun
    /// outside any span, a new root span for it (`root`, ended once the step is committed).
    /// Nil for an event that begins no step, or when no tracer is bootstrapped.
    static func beginTrace(_ event: Lifecycle.Event) -> (trace: StepTrace?, root: (any Span)?) {
        guard event.beginsStep else { return (nil, nil) }
        // (Kept within the W3C bounds: a caller's tracestate is stored and goes to the agent.)
        if let carrier = StepTrace.sanitized(StepTracing.carrier()) { return (StepTrace(carrier: carrier), nil) }
        let root = InstrumentationSystem.tracer.startSpan("lifecycle.\(event)", context: .topLevel)
        guard let carrier = StepTrace.sanitized(StepTracing.carrier(root.context)) else {
            root.end()
            return (nil, nil)
        }
        return (StepTrace(carrier: carrier), root)
    }

    /// Why a machine in maintenance refuses what was asked, and how to end it.
    public static func inMaintenance(_ name: String, _ hold: Maintenance) -> String {
        "machine \(name) is in maintenance (\(hold.reason)): nothing is done to it until an admin runs 'farrier machine maintenance off \(name)'"
    }

    /// Puts a machine in maintenance (`hold`) or takes it out (nil), with an action event.
    /// Refused while a step runs: the step's BMC actions and agent are under way, and holding
    /// them would leave a half-written disk or a wipe half done. Wait for it, or let it fail.
    @discardableResult
    public func setMaintenance(machineID: String, _ hold: Maintenance?, by caller: String) async throws -> Machine {
        let m = try await store.update(machineID: machineID) { x in
            // A discovered machine is pruned when unseen: a hold on it would go with it.
            if hold != nil, x.state == .discovered {
                throw ControlError(
                    .conflict,
                    "machine \(x.name) is only discovered; enroll it first (maintenance is for enrolled machines)"
                )
            }
            if hold != nil, Lifecycle.steps.contains(x.state) {
                throw ControlError(
                    .conflict,
                    "machine \(x.name) is \(x.state.rawValue): maintenance starts only between steps; wait for the step to end (or fail, then abort it)"
                )
            }
            let message: String
            switch (x.maintenance, hold) {
            case (nil, nil): return []
            // (Who: in the hold, for admins, and in the log; events reach the project too.)
            case (nil, let h?): message = "maintenance on: \(h.reason)"
            case (_?, let h?): message = "maintenance reason changed: \(h.reason)"
            case (_?, nil): message = "maintenance off"
            }
            x.maintenance = hold
            // Not read while held: a drift shown from before would go stale.
            x.power?.expected = nil
            return [MachineEvent(x, kind: .action, message: message)]
        }
        logger.info(
            "maintenance",
            metadata: ["machine": "\(m.name)", "on": "\(m.maintenance != nil)", "by": "\(caller)"]
        )
        hub.notify()
        return m
    }

    /// Moves a step to its next phase, if the machine is still in that step and phase.
    @discardableResult
    func advance(
        machineID: String,
        generation: Int,
        from: StepPhase,
        to: StepPhase,
        message: String,
        fence: WorkClaim? = nil
    ) async throws -> Machine? {
        let moved = TransactionNote(false)
        let m = try await store.update(machineID: machineID, fence: fence) { m in
            guard m.generation == generation, m.phase == from, Lifecycle.steps.contains(m.state) else {
                moved.set(false)
                return []
            }
            m.phase = to
            m.trace?.phaseSince = Date()
            moved.set(true)
            return [MachineEvent(m, kind: .action, message: message)]
        }
        if moved.value { hub.notify() }
        return moved.value ? m : nil
    }

    /// Admits a queued step (moves it to `boot`) if its step has a free slot: fewer than `cap`
    /// machines in the same step past `queued` (phase `os` aside), counted across all replicas in the commit's own
    /// transaction. Returns the machine when admitted.
    func admit(machineID: String, generation: Int, cap: Int?) async throws -> Machine? {
        let admitted = TransactionNote(false)
        @Sendable func start(_ m: inout Machine, _ running: [MachineState: Int]) -> [MachineEvent] {
            admitted.set(false)
            guard m.generation == generation, m.phase == .queued, Lifecycle.steps.contains(m.state) else { return [] }
            if let cap, running[m.state, default: 0] >= cap { return [] }
            m.phase = .boot
            m.trace?.phaseSince = Date()
            admitted.set(true)
            return [MachineEvent(m, kind: .action, message: "started \(m.state.rawValue)")]
        }
        // Only a capped step needs the count, and the lock that serializes admissions to keep
        // it true: an uncapped one (commissioning) is admitted by a plain update, or 10 000
        // machines commissioning at once queue behind one lock.
        let m =
            if cap == nil {
                try await store.update(machineID: machineID, fence: nil) { m in start(&m, [:]) }
            } else {
                try await store.updateCounting(machineID: machineID, fence: nil) { m, running in start(&m, running) }
            }
        guard admitted.value else { return nil }
        hub.notify()
        // Time spent waiting for a slot: a span only when it was noticeable.
        if let started = m.stepStarted, Date().timeIntervalSince(started) >= 1,
            let parent = StepTracing.context(m.trace)
        {
            StepTracing.record(
                "step.queued",
                parent: parent,
                from: started,
                to: Date(),
                attributes: StepTracing.machineAttributes(m)
            )
        }
        return m
    }

    /// Fails the current step (if it is still `generation`) with a reason, and counts it by its
    /// class.
    public func fail(
        machineID: String,
        generation: Int,
        reason: String,
        failure: FailureClass,
        fence: WorkClaim? = nil
    ) async {
        do {
            let step = TransactionNote<MachineState?>(nil)
            let m = try await apply(
                .stepFailed(reason: reason),
                machineID: machineID,
                guardGeneration: generation,
                fence: fence,
                change: { m in step.set(m.failedStep) }
            )
            if let s = step.value {
                metrics.failed(s, failure)
                logFailure(m.name, s, failure, reason, trace: m.trace)
            }
        } catch {
            logger.debug("fail not applied", metadata: ["machine.id": "\(machineID)", "error": "\(error)"])
        }
    }

    /// The one log line of each failed step, at warning: machine, step, class and reason, as
    /// a log pipeline counts them (README: Logs). A wipe whose read-back found data says so:
    /// the machine would go to the next tenant with the last one's data, and stays failed.
    func logFailure(
        _ machine: String,
        _ step: MachineState,
        _ failure: FailureClass,
        _ reason: String,
        trace: StepTrace?
    ) {
        logger.warning(
            failure == .wipeNotVerified
                ? "lifecycle step failed: wipe verification failed, the machine's disks are not clean"
                : "lifecycle step failed",
            metadata: [
                "machine": "\(machine)", "step": "\(step.rawValue)", "failure": "\(failure.rawValue)",
                "reason": "\(reason)", "trace_id": "\(trace?.traceID ?? "-")",
            ]
        )
    }

    // MARK: Agent

    /// The token of this machine's current boot: bound to the machine, the step's generation,
    /// the boot (Farrier's power action) and the nonce of the agent that said hello first, so
    /// it is worthless for any other machine, step, boot or agent. Never stored: the machine
    /// keeps only the nonce's hash, and the token is recomputed from it.
    func agentToken(for m: Machine, nonceHash: String) -> String {
        "\(m.id).\(m.generation).\(m.agentBoot).\(Self.mac(agentKey, "farrier-agent-v2:\(m.id):\(m.generation):\(m.agentBoot):\(nonceHash)"))"
    }

    static func mac(_ key: SymmetricKey, _ message: String) -> String {
        TokenSecret.base64url(HMAC<SHA256>.authenticationCode(for: Data(message.utf8), using: key))
    }

    /// The installed OS's token for reporting in: the machine, the deployment's instance ID, and
    /// their MAC under the agent key. It serves every boot of the deployment and dies with it
    /// (a new deploy has a new instance ID). Never stored. Nil when the deployment is not tracked.
    func osToken(for m: Machine) -> String? {
        guard let d = m.deployment, d.os != nil, let instance = d.instanceID else { return nil }
        return "\(m.id).\(instance).\(Self.mac(agentKey, "farrier-os-v1:\(m.id):\(instance)"))"
    }

    /// The installed OS reports in, from the machine's leased address, with its deployment's
    /// OS token. A deploy (or leaving rescue) waiting in phase `os` succeeds; a deployed
    /// machine records the boot (a restart waits for it). The same boot again changes nothing.
    public func osReady(token: String, peer: MACAddress?, report: OSReady) async throws {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, let m = try await store.machine(id: parts[0]),
            m.deployment?.instanceID == parts[1], let expected = osToken(for: m),
            ConstantTime.equal(expected, token)
        else {
            throw ControlError(.permission, "OS token is not valid (or no longer: its deployment is over)")
        }
        try requireOwnAddress(m, peer: peer)
        // The kernel's boot ID is 36 characters of hex digits and dashes; anything else
        // (which would go into events and logs) is refused.
        guard (1...64).contains(report.bootID.utf8.count),
            report.bootID.unicodeScalars.allSatisfy({
                $0.isASCII && ($0 == "-" || $0.properties.isAlphabetic || ("0"..."9").contains($0))
            })
        else {
            throw ControlError(.invalid, "bootID must be 1 to 64 letters, digits and dashes")
        }
        let instance = parts[1]
        let now = Date()
        // The step this report ends, when it began and its trace: for its duration's histogram
        // and its spans.
        let ended = TransactionNote<EndedStep?>(nil)
        let updated = try await store.update(machineID: m.id) { x in
            ended.set(nil)
            guard x.deployment?.instanceID == instance, var os = x.deployment?.os else {
                throw ControlError(.permission, "OS token is not valid (or no longer: its deployment is over)")
            }
            if os.bootID == report.bootID { return [] }
            os.bootID = report.bootID
            os.reported = now
            os.awaiting = false
            switch (x.state, x.phase) {
            case (.deploying, .os), (.exitingRescue, .os):
                ended.set(x.stepStarted.map { EndedStep(x.state, $0, x.trace) })
                try Self.transition(&x, .stepSucceeded)
                x.deployment?.os = os
                return [
                    MachineEvent(x, kind: .action, message: "the OS reported in (boot \(report.bootID))"),
                    MachineEvent(x, kind: .transition, message: x.reason),
                ]
            case (.deployed, _):
                // Unawaited reports of new boots are recorded at most every 10 s (no real boot
                // is quicker): a tenant's OS cannot fill the timeline with made-up boots.
                if x.deployment?.os?.awaiting == false, let last = x.deployment?.os?.reported,
                    now.timeIntervalSince(last) < 10
                {
                    return []
                }
                x.deployment?.os = os
                return [MachineEvent(x, kind: .action, message: "the OS reported in (boot \(report.bootID))")]
            default:
                throw ControlError(
                    .conflict,
                    "machine \(x.name) is \(x.state.rawValue) (phase \(x.phase.rawValue)); its OS reports in once it boots its disk"
                )
            }
        }
        Failpoint.hit("controller.after-commit.\(updated.state.rawValue)")
        if let step = ended.value {
            metrics.stepEnded(step.state, succeeded: true, seconds: now.timeIntervalSince(step.started))
            // The disk's boot (from Farrier booting it to this report), the report, the step.
            if let parent = StepTracing.context(step.trace) {
                let attributes = StepTracing.machineAttributes(m)
                if let since = step.trace?.phaseSince {
                    StepTracing.record("boot.disk", parent: parent, from: since, to: now, attributes: attributes)
                }
                StepTracing.record("os.ready", parent: parent, from: now, to: Date(), kind: .server) { a in
                    attributes(&a)
                    a["farrier.os.boot_id"] = report.bootID
                }
            }
            step.ended(updated, outcome: "succeeded", error: nil, logger: logger)
        }
        // In the step's trace: the line carries its trace_id, on whichever replica took the report.
        // (A deployed machine's later boots are in no trace: its deploy's is long over.)
        InstrumentationContext.$current.withValue(StepTracing.context(ended.value?.trace)) {
            logger.info(
                "the OS reported in",
                metadata: [
                    "machine": "\(updated.name)", "state": "\(updated.state.rawValue)", "boot": "\(report.bootID)",
                ]
            )
        }
        hub.notify()
    }

    /// Agent calls come only from the address Farrier's DHCP leased to the machine's MAC:
    /// `peer` is the MAC that holds the request's source address, if any.
    func requireLeasedAddress(_ m: Machine, peer: MACAddress?) throws {
        guard peer == m.mac else {
            throw ControlError(
                .permission,
                "agent calls for a machine are accepted only from the address leased to its MAC"
            )
        }
    }

    /// The installed OS reports in from an address leased to one of its own MACs: the boot NIC's,
    /// or a NIC its deployment bonds with it (a bond may speak with a member's MAC, and get its
    /// lease under it). Agent calls stay with the boot MAC alone.
    func requireOwnAddress(_ m: Machine, peer: MACAddress?) throws {
        guard let peer, m.osMayReport(from: peer) else {
            throw ControlError(
                .permission,
                "the OS reports in only from an address leased to its machine's MAC (or a NIC bonded with it)"
            )
        }
    }

    /// Verifies an agent token: the machine it names, in the step and boot it was issued for,
    /// called from that machine's leased address.
    public func agentMachine(token: String, peer: MACAddress?) async throws -> Machine {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 4, let generation = Int(parts[1]), let boot = Int(parts[2]) else {
            throw ControlError(.permission, "malformed agent token")
        }
        guard let m = try await store.machine(id: parts[0]), let nonceHash = m.agentNonce, m.generation == generation,
            m.agentBoot == boot, Lifecycle.steps.contains(m.state), m.phase == .agent || m.phase == .finish,
            ConstantTime.equal(agentToken(for: m, nonceHash: nonceHash), token)
        else {
            throw ControlError(.permission, "agent token is not valid (or no longer: its step or boot is over)")
        }
        try requireLeasedAddress(m, peer: peer)
        return m
    }

    /// A new boot of the machine for its current step: Farrier is about to power it on or cycle
    /// it. The previous boot's agent token dies here, and the next agent to say hello gets one.
    public func beginBoot(machineID: String, generation: Int, fence: WorkClaim? = nil) async throws {
        _ = try await store.update(machineID: machineID, fence: fence) { m in
            guard m.generation == generation, Lifecycle.steps.contains(m.state) else { return [] }
            m.agentBoot += 1
            m.agentNonce = nil
            return []
        }
    }

    /// The agent is up: the boot phase is over. Returns what it must do, with this boot's token.
    ///
    /// `peer` is the MAC holding the request's source address: the machine is the one with that
    /// MAC, so only the address leased to it can say hello for it. The first hello of a boot
    /// binds the boot to its nonce; the same nonce again (the agent restarted, or the answer was
    /// lost) gets the same token; another nonce is refused until Farrier boots the machine again.
    public func agentHello(peer: MACAddress?, hello: AgentHello) async throws -> AgentTask {
        guard let mac = peer, let m = try await store.machine(mac: mac), Lifecycle.steps.contains(m.state) else {
            throw ControlError(
                .permission,
                "no machine in a step holds this address: agents say hello only from the address leased to their machine"
            )
        }
        guard hello.nonce.utf8.count >= 16, hello.nonce.utf8.count <= 256 else {
            throw ControlError(.invalid, "hello needs a nonce of 16 to 256 characters")
        }
        // The step's agent work is done (the disk written, the wipe finished): a ramdisk that
        // booted again anyway gets no task, so nothing is done twice.
        guard m.phase != .finish && m.phase != .os else {
            throw ControlError(.conflict, "machine \(m.name): the agent already finished \(m.state.rawValue)")
        }
        // A queued step has no slot yet: its agent may not start (the deploy and wipe caps, and
        // the step's clock, apply from admission on).
        guard m.phase != .queued else {
            throw ControlError(
                .conflict,
                "machine \(m.name): \(m.state.rawValue) is queued for a free slot; the agent may not start yet"
            )
        }
        // Until Farrier has powered the machine off and on for this step, whatever answers from
        // its address is the old boot (a tenant's OS, an old ramdisk), not this step's agent.
        guard m.phase == .agent else {
            throw ControlError(
                .unavailable,
                "machine \(m.name): Farrier has not booted it for \(m.state.rawValue) yet; no agent may start until it has"
            )
        }
        // A step with no agent work (exiting rescue) takes no hello.
        _ = try await task(for: m)
        let nonceHash = TokenSecret.hash(hello.nonce)
        let refusal = TransactionNote<ControlError?>(nil)
        let bound = TransactionNote(false)
        let updated = try await store.update(machineID: m.id) { x in
            refusal.set(nil)
            bound.set(false)
            guard x.generation == m.generation, x.phase == .agent else {
                refusal.set(ControlError(.conflict, "machine \(x.name) moved on to another step or phase"))
                return []
            }
            if let bound = x.agentNonce {
                guard ConstantTime.equal(bound, nonceHash) else {
                    refusal.set(
                        ControlError(
                            .conflict,
                            "machine \(x.name): an agent already said hello in this boot; another agent needs a new boot (Farrier powers the machine again when the step is retried)"
                        )
                    )
                    return []
                }
                return []
            }
            x.agentNonce = nonceHash
            bound.set(true)
            x.progress = StepProgress(stage: "started", updated: Date())
            return [MachineEvent(x, kind: .action, message: "agent \(hello.agentVersion) started")]
        }
        if let refused = refusal.value {
            logger.warning(
                "agent hello refused",
                metadata: ["machine": "\(m.name)", "reason": "\(refused.description)"]
            )
            throw refused
        }
        Failpoint.hit("agent.hello.after-commit")
        hub.notify()
        var t = try await task(for: updated)
        t.token = agentToken(for: updated, nonceHash: nonceHash)
        t.trace = Self.traceHello(updated, firstOfBoot: bound.value, version: hello.agentVersion)
        return t
    }

    /// The hello's part of the step's trace: the ramdisk's boot (from Farrier powering the
    /// machine on to this hello) once per boot, and the hello itself, whose context the agent
    /// carries on (its download, its result).
    static func traceHello(_ m: Machine, firstOfBoot: Bool, version: String) -> [String: String]? {
        guard let parent = StepTracing.context(m.trace) else { return nil }
        let now = Date()
        if firstOfBoot, let since = m.trace?.phaseSince {
            StepTracing.record(
                "boot.ramdisk",
                parent: parent,
                from: since,
                to: now,
                attributes: StepTracing.machineAttributes(m)
            )
        }
        let span = InstrumentationSystem.tracer.startSpan("agent.hello", context: parent, ofKind: .server)
        var a = span.attributes
        StepTracing.machineAttributes(m)(&a)
        a["farrier.agent.version"] = version
        span.attributes = a
        defer { span.end() }
        return StepTracing.carrier(span.context)
    }

    /// The task an agent would get for this machine now (tests).
    public func task(forTesting m: Machine) async throws -> AgentTask { try await task(for: m) }

    func task(for m: Machine) async throws -> AgentTask {
        switch m.state {
        case .commissioning:
            var task = AgentTask(kind: .commission, machine: m.name)
            let lldp = Int(configuration.lldpWait.components.seconds)
            task.lldpSeconds = lldp > 0 ? lldp : nil
            if let run = m.burnIn, run.open, !run.tests.isEmpty {
                var tests: [TestSpec] = []
                for var spec in run.tests {
                    // A script removed since the request goes without content: the agent
                    // reports it as an error, and the step fails; it never passes unrun.
                    if spec.kind == .script, let sha = spec.sha256,
                        let content = try await store.testScriptContent(sha256: sha)
                    {
                        spec.script = String(decoding: content, as: UTF8.self)
                    }
                    tests.append(spec)
                }
                task.tests = tests
            }
            return task
        case .deploying:
            guard let d = m.deployment, let image = try await store.image(name: d.image) else {
                throw ControlError(.conflict, "machine \(m.name) has no deployable image")
            }
            var task = AgentTask(
                kind: .deploy,
                machine: m.name,
                image: .init(
                    path: "/images/\(image.sha256)",
                    sha256: image.sha256,
                    size: image.size,
                    format: image.format
                ),
                sshKeys: d.sshKeys,
                hostname: d.hostname,
                seed: seed(for: m)
            )
            task.rootDevice = d.rootDevice ?? m.rootDevice
            task.osToken = osToken(for: m)
            return task
        case .releasing: return AgentTask(kind: .wipe, machine: m.name, wipe: m.deployment?.wipe ?? .full)
        case .rescuing: return AgentTask(kind: .rescue, machine: m.name, sshKeys: m.deployment?.sshKeys ?? [])
        default: throw ControlError(.conflict, "machine \(m.name) has no agent work (it is \(m.state.rawValue))")
        }
    }

    /// May this bearer download the image with this SHA-256? The agent of a machine whose
    /// current step deploys that image (from its leased address), or an admin API token.
    public func imageAccess(sha256: String, bearer: String?, peer: MACAddress?) async -> Bool {
        guard let bearer, !bearer.isEmpty else { return false }
        if let m = try? await agentMachine(token: bearer, peer: peer) {
            guard m.state == .deploying, m.phase == .agent, let name = m.deployment?.image,
                let image = try? await store.image(name: name)
            else { return false }
            return ConstantTime.equal(image.sha256, sha256)
        }
        guard let t = try? await store.token(secretSHA256: TokenSecret.hash(bearer)) else { return false }
        return t.role == .admin
    }

    // MARK: cloud-init NoCloud

    /// The deployed OS's NoCloud files: meta-data (instance-id, hostname, keys), user-data (as
    /// given at deploy), vendor-data (Farrier's defaults: root may log in with the deploy keys).
    /// They reach the machine only inside its agent's authenticated task, which writes them to
    /// a `cidata` config drive: no network fetch, nothing for a neighbour to ask for.
    func seed(for m: Machine) -> NoCloudSeed? {
        guard let d = m.deployment else { return nil }
        var meta = "instance-id: \(d.instanceID ?? m.id)\nlocal-hostname: \(d.hostname)\n"
        if !d.sshKeys.isEmpty {
            meta +=
                "public-keys:\n" + d.sshKeys.map { "  - \"\($0.replacingOccurrences(of: "\"", with: ""))\"\n" }.joined()
        }
        return NoCloudSeed(
            metaData: meta,
            userData: d.userData.isEmpty ? "#cloud-config\n{}\n" : d.userData,
            // Root may log in with the deploy keys (meta-data's public-keys go to the default
            // user, and to root when disable_root is false); no passwords over SSH.
            vendorData: "#cloud-config\ndisable_root: false\nssh_pwauth: false\n",
            networkConfig: d.networking.map { NetworkConfigV2($0).yaml }
        )
    }

    public func agentProgress(token: String, peer: MACAddress?, report: AgentProgress) async throws {
        let m = try await agentMachine(token: token, peer: peer)
        guard m.phase == .agent else { return }  // the agent's work is over: nothing to record
        _ = try await store.update(machineID: m.id) { x in
            guard x.generation == m.generation, x.phase == .agent else { return [] }
            x.progress = StepProgress(
                stage: report.stage,
                bytesDone: report.bytesDone,
                bytesTotal: report.bytesTotal,
                updated: Date()
            )
            return [MachineEvent(x, kind: .progress, message: report.stage)]
        }
        hub.notify()
    }

    /// A commissioning's inventory, and the firmware it found.
    static func keepInventory(_ m: inout Machine, _ inventory: Inventory?) {
        guard let inventory else { return }
        m.inventory = inventory
        if inventory.firmware != .unknown { m.firmware = inventory.firmware }
    }

    /// Fails the step of the agent's task with `reason`, counted and logged by its class, in
    /// the step's trace, with `change` and `events` in the failure's commit; then the agent's
    /// spans and timeline rows, ending when its result arrived (before the step's).
    func agentTaskFailed(
        _ m: Machine,
        _ result: AgentResult,
        reason: String,
        _ failure: FailureClass,
        change: @escaping @Sendable (inout Machine) -> Void = { _ in },
        events: @escaping @Sendable (Machine) -> [MachineEvent] = { _ in [] }
    ) async throws {
        let end = Date()
        try await InstrumentationContext.$current.withValue(StepTracing.context(m.trace)) {
            // (Its token bound the agent to this step and boot; the commit is this step's only.)
            try await apply(
                .stepFailed(reason: reason),
                machineID: m.id,
                guardGeneration: m.generation,
                change: change,
                events: events
            )
            metrics.failed(m.state, failure)
            logFailure(m.name, m.state, failure, reason, trace: m.trace)
        }
        let times = AgentTimes(m, result, end: end)
        traceAgentTask(m, result, times)
        await recordAgentTimeline(m, result, times)
    }

    /// A test run's results are in: kept (without output), and the run closed.
    static func closeRun(_ m: inout Machine, _ results: [TestResult]) {
        m.burnIn?.results = results
        m.burnIn?.finished = Date()
    }

    /// One event per test result, in the commit that keeps them.
    static func resultEvents(_ m: Machine, _ results: [TestResult]) -> [MachineEvent] {
        results.map { MachineEvent(m, kind: .action, message: resultLine($0)) }
    }

    /// One test's result as its machine event says it: `test smart vda passed in 2.1 s: …`.
    static func resultLine(_ r: TestResult) -> String {
        let name = r.label
        let numbers = r.metrics.sorted { $0.key < $1.key }.map { "\($0.key)=\(TestPlan.format($0.value))" }
        let detail = ([r.summary] + numbers).filter { !$0.isEmpty }.joined(separator: " ")
        return "test \(name) \(r.status) in \(String(format: "%.1f", r.seconds)) s"
            + (detail.isEmpty ? "" : ": \(detail)")
    }

    /// The result as the step takes it: an agent that did not write the plan's network-config
    /// (a ramdisk from before it) failed.
    static func checked(_ result: AgentResult, for m: Machine) -> AgentResult {
        guard result.ok, m.state == .deploying, m.deployment?.networking != nil, result.networkConfig != true else {
            return result
        }
        var failed = result
        failed.ok = false
        failed.error =
            "the ramdisk wrote no network-config for the deploy's network plan; rebuild it (scripts/build-ramdisk.sh)"
        return failed
    }

    /// The agent finished its task: on success the step moves to its finish phase (the
    /// reconciler then sets the final boot device and power), on failure the step fails.
    public func agentDone(token: String, peer: MACAddress?, result: AgentResult) async throws {
        let m = try await agentMachine(token: token, peer: peer)
        // Said again after the step's agent work was committed (its answer lost): already done.
        guard m.phase == .agent else { return }
        // An agent that did not write the plan's network-config (a ramdisk from before it)
        // fails the deploy, rather than leave an OS without the addresses it was given.
        let result = Self.checked(result, for: m)
        guard result.ok else {
            let failure: FailureClass = result.failure == .wipeNotVerified ? .wipeNotVerified : .agent
            try await agentTaskFailed(m, result, reason: "agent: \(result.error ?? "no reason given")", failure)
            return
        }
        if m.state == .commissioning, result.inventory == nil {
            throw ControlError(.invalid, "commissioning needs the inventory in the result")
        }
        // A commissioning with tests: their results decide the step.
        var kept: [TestResult]?
        if m.state == .commissioning, let run = m.burnIn, run.open, !run.tests.isEmpty {
            let (results, outputs, verdict) = TestPlan.accept(result.tests ?? [], for: run)
            // Its own write, keyed by the run: a retried answer overwrites it.
            try await store.putTestOutputs(machineID: m.id, runID: run.runID, outputs)
            switch verdict {
            case .passed: kept = results
            case .hardware(let reason), .agent(let reason):
                // The agent did its task; the step failed on what its tests found, and keeps them.
                var judged = result
                judged.ok = false
                judged.error = reason
                let failure: FailureClass = if case .hardware = verdict { .hardwareTest } else { .agent }
                try await agentTaskFailed(
                    m,
                    judged,
                    reason: reason,
                    failure,
                    change: { x in
                        Self.keepInventory(&x, result.inventory)
                        Self.closeRun(&x, results)
                    },
                    events: { x in Self.resultEvents(x, results) }
                )
                return
            }
        }
        let testResults = kept
        let finished = TransactionNote(false)
        _ = try await store.update(machineID: m.id) { x in
            finished.set(false)
            guard x.generation == m.generation, x.agentBoot == m.agentBoot, x.phase == .agent else { return [] }
            finished.set(true)
            if x.state == .commissioning { Self.keepInventory(&x, result.inventory) }
            if let testResults { Self.closeRun(&x, testResults) }
            x.phase = .finish
            x.trace?.phaseSince = Date()
            // Only an OS that was given the reporter is waited for.
            if x.state == .deploying, result.osReporter != true { x.deployment?.os = nil }
            var note = ""
            if let s = result.seconds { note += String(format: " in %.1f s", s) }
            if let rss = result.peakRSSBytes {
                note += String(format: ", agent peak RSS %.1f MiB", Double(rss) / 1_048_576)
            }
            return Self.resultEvents(x, testResults ?? []) + [
                MachineEvent(x, kind: .action, message: "agent finished \(x.state.rawValue)\(note)")
            ]
        }
        Failpoint.hit("agent.done.after-commit")
        if finished.value {
            let end = Date()
            let times = AgentTimes(m, result, end: end)
            traceAgentTask(m, result, times)
            await recordAgentTimeline(m, result, times)
        }
        // The image's size, as the agent's last progress report gave it, over the whole task.
        if finished.value, m.state == .deploying, let seconds = result.seconds, let bytes = m.progress?.bytesTotal,
            bytes > 0
        {
            metrics.deployed(bytes: bytes, seconds: seconds)
        }
        hub.notify()
    }
}

/// A value set inside a store transaction's body and read after the commit: the body is
/// `@Sendable` (it runs where the store runs it), so it reports through this box, not a
/// captured `var`. The body sets it on every path, so a store that ran the body again would
/// leave the last run's value.
final class TransactionNote<Value: Sendable>: Sendable {
    private let box: Mutex<Value>
    init(_ value: Value) { box = Mutex(value) }
    func set(_ value: Value) { box.withLock { $0 = value } }
    var value: Value { box.withLock { $0 } }
}

/// Wakes watchers and the reconciler when something was committed. Holds no events itself:
/// they are read from the store, so nothing is lost or duplicated between a wake-up and a read.
public final class EventHub: Sendable {
    let subscribers = Mutex<[UUID: AsyncStream<Void>.Continuation]>([:])

    public init() {}

    public func notify() {
        for c in subscribers.withLock({ Array($0.values) }) { c.yield() }
    }

    /// A stream of wake-ups; coalesced (at most one pending).
    public func subscribe() -> (AsyncStream<Void>, cancel: @Sendable () -> Void) {
        let id = UUID()
        let (stream, c) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        subscribers.withLock { $0[id] = c }
        return (
            stream,
            { [weak self] in
                _ = self?.subscribers.withLock { $0.removeValue(forKey: id) }
                c.finish()
            }
        )
    }
}
