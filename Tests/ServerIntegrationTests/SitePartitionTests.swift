import Foundation
import TestSupport
import Testing

/// A site cut off from its region by a real network partition (issue 16). The region runs in one
/// namespace, the site agent in another, joined by a routed veth the test takes down and up
/// again; the machines' BMCs (OpenIPMI's ipmi_sim) are on the site's loopback, which only the
/// site reaches, so every BMC action goes through the site's BMC channel. Two machines
/// (dhclient, and a stand-in agent speaking HTTPS with curl) sit on the site's bridge in
/// namespaces of their own.
///
/// While the link is down, the deployed machine renews its lease and reboots: the renewal is
/// ACKed and it boots its disk. A deploy issued at the region meanwhile waits (its BMC action
/// waits for the site, and the site keeps the machine waiting, as the region last said) and
/// completes after the link is back. The region's timeline of each machine is then the site's,
/// each event once, in order.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim, ipmitool, dhclient and curl"))
struct SitePartitionTests {
    static let macs = ["52:54:00:5b:00:01", "52:54:00:5b:00:02"]

    @Test func aPartitionedSiteKeepsBootingAndCatchesUp() throws {
        let h = try Harness("site-partition")
        defer { h.cleanup() }
        // region <-(routed link)-> site <-(bridge)-> two machines.
        let r = try h.namespace("r")
        let s = try h.namespace("s")
        try h.run(["ip", "-n", r, "link", "add", "vr", "type", "veth", "peer", "name", "vs", "netns", s])
        try h.run(["ip", "-n", r, "addr", "add", "198.18.32.1/30", "dev", "vr"])
        try h.run(["ip", "-n", r, "link", "set", "vr", "up"])
        try h.run(["ip", "-n", s, "addr", "add", "198.18.32.2/30", "dev", "vs"])
        try h.run(["ip", "-n", s, "link", "set", "vs", "up"])
        try h.run(["ip", "-n", s, "link", "add", "br0", "type", "bridge"])
        try h.run(["ip", "-n", s, "addr", "add", "198.18.33.1/24", "dev", "br0"])
        try h.run(["ip", "-n", s, "link", "set", "br0", "up"])
        var clients: [String] = []
        for (i, mac) in Self.macs.enumerated() {
            let c = try h.namespace("c\(i + 1)")
            try h.run(["ip", "-n", s, "link", "add", "vb\(i + 1)", "type", "veth", "peer", "name", "eth0", "netns", c])
            try h.run(["ip", "-n", s, "link", "set", "vb\(i + 1)", "master", "br0", "up"])
            try h.run(["ip", "-n", c, "link", "set", "eth0", "address", mac, "up"])
            clients.append(c)
        }
        let bmcs = try (1...2).map { try IPMISimulator(h, name: "bmc\($0)", namespace: s) }
        for b in bmcs { try b.start() }

        let region = try h.startFarrier(namespace: r, flags: ["--site-listen", "198.18.32.1:7800"], log: "region.log")
        _ = region
        let token = try h.adminToken()
        @discardableResult func cli(_ args: [String]) throws -> Harness.Result {
            try h.run(
                ["ip", "netns", "exec", r, "env", "-u", "FARRIER_TOKEN", "FARRIER_CONFIG_FILE=/nonexistent"]
                    + [Harness.farrierBinary] + args + ["--server", "127.0.0.1:7700", "--token", token],
                timeout: 30
            )
        }
        func machine(_ name: String) throws -> [String: Any] {
            let out = try cli(["machine", "show", name, "-o", "json"]).stdout
            return try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        }
        func waitFor(_ name: String, _ state: String, timeout: Double = 90) throws {
            var last = ""
            do {
                try h.waitUntil("\(name) \(state)", timeout: timeout, interval: 0.3) {
                    last = try machine(name)["state"] as? String ?? ""
                    return last == state
                }
            } catch {
                throw Harness.CommandError(description: "\(name) is \(last), not \(state): \(h.read("site.log"))")
            }
        }

        // The site joins and serves its bridge.
        let added = try cli(["site", "add", "site-a", "-o", "json"]).stdout
        let join = try #require(
            (try JSONSerialization.jsonObject(with: Data(added.utf8)) as? [String: Any])?["joinToken"] as? String
        )
        let dir = h.directory + "/site-a"
        try h.run(
            [
                "ip", "netns", "exec", r, "env", "-u", "FARRIER_TOKEN", "FARRIER_CONFIG_FILE=/nonexistent",
                Harness.farrierBinary, "site", "join", "--join-token", join, "--name", "site-a", "--data-dir", dir,
                "--server", "127.0.0.1:7700",
            ],
            timeout: 30
        )
        let site = try h.start(
            [
                "ip", "netns", "exec", s, Harness.farrierBinary, "site", "run", "--region", "198.18.32.1:7800",
                "--data-dir", dir, "--interval", "1", "--log-level", "debug", "--boot", "--dhcp-interface", "br0",
                "--dhcp-subnet", "198.18.33.0/24,pool=198.18.33.100-198.18.33.150,lease=600", "--http-listen",
                "198.18.33.1:8090", "--tftp-listen", "", "--agent-listen", "198.18.33.1:8444",
            ],
            log: "site.log"
        )
        try h.waitUntil("the site's link", timeout: 30, interval: 0.2) {
            guard site.isRunning else { throw Harness.CommandError(description: "site exited: \(h.read("site.log"))") }
            return h.read("site.log").contains("link up")
        }

        // Two machines at the site, commissioned through it; their leases come from the site.
        for (i, mac) in Self.macs.enumerated() {
            try cli([
                "machine", "enroll", "m\(i + 1)", "--mac", mac, "--bmc",
                "ipmi://\(IPMISimulator.user)@127.0.0.1:\(bmcs[i].port)", "--bmc-password-file",
                bmcs[i].passwordFile, "--site", "site-a", "--commission",
            ])
        }
        // (Once the site lists them: it records the DHCP traffic of the machines it knows.)
        try h.waitUntil("the site to list its machines", timeout: 30, interval: 0.2) {
            let list = (try? String(contentsOfFile: dir + "/machines.json", encoding: .utf8)) ?? ""
            return list.contains("\"m1\"") && list.contains("\"m2\"")
        }
        var addresses: [String] = []
        for (i, c) in clients.enumerated() {
            let (address, log) = try h.dhclient(c, "eth0", tag: "m\(i + 1)-d1", prefix: "198.18.33.")
            addresses.append(try #require(address, "no lease: \(log) \(h.read("site.log"))"))
        }
        func script(_ i: Int) throws -> String {
            let path = "/boot/\(Self.macs[i].replacingOccurrences(of: ":", with: "-")).ipxe?platform=pcbios"
            return try h.run(
                ["ip", "netns", "exec", clients[i], "curl", "-sf", "http://198.18.33.1:8090" + path],
                timeout: 10
            ).stdout
        }
        func post(_ i: Int, _ path: String, token: String? = nil, _ body: String) throws -> (Int, String) {
            try ControlPlane.agentCall(
                h,
                url: "https://198.18.33.1:8444",
                path,
                token: token,
                body,
                namespace: clients[i]
            )
        }
        /// Plays machine i's agent for its step, through the site: waits for the ramdisk
        /// script, says hello (503 until the region booted it), reports progress and success.
        func agent(_ i: Int, timeout: Double = 90) throws {
            try h.waitUntil("m\(i + 1)'s ramdisk script", timeout: timeout, interval: 0.3) {
                try script(i).contains("farrier.mode=agent")
            }
            var (status, body) = (0, "")
            try h.waitUntil("m\(i + 1)'s hello", timeout: timeout, interval: 0.3) {
                (status, body) = try post(
                    i,
                    "/agent/v1/hello",
                    #"{"agentVersion":"stand-in","nonce":"nonce-of-m\#(i)-0123456789"}"#
                )
                return status != 503
            }
            let task = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
            let t = try #require(task?["token"] as? String, "hello: \(status) \(body)")
            let (p, pb) = try post(
                i,
                "/agent/v1/progress",
                token: t,
                #"{"stage":"write","bytesDone":1,"bytesTotal":2}"#
            )
            #expect(p == 200, "\(pb)")
            let result =
                task?["kind"] as? String == "commission"
                ? #"{"ok":true,"inventory":{"cpuModel":"QEMU","cores":2,"memoryBytes":2147483648,"vendor":"QEMU","product":"PC","serial":"S\#(i)","firmware":"bios","disks":[{"name":"vda","sizeBytes":10737418240,"model":"D","serial":"D\#(i)","rotational":false}],"nics":[]}}"#
                : #"{"ok":true,"osReporter":true}"#
            let (d, db) = try post(i, "/agent/v1/done", token: t, result)
            #expect(d == 200, "\(db)")
            // A deploy's OS reports in through the site once the region has booted the disk.
            if task?["kind"] as? String == "deploy", let os = task?["osToken"] as? String {
                try h.waitUntil("m\(i + 1) to wait for its OS", timeout: timeout, interval: 0.3) {
                    try machine("m\(i + 1)")["phase"] as? String == "os"
                }
                let (o, ob) = try post(i, "/os/v1/ready", token: os, #"{"bootID":"boot-of-m\#(i)"}"#)
                #expect(o == 200, "\(ob)")
            }
        }
        for i in 0..<2 {
            try agent(i)
            try waitFor("m\(i + 1)", "ready")
        }

        // m1 is deployed through the site before the partition.
        let raw = h.directory + "/img.raw"
        try h.run(["bash", "-c", "head -c 4194304 /dev/urandom > '\(raw)'"])
        try h.run(["bash", "-c", "printf 'label: gpt\\nstart=2048, type=L\\n' | sfdisk -q '\(raw)'"])
        try cli(["image", "add", "img-1", raw])
        try cli(["project", "create", "p"])
        try cli(["machine", "deploy", "m1", "--image", "img-1", "--project", "p"])
        try agent(0)
        try waitFor("m1", "deployed")
        try h.waitUntil("m1's disk script at the site", timeout: 30, interval: 0.3) {
            try script(0).contains("boots its local disk")
        }

        // The partition: the routed link goes down.
        try h.run(["ip", "-n", r, "link", "set", "vr", "down"])
        try h.waitUntil("the site to see its link down", timeout: 40, interval: 0.3) {
            h.read("site.log").contains("link down")
        }
        // m1 renews its lease and reboots: ACKed by the site, and it boots its disk.
        try h.run(["ip", "-n", clients[0], "addr", "flush", "dev", "eth0"])
        try FileManager.default.copyItem(atPath: h.directory + "/m1-d1.leases", toPath: h.directory + "/m1-d2.leases")
        let (renewed, renewLog) = try h.dhclient(clients[0], "eth0", tag: "m1-d2", prefix: "198.18.33.")
        #expect(renewed == addresses[0], "\(renewLog)")
        #expect(renewLog.contains("DHCPACK of \(addresses[0]) from 198.18.33.1"), "\(renewLog)")
        #expect(try script(0).contains("boots its local disk"))
        // A deploy issued at the region meanwhile is taken, and its BMC action waits for the
        // site (m2's BMC is reached only through it); the site still has m2 waiting.
        // (What the BMC was told to set: chassis.log also has its readings.)
        func sets(_ b: IPMISimulator) -> [Substring] {
            b.chassisLog.split(separator: "\n").filter { $0.contains(" set ") }
        }
        let chassisBefore = sets(bmcs[1])
        try cli(["machine", "deploy", "m2", "--image", "img-1", "--project", "p"])
        do {
            try h.waitUntil("m2's BMC action to wait for the site", timeout: 40, interval: 0.3) {
                h.read("region.log").contains("BMC action waits for the machine's site")
            }
        } catch {
            let lines = h.read("region.log").split(separator: "\n").filter { $0.contains("m2") || $0.contains("BMC") }
            throw Harness.CommandError(description: "\(error): \(lines.suffix(30).joined(separator: "\n"))")
        }
        let m2 = try machine("m2")
        #expect(m2["state"] as? String == "deploying" && m2["phase"] as? String == "boot", "\(m2)")
        #expect(sets(bmcs[1]) == chassisBefore)
        let waiting = try script(1)
        #expect(!waiting.contains("farrier.mode=") && waiting.contains("m2 (ready)"), "\(waiting)")
        // A power reading from the region says why it cannot have one now.
        let reading = try h.run(
            ["ip", "netns", "exec", r, "env", "-u", "FARRIER_TOKEN", "FARRIER_CONFIG_FILE=/nonexistent"]
                + [Harness.farrierBinary, "machine", "power", "m2", "--server", "127.0.0.1:7700", "--token", token],
            timeout: 30,
            check: false
        )
        #expect(reading.status != 0 && reading.stderr.contains("site site-a"), "\(reading.stderr)")

        // Healed: the site's BMC channel comes back, the region powers m2 through it, m2's
        // agent runs through the site, and the deploy completes.
        try h.run(["ip", "-n", r, "link", "set", "vr", "up"])
        try agent(1)
        try waitFor("m2", "deployed")
        #expect(sets(bmcs[1]).count > chassisBefore.count)
        // (A cycle's off and on are apart: polled.)
        try h.waitUntil("m2 powered on", timeout: 30, interval: 0.5) {
            try bmcs[1].ipmitool(["chassis", "power", "status"]).contains("is on")
        }

        // Each machine's timeline at the region is the site's, tagged, each event once, in order.
        func queued() throws -> Int? {
            let out = try h.run([Harness.farrierBinary, "site", "status", "--data-dir", dir, "-o", "json"]).stdout
            let view = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
            return (view?["link"] as? [String: Any])?["queueDepth"] as? Int
        }
        try h.waitUntil("the site to deliver its queue", timeout: 30, interval: 0.2) { try queued() == 0 }
        func timeline(_ db: String, _ mac: String, tagged: Bool) throws -> [String] {
            try h.sqliteTimeline(db, mac: mac, taggedAs: tagged ? "site-a" : nil)
        }
        // (Polled: the site may record a last script fetch after its queue was counted.)
        for mac in Self.macs {
            var (atSite, atRegion) = ([String](), [String]())
            try? h.waitUntil("\(mac)'s timeline at the region", timeout: 30, interval: 0.3) {
                atSite = try timeline(dir + "/site.sqlite", mac, tagged: true)
                atRegion = try timeline(h.directory + "/data/farrier.sqlite", mac, tagged: false)
                return atRegion == atSite
            }
            #expect(atSite.count >= 4 && atSite.contains { $0.hasPrefix("dhcp|ACK") }, "\(atSite)")
            #expect(atRegion == atSite, "\(mac)\nsite: \(atSite)\nregion: \(atRegion)")
        }
        // The renewal during the partition is among them.
        let m1 = try timeline(h.directory + "/data/farrier.sqlite", Self.macs[0], tagged: false)
        #expect(m1.filter { $0.hasPrefix("dhcp|ACK") }.count >= 2, "\(m1)")
        // And the region knows each machine's address from the site.
        for (i, address) in addresses.enumerated() {
            #expect(try machine("m\(i + 1)")["address"] as? String == address)
        }
        site.terminate()
        try h.waitUntil("the site agent to stop", timeout: 20) { !site.isRunning }
        #expect(site.terminationStatus == 0, "\(h.read("site.log"))")
    }
}
