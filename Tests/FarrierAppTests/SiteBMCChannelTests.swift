import Crypto
import FarrierAPI
import FarrierBMC
import FarrierCore
import FarrierSite
import FarrierStore
import Foundation
import Logging
import Synchronization
import TestSupport
import Testing

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
