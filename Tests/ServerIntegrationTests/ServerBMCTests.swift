import Foundation
import TestSupport
import Testing

/// Enroll, power, boot device and console through a real `farrier server` process and the CLI,
/// against ipmi_sim; ipmitool reads the state back. The password must appear in no API answer,
/// no log line and nowhere in the database file.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim and ipmitool"))
struct ServerBMCTests {
    @Test func enrollPowerBootdevConsoleThroughTheServer() async throws {
        let h = try Harness("server-bmc")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.startSerial()
        try sim.start()
        let bin = Harness.farrierBinary
        let grpc = "127.0.0.1:\(Int.random(in: 30000..<40000))"
        let data = h.directory + "/data"
        let server = try h.start(
            [
                bin, "server", "--data-dir", data, "--log-level", "debug", "--grpc-listen", grpc,
                "--http-listen", "127.0.0.1:\(Int.random(in: 40000..<45000))", "--agent-listen",
                "127.0.0.1:\(Int.random(in: 45000..<50000))",
                "--tftp-listen", "",
            ],
            log: "server.log"
        )
        try h.waitUntil("server up", timeout: 30) {
            guard server.isRunning else { throw Harness.CommandError(description: h.read("server.log")) }
            guard let token = try? h.adminToken(dataDir: data) else { return false }
            return (try? h.run([bin, "machine", "list", "--server", grpc, "--token", token], timeout: 10)) != nil
        }
        let token = try h.adminToken(dataDir: data)
        func cli(_ args: [String], check: Bool = true) throws -> Harness.Result {
            try h.run([bin, "machine"] + args + ["--server", grpc, "--token", token], timeout: 60, check: check)
        }
        let url = "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)"
        _ = try cli([
            "enroll", "node-1", "--mac", "52:54:00:aa:00:01", "--bmc", url, "--bmc-password-file", sim.passwordFile,
        ])
        let shown = try cli(["show", "node-1", "-o", "json"]).stdout
        let machine = try JSONSerialization.jsonObject(with: Data(shown.utf8)) as? [String: Any]
        #expect(machine?["bmc"] as? String == url + "")
        #expect(machine?["state"] as? String == "enrolled")

        #expect(try cli(["power", "node-1", "on"]).stdout.contains("on: ok"))
        #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("Chassis Power is on"))
        #expect(try cli(["power", "node-1"]).stdout == "power on\n")
        #expect(try cli(["power", "node-1", "off"]).stdout.contains("off: ok"))
        #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("Chassis Power is off"))
        _ = try cli(["bootdev", "node-1", "pxe", "--efi"])
        #expect(try sim.ipmitool(["chassis", "bootparam", "get", "5"]).contains("Force PXE"))
        _ = try cli(["bootdev", "node-1", "disk"])
        #expect(try sim.ipmitool(["chassis", "bootparam", "get", "5"]).contains("Hard-Drive"))

        // Console through the server: wait for the serial port's greeting (ipmi_sim connects to
        // it within 10 s), type a line, see its echo, detach with ~.
        let console = try h.run(
            [
                "timeout", "60", "bash", "-c",
                "(sleep 14; printf 'ping\\r'; sleep 3; printf '\\r~.') | \"$0\" machine console node-1 --server \"$1\" --token \"$2\"",
                bin, grpc, token,
            ],
            timeout: 70,
            check: false
        )
        #expect(console.stdout.contains("echo:PING"), "console: \(console.stdout) \(console.stderr)")
        #expect(console.stderr.contains("[detached]"))

        // Errors a user can act on.
        let unknown = try cli(["power", "nope", "on"], check: false)
        #expect(unknown.status != 0 && unknown.stderr.contains("no machine named or with MAC 'nope'"))
        let badAction = try cli(["power", "node-1", "explode"], check: false)
        #expect(badAction.status == 64 && badAction.stderr.contains("- soft-off"), "\(badAction.stderr)")
        let passwordInURL = try cli(
            [
                "enroll", "node-2", "--mac", "52:54:00:aa:00:02", "--bmc", "ipmi://admin:pw@127.0.0.1",
                "--bmc-password-file", sim.passwordFile,
            ],
            check: false
        )
        #expect(passwordInURL.stderr.contains("must not contain a password"))

        // Wrong password: enrolled fine (the BMC is not asked), refused clearly on first use.
        let wrong = h.directory + "/wrong"
        try "not-it\n".write(toFile: wrong, atomically: true, encoding: .utf8)
        _ = try cli(["enroll", "node-3", "--mac", "52:54:00:aa:00:03", "--bmc", url, "--bmc-password-file", wrong])
        let start = Date()
        let refused = try cli(["power", "node-3"], check: false)
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(refused.stderr.contains("authentication failed for BMC 127.0.0.1:\(sim.port)"), "\(refused.stderr)")

        // A BMC nobody answers for: the server's `unavailable` names the machine, and the CLI
        // (which tells the server's errors by their farrier-error metadata) does not call it an
        // unreachable server.
        _ = try cli([
            "enroll", "node-4", "--mac", "52:54:00:aa:00:04", "--bmc", "ipmi://admin@127.0.0.1:9",
            "--bmc-password-file", sim.passwordFile,
        ])
        let silent = try cli(["power", "node-4"], check: false)
        #expect(silent.status != 0 && silent.stderr.contains("unavailable: machine node-4:"), "\(silent.stderr)")
        #expect(!silent.stderr.contains("cannot reach the Farrier server"), "\(silent.stderr)")

        // The password is nowhere: API answers, logs, the database file (encrypted at rest).
        let everything =
            try cli(["list", "-o", "yaml"]).stdout + (try cli(["show", "node-1", "-o", "json"]).stdout)
            + h.read("server.log")
        #expect(!everything.contains(IPMISimulator.password))
        #expect(!everything.contains("not-it"))
        let files = try FileManager.default.contentsOfDirectory(atPath: data).filter { $0.hasPrefix("farrier.sqlite") }
        #expect(!files.isEmpty)
        for f in files {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: data + "/" + f))
            #expect(bytes.range(of: Data(IPMISimulator.password.utf8)) == nil, "\(f) holds the password in clear")
        }
        let keyMode = try FileManager.default.attributesOfItem(atPath: data + "/bmc.key")[.posixPermissions] as? Int
        #expect(keyMode == 0o600)
    }
}
