import Foundation
import TestSupport
import Testing

/// Two sites through one region, in the lab (issue 16): `lab up --sites 2` makes two lab
/// networks, each with its own bridge, site agent, VM and ipmi_sim BMC, and the region in its own
/// namespace with no route to either network: every boot is served by a site, and every BMC
/// action goes through one. Both VMs (BIOS at site-1, UEFI at site-2) are commissioned by the
/// real agent in the real ramdisk through their sites, then deployed at once and logged into
/// over SSH; each site pulled the image from the region once. `lab partition site-1` cuts
/// site-1's link (the region then shows it down, and a BMC action on its machine says the site
/// is away, while site-2's machine is unaffected); `lab heal site-1` restores it, and a restart
/// of lab-1 through the site brings it back to SSH.
@Suite(
    .serialized,
    .enabled(
        if: Harness.canRun
            && ProcessInfo.processInfo.environment["FARRIER_SKIP_LAB_DEPLOY"] == nil,
        "needs root, the peers from install-deps.sh, and a clean lab (Harness.requireNoLab)"
    )
)
struct LabSitesTests {
    @Test func aDeployAtEachOfTwoSitesThroughOneRegion() throws {
        try Harness.requireNoLab()
        let h = try Harness("lab-sites")
        let bin = Harness.farrierBinary
        defer {
            _ = try? h.run([bin, "lab", "down"], timeout: 120, check: false)
            h.cleanup()
        }
        func json(_ args: [String]) throws -> Any {
            try JSONSerialization.jsonObject(with: Data(try h.run([bin] + args, timeout: 30).stdout.utf8))
        }
        func machine(_ name: String) throws -> [String: Any] {
            (try json(["machine", "show", name, "-o", "json"]) as? [String: Any]) ?? [:]
        }
        func sites() throws -> [String: [String: Any]] {
            let list = (try json(["site", "list", "-o", "json"]) as? [[String: Any]]) ?? []
            return Dictionary(list.map { ($0["name"] as? String ?? "?", $0) }, uniquingKeysWith: { a, _ in a })
        }
        func labLogs() -> String {
            ["site-1.log", "site-2.log", "server.log"].map { file in
                let text = (try? String(contentsOfFile: "/var/lib/farrier-lab/" + file, encoding: .utf8)) ?? ""
                return "--- \(file)\n" + Harness.logExcerpt(text)
            }.joined(separator: "\n")
        }

        // 1. Up, with both machines commissioned through their sites.
        try h.run([bin, "lab", "up", "--sites", "2", "--machines", "2"], timeout: 3600)
        do {
            try h.waitUntil("both machines ready", timeout: 400, interval: 2) {
                try machine("lab-1")["state"] as? String == "ready" && machine("lab-2")["state"] as? String == "ready"
            }
        } catch {
            print(labLogs())
            throw error
        }
        let listed = try sites()
        #expect(listed.keys.sorted() == ["site-1", "site-2"])
        for (name, site) in listed {
            #expect(site["status"] as? String == "joined" && site["link"] as? String == "up", "\(name): \(site)")
        }
        for (name, site, net) in [("lab-1", "site-1", "198.18.1."), ("lab-2", "site-2", "198.18.2.")] {
            let m = try machine(name)
            #expect(m["site"] as? String == site, "\(m)")
            // The address its site leased it, reported to the region.
            #expect((m["address"] as? String)?.hasPrefix(net) == true, "\(m)")
        }
        // The region's namespace has no route to the sites' networks: their BMCs are the sites' to reach.
        let route = try h.run(
            ["ip", "netns", "exec", "farrier-lab", "ip", "route", "get", "198.18.1.11"],
            check: false
        )
        #expect(route.status != 0, "the region has a route to site-1's BMC: \(route.stdout)")

        // 2. Both deployed at once, through their sites, and logged into.
        try h.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", h.directory + "/id"])
        let key = h.directory + "/id"
        let deploys = try ["lab-1", "lab-2"].map { name in
            try h.start(
                [
                    bin, "machine", "deploy", name, "--image", "debian-12", "--ssh-key", key + ".pub", "--wait",
                    "--timeout", "1200",
                ],
                log: "deploy-\(name).log"
            )
        }
        try h.waitUntil("both deploys to finish", timeout: 1300, interval: 2) { deploys.allSatisfy { !$0.isRunning } }
        for (p, name) in zip(deploys, ["lab-1", "lab-2"]) {
            #expect(p.terminationStatus == 0, "\(name): \(h.read("deploy-\(name).log"))\n\(labLogs())")
            #expect(try machine(name)["state"] as? String == "deployed")
        }
        func ssh(_ name: String, _ command: String, timeout: Double) throws -> String {
            var (out, err) = ("", "")
            do {
                try h.waitUntil("ssh \(name) \(command)", timeout: timeout, interval: 3) {
                    let r = try h.run(
                        [bin, "machine", "ssh", name, "-i", key, "--", command],
                        timeout: 30,
                        check: false
                    )
                    (out, err) = (r.stdout, r.stderr)
                    return r.status == 0
                }
            } catch {
                print("--- the last ssh's stderr\n\(err)\n\(labLogs())")
                throw error
            }
            return out
        }
        #expect(try ssh("lab-1", "hostname", timeout: 600).contains("lab-1"))
        #expect(try ssh("lab-2", "hostname", timeout: 600).contains("lab-2"))
        // Each site pulled the image from the region once, and served it to its machine.
        let image = try #require(
            (try json(["image", "show", "debian-12", "-o", "json"]) as? [String: Any])?["sha256"] as? String
        )
        let serverLog = (try? String(contentsOfFile: "/var/lib/farrier-lab/server.log", encoding: .utf8)) ?? ""
        for site in ["site-1", "site-2"] {
            let sent = serverLog.split(separator: "\n").filter {
                $0.contains("file sent to site") && $0.contains("site=\(site)") && $0.contains(image)
            }
            #expect(sent.count == 1, "\(site): \(sent)")
        }

        // 3. site-1 is cut off: the region sees its link down and its machine's BMC as away;
        // site-2's machine is reached as before.
        try h.run([bin, "lab", "partition", "site-1"])
        try h.waitUntil("site-1's link down at the region", timeout: 60, interval: 1) {
            try sites()["site-1"]?["link"] as? String == "down"
        }
        let status = try #require(try json(["lab", "status", "-o", "json"]) as? [String: Any])
        let labSites = (status["sites"] as? [[String: Any]]) ?? []
        #expect(labSites.first { $0["name"] as? String == "site-1" }?["partitioned"] as? Bool == true, "\(labSites)")
        let away = try h.run([bin, "machine", "power", "lab-1"], timeout: 60, check: false)
        #expect(away.status != 0 && away.stderr.contains("site site-1"), "\(away.stdout) \(away.stderr)")
        #expect(try h.run([bin, "machine", "power", "lab-2"], timeout: 60).stdout.contains("on"))
        // The deployed machine keeps running and answering at its site.
        #expect(try ssh("lab-1", "hostname", timeout: 120).contains("lab-1"))

        // 4. Healed: the link comes back, and lab-1 restarts through its site.
        try h.run([bin, "lab", "heal", "site-1"])
        try h.waitUntil("site-1's link up at the region", timeout: 60, interval: 1) {
            try sites()["site-1"]?["link"] as? String == "up"
        }
        let before = try ssh("lab-1", "cat /proc/sys/kernel/random/boot_id", timeout: 120)
        // The BMC channel reopens within seconds of the link: a restart may first find it away.
        try h.waitUntil("lab-1's restart through site-1", timeout: 120, interval: 3) {
            try h.run([bin, "machine", "restart", "lab-1", "--wait", "--timeout", "600"], timeout: 700, check: false)
                .status == 0
        }
        try h.waitUntil("lab-1 back with a new boot", timeout: 600, interval: 5) {
            let now = try h.run(
                [bin, "machine", "ssh", "lab-1", "-i", key, "--", "cat /proc/sys/kernel/random/boot_id"],
                timeout: 30,
                check: false
            )
            return now.status == 0 && !now.stdout.isEmpty && now.stdout != before
        }
        #expect(try machine("lab-1")["state"] as? String == "deployed")
    }
}
