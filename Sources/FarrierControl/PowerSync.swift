import CoreMetrics
import FarrierBMC
import FarrierCore
import Foundation
import Logging
import ServiceLifecycle

/// Reads every enrolled BMC's power state, on `ControlConfiguration.powerSyncInterval`, and keeps
/// the reading on the machine (`Machine.power`): what `machine list` shows as POWER.
///
/// - Each machine is read at its own random time within the interval (jitter: 10 000 BMCs are
///   not all asked in the same second), at most `powerSyncConcurrency` at once.
/// - A BMC that fails is read again only every 2, 4, 8… intervals (per-BMC backoff, at most an
///   hour apart), and is marked on the machine with the error and since when.
/// - A machine whose power differs from what its state expects (`PowerReading.expected`) gets an
///   event and counts in a metric. Nothing acts on it: the operator decides.
/// - Machines in maintenance or in a step are not read: the step's worker owns the BMC.
/// - Replicas on one PostgreSQL database read through one of them, the holder of an advisory
///   lock (`DHCPFence` with the key `power-sync`); another takes over when it goes.
public actor PowerSync: Service {
    let controller: Controller
    let fence: (any DHCPFence)?
    let logger: Logger
    public nonisolated let metrics = PowerSyncMetrics()
    /// Consecutive failed reads per machine: its backoff.
    var failures: [String: Int] = [:]
    var round = 0
    var holding = false

    public init(controller: Controller, fence: (any DHCPFence)?, logger: Logger) {
        self.controller = controller
        self.fence = fence
        self.logger = logger
    }

    public func run() async throws {
        let interval = controller.configuration.powerSyncInterval
        guard interval > .zero else {
            // Off: wait for the shutdown (a service that returns would end the server).
            try? await gracefulShutdown()
            return
        }
        var next = ContinuousClock.now
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            let until = next
            try? await cancelWhenGracefulShutdown { try await Task.sleep(until: until) }
            if Task.isShuttingDownGracefully || Task.isCancelled { break }
            next = ContinuousClock.now + interval
            guard await leads() else { continue }
            await cancelWhenGracefulShutdown { await self.sweep(within: interval) }
            round += 1
        }
        if holding { await fence?.release() }
    }

    /// Whether this replica reads the BMCs this round: always with one database file, and with
    /// PostgreSQL while it holds the power sync's lock.
    func leads() async -> Bool {
        guard let fence else { return true }
        if holding {
            do {
                try await fence.check()
                return true
            } catch {
                holding = false
                await fence.release()
                logger.warning("power sync: lost its lock; another replica may read the BMCs now")
            }
        }
        holding = (try? await fence.acquire(["power-sync"])) ?? false
        // Only the reading replica exports the fleet's gauges: two would count every machine twice.
        if !holding { metrics.set(machines: 0, drifting: 0, failing: 0) }
        if holding { logger.info("power sync: this replica reads the BMCs") }
        return holding
    }

    /// One round: every machine due is read once, at a random moment within 80% of `interval`.
    func sweep(within interval: Duration) async {
        let machines: [Machine]
        do { machines = try await controller.store.machines() } catch {
            logger.error("power sync cannot read machines", metadata: ["error": "\(error)"])
            return
        }
        let ids = Set(machines.map(\.id))
        failures = failures.filter { ids.contains($0.key) }
        // The gauges, from what the machines hold now: a machine deleted, held in maintenance
        // or in a step counts no more.
        let readable = machines.filter(Self.readable)
        metrics.set(
            machines: readable.count,
            drifting: readable.count { $0.power?.expected != nil },
            failing: readable.count { $0.power?.failingSince != nil }
        )
        // Backoff in rounds: after n failures, every 2^n rounds, at most an hour apart.
        let cap = max(1, Int(3600 / max(1, interval.components.seconds)))
        let targets = machines.filter { m in
            guard Self.readable(m) else { return false }
            let n = failures[m.id] ?? 0
            return n == 0 || round % min(1 << min(n, 16), cap) == 0
        }
        let spread = Double(interval.components.seconds) * 0.8
        let start = ContinuousClock.now
        let planned = targets.map { (m: $0, at: start + .milliseconds(Int64(Double.random(in: 0..<spread) * 1000))) }
            .sorted { $0.at < $1.at }
        let width = max(1, controller.configuration.powerSyncConcurrency)
        await withTaskGroup(of: (String, Bool).self) { group in
            var inFlight = 0
            for p in planned {
                if Task.isCancelled { break }
                try? await Task.sleep(until: p.at)
                if inFlight >= width, let (id, ok) = await group.next() {
                    inFlight -= 1
                    failures[id] = ok ? nil : (failures[id] ?? 0) + 1
                }
                inFlight += 1
                group.addTask { [self] in (p.m.id, await self.read(p.m)) }
            }
            for await (id, ok) in group { failures[id] = ok ? nil : (failures[id] ?? 0) + 1 }
        }
    }

    /// Whether the power sync reads this machine at all.
    static func readable(_ m: Machine) -> Bool {
        m.bmc != nil && m.maintenance == nil && m.phase == .none && !Lifecycle.steps.contains(m.state)
    }

    /// Reads one machine's power and records it; true when the BMC answered (or was not asked).
    /// The machine is read again first: one that went into maintenance or a step since the
    /// round's list was made (up to 80% of an interval ago) is not asked.
    nonisolated func read(_ listed: Machine) async -> Bool {
        let m: Machine
        let reference: BMCReference
        let sealed: [UInt8]
        do {
            guard let fresh = try await controller.store.machine(id: listed.id), Self.readable(fresh),
                let r = fresh.bmc, let s = try await controller.store.sealedBMCPassword(machineID: fresh.id)
            else { return true }
            (m, reference, sealed) = (fresh, r, s)
        } catch {
            // The database, not the BMC: nothing is marked; the next round tries again.
            logger.warning(
                "power sync cannot read a machine",
                metadata: ["machine": "\(listed.name)", "error": "\(error)"]
            )
            return true
        }
        let result: Result<PowerState, any Error>
        do {
            let bmc = try await controller.pool.bmc(
                machineID: m.id,
                reference: reference,
                sealedPassword: sealed,
                site: m.site
            )
            result = .success(try await bmc.powerState())
        } catch let away as SiteLinkAway {
            // The site's link is down, not the BMC: nothing is known, nothing is marked.
            logger.debug("power sync: site away", metadata: ["machine": "\(listed.name)", "site": "\(away.site)"])
            return true
        } catch  where error is CancellationError || Task.isCancelled {
            // Shutting down (or the round was cut short): the BMC did nothing wrong.
            return true
        } catch {
            result = .failure(error)
        }
        do {
            try await record(machineID: listed.id, generation: m.generation, result)
        } catch {
            logger.warning(
                "power sync cannot record a reading",
                metadata: ["machine": "\(listed.name)", "error": "\(error)"]
            )
        }
        if case .success = result { return true }
        return false
    }

    /// Writes a reading onto the machine, with an event where something began or ended (drift,
    /// a BMC that stopped answering). A machine that went into maintenance or a step since it
    /// was listed keeps what it had.
    nonisolated func record(
        machineID: String,
        generation: Int,
        _ result: Result<PowerState, any Error>
    ) async throws {
        let now = Date()
        // What the commit did: whether it wrote the reading, whether the reading carried events
        // (only then are watchers woken: a reading alone is no news), and whether a drift began.
        // And whether the BMC just stopped answering (once a failing spell: it is logged).
        let note = TransactionNote<(wrote: Bool, news: Bool, driftBegan: Bool, failingBegan: String?)>(
            (false, false, false, nil)
        )
        _ = try await controller.store.update(machineID: machineID) { x in
            // Moved on since it was read (a step, maintenance): the reading is not its state's.
            guard Self.readable(x), x.generation == generation else {
                note.set((false, false, false, nil))
                return []
            }
            let (reading, messages) = Self.next(x.power, state: x.state, result, now: now)
            let began = reading.expected != nil && x.power?.expected == nil
            let failing = reading.failingSince != nil && x.power?.failingSince == nil
            x.power = reading
            note.set((true, !messages.isEmpty, began, failing ? x.name : nil))
            return messages.map { MachineEvent(x, kind: .action, message: $0) }
        }
        let (wrote, news, began, failingBegan) = note.value
        guard wrote else { return }
        if case .success = result { metrics.read(ok: true) } else { metrics.read(ok: false) }
        if began { metrics.driftBegan() }
        if let name = failingBegan, case .failure(let error) = result {
            // Worth a page: a BMC that stopped answering cannot power-cycle or rescue its machine.
            logger.warning(
                "BMC stopped answering the power sync; it is read again each round",
                metadata: ["machine": "\(name)", "error": "\(error)"]
            )
        }
        if news { controller.wake() }
    }

    /// The pure part of a reading: the machine's next `PowerReading` and the events it deserves.
    static func next(
        _ previous: PowerReading?,
        state: MachineState,
        _ result: Result<PowerState, any Error>,
        now: Date
    ) -> (PowerReading, [String]) {
        var p = previous ?? PowerReading(state: .unknown, read: nil)
        var events: [String] = []
        switch result {
        case .success(let answered):
            let s = PowerReading.State(rawValue: answered.rawValue) ?? .unknown
            if p.failingSince != nil { events.append("power sync: the BMC answers again (power \(s.rawValue))") }
            p.state = s
            p.read = now
            p.error = nil
            p.failingSince = nil
            let expected = PowerReading.expected(for: state)
            let drift = s != .unknown && expected != nil && s != expected
            if drift, p.expected == nil, let expected {
                events.append(
                    "power drift: found \(s.rawValue), but a \(state.rawValue) machine should be \(expected.rawValue); nothing was done (look at it, or restart or power it)"
                )
            } else if !drift, let was = p.expected {
                events.append("power as expected again: \(s.rawValue) (the drift from \(was.rawValue) ended)")
            }
            p.expected = drift ? expected : nil
        case .failure(let error):
            let text = String(describing: error)
            if p.failingSince == nil {
                p.failingSince = now
                // The error names the BMC: it stays on the machine, for admins (machine show);
                // events reach the machine's project too.
                events.append("power sync: the BMC stopped answering (an admin's machine show has the error)")
            }
            p.error = String(text.prefix(512))
        }
        return (p, events)
    }
}

/// The power sync's numbers for the metrics.
public final class PowerSyncMetrics: Sendable {
    let readsOK = CoreMetrics.Counter(label: "farrier_power_sync_reads_total", dimensions: [("result", "ok")])
    let readsFailed = CoreMetrics.Counter(label: "farrier_power_sync_reads_total", dimensions: [("result", "error")])
    let driftEvents = CoreMetrics.Counter(label: "farrier_power_drift_total")
    let machinesGauge = CoreMetrics.Gauge(label: "farrier_power_sync_machines")
    let driftingGauge = CoreMetrics.Gauge(label: "farrier_power_drift_machines")
    let failingGauge = CoreMetrics.Gauge(label: "farrier_bmc_unreachable_machines")

    public init() {
        set(machines: 0, drifting: 0, failing: 0)
    }

    func read(ok: Bool) {
        (ok ? readsOK : readsFailed).increment()
    }

    /// The gauges, from the machines as a round begins.
    func set(machines: Int, drifting: Int, failing: Int) {
        machinesGauge.record(machines)
        driftingGauge.record(drifting)
        failingGauge.record(failing)
    }

    func driftBegan() { driftEvents.increment() }
}
