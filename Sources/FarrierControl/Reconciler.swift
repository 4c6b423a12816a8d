import CoreMetrics
import FarrierBMC
import FarrierCore
import Foundation
import Logging
import ServiceLifecycle
import Tracing

/// Drives every machine in a step (commissioning, deploying, releasing, rescuing,
/// exiting-rescue) through its phases:
///
/// ```
/// queued ─slot free─▶ boot ─BMC: next boot + power─▶ agent ─agent done─▶ finish ─BMC: final boot/power─▶ next state
/// ```
///
/// Each phase is committed before its action runs, and each action is idempotent (a boot
/// device set twice is the same; a power cycle before the agent said hello only restarts a
/// boot that had not begun its work), so after a crash the reconciler repeats at most the one
/// action in flight. One worker per machine, at most `maxWorkers` at once; at most N deploys
/// and N wipes past `queued` (a deploy waiting for its OS, phase `os`, holds no slot).
///
/// Several replicas on one database share the work through it: a worker first claims its
/// machine (`WorkClaimStore`), renews the claim while it works, renews it again right before
/// every BMC action, and fences each commit with it, so a replica that lost a machine (it
/// stalled past the claim's lifetime, and another took over) neither acts on it nor commits.
/// A replica that dies leaves its claims to lapse; another's next scan claims the machine and
/// resumes it from the committed phase, as a restarted server would. Admission counts the
/// running steps of every replica in the admitting transaction, so the caps hold across them.
public actor Reconciler: Service {
    let controller: Controller
    let logger: Logger
    var active: Set<String> = []
    /// Machines whose site's link is down (their BMCs are reached through it), and when their
    /// worker may be tried again: a site away for an hour must not cost a claim and a BMC lookup
    /// per machine per tick.
    var waitingForSite: [String: ContinuousClock.Instant] = [:]
    let gauges = ReconcilerGauges()

    public init(controller: Controller, logger: Logger = Logger(label: "farrier.reconciler")) {
        self.controller = controller
        self.logger = logger
    }

    public func run() async throws {
        let (wakeups, cancel) = controller.hub.subscribe()
        defer { cancel() }
        logger.info(
            "reconciler running",
            metadata: [
                "deploys.max": "\(controller.configuration.maxConcurrentDeploys)",
                "wipes.max": "\(controller.configuration.maxConcurrentWipes)",
            ]
        )
        // A discarding group: a finished worker's task is freed at once. (A plain task group
        // keeps every finished child until its result is read, which here it never is: at
        // fleet scale that held every worker that ever ran, ~100 KB each.)
        await withDiscardingTaskGroup { group in
            // Ticks, so timeouts fire even when nothing else happens.
            let tick = controller.configuration.tick
            let (ticks, tickSink) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: tick)
                    tickSink.yield()
                }
                tickSink.finish()
            }
            group.addTask {
                for await _ in wakeups { tickSink.yield() }
            }
            for await _ in ticks.cancelOnGracefulShutdown() {
                let began = ContinuousClock.now
                await self.scan(group: &group)
                // Commits wake the scan, and a fleet's agents commit many times a second: after
                // a scan, wait as long as it took (at most 2 s, so events are still acted on
                // within seconds), so scanning takes at most half the time while a scan takes
                // under 2 s (a small fleet's scan takes a millisecond; 10 000 machines in steps,
                // a few hundred).
                let took = ContinuousClock.now - began
                if took > .milliseconds(5) { try? await Task.sleep(for: min(took, .seconds(2))) }
            }
            group.cancelAll()
        }
    }

    /// One pass over all machines: time out late steps, admit queued ones, start workers.
    func scan(group: inout DiscardingTaskGroup) async {
        let machines: [MachineStep]
        do { machines = try await controller.store.machineSteps() } catch {
            logger.error("reconciler cannot read machines", metadata: ["error": "\(error)"])
            return
        }
        let now = Date()
        let config = controller.configuration
        gauges.scanned(machines, now: now, workers: active.count)
        var running: [MachineState: Int] = [:]
        // A step waiting for its OS (phase os) does no work of Farrier's and holds no slot: how
        // long it waits is up to the tenant's OS (its cloud-init), and must not stall others'.
        for m in machines where m.phase != .queued && m.phase != .os {
            running[m.state, default: 0] += 1
        }
        // Steps nearest their end first (finish, then boot, then admissions), so a worker slot
        // goes to finishing a step before starting another: with 10 000 machines commissioning
        // at once, admissions took the slots as fast as they freed and finished steps piled up.
        // Within a phase, oldest step first, so slots go in the order steps began.
        func rank(_ p: StepPhase) -> Int {
            switch p {
            case .finish: 0
            case .boot: 1
            case .queued: 2
            case .agent, .os, .none: 3
            }
        }
        let inSteps = machines.sorted {
            (rank($0.phase), $0.stepStarted ?? .distantPast, $0.name)
                < (rank($1.phase), $1.stepStarted ?? .distantPast, $1.name)
        }
        // The worker slots free when the scan began: it starts at most that many. Slots that
        // free while it awaits admissions wait for the next scan, which offers them to finishes
        // first; a scan that kept admitting into them ran for minutes while finishes waited.
        var slots = max(0, config.maxWorkers - active.count)
        // Waits for sites are kept only for machines still in a BMC phase.
        if !waitingForSite.isEmpty {
            let inBMCPhase = Set(machines.lazy.filter { $0.phase == .boot || $0.phase == .finish }.map(\.id))
            waitingForSite = waitingForSite.filter { inBMCPhase.contains($0.key) }
        }
        for m in inSteps {
            // A commissioning's tests add their own limits to the step's (at most a week).
            let base = config.timeout(m.state)
            let limit = m.testAllowance.map { min(base + .seconds($0), max(base, TestPlan.maxStepLimit)) } ?? base
            // A step with no recorded start cannot escape its limit: it counts as started long ago.
            let started = m.stepStarted ?? .distantPast
            if now.timeIntervalSince(started) > Double(limit.components.seconds) {
                // Logged by the failure (Controller.logFailure), with the phase in its reason.
                await controller.fail(
                    machineID: m.id,
                    generation: m.generation,
                    reason: "timed out after \(limit.components.seconds) s in phase \(m.phase.rawValue)",
                    failure: .timeout
                )
                continue
            }
            if m.phase == .agent, let p = m.progress,
                now.timeIntervalSince(p.updated) > Double(config.progressStall.components.seconds)
            {
                await controller.fail(
                    machineID: m.id,
                    generation: m.generation,
                    reason:
                        "the agent reported no progress for \(config.progressStall.components.seconds) s (last: \(p.stage))",
                    failure: .stalled
                )
                continue
            }
            switch m.phase {
            case .queued:
                let cap: Int? =
                    switch m.state {
                    case .deploying: config.maxConcurrentDeploys
                    case .releasing: config.maxConcurrentWipes
                    default: nil
                    }
                if let cap, running[m.state, default: 0] >= cap { continue }
                guard slots > 0, !active.contains(m.id) else { continue }
                do {
                    if try await controller.admit(machineID: m.id, generation: m.generation, cap: cap) != nil {
                        running[m.state, default: 0] += 1
                        slots -= 1
                        start(m.id, &group)
                    }
                } catch {
                    logger.error("admit failed", metadata: ["machine": "\(m.name)", "error": "\(error)"])
                }
            case .boot, .finish:
                // At most `maxWorkers` BMC workers at once; the rest wait for the next scan.
                guard slots > 0, !active.contains(m.id) else { continue }
                if let until = waitingForSite[m.id] {
                    guard ContinuousClock.now >= until else { continue }
                    waitingForSite.removeValue(forKey: m.id)
                }
                slots -= 1
                start(m.id, &group)
            case .agent, .os, .none:
                break
            }
        }
    }

    func start(_ id: String, _ group: inout DiscardingTaskGroup) {
        guard !active.contains(id) else { return }
        active.insert(id)
        let controller = self.controller
        let logger = self.logger
        group.addTask {
            let outcome = await Worker(controller: controller, logger: logger).run(machineID: id)
            await self.finished(id, outcome)
        }
    }

    /// A worker ended. Only one that worked (it held the claim) wakes the next scan at once:
    /// one that found the machine claimed by another replica waits for the next tick, or it
    /// would be started again and again for as long as the other holds the claim; one whose
    /// machine's site is away waits 5 s.
    func finished(_ id: String, _ outcome: Worker.Outcome) {
        active.remove(id)
        switch outcome {
        case .worked: controller.wake()
        case .notClaimed: break
        case .waitingForSite: waitingForSite[id] = .now + .seconds(5)
        }
    }
}

/// What each scan finds: machines in each step and phase, the steps waiting for a slot and
/// how long the oldest has waited, and this replica's BMC workers.
final class ReconcilerGauges: Sendable {
    let phases: [MachineState: [StepPhase: CoreMetrics.Gauge]]
    let queued: [MachineState: CoreMetrics.Gauge]
    let oldest: [MachineState: CoreMetrics.Gauge]
    let workers = CoreMetrics.Gauge(label: "farrier_reconciler_workers_active")
    static let phasesInSteps: [StepPhase] = [.queued, .boot, .agent, .finish, .os]

    init() {
        var phases: [MachineState: [StepPhase: CoreMetrics.Gauge]] = [:]
        var queued: [MachineState: CoreMetrics.Gauge] = [:]
        var oldest: [MachineState: CoreMetrics.Gauge] = [:]
        for step in Lifecycle.steps {
            for p in Self.phasesInSteps {
                phases[step, default: [:]][p] = CoreMetrics.Gauge(
                    label: "farrier_reconciler_steps",
                    dimensions: [("step", step.rawValue), ("phase", p.rawValue)]
                )
            }
            queued[step] = CoreMetrics.Gauge(
                label: "farrier_reconciler_queued_steps",
                dimensions: [("step", step.rawValue)]
            )
            oldest[step] = CoreMetrics.Gauge(
                label: "farrier_reconciler_oldest_queued_step_seconds",
                dimensions: [("step", step.rawValue)]
            )
        }
        self.phases = phases
        self.queued = queued
        self.oldest = oldest
    }

    func scanned(_ machines: [MachineStep], now: Date, workers active: Int) {
        var counts: [MachineState: [StepPhase: Int]] = [:]
        var oldestStart: [MachineState: Date] = [:]
        for m in machines {
            counts[m.state, default: [:]][m.phase, default: 0] += 1
            if m.phase == .queued, let s = m.stepStarted {
                oldestStart[m.state] = min(oldestStart[m.state] ?? s, s)
            }
        }
        for (step, byPhase) in phases {
            for (p, g) in byPhase { g.record(counts[step]?[p] ?? 0) }
            queued[step]?.record(counts[step]?[.queued] ?? 0)
            oldest[step]?.record(oldestStart[step].map { max(0, now.timeIntervalSince($0)) } ?? 0)
        }
        workers.record(active)
    }
}

/// Runs the boot and finish phases of one machine's step, then returns (the agent phase needs
/// no worker: the agent's reports move it on).
struct Worker {
    let controller: Controller
    let logger: Logger

    enum Outcome {
        /// It held the claim and worked the phase (whatever came of it).
        case worked
        /// Another replica holds the machine.
        case notClaimed
        /// Its BMC action waits for the machine's site, whose link is down.
        case waitingForSite
    }

    /// What a BMC action came to.
    enum Action {
        case done, failed, waitingForSite
    }

    /// Works the machine's current phase if this replica gets its claim.
    func run(machineID: String) async -> Outcome {
        let config = controller.configuration
        let store = controller.store
        // Another replica working this machine holds its claim: leave it to that one.
        let claim: WorkClaim
        do {
            guard let c = try await store.claimWork(machineID: machineID, owner: config.replica, ttl: config.claimTTL)
            else {
                logger.debug("machine claimed by another replica", metadata: ["machine.id": "\(machineID)"])
                return .notClaimed
            }
            claim = c
            logger.debug("worker claimed machine", metadata: ["machine.id": "\(machineID)", "claim": "\(claim)"])
        } catch {
            logger.warning(
                "cannot claim a machine's work",
                metadata: ["machine.id": "\(machineID)", "error": "\(error)"]
            )
            return .notClaimed
        }
        // Renewed every third of its lifetime while the worker runs (bounded by the worker). A
        // renewal that fails to reach the database is tried again at the next third; only an
        // answer that the claim is gone ends the renewals.
        let keeper = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: config.claimTTL / 3)
                guard !Task.isCancelled else { return }
                if let held = try? await store.renewWork(claim, ttl: config.claimTTL), !held { return }
            }
        }
        // At most two phases per run (boot, or finish); bounded against surprises.
        var outcome = Outcome.worked
        for _ in 0..<4 {
            guard let m = try? await store.machine(id: machineID), Lifecycle.steps.contains(m.state) else { break }
            let action: Action
            switch m.phase {
            case .boot:
                action = await StepTracing.withStepSpan(
                    "reconciler.boot",
                    trace: m.trace,
                    attributes: StepTracing.machineAttributes(m)
                ) { await boot(m, claim) }
            case .finish:
                action = await StepTracing.withStepSpan(
                    "reconciler.finish",
                    trace: m.trace,
                    attributes: StepTracing.machineAttributes(m)
                ) { await finish(m, claim) }
            default: action = .done
            }
            if action == .waitingForSite {
                outcome = .waitingForSite
                break
            }
            if m.phase != .boot && m.phase != .finish { break }
        }
        keeper.cancel()
        try? await store.releaseWork(claim)
        return outcome
    }

    /// Whether this worker still holds its claim, renewed now: asked right before every BMC
    /// action, so a worker that lost its machine to another replica does not act on it.
    func holds(_ claim: WorkClaim, _ m: Machine) async -> Bool {
        if (try? await controller.store.renewWork(claim, ttl: controller.configuration.claimTTL)) == true {
            return true
        }
        logger.warning(
            "lost the claim on a machine to another replica; leaving it",
            metadata: ["machine": "\(m.name)", "claim": "\(claim)"]
        )
        return false
    }

    /// Next boot from the network (or disk for exiting rescue), then a new boot: power off and
    /// seen off, then on. The boot's agent token is reset only once the machine is seen off, so
    /// nothing from the old boot (a tenant's OS still up for the seconds a cycle takes, an old
    /// ramdisk) can say hello as the new boot's agent; and hello is accepted only once the
    /// machine is past this phase (`agent`).
    @discardableResult
    func boot(_ m: Machine, _ claim: WorkClaim) async -> Action {
        let device: BootDevice = Lifecycle.nextBoot(m.state) == .disk ? .disk : .pxe
        Failpoint.hit("reconciler.boot.before-action")
        let action = await withBMC(m, claim, action: "set next boot to \(device.rawValue), power off and on") { bmc in
            try await bmc.setBootOverride(
                BootOverride(device: device, persistent: device == .disk, efi: m.firmware == .uefi)
            )
            if try await bmc.powerState() != .off {
                try await bmc.power(.off)
                try await Self.waitUntilOff(bmc, machine: m.name)
            }
            try await controller.beginBoot(machineID: m.id, generation: m.generation, fence: claim)
            guard await holds(claim, m) else { throw ClaimLost() }
            try await bmc.power(.on)
        }
        guard action == .done else { return action }
        Failpoint.hit("reconciler.boot.after-action")
        if m.state == .exitingRescue {
            await succeedOrAwaitOS(m, claim, from: .boot)
        } else {
            _ = try? await controller.advance(
                machineID: m.id,
                generation: m.generation,
                from: .boot,
                to: .agent,
                message: "booting the ramdisk; waiting for the agent",
                fence: claim
            )
        }
        return .done
    }

    /// Polls the power state until it reads off (a BMC may act on "off" after answering it):
    /// at most 60 s.
    static func waitUntilOff(_ bmc: any BMC, machine: String) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while try await bmc.powerState() != .off {
            guard ContinuousClock.now < deadline else {
                throw ControlError(.unavailable, "\(machine) still reads as powered on 60 s after power off")
            }
            try await Task.sleep(for: .milliseconds(500))
        }
    }

    /// The agent is done: deployed machines boot their disk (persistently), commissioned and
    /// wiped ones are powered off, rescued ones stay up.
    @discardableResult
    func finish(_ m: Machine, _ claim: WorkClaim) async -> Action {
        Failpoint.hit("reconciler.finish.before-action")
        let action: Action
        switch m.state {
        case .deploying:
            action = await withBMC(m, claim, action: "boot from disk") { bmc in
                try await bmc.setBootOverride(BootOverride(device: .disk, persistent: true, efi: m.firmware == .uefi))
                try await Self.powerOnOrCycle(bmc)
            }
        case .commissioning, .releasing:
            // Unconditional: a reading of "off" can be the transient off of a cycle still in
            // progress (ipmi_sim and real BMCs alike), after which the machine would come back on.
            action = await withBMC(m, claim, action: "power off") { bmc in try await bmc.power(.off) }
        default:
            action = .done
        }
        guard action == .done else { return action }
        Failpoint.hit("reconciler.finish.after-action")
        await succeedOrAwaitOS(m, claim, from: .finish)
        return .done
    }

    /// The step's last action is done. A deploy or an exit from rescue boots the disk: with a
    /// tracked deployment its step waits in phase `os` for the installed OS to report in
    /// (`Controller.osReady`), or times out naming the phase. Any other step, and an untracked
    /// deployment, succeeds now.
    func succeedOrAwaitOS(_ m: Machine, _ claim: WorkClaim, from phase: StepPhase) async {
        if m.state == .deploying || m.state == .exitingRescue, m.deployment?.os != nil {
            _ = try? await controller.advance(
                machineID: m.id,
                generation: m.generation,
                from: phase,
                to: .os,
                message: "booting the disk; waiting for the OS to report in",
                fence: claim
            )
        } else {
            _ = try? await controller.apply(
                .stepSucceeded,
                machineID: m.id,
                guardGeneration: m.generation,
                fence: claim
            )
        }
    }

    static func powerOnOrCycle(_ bmc: any BMC) async throws {
        if try await bmc.powerState() == .off { try await bmc.power(.on) } else { try await bmc.power(.cycle) }
    }

    /// Runs a BMC action with bounded retries; on the last failure the step fails with the
    /// BMC's error. Each attempt first renews the worker's claim: a worker that lost it returns
    /// at once, acting on nothing and failing nothing. A machine at a site whose link is down
    /// (its BMC is reached through the site) waits for it: the step is neither done nor failed,
    /// and is tried again while its time lasts.
    func withBMC(
        _ m: Machine,
        _ claim: WorkClaim,
        action: String,
        _ body: (any BMC) async throws -> Void
    ) async
        -> Action
    {
        // In a step's trace, the action is a span over its attempts (each BMC call in it one more).
        guard InstrumentationContext.current != nil else { return await attempts(m, claim, action: action, body) }
        return await withSpan("bmc.action") { span in
            span.attributes["farrier.bmc.action"] = action
            span.attributes["farrier.bmc.driver"] = m.bmc?.driver.rawValue ?? "-"
            let outcome = await attempts(m, claim, action: action, body)
            span.attributes["farrier.bmc.outcome"] = "\(outcome)"
            if outcome == .failed { span.setStatus(SpanStatus(code: .error, message: "BMC could not \(action)")) }
            return outcome
        }
    }

    func attempts(
        _ m: Machine,
        _ claim: WorkClaim,
        action: String,
        _ body: (any BMC) async throws -> Void
    ) async
        -> Action
    {
        let config = controller.configuration
        var lastError = ""
        for attempt in 1...max(1, config.bmcAttempts) {
            guard await holds(claim, m) else { return .failed }
            do {
                guard let reference = m.bmc, let sealed = try await controller.store.sealedBMCPassword(machineID: m.id)
                else {
                    lastError = "machine has no BMC"
                    break
                }
                let bmc = try await controller.pool.bmc(
                    machineID: m.id,
                    reference: reference,
                    sealedPassword: sealed,
                    site: m.site
                )
                // Retries of this step's action are one request: a change through a site whose
                // answer was lost is not done twice.
                try await BMCRetryScope.$current.withValue("\(m.id) generation \(m.generation): \(action)") {
                    try await body(bmc)
                }
                _ = try? await controller.record("BMC: \(action)", machineID: m.id, fence: claim)
                return .done
            } catch is ClaimLost {
                return .failed
            } catch let e as StoreError where e.code == .fenced {
                return .failed
            } catch let away as SiteLinkAway {
                logger.info(
                    "BMC action waits for the machine's site",
                    metadata: ["machine": "\(m.name)", "action": "\(action)", "site": "\(away.site)"]
                )
                return .waitingForSite
            } catch {
                // Shutting down (a graceful stop cancels the workers): the action was cut off,
                // not refused. The step stays as it is for the next life or another replica;
                // failing it here failed a deploy on every rolling restart.
                if error is CancellationError || Task.isCancelled { return .failed }
                // The reason is shown to the machine's project: it names what went wrong, not
                // the BMC's address or its replies (those are in the server log).
                lastError =
                    (error as? BMCError).map { "\($0.kind.rawValue) (details in the server log)" }
                    ?? "error (details in the server log)"
                logger.warning(
                    "BMC action failed",
                    metadata: [
                        "machine": "\(m.name)", "action": "\(action)", "attempt": "\(attempt)", "error": "\(error)",
                    ]
                )
                if attempt < config.bmcAttempts { try? await Task.sleep(for: config.bmcRetryDelay) }
            }
        }
        // A stop that came after the last attempt's answer: not the BMC's failure either.
        guard !Task.isCancelled else { return .failed }
        // Every attempt failed: the BMC has stopped answering (or refuses). Once per failed
        // step, at warning, with the BMC's address for whoever is paged.
        logger.warning(
            "BMC stopped answering: the step fails",
            metadata: [
                "machine": "\(m.name)", "bmc": "\(m.bmc?.address ?? "-")", "action": "\(action)",
                "attempts": "\(config.bmcAttempts)", "error": "\(lastError)",
            ]
        )
        await controller.fail(
            machineID: m.id,
            generation: m.generation,
            reason: "BMC could not \(action): \(lastError)",
            failure: .bmc,
            fence: claim
        )
        return .failed
    }
}

/// A worker found, in the middle of an action, that another replica took its machine.
struct ClaimLost: Error {}
