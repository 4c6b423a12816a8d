import Crypto
import FarrierBMC
import FarrierControl
import FarrierCore
import FarrierPostgres
import FarrierStore
import Foundation
import Logging
import Synchronization
import TestSupport
import Testing

/// A BMC that records what it is told, with a power state that follows it, and a number of
/// calls to fail first (as a BMC that times out would).
final class FakeBMC: BMC, Sendable {
    struct State {
        var power = PowerState.off
        var calls: [String] = []
        /// The retry scope each call was made in (BMCRetryScope).
        var scopes: [String?] = []
        var failNext = 0
        /// Boot-device calls wait until cancelled (a BMC call in flight when the server stops).
        var hang = false
        var hanging = 0
    }
    let state = Mutex(State())
    let address: String

    init(address: String) { self.address = address }

    var calls: [String] { state.withLock { $0.calls } }
    var scopes: [String?] { state.withLock { $0.scopes } }
    func failNext(_ n: Int) { state.withLock { $0.failNext = n } }

    func record(_ call: String) throws {
        let scope = BMCRetryScope.current
        try state.withLock { s in
            s.scopes.append(scope)
            if s.failNext > 0 {
                s.failNext -= 1
                s.calls.append("failed " + call)
                throw BMCError.timeout(address, after: .seconds(1), doing: call)
            }
            s.calls.append(call)
        }
    }

    func info() async throws -> BMCInfo {
        BMCInfo(driver: "fake", address: address, manufacturer: "", model: "", firmware: "")
    }
    func powerState() async throws -> PowerState {
        try record("status")
        return state.withLock { $0.power }
    }
    func power(_ action: PowerAction) async throws {
        try record("power \(action.rawValue)")
        state.withLock { s in
            switch action {
            case .on, .cycle, .reset: s.power = .on
            case .off, .softOff: s.power = .off
            }
        }
    }
    func setBootOverride(_ override: BootOverride) async throws {
        if state.withLock({ s in
            if s.hang { s.hanging += 1 }
            return s.hang
        }) {
            try await Task.sleep(for: .seconds(60))
        }
        try record("boot \(override.device.rawValue)")
    }
    func bootOverride() async throws -> BootOverride? { nil }
    func openConsole() async throws -> any ConsoleSession { throw BMCError.unsupported(address, operation: "console") }
    func close() async {}
}

/// One fake BMC per machine, injected where the server has its BMCPool.
final class FakeBMCs: BMCProvider, Sendable {
    let bmcs = Mutex<[String: FakeBMC]>([:])
    /// Sites whose link is down, and how often a driver was asked for a machine at one.
    let away = Mutex<(sites: Set<String>, asks: Int)>(([], 0))
    func bmc(machineID: String, reference: BMCReference, sealedPassword: [UInt8], site: String?) async throws -> any BMC
    {
        if let site {
            let isAway = away.withLock { a in
                guard a.sites.contains(site) else { return false }
                a.asks += 1
                return true
            }
            if isAway { throw SiteLinkAway(site: site) }
        }
        return fake(machineID)
    }
    func fake(_ machineID: String) -> FakeBMC {
        bmcs.withLock { all in
            if let b = all[machineID] { return b }
            let b = FakeBMC(address: "fake-\(machineID.prefix(8))")
            all[machineID] = b
            return b
        }
    }
    func forget(machineID: String) async {}
}

/// The reconciler against fake BMCs: retries, caps, timeouts, and claims (fencing, takeover).
@Suite struct ReconcilerTests {
    let store: SQLiteStore
    let bmcs = FakeBMCs()

    init() throws { store = try SQLiteStore() }

    func controller(_ configure: (inout ControlConfiguration) -> Void = { _ in }) -> Controller {
        var c = ControlConfiguration()
        c.tick = .milliseconds(100)
        c.bmcRetryDelay = .milliseconds(10)
        c.replica = "this-replica"
        configure(&c)
        return Controller(store: store, pool: bmcs, agentKey: SymmetricKey(size: .bits256), configuration: c)
    }

    func enrolled(_ name: String, _ n: Int) async throws -> Machine {
        try await store.enroll(
            name: name,
            mac: MACAddress("52:54:00:00:05:\(String(format: "%02x", n))")!,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9"),
            sealedPassword: [1],
            at: Date()
        )
    }

    /// Runs the reconciler while `body` runs.
    func reconciling<T>(_ controller: Controller, _ body: () async throws -> T) async throws -> T {
        let reconciler = Reconciler(controller: controller)
        let task = Task { try await reconciler.run() }
        defer { task.cancel() }
        return try await body()
    }

    /// Polls the machine until `condition` holds (30 s at most: the unit suite shares two cores).
    func waitFor(_ id: String, _ what: String, _ condition: (Machine) -> Bool) async throws -> Machine {
        let deadline = Date().addingTimeInterval(30)
        var last: Machine?
        while Date() < deadline {
            last = try await store.machine(id: id)
            if let m = last, condition(m) { return m }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record(
            "timed out waiting for \(what); last \(String(describing: last.map { "\($0.state)/\($0.phase) \($0.reason)" }))"
        )
        throw CancellationError()
    }

    @Test func aBMCThatFailsTwiceIsRetriedAndTheStepGoesOn() async throws {
        let c = controller()
        let m = try await enrolled("a", 1)
        bmcs.fake(m.id).failNext(2)
        try await reconciling(c) {
            _ = try await c.apply(.commission, machineID: m.id)
            _ = try await waitFor(m.id, "the agent phase") { $0.phase == .agent }
        }
        let calls = bmcs.fake(m.id).calls
        #expect(calls.prefix(2) == ["failed boot pxe", "failed boot pxe"], "\(calls)")
        #expect(calls.contains("boot pxe") && calls.last == "power on", "\(calls)")
        // Every attempt of the step's action was one request (the retry scope a site uses to
        // answer a lost change as before): the machine, its step generation and the action.
        let scopes = Set(bmcs.fake(m.id).scopes)
        #expect(scopes.count == 1, "\(scopes)")
        #expect(scopes.first??.hasPrefix("\(m.id) generation ") == true, "\(scopes)")
        let events = try await store.events(after: 0, machineID: m.id, limit: 50).map(\.message)
        #expect(events.contains { $0.hasPrefix("BMC: set next boot to pxe") })
    }

    @Test func aBMCThatKeepsFailingFailsTheStepWithItsKind() async throws {
        let c = controller()
        let m = try await enrolled("a", 1)
        bmcs.fake(m.id).failNext(100)
        let failed = try await reconciling(c) {
            _ = try await c.apply(.commission, machineID: m.id)
            return try await waitFor(m.id, "the step to fail") { $0.state == .failed }
        }
        #expect(failed.failedStep == .commissioning)
        #expect(
            failed.reason.contains("BMC could not set next boot") && failed.reason.contains("timeout"),
            "\(failed.reason)"
        )
        #expect(bmcs.fake(m.id).calls == ["failed boot pxe", "failed boot pxe", "failed boot pxe"])  // bmcAttempts = 3
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, c.metrics.failures(.commissioning, .bmc) == 0 {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(c.metrics.failures(.commissioning, .bmc) == 1)
    }

    /// A machine at a site whose link is down: its BMC action waits for the site (the step is
    /// neither done nor failed, and the worker is not started again at every tick), then goes on.
    @Test func aMachineAtAnAwaySiteWaitsForItInsteadOfFailing() async throws {
        let c = controller()
        let m = try await enrolled("s", 7)
        try await store.createSite(Site(name: "site-a", created: Date(), joinTokenSHA256: "t"))
        _ = try await store.update(machineID: m.id) { x in
            x.site = "site-a"
            return []
        }
        bmcs.away.withLock { $0.sites = ["site-a"] }
        try await reconciling(c) {
            _ = try await c.apply(.commission, machineID: m.id)
            _ = try await waitFor(m.id, "a BMC driver asked for") { _ in bmcs.away.withLock { $0.asks } > 0 }
            // Twenty ticks: it stays in its boot phase, asked again at most once (5 s apart).
            let until = ContinuousClock.now + .seconds(2)
            while ContinuousClock.now < until {
                let x = try #require(try await store.machine(id: m.id))
                #expect(x.state == .commissioning && x.phase == .boot, "\(x.state)/\(x.phase) \(x.reason)")
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(bmcs.away.withLock { $0.asks } <= 2)
            #expect(bmcs.fake(m.id).calls.isEmpty)
            // The site is back: the action runs and the step goes on.
            bmcs.away.withLock { $0.sites = [] }
            _ = try await waitFor(m.id, "the agent phase") { $0.phase == .agent }
        }
        #expect(bmcs.fake(m.id).calls.contains("boot pxe"))
        let events = try await store.events(after: 0, machineID: m.id, limit: 50).map(\.message)
        #expect(!events.contains { $0.contains("failed") }, "\(events)")
    }

    /// With a cap of one deploy, three deploys run one at a time.
    @Test func theDeployCapHoldsWhileStepsRun() async throws {
        let c = controller { $0.maxConcurrentDeploys = 1 }
        var ids: [String] = []
        for i in 0..<3 {
            let m = try await enrolled("d\(i)", 10 + i)
            _ = try await store.update(machineID: m.id) { x in
                x.state = .ready
                return []
            }
            ids.append(m.id)
        }
        try await reconciling(c) {
            for id in ids { _ = try await c.apply(.deploy, machineID: id) }
            // One reaches the agent phase; the others stay queued while it holds the slot.
            let deadline = Date().addingTimeInterval(30)
            var sawOne = false
            while Date() < deadline {
                let running = try await store.machines().filter { $0.state == .deploying && $0.phase != .queued }
                #expect(running.count <= 1)
                if running.count == 1, running[0].phase == .agent { sawOne = true }
                if sawOne { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(sawOne)
            // A few more ticks: still one.
            for _ in 0..<10 {
                try await Task.sleep(for: .milliseconds(50))
                #expect(try await store.machines().filter { $0.state == .deploying && $0.phase != .queued }.count == 1)
            }
        }
    }

    /// A machine whose claim another replica holds is left alone; once that claim is released,
    /// this replica works it.
    @Test func aMachineClaimedByAnotherReplicaIsLeftToIt() async throws {
        let c = controller()
        let m = try await enrolled("a", 1)
        let moved = try await c.apply(.commission, machineID: m.id)
        // Admitted (boot phase) while another replica holds the claim.
        _ = try await store.update(machineID: m.id) { x in
            x.phase = .boot
            return []
        }
        let other = try #require(try await store.claimWork(machineID: m.id, owner: "other-replica", ttl: .seconds(60)))
        try await reconciling(c) {
            for _ in 0..<10 { try await Task.sleep(for: .milliseconds(50)) }  // 5 ticks
            #expect(bmcs.fake(m.id).calls.isEmpty)
            #expect(try await store.machine(id: m.id)?.phase == .boot)
            try await store.releaseWork(other)
            _ = try await waitFor(m.id, "this replica to work it") { $0.phase == .agent }
        }
        #expect(bmcs.fake(m.id).calls.contains("power on"))
        _ = moved
    }

    /// A replica that died holding the claim: once the claim lapses (never renewed), this
    /// replica takes the machine over with a higher fencing token, and the dead one's claim
    /// fences its commits.
    @Test func aLapsedClaimIsTakenOverAndTheOldHolderIsFenced() async throws {
        let c = controller()
        let m = try await enrolled("a", 1)
        _ = try await c.apply(.commission, machineID: m.id)
        _ = try await store.update(machineID: m.id) { x in
            x.phase = .boot
            return []
        }
        // Taken before the claim is made: the claim lapses a second after its own start, which is
        // later, however long the write waits on a loaded machine.
        let started = Date()
        let dead = try #require(try await store.claimWork(machineID: m.id, owner: "dead-replica", ttl: .seconds(1)))
        try await reconciling(c) {
            _ = try await waitFor(m.id, "the takeover") { $0.phase == .agent }
        }
        #expect(Date().timeIntervalSince(started) >= 0.5)  // not before the claim could lapse
        let fenced = await #expect(throws: StoreError.self) {
            _ = try await store.update(machineID: m.id, fence: dead) { x in
                x.reason = "the dead replica's late commit"
                return []
            }
        }
        #expect(fenced?.code == .fenced)
        #expect(try await store.machine(id: m.id)?.reason != "the dead replica's late commit")
    }
}

/// A graceful stop (SIGTERM: the service group cancels the reconciler) cuts off a BMC action in
/// flight. The step must be left as it was, for the next life or another replica: no failure
/// committed or counted. On both stores, since they differ here: PostgreSQL commits what a
/// cancelled task asks (a commit is never cut in half), while SQLite's async writes refuse to
/// start once cancelled, which used to hide the failure a stopping replica committed.
@Suite struct ReconcilerStopTests {
    @Test(arguments: ["sqlite", "postgres"]) func aBMCActionCutOffByAStopFailsNothing(_ kind: String) async throws {
        let h = try Harness("reconciler-stop-\(kind)")
        var postgres: PostgresServer?
        let store: any StateStore
        do {
            if kind == "postgres" {
                let (server, url) = try await offPool { () throws -> (PostgresServer, String) in
                    let server = try PostgresServer(h)
                    return (server, try server.createDatabase("farrier"))
                }
                postgres = server
                store = try await PostgresStore(url: url, logger: Logger(label: "test.postgres"))
            } else {
                store = try SQLiteStore(path: h.directory + "/farrier.sqlite")
            }
        } catch {
            let server = postgres
            await offPool {
                server?.stop()
                h.cleanup()
            }
            throw error
        }
        let result: Result<Void, any Error>
        do { result = .success(try await Self.cutOff(store)) } catch { result = .failure(error) }
        (store as? PostgresStore)?.close()
        let server = postgres
        await offPool {
            server?.stop()
            h.cleanup()
        }
        try result.get()
    }

    static func cutOff(_ store: any StateStore) async throws {
        let bmcs = FakeBMCs()
        // Each life a replica of its own: the next must take the step on as another replica would.
        func controller(_ replica: String) -> Controller {
            var c = ControlConfiguration()
            c.tick = .milliseconds(100)
            c.bmcRetryDelay = .milliseconds(10)
            c.claimTTL = .seconds(3)
            c.replica = replica
            return Controller(store: store, pool: bmcs, agentKey: SymmetricKey(size: .bits256), configuration: c)
        }
        let c = controller("first-life")
        let m = try await store.enroll(
            name: "a",
            mac: MACAddress("52:54:00:00:06:01")!,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9"),
            sealedPassword: [1],
            at: Date()
        )
        bmcs.fake(m.id).state.withLock { $0.hang = true }
        let task = Task { try await Reconciler(controller: c).run() }
        do { _ = try await c.apply(.commission, machineID: m.id) } catch {
            task.cancel()
            _ = try? await task.value
            throw error
        }
        // Generous: the unit suite shares two cores with this reconciler's 100 ms ticks.
        var deadline = Date().addingTimeInterval(60)
        while Date() < deadline, bmcs.fake(m.id).state.withLock({ $0.hanging }) == 0 {
            try await Task.sleep(for: .milliseconds(10))
        }
        let started = bmcs.fake(m.id).state.withLock { $0.hanging } == 1
        task.cancel()
        _ = try? await task.value
        try #require(started, "the BMC action never started")
        let after = try #require(try await store.machine(id: m.id))
        #expect(after.state == .commissioning && after.phase == .boot, "\(after.state)/\(after.phase): \(after.reason)")
        #expect(c.metrics.failures(.commissioning, .bmc) == 0)
        let events = try await store.events(after: 0, machineID: m.id, limit: 50).map(\.message)
        #expect(!events.contains { $0.contains("failed") }, "\(events)")
        // The next life goes on from the same phase.
        bmcs.fake(m.id).state.withLock { $0.hang = false }
        let next = Task { try await Reconciler(controller: controller("next-life")).run() }
        deadline = Date().addingTimeInterval(30)
        var phase = after.phase
        while Date() < deadline, phase != .agent {
            phase = (try? await store.machine(id: m.id))?.phase ?? phase
            try? await Task.sleep(for: .milliseconds(20))
        }
        next.cancel()
        _ = try? await next.value
        #expect(phase == .agent, "the next reconciler did not take the step on")
    }
}
