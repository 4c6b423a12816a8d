import Foundation
import TestSupport
import Testing

/// End to end: `farrier lab up` with one BIOS and one UEFI VM left powered off; ipmitool powers
/// them on through their ipmi_sim BMCs; both PXE-boot from Farrier and show up in
/// `farrier machine list -o json` as discovered with the right firmware; `lab down` leaves nothing.
@Suite(
    .serialized,
    .enabled(if: Harness.canRun && !FileManager.default.fileExists(atPath: "/run/farrier-lab/state.json"),
             "needs root, the peers from .ci/setup, and no lab already up"))
struct LabTests {
    @Test(arguments: ["full", "proxy"])
    func biosAndUEFIMachinesAreDiscovered(_ mode: String) throws {
        let h = try Harness("lab-\(mode)")
        let bin = Harness.farrierBinary
        defer {
            _ = try? h.run([bin, "lab", "down"], timeout: 120, check: false)
            h.cleanup()
        }
        let started = Date()
        try h.run([bin, "lab", "up", "--machines", "2", "--firmware", "mixed", "--dhcp-mode", mode, "--no-power-on"], timeout: 180)
        let status = try JSONSerialization.jsonObject(with: Data(try h.run([bin, "lab", "status", "-o", "json"]).stdout.utf8)) as? [String: Any]
        let vms = try #require(status?["vms"] as? [[String: Any]])
        #expect(vms.count == 2)
        #expect(vms.map { $0["firmware"] as? String } == ["bios", "uefi"])
        #expect(vms.allSatisfy { ($0["power"] as? String) == "off" })
        // The lab's traffic stays in: a blackhole for the whole range, one route into the lab.
        let routes = try h.run(["ip", "route", "show"]).stdout
        #expect(routes.contains("blackhole 198.18.0.0/15"))
        let password = "/run/farrier-lab/bmc-password"
        for vm in vms {
            let bmc = try #require(vm["bmcAddress"] as? String).split(separator: ":")
            try h.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", String(bmc[0]), "-p", String(bmc[1]), "-U", "admin",
                       "-f", password, "chassis", "power", "on"], timeout: 30)
        }
        let powered = Date()
        var machines: [[String: Any]] = []
        func scriptFetched(_ mac: String) throws -> Bool {
            let out = try h.run([bin, "machine", "show", mac, "-o", "json"], timeout: 30, check: false)
            guard out.status == 0 else { return false }
            let events = (try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any])?["timeline"] as? [[String: Any]]
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
            #expect(m["state"] as? String == "discovered")
            #expect(m["firmware"] as? String == vm["firmware"] as? String)
            #expect(m["architecture"] as? String == "x86_64")
            // The boot path: first DISCOVER to the script fetch.
            let show = try h.run([bin, "machine", "show", m["mac"] as? String ?? "", "-o", "json"]).stdout
            let timeline = try #require((try JSONSerialization.jsonObject(with: Data(show.utf8)) as? [String: Any])?["timeline"] as? [[String: Any]])
            let iso = ISO8601DateFormatter()
            iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            func time(_ e: [String: Any]) -> Date? { (e["time"] as? String).flatMap { iso.date(from: $0) } }
            let discover = timeline.first(where: { $0["event"] as? String == "DISCOVER" }).flatMap(time)
            let script = timeline.first(where: { $0["event"] as? String == "script" }).flatMap(time)
            let stage = timeline.first(where: { $0["event"] as? String == "DISCOVER" })?["stage"] as? String
            #expect(stage == (mode == "full" ? "dhcp" : "proxydhcp"))
            if let discover, let script {
                let seconds = script.timeIntervalSince(discover)
                print("lab \(mode) \(vm["firmware"] ?? ""): DISCOVER→script \(String(format: "%.2f", seconds)) s; power-on→discovered \(String(format: "%.1f", Date().timeIntervalSince(powered))) s; lab up \(String(format: "%.1f", powered.timeIntervalSince(started))) s")
                #expect(seconds < 2, "DISCOVER→script took \(seconds) s")
            } else {
                Issue.record("timeline lacks DISCOVER or script: \(timeline)")
            }
        }
        try h.run([bin, "lab", "down"], timeout: 120)
        #expect(!FileManager.default.fileExists(atPath: "/run/farrier-lab"))
        #expect(!(try h.run(["ip", "netns", "list"]).stdout.contains("farrier-lab")))
        #expect(!(try h.run(["ip", "route", "show"]).stdout.contains("198.18.")))
        try h.waitUntil("lab processes gone", timeout: 20) {
            !(try h.run(["ps", "-eo", "args"]).stdout.split(separator: "\n").contains {
                $0.contains("/run/farrier-lab") || $0.hasPrefix("ipmi_sim") })
        }
    }
}
