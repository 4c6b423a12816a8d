import Foundation
import TestSupport
import Testing

/// End to end: `farrier lab up` with one BIOS and one UEFI VM left powered off; ipmitool powers
/// them on through their ipmi_sim BMCs; both PXE-boot from Farrier and show up in
/// `farrier machine list -o json` with the right firmware (as `enrolled`: `lab up` enrolls every
/// VM with its BMC before it boots); `lab down` leaves nothing.
@Suite(
    .serialized,
    .enabled(
        if: Harness.canRun,
        "needs root, the peers from .ci/setup, and a clean lab (Harness.requireNoLab)"
    )
)
struct LabTests {
    @Test(arguments: ["full", "proxy"])
    func biosAndUEFIMachinesAreDiscovered(_ mode: String) throws {
        try Harness.requireNoLab()
        let h = try Harness("lab-\(mode)")
        let bin = Harness.farrierBinary
        defer {
            _ = try? h.run([bin, "lab", "down"], timeout: 120, check: false)
            h.cleanup()
        }
        let started = Date()
        try h.run(
            [
                bin, "lab", "up", "--machines", "2", "--firmware", "mixed", "--dhcp-mode", mode, "--no-power-on",
                "--no-commission", "--no-image",
            ],
            timeout: 180
        )
        let status =
            try JSONSerialization.jsonObject(with: Data(try h.run([bin, "lab", "status", "-o", "json"]).stdout.utf8))
            as? [String: Any]
        let vms = try #require(status?["vms"] as? [[String: Any]])
        try #require(vms.count == 2)
        #expect(vms.map { $0["firmware"] as? String } == ["bios", "uefi"])
        #expect(vms.allSatisfy { ($0["power"] as? String) == "off" })
        // A script finds the metrics and the admin token of the running lab in its status.
        let metricsURL = try #require(status?["metrics_url"] as? String)
        #expect(try h.run(["curl", "-sf", metricsURL]).stdout.contains("farrier_heap_in_use_bytes"))
        // And its web console, whose login page answers.
        let consoleURL = try #require(status?["console_url"] as? String)
        #expect(
            try h.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", consoleURL + "login"]).stdout == "200"
        )
        let tokenFile = try #require(status?["admin_token_file"] as? String)
        let adminToken = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        #expect(try h.run([bin, "token", "whoami", "--token", adminToken, "-o", "json"]).stdout.contains("admin"))
        // The lab's traffic stays in: a blackhole for the whole range, one route into the lab.
        let routes = try h.run(["ip", "route", "show"]).stdout
        #expect(routes.contains("blackhole 198.18.0.0/15"))
        let password = "/var/lib/farrier-lab/bmc-password"
        // lab up enrolled both VMs with their BMCs, through the CLI and the API.
        let enrolled =
            (try JSONSerialization.jsonObject(
                with: Data(try h.run([bin, "machine", "list", "-o", "json"]).stdout.utf8)
            ) as? [[String: Any]]) ?? []
        #expect(enrolled.map { $0["name"] as? String } == ["lab-1", "lab-2"])
        #expect(enrolled.allSatisfy { $0["state"] as? String == "enrolled" })
        #expect(enrolled.allSatisfy { ($0["bmc"] as? String)?.hasPrefix("ipmi://admin@198.18.0.") == true })
        #expect(
            !(try h.run([bin, "machine", "list", "-o", "json"]).stdout.contains(
                try String(contentsOfFile: password, encoding: .utf8)
            ))
        )
        // lab-1 is powered on by Farrier's own IPMI driver (through the server), lab-2 by ipmitool;
        // ipmitool reads lab-1's state back.
        func ipmitool(_ vm: [String: Any], _ args: [String]) throws -> String {
            let bmc = (vm["bmcAddress"] as? String ?? "").split(separator: ":")
            return try h.run(
                [
                    "ipmitool", "-I", "lanplus", "-C", "3", "-H", String(bmc[0]), "-p", String(bmc[1]), "-U", "admin",
                    "-f", password,
                ] + args,
                timeout: 30
            ).stdout
        }
        #expect(try h.run([bin, "machine", "power", "lab-1", "on"], timeout: 60).stdout.contains("on: ok"))
        try h.waitUntil("ipmitool to read lab-1 as on", timeout: 20, interval: 0.5) {
            try ipmitool(vms[0], ["chassis", "power", "status"]).contains("Chassis Power is on")
        }
        _ = try ipmitool(vms[1], ["chassis", "power", "on"])
        let powered = Date()
        var machines: [[String: Any]] = []
        func scriptFetched(_ mac: String) throws -> Bool {
            let out = try h.run([bin, "machine", "show", mac, "-o", "json"], timeout: 30, check: false)
            guard out.status == 0 else { return false }
            let events =
                (try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any])?["timeline"]
                as? [[String: Any]]
            return events?.contains { $0["event"] as? String == "script" } ?? false
        }
        try h.waitUntil("both VMs to fetch their iPXE scripts", timeout: 120, interval: 1) {
            let out = try h.run([bin, "machine", "list", "-o", "json"], timeout: 30).stdout
            machines = (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]]) ?? []
            return try machines.count == 2 && machines.allSatisfy { try scriptFetched($0["mac"] as? String ?? "") }
        }
        let byMAC = Dictionary(uniqueKeysWithValues: machines.map { ($0["mac"] as? String ?? "", $0) })
        for vm in vms {
            let m = try #require(byMAC[vm["mac"] as? String ?? ""], "VM \(vm["name"] ?? "") not discovered")
            // Seen by network boot (platform filled in), and enrolled by `lab up` with its BMC.
            #expect(m["state"] as? String == "enrolled")
            #expect(m["name"] as? String == vm["name"] as? String)
            #expect(m["firmware"] as? String == vm["firmware"] as? String)
            #expect(m["architecture"] as? String == "x86_64")
            // The boot path: first DISCOVER to the script fetch.
            let show = try h.run([bin, "machine", "show", m["mac"] as? String ?? "", "-o", "json"]).stdout
            let timeline = try #require(
                (try JSONSerialization.jsonObject(with: Data(show.utf8)) as? [String: Any])?["timeline"]
                    as? [[String: Any]]
            )
            let iso = ISO8601DateFormatter()
            iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            func time(_ e: [String: Any]) -> Date? { (e["time"] as? String).flatMap { iso.date(from: $0) } }
            let discover = timeline.first(where: { $0["event"] as? String == "DISCOVER" }).flatMap(time)
            let script = timeline.first(where: { $0["event"] as? String == "script" }).flatMap(time)
            let stage = timeline.first(where: { $0["event"] as? String == "DISCOVER" })?["stage"] as? String
            #expect(stage == (mode == "full" ? "dhcp" : "proxydhcp"))
            if let discover, let script {
                let seconds = script.timeIntervalSince(discover)
                print(
                    "lab \(mode) \(vm["firmware"] ?? ""): DISCOVER→script \(String(format: "%.2f", seconds)) s; power-on→discovered \(String(format: "%.1f", Date().timeIntervalSince(powered))) s; lab up \(String(format: "%.1f", powered.timeIntervalSince(started))) s"
                )
                #expect(seconds < 2, "DISCOVER→script took \(seconds) s")
            } else {
                Issue.record("timeline lacks DISCOVER or script: \(timeline)")
            }
        }
        if mode == "full" { try bmcThroughTheServer(h, bin: bin) }
        try h.run([bin, "lab", "down"], timeout: 120)
        #expect(!FileManager.default.fileExists(atPath: "/run/farrier-lab"))
        #expect(!FileManager.default.fileExists(atPath: "/var/lib/farrier-lab"))
        #expect(!(try h.run(["ip", "netns", "list"]).stdout.contains("farrier-lab")))
        #expect(!(try h.run(["ip", "route", "show"]).stdout.contains("198.18.")))
        try h.waitUntil("lab processes gone", timeout: 20) {
            !(try h.run(["ps", "-eo", "args"]).stdout.split(separator: "\n").contains {
                $0.contains("/var/lib/farrier-lab")
            })
        }
    }

    /// The lab on PostgreSQL with two replicas: the second replica's API drives the VM's BMC,
    /// the first serves its network boot, both read the same state; the CLI (pointed at both by
    /// the lab's state) goes on when one replica is killed; `lab down` removes PostgreSQL too.
    @Test func labOnPostgresWithTwoReplicas() throws {
        try Harness.requireNoLab()
        let h = try Harness("lab-postgres")
        let bin = Harness.farrierBinary
        defer {
            _ = try? h.run([bin, "lab", "down"], timeout: 120, check: false)
            h.cleanup()
        }
        try h.run(
            [
                bin, "lab", "up", "--machines", "1", "--firmware", "bios", "--database", "postgres", "--replicas", "2",
                "--no-power-on",
                "--no-commission", "--no-image",
            ],
            timeout: 240
        )
        let status =
            try JSONSerialization.jsonObject(with: Data(try h.run([bin, "lab", "status", "-o", "json"]).stdout.utf8))
            as? [String: Any]
        #expect(status?["database"] as? String == "postgres")
        let replicas = try #require(status?["replicas"] as? [[String: Any]])
        #expect(replicas.count == 2 && replicas.allSatisfy { $0["up"] as? Bool == true }, "\(replicas)")
        #expect(status?["server"] as? String == "198.19.255.2:7700,198.19.255.2:7701")
        // The second replica's API powers the VM on; the first answers its PXE boot; the boot
        // timeline (written by the first) is read through the second.
        let second = "198.19.255.2:7701"
        try h.run([bin, "machine", "power", "lab-1", "on", "--server", second], timeout: 60)
        try h.waitUntil("lab-1's DISCOVER in the timeline, read through the second replica", timeout: 120, interval: 1)
        {
            let show = try h.run([bin, "machine", "show", "lab-1", "-o", "json", "--server", second]).stdout
            let timeline =
                (try JSONSerialization.jsonObject(with: Data(show.utf8)) as? [String: Any])?["timeline"]
                as? [[String: Any]] ?? []
            return timeline.contains { $0["event"] as? String == "DISCOVER" }
        }
        // Kill -9 the second replica: the CLI, given both by the lab, goes on through the first.
        let pid = try #require(replicas[1]["pid"] as? Int)
        kill(Int32(pid), SIGKILL)
        try h.waitUntil("the second replica gone", timeout: 10) { kill(Int32(pid), 0) != 0 }
        let list = try h.run([bin, "machine", "list", "-o", "json"]).stdout
        #expect(list.contains("\"lab-1\""))
        try h.run([bin, "lab", "down"], timeout: 120)
        try h.waitUntil("PostgreSQL and the servers gone", timeout: 20) {
            !(try h.run(["ps", "-eo", "args"]).stdout.split(separator: "\n").contains {
                $0.contains("/var/lib/farrier-lab")
            })
        }
        #expect(!FileManager.default.fileExists(atPath: "/var/lib/farrier-lab"))
    }

    /// Issue 3 in the lab: the serial console through the server, bootdev pxe + cycle makes the
    /// VM PXE-boot again, and power off stops the VM.
    func bmcThroughTheServer(_ h: Harness, bin: String) throws {
        // The console: SOL from ipmi_sim, wired to the VM's serial port, streamed over gRPC. The
        // iPXE wait loop prints a line every 30 s; ipmi_sim connects to the port within 10 s.
        let console = try h.run(
            ["timeout", "90", "bash", "-c", "(sleep 50; printf '\\r~.') | \"$0\" machine console lab-1", bin],
            timeout: 100,
            check: false
        )
        // iPXE wraps lines at 80 columns: match the start of its wait message.
        #expect(
            console.stdout.contains("Farrier: 52:54:00:18:00:01 is enrolled as lab-1"),
            "console: \(console.stdout) \(console.stderr)"
        )
        #expect(console.stderr.contains("[detached]"))
        func discovers() throws -> Int {
            let show = try h.run([bin, "machine", "show", "lab-1", "-o", "json"]).stdout
            let timeline =
                (try JSONSerialization.jsonObject(with: Data(show.utf8)) as? [String: Any])?["timeline"]
                as? [[String: Any]] ?? []
            return timeline.filter { $0["event"] as? String == "DISCOVER" }.count
        }
        let before = try discovers()
        try h.run([bin, "machine", "bootdev", "lab-1", "pxe"], timeout: 60)
        try h.run([bin, "machine", "power", "lab-1", "cycle"], timeout: 60)
        try h.waitUntil("lab-1 to PXE-boot again after cycle", timeout: 90, interval: 1) { try discovers() > before }
        #expect(try h.run([bin, "machine", "power", "lab-1", "off"], timeout: 60).stdout.contains("off: ok"))
        try h.waitUntil("lab-1's QEMU to stop", timeout: 30, interval: 0.5) {
            let status =
                try JSONSerialization.jsonObject(
                    with: Data(try h.run([bin, "lab", "status", "-o", "json"]).stdout.utf8)
                ) as? [String: Any]
            let vm = (status?["vms"] as? [[String: Any]])?.first { $0["name"] as? String == "lab-1" }
            return vm?["power"] as? String == "off"
        }
    }

    /// `lab down` ends a recorded pid only while it is still the lab's: a pid another program
    /// took after the lab died (a reboot, a run killed at its time limit) is left alone.
    /// `lab down --if-dead` refuses, changing nothing, while a process of the lab lives, and
    /// removes the state of a lab that died. A state written here stands in for a real lab's:
    /// `lab` is a process naming a file under the lab's directory, as every process `lab up`
    /// starts does; `other` is a `sleep` that names nothing of the lab's.
    @Test func labDownEndsOnlyTheLabsProcesses() throws {
        try Harness.requireNoLab()
        let h = try Harness("lab-dead")
        let bin = Harness.farrierBinary
        let statePath = Harness.labStatePath
        defer {
            try? FileManager.default.removeItem(atPath: statePath)
            h.cleanup()
        }
        let dir = h.directory + "/lab"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let lab = try h.start(["python3", "-c", "import time; time.sleep(600)", "\(dir)/marker"], log: "lab.out")
        let other = try h.start(["sleep", "600"], log: "other.out")
        func writeState(server: Int32, dnsmasq: Int32) throws {
            let state: [String: Any] = [
                "directory": dir, "namespace": "farrier-lab", "bridge": "br0", "dhcpMode": "full",
                "accelerator": "tcg", "network": "198.18.0.0/24", "serverAddress": "198.18.0.1:7700",
                "hostLink": "frlab0", "blackholeRoute": "198.18.0.0/15", "vms": [Any](),
                "serverPID": server, "dnsmasqPID": dnsmasq,
            ]
            try FileManager.default.createDirectory(
                atPath: (statePath as NSString).deletingLastPathComponent,
                withIntermediateDirectories: true
            )
            try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: statePath))
        }
        func alive(_ p: Process) -> Bool { kill(p.processIdentifier, 0) == 0 && p.isRunning }

        try writeState(server: lab.processIdentifier, dnsmasq: other.processIdentifier)
        let refused = try h.run([bin, "lab", "down", "--if-dead"], timeout: 60, check: false)
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("not dead") && refused.stderr.contains("\(lab.processIdentifier)"))
        #expect(!refused.stderr.contains("\(other.processIdentifier)"))
        #expect(FileManager.default.fileExists(atPath: statePath) && FileManager.default.fileExists(atPath: dir))
        #expect(alive(lab) && alive(other))

        try h.run([bin, "lab", "down"], timeout: 60)
        try h.waitUntil("the lab's process to end", timeout: 10) { !alive(lab) }
        #expect(alive(other), "lab down ended a process that was not the lab's")
        #expect(!FileManager.default.fileExists(atPath: statePath) && !FileManager.default.fileExists(atPath: dir))

        // The lab died; its server's pid now belongs to another program.
        try writeState(server: other.processIdentifier, dnsmasq: lab.processIdentifier)
        let removed = try h.run([bin, "lab", "down", "--if-dead"], timeout: 60, check: false)
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(!FileManager.default.fileExists(atPath: statePath))
        #expect(alive(other), "lab down --if-dead ended a process that was not the lab's")
    }
}
