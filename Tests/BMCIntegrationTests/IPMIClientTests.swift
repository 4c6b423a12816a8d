import FarrierBMC
import Foundation
import TestSupport
import Testing

/// The IPMI driver against OpenIPMI's ipmi_sim (cipher suite 3), with ipmitool reading the state
/// back as the independent check.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim and ipmitool"))
struct IPMIClientTests {
    func client(
        _ sim: IPMISimulator,
        password: String = IPMISimulator.password,
        port: Int? = nil,
        timeouts: BMCTimeouts = BMCTimeouts()
    ) -> IPMIClient {
        IPMIClient(
            IPMIEndpoint(
                host: "127.0.0.1",
                port: port ?? sim.port,
                user: IPMISimulator.user,
                password: password,
                timeouts: timeouts
            )
        )
    }

    @Test func powerOperationsMatchIpmitool() async throws {
        let h = try Harness("ipmi-power")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        let bmc = client(sim)
        let info = try await bmc.info()
        #expect(info.driver == "ipmi")
        #expect(info.details["ipmi_version"] == "2.0")
        // ipmi_sim offers suites 0–14: the client must settle on 3, the best it has.
        #expect(info.details["cipher_suite"] == "3")
        // ipmi_sim answers the RMCP/ASF Presence Ping, and says it supports IPMI.
        #expect(info.details["asf_presence"] == "ipmi")

        try await bmc.power(.on)
        #expect(try await bmc.powerState() == .on)
        #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("Chassis Power is on"))

        try await bmc.power(.off)
        #expect(try await bmc.powerState() == .off)
        #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("Chassis Power is off"))

        try await bmc.power(.on)
        try await bmc.power(.reset)
        #expect(sim.events.contains("reset"))
        try await bmc.power(.softOff)
        #expect(sim.events.contains("shutdown"))
        #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("Chassis Power is off"))

        try await bmc.power(.cycle)
        // ipmi_sim turns power off, then on again a second later.
        try h.waitUntil("power back on after cycle", timeout: 10) {
            try sim.ipmitool(["chassis", "power", "status"]).contains("Chassis Power is on")
        }
        #expect(sim.chassisLog.contains("set power 0"))
        await bmc.close()
    }

    @Test func bootDeviceMatchesIpmitool() async throws {
        let h = try Harness("ipmi-boot")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        let bmc = client(sim)
        try await bmc.setBootOverride(BootOverride(device: .pxe, persistent: false, efi: true))
        #expect(try sim.ipmitool(["chassis", "bootparam", "get", "5"]).contains("Force PXE"))
        #expect(try await bmc.bootOverride()?.device == .pxe)
        try await bmc.setBootOverride(BootOverride(device: .disk, persistent: true, efi: false))
        #expect(try sim.ipmitool(["chassis", "bootparam", "get", "5"]).contains("Hard-Drive"))
        #expect(try await bmc.bootOverride()?.device == .disk)
        await bmc.close()
    }

    @Test func wrongPasswordFailsFastAndClearly() async throws {
        let h = try Harness("ipmi-auth")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        let bmc = client(sim, password: "not-the-password")
        let start = ContinuousClock.now
        let error = await #expect(throws: BMCError.self) { try await bmc.powerState() }
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(error?.kind == .authenticationFailed)
        #expect(error?.description == "authentication failed for BMC 127.0.0.1:\(sim.port)")
        #expect(error?.description.contains("not-the-password") == false)
        await bmc.close()
    }

    @Test func unreachableTimesOutWithinItsBound() async throws {
        // Nothing listens on this loopback port.
        let bmc = IPMIClient(
            IPMIEndpoint(
                host: "127.0.0.1",
                port: IPMISimulator.freePort(udp: true),
                user: "admin",
                password: "x",
                timeouts: BMCTimeouts(attempt: .milliseconds(300), retries: 2, operation: .seconds(3))
            )
        )
        let start = ContinuousClock.now
        let error = await #expect(throws: BMCError.self) { try await bmc.powerState() }
        let elapsed = ContinuousClock.now - start
        #expect(error?.kind == .timeout)
        #expect(elapsed < .seconds(4), "took \(elapsed)")
        await bmc.close()
    }

    @Test func reconnectsAfterTheBMCRestarts() async throws {
        let h = try Harness("ipmi-restart")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        let first = try sim.start()
        let bmc = client(sim, timeouts: BMCTimeouts(attempt: .milliseconds(500), retries: 2, operation: .seconds(10)))
        try await bmc.power(.on)
        // Kill the BMC mid-session; its sessions die with it.
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        try sim.start(log: "ipmi_sim-2.log")
        // The old session is gone: the client notices, makes a new one and carries on.
        #expect(try await bmc.powerState() == .on)
        try await bmc.power(.off)
        #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("Chassis Power is off"))
        await bmc.close()
    }

    /// 20 % of datagrams lost in each direction (a relay that drops them: this kernel has no
    /// sch_netem for `tc netem`). Every operation must still succeed within the retry budget.
    @Test func survivesTwentyPercentPacketLoss() async throws {
        let h = try Harness("ipmi-loss")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        let lossyPort = IPMISimulator.freePort(udp: true)
        let counters = h.directory + "/loss-counters"
        var dir = URL(fileURLWithPath: #filePath)
        dir.deleteLastPathComponent()
        try h.start(
            ["python3", dir.path + "/lossy_udp_proxy.py", String(lossyPort), String(sim.port), "0.2", "7", counters],
            log: "proxy.log"
        )
        let bmc = client(sim, port: lossyPort)
        for i in 0..<6 {
            try await bmc.power(i % 2 == 0 ? .on : .off)
            #expect(try await bmc.powerState() == (i % 2 == 0 ? .on : .off))
            try await bmc.setBootOverride(BootOverride(device: i % 2 == 0 ? .pxe : .disk))
        }
        await bmc.close()
        // Fresh sessions too, each through the lossy link.
        for _ in 0..<3 {
            let fresh = client(sim, port: lossyPort)
            _ = try await fresh.info()
            await fresh.close()
        }
        let parts = (try String(contentsOfFile: counters, encoding: .utf8)).split(separator: " ").compactMap {
            Int($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        try #require(parts.count == 2, "counters file: \(parts)")
        let (forwarded, dropped) = (parts[0], parts[1])
        let share = Double(dropped) / Double(forwarded + dropped)
        #expect(share > 0.12 && share < 0.28, "the link dropped \(dropped) of \(forwarded + dropped)")
    }

    @Test func oneOperationAtATime() async throws {
        let h = try Harness("ipmi-serial")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        let bmc = client(sim)
        // Many concurrent callers share one session and queue; every one succeeds.
        try await withThrowingTaskGroup(of: PowerState.self) { group in
            for _ in 0..<12 { group.addTask { try await bmc.powerState() } }
            var n = 0
            for try await _ in group { n += 1 }
            #expect(n == 12)
        }
        // The BMC's own count, read by ipmitool (whose session is one of them): the 12 callers
        // shared one session.
        let sessions = try sim.ipmitool(["session", "info", "all"])
        let active = sessions.split(separator: "\n").first { $0.hasPrefix("active sessions") }
        #expect(active?.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) == "2", "\(sessions)")
        await bmc.close()
    }

    @Test func serialOverLANRoundTrip() async throws {
        let h = try Harness("ipmi-sol")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.startSerial()
        try sim.start()
        let bmc = client(sim)
        let console = try await bmc.openConsole()
        // Collect output in the background, bounded.
        let collected = Collected()
        let reader = Task {
            for await chunk in console.output { collected.append(chunk) }
        }
        // ipmi_sim connects to the serial port on its own schedule (every 10 s until it succeeds)
        // and drops console input while it is not connected: wait for the port's greeting.
        try h.waitUntil("serial port connected", timeout: 25) { collected.text.contains("farrier-serial ready") }
        try await console.write(Array("hello farrier\r".utf8))
        try? h.waitUntil("echo through SOL", timeout: 10) { collected.text.contains("echo:HELLO FARRIER") }
        #expect(
            collected.text.contains("echo:HELLO FARRIER"),
            "console: \(collected.text) bmc: \(h.read("ipmi_sim.log")) serial: \(h.read("serial.log"))"
        )
        #expect(collected.text.contains("farrier-serial ready"))
        await console.close()
        reader.cancel()
        // Deactivated: ipmitool can take the console now.
        let info = try sim.ipmitool(["sol", "info"])
        #expect(info.contains("Enabled"))
        await bmc.close()
    }
}

final class Collected: @unchecked Sendable {
    let lock = NSLock()
    var bytes: [UInt8] = []
    func append(_ b: [UInt8]) { lock.withLock { bytes += b } }
    var text: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
}
