import Crypto
import FarrierBMC
import FarrierCore
import FarrierSite
import FarrierStore
import Foundation
import Logging
import Synchronization
import TestSupport
import Testing

@testable import FarrierAPI

/// The sites' BMC channel (BMCWork), in process over real mutual TLS, with OpenIPMI's ipmi_sim
/// as the BMC: the region's BMC provider sends a site's machine's operations down its site's
/// channel, the site's worker does them with its own IPMI driver, and the answers (and the
/// BMC's errors) come back; the serial console is carried on the site's console stream. A site with no channel open is away: operations say so at once.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim and ipmitool"))
struct SiteBMCChannelTests {
    @Test func aSitesMachineIsReachedThroughItsChannel() async throws {
        let f = try SiteLinkFixture("bmc-channel")
        defer { f.remove() }
        let h = try Harness("bmc-channel")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.startSerial()
        try sim.start()
        try await f.join("aa")

        let vault = CredentialVault(key: SymmetricKey(size: .bits256))
        let reference = try BMCReference(url: "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)")
        let m = try await f.store.enroll(
            name: "m1",
            mac: MACAddress([0x52, 0x54, 0, 9, 1, 1]),
            bmc: reference,
            sealedPassword: [1],
            at: f.t
        )
        try await f.place(m.id, at: "site-1")
        let sealed = try vault.seal(IPMISimulator.password, machineID: m.id)
        let relay = SiteBMCRelay(timeout: .seconds(15))
        let bmcs = SiteRoutedBMCs(local: BMCPool(vault: vault), relay: relay, vault: vault)
        @Sendable func bmc(site: String? = "site-1", sealed other: [UInt8]? = nil) async throws -> any BMC {
            try await bmcs.bmc(machineID: m.id, reference: reference, sealedPassword: other ?? sealed, site: site)
        }

        // No channel yet: the site is away, and the operation says so without waiting.
        do {
            _ = try await bmc().powerState()
            Issue.record("a power reading was had with no channel open")
        } catch let away as SiteLinkAway {
            #expect(away.site == "site-1" && !away.inFlight)
        }

        let port = Int.random(in: 28000..<29000)
        let listener = try f.listener(port: port, bmcRelay: relay)
        let serving = Task { try await listener.run() }
        defer { serving.cancel() }
        let credentials = try SiteCredentials(dataDir: f.siteDir)
        try await withSiteLink(region: "127.0.0.1:\(port)", credentials: credentials) { link in
            let worker = Task { await SiteBMCWorker(logger: Logger(label: "test")).run(link: link, region: "test") }
            // Stopped on every way out, a failed expectation's included.
            defer { worker.cancel() }
            func channels(_ n: Int) async throws {
                try await eventually("site-1 at \(n) channel(s)", within: .seconds(20)) {
                    await relay.channelCount(site: "site-1") == n
                }
            }
            try await channels(1)

            // Power, boot device and the BMC's own description, all through the site.
            let b = try await bmc()
            #expect(b.address == "127.0.0.1:\(sim.port)")
            try await b.power(.off)
            #expect(try await b.powerState() == .off)
            try await b.setBootOverride(BootOverride(device: .pxe))
            try await b.power(.on)
            let deadline = ContinuousClock.now + .seconds(20)
            while try await b.powerState() != .on, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(try await b.powerState() == .on)
            #expect(try await b.info().driver == "ipmi")
            // ipmi_sim's chassis program was told what the region asked for.
            let told = sim.chassisLog
            #expect(told.contains("set power 0") && told.contains("set power 1"), "\(told)")
            #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("is on"))

            // The serial console, through the site: ipmi_sim's SOL, to a serial port that echoes.
            let console = try await b.openConsole()
            let relayed = try #require(console as? RelayedConsole)
            #expect(await relay.consoleCount == 1)
            // Its stream is site-1's, once: neither another site nor a second stream takes it.
            #expect(await relay.attachConsole(relayed.id, site: "site-2") == nil)
            #expect(await relay.attachConsole(relayed.id, site: "site-1") == nil)
            let collected = Output()
            let reader = Task {
                for await chunk in console.output { collected.append(chunk) }
            }
            // ipmi_sim connects to the serial port on its own schedule (every 10 s until it
            // succeeds) and drops input meanwhile: typed again every 2 s until the echo comes
            // (polled without blocking a thread: the unit suite runs beside this on two cores).
            let typing = ContinuousClock.now + .seconds(40)
            while !collected.text.contains("echo:HELLO FARRIER"), ContinuousClock.now < typing {
                try await console.write(Array("hello farrier\r".utf8))
                try? await eventually("the echo through the site", within: .seconds(2)) {
                    collected.text.contains("echo:HELLO FARRIER")
                }
            }
            #expect(collected.text.contains("echo:HELLO FARRIER"), "\(collected.text)")
            await console.close()
            reader.cancel()
            try await eventually("the console forgotten", within: .seconds(10)) { await relay.consoleCount == 0 }
            #expect(await relay.consoleCount == 0)

            // The BMC's refusal comes back as it is: a wrong password is the BMC's to refuse.
            let wrong = try vault.seal("not-the-password", machineID: m.id)
            do {
                _ = try await bmc(sealed: wrong).powerState()
                Issue.record("a wrong password was accepted")
            } catch let e as BMCError {
                #expect(e.kind == .authenticationFailed, "\(e)")
            }
            // Another site has no channel here: its machines wait for it.
            do {
                _ = try await bmc(site: "site-2").powerState()
                Issue.record("site-2's machine was reached through site-1")
            } catch let away as SiteLinkAway {
                #expect(away.site == "site-2")
            }

            // The site's worker stops: its channel closes, and the site is away again.
            worker.cancel()
            await worker.value
            try await channels(0)
            do {
                _ = try await b.powerState()
                Issue.record("a power reading was had after the channel closed")
            } catch is SiteLinkAway {}
        }
    }
}

extension SiteBMCChannelTests {
    /// A region named by one DNS name in front of several replicas: the site opens a BMC
    /// channel to each address the name resolves to, checking each replica's certificate for
    /// the name, and follows the name as its addresses change. (The resolver is the test's: the
    /// name is made up, its addresses are loopback ones; resolveSiteLinkAddresses is the real
    /// one, checked on localhost.)
    @Test func aRegionNamedByDNSGetsAChannelToEachAddress() async throws {
        #expect(try await resolveSiteLinkAddresses(host: "localhost", port: 7710).contains("127.0.0.1:7710"))
        await #expect(throws: (any Error).self) {
            _ = try await resolveSiteLinkAddresses(host: "no-such-region.invalid", port: 7710)
        }

        let f = try SiteLinkFixture("bmc-dns")
        defer { f.remove() }
        try await f.join("aa")
        let port = Int.random(in: 29000..<30000)
        let name = "region.farrier.test"
        // Replicas A and B have link certificates for the name; C's names another name (and
        // not its address, which TLS would accept as the address dialled).
        let (a, b, c) = (
            SiteBMCRelay(timeout: .seconds(15)), SiteBMCRelay(timeout: .seconds(15)),
            SiteBMCRelay(timeout: .seconds(15))
        )
        let listeners = [
            try f.listener(port: port, host: "127.0.0.1", names: [name], bmcRelay: a),
            try f.listener(port: port, host: "127.0.0.2", names: [name], bmcRelay: b),
            try f.listener(port: port, host: "127.0.0.3", names: ["other.farrier.test"], bmcRelay: c),
        ]
        let serving = listeners.map { l in Task { try await l.run() } }
        defer { for s in serving { s.cancel() } }
        let addresses = Mutex(["127.0.0.1:\(port)", "127.0.0.2:\(port)"])
        let asked = Mutex<[String]>([])
        let worker = SiteBMCWorker(logger: Logger(label: "test"), reresolve: .milliseconds(300)) { host, p in
            asked.withLock { $0.append("\(host):\(p)") }
            return addresses.withLock { $0 }
        }
        let credentials = try SiteCredentials(dataDir: f.siteDir)
        try await withSiteLink(region: "127.0.0.1:\(port)", credentials: credentials) { link in
            let running = Task { await worker.run(region: "\(name):\(port)", credentials: credentials, link: link) }
            defer { running.cancel() }
            try await eventually("a channel to each of the name's addresses", within: .seconds(20)) {
                let (x, y) = (await a.channelCount(site: "site-1"), await b.channelCount(site: "site-1"))
                return x == 1 && y == 1
            }
            try await eventually("the site to count both channels", within: .seconds(10)) { worker.openChannels == 2 }
            #expect(asked.withLock { $0.first } == "\(name):\(port)")

            // B leaves the name and C (whose certificate names neither it nor C's address)
            // joins: B's channel closes, C's is refused by the site's TLS check.
            addresses.withLock { $0 = ["127.0.0.1:\(port)", "127.0.0.3:\(port)"] }
            try await eventually("B's channel closed", within: .seconds(20)) {
                await b.channelCount(site: "site-1") == 0
            }
            let watch = ContinuousClock.now + .seconds(2)
            while ContinuousClock.now < watch {
                #expect(
                    await c.channelCount(site: "site-1") == 0,
                    "a replica not named by the certificate got a channel"
                )
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(await a.channelCount(site: "site-1") == 1)
            try await eventually("the site to count one channel", within: .seconds(10)) { worker.openChannels == 1 }

            // B back: its channel again.
            addresses.withLock { $0 = ["127.0.0.1:\(port)", "127.0.0.2:\(port)"] }
            try await eventually("B's channel back", within: .seconds(20)) { await b.channelCount(site: "site-1") == 1 }
            running.cancel()
            await running.value
            try await eventually("every channel closed", within: .seconds(20)) {
                let (x, y) = (await a.channelCount(site: "site-1"), await b.channelCount(site: "site-1"))
                return x == 0 && y == 0
            }
            try await eventually("the site to count no channel", within: .seconds(10)) { worker.openChannels == 0 }
        }
    }
}

extension SiteBMCChannelTests {
    /// A changing job the region sends again under its id (its answer was lost) is answered as
    /// before, not done twice, against ipmi_sim: the chassis is told to power off once for two
    /// sends of one job (the second while the first is being done), and again for a new job.
    @Test func aChangingJobSentAgainIsDoneOnce() async throws {
        let h = try Harness("bmc-job-again")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        let worker = SiteBMCWorker(logger: Logger(label: "test"))
        let reference = try BMCReference(url: "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)")
        func job(_ id: UInt64, _ operation: BMCOperation) -> BMCRelayJob {
            BMCRelayJob(
                id: id,
                machineID: "m1",
                reference: reference,
                password: IPMISimulator.password,
                operation: operation
            )
        }
        func offs() -> Int { sim.chassisLog.components(separatedBy: "set power 0").count - 1 }
        let before = offs()
        async let first = worker.result(of: job(41, .power(.off)))
        async let again = worker.result(of: job(41, .power(.off)))
        let (a, b) = await (first, again)
        #expect(a.errorKind.isEmpty && a == b, "\(a) \(b)")
        #expect(offs() == before + 1, "\(sim.chassisLog)")
        // Sent a third time, later: still once.
        #expect(await worker.result(of: job(41, .power(.off))) == a)
        #expect(offs() == before + 1)
        // A new job is done: the chassis is told again.
        #expect(await worker.result(of: job(42, .power(.off))).errorKind.isEmpty)
        #expect(offs() == before + 2, "\(sim.chassisLog)")
        // Readings are not remembered: each is asked of the BMC.
        let state = await worker.result(of: job(43, .powerState))
        #expect(state.powerState == "off")
        #expect(await worker.memory.count == 2)
        await worker.drivers.closeAll()
    }

    /// The site's memory of changing jobs on its own: one being done is waited for; another
    /// machine's job under the same id is not taken for it; old ones are forgotten.
    @Test func theSitesMemoryOfJobs() async throws {
        let reference = try BMCReference(url: "ipmi://admin@10.0.0.9:623")
        func job(_ id: UInt64, _ machine: String = "m1") -> BMCRelayJob {
            BMCRelayJob(id: id, machineID: machine, reference: reference, password: "pw", operation: .power(.cycle))
        }
        // Kept for a minute here: with a short `keep`, a stall of a second on a busy machine made
        // the memory forget job 1 before the checks below that it is kept.
        let memory = SiteJobMemory(keep: .seconds(60), limit: 3)
        #expect(await memory.begin(job(1)) == nil)
        let waiting = Task { await memory.begin(job(1)) }
        try await eventually("the resend to wait for the job", within: .seconds(5)) { await memory.waiting(1) == 1 }
        // Another machine's job with that id is its own.
        #expect(await memory.begin(job(1, "m2")) == nil)
        var done = Farrier_V1_SiteBMCResult()
        done.id = 1
        await memory.finish(job(1), done)
        #expect(await waiting.value == done)
        // One cut off is not kept: sent again, it is done again (its waiters get its answer).
        #expect(await memory.begin(job(9)) == nil)
        await memory.finish(job(9), done, keep: false)
        #expect(await memory.begin(job(9)) == nil)
        await memory.finish(job(9), done)
        #expect(await memory.begin(job(1)) == done)
        // Past `limit`, the oldest done ones go (all within `keep`: the limit alone does it).
        for id in UInt64(2)...7 {
            #expect(await memory.begin(job(id)) == nil)
            await memory.finish(job(id), done)
        }
        #expect(await memory.count <= 3)
        // Past `keep` (and the once-a-second pruning), forgotten: done again. Only a lower bound
        // on time, which no stall can break.
        let brief = SiteJobMemory(keep: .milliseconds(200), limit: 3)
        #expect(await brief.begin(job(1)) == nil)
        await brief.finish(job(1), done)
        #expect(await brief.begin(job(1)) == done)
        try await Task.sleep(for: .milliseconds(1100))
        #expect(await brief.begin(job(1)) == nil)
    }
}

/// What a console printed, gathered by one task and read by another.
final class Output: Sendable {
    let bytes = Mutex<[UInt8]>([])
    func append(_ chunk: [UInt8]) { bytes.withLock { $0 += chunk } }
    var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
}

/// Polls `condition` every 100 ms until it holds, or throws after `limit`.
func eventually(_ what: String, within limit: Duration, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + limit
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            throw Harness.CommandError(description: "timed out after \(limit) waiting for \(what)")
        }
        try await Task.sleep(for: .milliseconds(100))
    }
}
