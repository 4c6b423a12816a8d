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
                "--tftp-listen", "", "--metrics-listen", "",
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
        // Refused on the BMC's answer, not after the 20 s operation timeout (15 s leaves room for a
        // CLI and a server sharing two cores with the lab's VMs).
        #expect(Date().timeIntervalSince(start) < 15)
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

    /// Issue 18 point 1: fleet files (YAML and CSV) enroll all or none through one
    /// EnrollMachines call, every problem named by its line; named BMC credentials are shared by
    /// many machines, replaced for all of them at once, refused to members and while in use.
    @Test func fleetFilesEnrollAllOrNoneWithNamedCredentials() throws {
        let h = try Harness("fleet-enroll")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        let cp = ControlPlane(h)
        try cp.start()
        let bmc = "ipmi://127.0.0.1:\(sim.port)"
        try cp.cli(["project", "create", "team-a"])
        let member = try cp.cli(["token", "create", "--project", "team-a"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        let asMember = try cp.cli(
            ["bmc", "credential", "add", "x", "--user", "u", "--password-file", sim.passwordFile],
            token: member,
            check: false
        )
        #expect(asMember.status == 17 && asMember.stderr.contains("needs an admin token"), "\(asMember.stderr)")
        for verb in [["list"], ["remove", "x"]] {
            let r = try cp.cli(["bmc", "credential"] + verb, token: member, check: false)
            #expect(r.status == 17 && r.stderr.contains("needs an admin token"), "\(verb): \(r.stderr)")
        }
        #expect(
            try cp.cli([
                "bmc", "credential", "add", "lab-ops", "--user", IPMISimulator.user, "--password-file",
                sim.passwordFile,
            ]).stdout.contains("BMC credential lab-ops added")
        )

        // A file the CLI can tell is wrong: nothing is sent, the line is named.
        let typo = h.directory + "/typo.yaml"
        try "machines:\n  - name: n1\n    mac: 52:54:00:aa:10:01\n    bmc: \(bmc)\n    colour: blue\n".write(
            toFile: typo,
            atomically: true,
            encoding: .utf8
        )
        let typoed = try cp.cli(["machine", "enroll", "-f", typo], check: false)
        #expect(
            typoed.status == 64 && typoed.stderr.contains("typo.yaml line 5: unknown key 'colour'"),
            "\(typoed.stderr)"
        )

        // Problems only the server can see (names, MACs, credentials): every one by line, and
        // nothing enrolled, not even the good first entry.
        let bad = h.directory + "/bad.yaml"
        try """
        machines:
          - name: rack1-n1
            mac: 52:54:00:aa:10:01
            bmc: \(bmc)
            bmc-credential: lab-ops
          - name: Bad_Name
            mac: nope
            bmc: \(bmc)
            bmc-credential: missing
          - name: rack1-n3
            mac: 52:54:00:aa:10:01
            bmc: \(bmc)
            bmc-credential: lab-ops

        """.write(toFile: bad, atomically: true, encoding: .utf8)
        let refused = try cp.cli(["machine", "enroll", "-f", bad], check: false)
        #expect(refused.status == 13, "\(refused.stderr)")
        for expected in [
            "nothing was enrolled: 4 problems in 3 machines",
            "bad.yaml line 6 (Bad_Name): machine name 'Bad_Name' may only contain",
            "bad.yaml line 6 (Bad_Name): mac 'nope' is not a MAC address",
            "bad.yaml line 6 (Bad_Name): no BMC credential named 'missing'",
            "bad.yaml line 10 (rack1-n3): mac 52:54:00:aa:10:01 is also given by \(bad) line 2",
        ] {
            #expect(refused.stderr.contains(expected), "missing '\(expected)' in \(refused.stderr)")
        }
        #expect(try cp.cli(["machine", "list", "-o", "name"]).stdout.isEmpty)

        // A good YAML (two machines sharing the credential, one with two NICs) and a CSV (its own
        // password file): enrolled with zone, rack and tags.
        let good = h.directory + "/fleet.yaml"
        try """
        machines:
          - name: rack1-n1
            macs: [52:54:00:aa:10:01, 52:54:00:aa:20:01]
            bmc: \(bmc)
            bmc-credential: lab-ops
            zone: z1
            rack: r1
            tags: {gpu: a100, tier: gold}
          - name: rack1-n2
            mac: 52:54:00:aa:10:02
            bmc: \(bmc)
            bmc-credential: lab-ops
            zone: z1
            rack: r1

        """.write(toFile: good, atomically: true, encoding: .utf8)
        // EnrollMachines needs an admin token: a member's stream is refused, nothing enrolled.
        let memberEnroll = try cp.cli(["machine", "enroll", "-f", good], token: member, check: false)
        #expect(
            memberEnroll.status == 17 && memberEnroll.stderr.contains("enrolling machines needs an admin token"),
            "\(memberEnroll.stderr)"
        )
        #expect(try cp.cli(["machine", "list", "-o", "name"]).stdout.isEmpty)
        #expect(try cp.cli(["machine", "enroll", "-f", good]).stdout == "enrolled 2 of 2 machines from \(good)\n")
        // (CRLF line ends, as a spreadsheet on Windows writes them.)
        let csv = h.directory + "/fleet.csv"
        try """
        name,mac,bmc,bmc-password-file,zone,rack,tags
        rack2-n1,52:54:00:aa:10:03,"ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)",\(sim.passwordFile),z2,r2,role=db tier=silver

        """.replacingOccurrences(of: "\n", with: "\r\n").write(toFile: csv, atomically: true, encoding: .utf8)
        #expect(try cp.cli(["machine", "enroll", "-f", csv]).stdout.contains("enrolled 1 of 1 machines"))
        let n1 = try cp.machine("rack1-n1")
        #expect(n1["zone"] as? String == "z1" && n1["rack"] as? String == "r1")
        #expect(n1["tags"] as? [String: String] == ["gpu": "a100", "tier": "gold"])
        #expect(n1["otherMACs"] as? [String] == ["52:54:00:aa:20:01"] && n1["bmcCredential"] as? String == "lab-ops")
        #expect(n1["bmc"] as? String == "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)")
        #expect(try cp.machine("rack2-n1")["tags"] as? [String: String] == ["role": "db", "tier": "silver"])
        // The same file again: the same machines, nothing else.
        #expect(try cp.cli(["machine", "enroll", "-f", good]).stdout.contains("enrolled 2 of 2"))
        #expect(try cp.cli(["machine", "list", "-o", "name"]).stdout == "rack1-n1\nrack1-n2\nrack2-n1\n")

        // The credential works, and replacing it changes every machine's at once.
        #expect(try cp.cli(["machine", "power", "rack1-n2", "on"]).stdout.contains("on: ok"))
        #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("Chassis Power is on"))
        let listed = try cp.cli(["bmc", "credential", "list"]).stdout
        #expect(listed.contains("lab-ops") && listed.contains(" 2 "), "\(listed)")
        let wrong = h.directory + "/wrong"
        try "not-it\n".write(toFile: wrong, atomically: true, encoding: .utf8)
        let replaced = try cp.cli([
            "bmc", "credential", "add", "lab-ops", "--user", IPMISimulator.user, "--password-file", wrong, "--replace",
        ])
        #expect(replaced.stdout.contains("replaced (2 machine(s) updated)"))
        for name in ["rack1-n1", "rack1-n2"] {
            let r = try cp.cli(["machine", "power", name], check: false)
            #expect(r.status != 0 && r.stderr.contains("authentication failed"), "\(name): \(r.stderr)")
        }
        #expect(try cp.cli(["machine", "power", "rack2-n1"]).stdout == "power on\n")
        try cp.cli([
            "bmc", "credential", "add", "lab-ops", "--user", IPMISimulator.user, "--password-file", sim.passwordFile,
            "--replace",
        ])
        #expect(try cp.cli(["machine", "power", "rack1-n1"]).stdout == "power on\n")

        // In use: not removed; unknown: NotFound. The password is in no answer or log.
        let inUse = try cp.cli(["bmc", "credential", "remove", "lab-ops"], check: false)
        #expect(inUse.status != 0 && inUse.stderr.contains("is used by 2 machine(s)"), "\(inUse.stderr)")
        let unknown = try cp.cli(["bmc", "credential", "remove", "nope"], check: false)
        #expect(unknown.status == 15 && unknown.stderr.contains("no BMC credential named 'nope'"), "\(unknown.stderr)")
        let everything =
            try cp.cli(["machine", "list", "-o", "yaml"]).stdout
            + (try cp.cli(["bmc", "credential", "list", "-o", "json"]).stdout)
            + h.read("server.log")
        #expect(!everything.contains(IPMISimulator.password) && !everything.contains("not-it"))

        // Commissioning tests with a fleet file (issue 18 point 7): checked before anything is
        // written, then each machine gets its own run of the same tests.
        let noCommission = try cp.cli(["machine", "enroll", "-f", good, "--tests", "cpu"], check: false)
        #expect(
            noCommission.status == 64 && noCommission.stderr.contains("need --commission"),
            "\(noCommission.stderr)"
        )
        let unknownTest = try cp.cli(
            ["machine", "enroll", "-f", good, "--commission", "--tests", "cpux"],
            check: false
        )
        #expect(unknownTest.status == 13 && unknownTest.stderr.contains("unknown test 'cpux'"), "\(unknownTest.stderr)")
        #expect(try cp.state("rack1-n1") == "enrolled" && cp.machine("rack1-n1")["burnIn"] == nil)
        let started = try cp.cli([
            "machine", "enroll", "-f", good, "--commission", "--tests", "cpu", "--param", "cpu-stress.seconds=1",
        ])
        #expect(started.stdout.contains("(2 commissioning)"), "\(started.stdout)")
        var runs: Set<String> = []
        for name in ["rack1-n1", "rack1-n2"] {
            let run = try #require(try cp.machine(name)["burnIn"] as? [String: Any], "\(name) has no test run")
            #expect(run["tests"] as? [String] == ["cpu-stress"] && run["finished"] == nil, "\(name): \(run)")
            runs.insert(run["runID"] as? String ?? "")
        }
        #expect(runs.count == 2 && !runs.contains(""), "\(runs)")
    }

    /// Issue 18 point 8: an enrolled machine already running an OS is adopted as deployed in a
    /// project without its disk being touched: verified through the BMC (found on), its next
    /// boot set to disk; refused while off, for members, and from any other state.
    @Test func adoptRecordsARunningMachine() throws {
        let h = try Harness("adopt")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        let cp = ControlPlane(h)
        try cp.start()
        try cp.cli(["project", "create", "team-a", "--require-tag", "env"])
        let member = try cp.cli(["token", "create", "--project", "team-a"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        let image = h.directory + "/img.raw"
        try Data(repeating: 7, count: 1 << 20).write(to: URL(fileURLWithPath: image))
        try cp.cli(["image", "add", "debian-12", image, "--os", "debian-12"])
        try cp.cli([
            "machine", "enroll", "legacy-1", "--mac", "52:54:00:aa:00:01", "--bmc",
            "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)", "--bmc-password-file", sim.passwordFile,
        ])
        _ = try sim.ipmitool(["chassis", "power", "off"])
        let adopt = [
            "machine", "adopt", "legacy-1", "--image", "debian-12", "--project", "team-a", "--tag", "env=prod",
        ]

        // Refused, changing nothing: off, a member, a missing tag, an unknown image.
        let off = try cp.cli(adopt, check: false)
        #expect(
            off.status == 19 && off.stderr.contains("BMC says its power is off; adopt a running machine"),
            "\(off.stderr)"
        )
        let asMember = try cp.cli(adopt, token: member, check: false)
        #expect(asMember.status == 17 && asMember.stderr.contains("adopting a machine needs an admin token"))
        _ = try sim.ipmitool(["chassis", "power", "on"])
        let untagged = try cp.cli(Array(adopt.dropLast(2)), check: false)
        #expect(untagged.stderr.contains("requires the tags env"), "\(untagged.stderr)")
        let unknown = try cp.cli(
            ["machine", "adopt", "legacy-1", "--image", "nope", "--project", "team-a"],
            check: false
        )
        #expect(unknown.status == 15 && unknown.stderr.contains("no image named 'nope'; known: debian-12"))
        #expect(try cp.state("legacy-1") == "enrolled")

        // Adopted: deployed in the project, the image recorded, its next boot the disk (the BMC
        // says so too), power read; the member sees it. Its power was read, never set (the
        // chassis log's power changes are the test's own off and on).
        func powerChanges() -> Int { sim.chassisLog.components(separatedBy: "set power").count - 1 }
        let changesBefore = powerChanges()
        #expect(changesBefore == 2)
        #expect(
            try cp.cli(adopt).stdout.contains("machine legacy-1 adopted: deployed (adopted: deployed outside Farrier")
        )
        let m = try cp.machine("legacy-1")
        #expect(m["state"] as? String == "deployed" && m["project"] as? String == "team-a")
        #expect((m["deployment"] as? [String: Any])?["image"] as? String == "debian-12")
        #expect(m["nextBoot"] as? String == "disk")
        #expect((m["power"] as? [String: Any])?["state"] as? String == "on")
        #expect(try sim.ipmitool(["chassis", "bootparam", "get", "5"]).contains("Hard-Drive"))
        #expect(powerChanges() == changesBefore, "power actions during adopt: \(sim.chassisLog)")
        #expect(sim.chassisLog.contains("get power"))
        #expect(try cp.cli(["machine", "list", "-o", "name"], token: member).stdout == "legacy-1\n")
        // Only once, and only from enrolled.
        let again = try cp.cli(adopt, check: false)
        #expect(again.status == 19 && again.stderr.contains("machine legacy-1 is deployed; only an enrolled machine"))
    }
}
