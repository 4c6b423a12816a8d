import Foundation
import TestSupport
import Testing

/// A site's boot services (issue 16) against real clients: dhclient gets its lease from the
/// site, curl its iPXE script, tftp-hpa a boot file; then the region goes away and the site
/// keeps going: the machine's renewal is ACKed and its script served, also after the site
/// agent itself restarted. The region and the site run in a namespace made here, the machine
/// in another, joined by a veth.
@Suite(.serialized, .enabled(if: Harness.canRun, "needs root, dhclient, curl and tftp-hpa"))
struct SiteBootTests {
    static let mac = "52:54:00:5e:00:01"
    static let scriptPath = "/boot/52-54-00-5e-00-01.ipxe?platform=pcbios&buildarch=x86_64"

    @Test func aSiteBootsItsMachinesWithOrWithoutTheRegion() throws {
        let h = try Harness("site-boot")
        defer { h.cleanup() }
        let (s, sif, c, cif) = try h.veth(serverIP: "198.18.20.1/24")
        try h.run(["ip", "-n", c, "link", "set", cif, "address", Self.mac])
        // The region's own build of undionly.kpxe (Debian's with bytes after it: to a site, what
        // a region that builds its own iPXE looks like), which its sites serve in place of theirs.
        let regionIPXE = h.directory + "/region-ipxe"
        try FileManager.default.createDirectory(atPath: regionIPXE, withIntermediateDirectories: true)
        var build = try Data(contentsOf: URL(fileURLWithPath: "/usr/lib/ipxe/undionly.kpxe"))
        build.append(contentsOf: Array("farrier region build\n".utf8))
        try build.write(to: URL(fileURLWithPath: regionIPXE + "/undionly.kpxe"))
        let regionFlags = ["--site-listen", "127.0.0.1:7800", "--ipxe-source", regionIPXE]
        let region = try h.startFarrier(namespace: s, flags: regionFlags, log: "region.log")
        try h.waitUntil("the site link to listen", timeout: 20) { h.read("region.log").contains("site link listening") }
        let token = try h.adminToken()
        @discardableResult func cli(_ args: [String], check: Bool = true) throws -> Harness.Result {
            try h.run(
                ["ip", "netns", "exec", s, "env", "-u", "FARRIER_TOKEN", "FARRIER_CONFIG_FILE=/nonexistent"]
                    + [Harness.farrierBinary] + args,
                timeout: 30,
                check: check
            )
        }
        let api = ["--server", "127.0.0.1:7700", "--token", token]

        // The site is added and joins; a machine is enrolled at it.
        let added = try cli(["site", "add", "site-a", "-o", "json"] + api).stdout
        let join = try #require(
            (try JSONSerialization.jsonObject(with: Data(added.utf8)) as? [String: Any])?["joinToken"] as? String
        )
        let dir = h.directory + "/site-a"
        try cli([
            "site", "join", "--join-token", join, "--name", "site-a", "--data-dir", dir, "--server", "127.0.0.1:7700",
        ])
        let password = h.directory + "/bmc.pass"
        try "secret\n".write(toFile: password, atomically: true, encoding: .utf8)
        try cli(
            [
                "machine", "enroll", "m1", "--mac", Self.mac, "--bmc", "ipmi://a@127.0.0.1", "--bmc-password-file",
                password, "--site", "site-a",
            ] + api
        )

        // Boot services without --boot are refused, not ignored.
        let refused = try cli(
            ["site", "run", "--region", "127.0.0.1:7800", "--data-dir", dir, "--http-listen", ":1"],
            check: false
        )
        #expect(refused.status != 0 && refused.stderr.contains("need --boot"), "\(refused.stderr)")

        let siteArgs = [
            "ip", "netns", "exec", s, Harness.farrierBinary, "site", "run", "--region", "127.0.0.1:7800", "--data-dir",
            dir, "--interval", "1", "--log-level", "debug", "--boot", "--dhcp-interface", sif, "--dhcp-subnet",
            "198.18.20.0/24,pool=198.18.20.100-198.18.20.150,lease=600", "--http-listen", "198.18.20.1:8090",
            "--tftp-listen", "198.18.20.1:6969", "--agent-listen", "198.18.20.1:8444",
        ]
        var site = try h.start(siteArgs, log: "site.log")
        try h.waitUntil("the site to list its machine", timeout: 30) {
            guard site.isRunning else { throw Harness.CommandError(description: "site exited: \(h.read("site.log"))") }
            return (try? String(contentsOfFile: dir + "/machines.json", encoding: .utf8))?.contains("\"m1\"") == true
        }

        // The region's ramdisk reaches the site's boot root over the link, byte for byte, and
        // is served there; a new one replaces it.
        let regionRamdisk = h.directory + "/data/boot/ramdisk"
        try FileManager.default.createDirectory(atPath: regionRamdisk, withIntermediateDirectories: true)
        func newRamdisk(_ tag: String) throws {
            for name in ["vmlinuz", "initrd.img"] {
                try h.run([
                    "bash", "-c",
                    "head -c 700000 /dev/urandom > '\(regionRamdisk)/\(name).new' && mv '\(regionRamdisk)/\(name).new' '\(regionRamdisk)/\(name)'",
                ])
            }
        }
        func ramdiskAtSite() throws -> Bool {
            try ["vmlinuz", "initrd.img"].allSatisfy { name in
                try h.run(["cmp", "-s", "\(regionRamdisk)/\(name)", "\(dir)/boot/ramdisk/\(name)"], check: false)
                    .status == 0
            }
        }
        try newRamdisk("1")
        try h.waitUntil("the region's ramdisk at the site", timeout: 30, interval: 0.2) { try ramdiskAtSite() }
        // The site, not the region (whose DHCP is off), leases the machine its address.
        let (first, log1) = try h.dhclient(c, cif, tag: "d1", prefix: "198.18.20.")
        let address = try #require(first, "no lease: \(log1) \(h.read("site.log"))")
        #expect(log1.contains("DHCPACK of \(address) from 198.18.20.1"), "\(log1)")
        func leases() throws -> [String] {
            let script =
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); [print(a) for (a,) in c.execute('select address from lease')]"
            return try h.run(["python3", "-c", script, dir + "/site.sqlite"]).stdout.split(separator: "\n").map(
                String.init
            )
        }
        #expect(try leases() == [address])
        // The region learns the lease from the site: the machine's address, to show and reach it.
        func addressAtRegion() throws -> String? {
            let out = try cli(["machine", "show", "m1", "-o", "json"] + api).stdout
            return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])?["address"] as? String
        }
        try h.waitUntil("the region to show the site's lease", timeout: 20, interval: 0.2) {
            try addressAtRegion() == address
        }

        // Its script, from its leased address; any other address gets the unknown wait loop.
        func script(from ns: String) throws -> String {
            try h.run(
                ["ip", "netns", "exec", ns, "curl", "-sf", "http://198.18.20.1:8090" + Self.scriptPath],
                timeout: 10
            )
            .stdout
        }
        let mine = try script(from: c)
        #expect(mine.contains("m1 (enrolled)") && mine.contains("chain --replace"), "\(mine)")
        let other = try script(from: s)
        #expect(other.contains("not known to Farrier") && !other.contains("m1"), "\(other)")
        // A boot file over TFTP, byte for byte: the region's build, once the site has it.
        func undionly() throws -> Data {
            try? FileManager.default.removeItem(atPath: h.directory + "/undionly.kpxe")
            try h.run(
                [
                    "ip", "netns", "exec", c, "tftp", "-m", "binary", "198.18.20.1", "6969", "-c", "get",
                    "undionly.kpxe", h.directory + "/undionly.kpxe",
                ],
                timeout: 20
            )
            return try Data(contentsOf: URL(fileURLWithPath: h.directory + "/undionly.kpxe"))
        }
        try h.waitUntil("the region's undionly.kpxe over TFTP at the site", timeout: 30, interval: 0.3) {
            try undionly() == build
        }

        // The ramdisk, served at the site; then a new one replaces it there.
        let served = h.directory + "/initrd.served"
        try h.run(
            [
                "ip", "netns", "exec", c, "curl", "-sf", "-o", served,
                "http://198.18.20.1:8090/tftp/ramdisk/initrd.img",
            ],
            timeout: 10
        )
        #expect(try h.run(["cmp", served, regionRamdisk + "/initrd.img"], check: false).status == 0)
        try newRamdisk("2")
        try h.waitUntil("the region's new ramdisk at the site", timeout: 30, interval: 0.2) { try ramdiskAtSite() }
        #expect(h.read("site.log").contains("boot file from the region"), "\(h.read("site.log"))")

        // The region goes away. The machine reboots: its lease is ACKed and its script served.
        kill(region.processIdentifier, SIGKILL)
        region.waitUntilExit()
        try h.waitUntil("the site to see the link down", timeout: 20) { h.read("site.log").contains("link down") }
        func reboot(_ tag: String) throws {
            try h.run(["ip", "-n", c, "addr", "flush", "dev", cif])
            try FileManager.default.copyItem(atPath: h.directory + "/d1.leases", toPath: h.directory + "/\(tag).leases")
            let (again, log) = try h.dhclient(c, cif, tag: tag, prefix: "198.18.20.")
            #expect(again == address, "\(log) \(h.read("site.log"))")
            #expect(log.contains("DHCPACK of \(address) from 198.18.20.1"), "\(log)")
            let s = try script(from: c)
            #expect(s.contains("m1 (enrolled)"), "\(s)")
        }
        try reboot("d2")

        // Each ramdisk was installed once, not again at every call.
        let installs = h.read("site.log").split(separator: "\n").filter {
            $0.contains("boot file from the region") && $0.contains("ramdisk/vmlinuz")
        }
        #expect(installs.count == 2, "\(installs)")

        // The site agent itself restarts while the region is away: it boots from what it kept
        // (the machine list, the leases), not from the region.
        kill(site.processIdentifier, SIGKILL)
        site.waitUntilExit()
        site = try h.start(siteArgs, log: "site-2.log")
        try h.waitUntil("the restarted site to serve", timeout: 30) {
            guard site.isRunning else {
                throw Harness.CommandError(description: "site exited: \(h.read("site-2.log"))")
            }
            return (try? script(from: c))?.contains("m1 (enrolled)") == true
        }
        // It kept the region's build of undionly.kpxe: the local one was not copied over it.
        #expect(try undionly() == build, "\(h.read("site-2.log"))")
        try reboot("d3")
        #expect(try leases() == [address])
        let status = try h.run([Harness.farrierBinary, "site", "status", "--data-dir", dir, "-o", "json"]).stdout
        let view = try #require(try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
        #expect((view["link"] as? [String: Any])?["state"] as? String == "down", "\(status)")
        // What happened meanwhile waits at the site, counted.
        func queued() throws -> Int? {
            let out = try h.run([Harness.farrierBinary, "site", "status", "--data-dir", dir, "-o", "json"]).stdout
            let view = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
            return (view?["link"] as? [String: Any])?["queueDepth"] as? Int
        }
        try h.waitUntil("the site to count its queue", timeout: 20) { (try queued() ?? 0) > 0 }
        /// The machine's timeline in a database: stage|event|detail, oldest first; at the site
        /// with the tag the region adds (`tagged`).
        func timeline(_ db: String, tagged: Bool) throws -> [String] {
            try h.sqliteTimeline(db, mac: Self.mac, taggedAs: tagged ? "site-a" : nil)
        }
        // Only what the region has not had waits: what went before the outage was delivered
        // (and the mark the region answered was kept across the agent's restart).
        let total = try timeline(dir + "/site.sqlite", tagged: false).count
        #expect(try queued() ?? 0 < total, "\(total)")

        // The region comes back: the site's timeline reaches it, each event once, in order.
        try h.startFarrier(namespace: s, flags: regionFlags, log: "region-2.log")
        try h.waitUntil("the site to deliver its queue", timeout: 30, interval: 0.2) { try queued() == 0 }
        // (Polled: the site may record an event after its queue was counted.)
        var (atSite, atRegion) = ([String](), [String]())
        try? h.waitUntil("the machine's timeline at the region", timeout: 30, interval: 0.3) {
            atSite = try timeline(dir + "/site.sqlite", tagged: true)
            atRegion = try timeline(h.directory + "/data/farrier.sqlite", tagged: false)
            return atRegion == atSite
        }
        #expect(atSite.count >= 6 && atSite.contains { $0.hasPrefix("dhcp|ACK") }, "\(atSite)")
        #expect(atRegion == atSite, "site: \(atSite)\nregion: \(atRegion)")
        // The leases renewed while it was away reached it too (the latest expiry, to the second).
        // (The site keeps a lease's expiry as a Unix time, the region as GRDB's date text.)
        let expiry = "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchall())"
        try h.waitUntil("the region to take the renewed lease", timeout: 20, interval: 0.2) {
            let atSite = try h.run(
                ["python3", "-c", expiry, dir + "/site.sqlite", "select datetime(expires, 'unixepoch') from lease"]
            ).stdout
            let atRegion = try h.run(
                [
                    "python3", "-c", expiry, h.directory + "/data/farrier.sqlite",
                    "select substr(expires, 1, 19) from siteLease",
                ]
            ).stdout
            return atSite == atRegion
        }
        #expect(try addressAtRegion() == address)
        site.terminate()
        try h.waitUntil("the site agent to stop at SIGTERM", timeout: 20) { !site.isRunning }
        #expect(site.terminationStatus == 0, "\(h.read("site-2.log"))")
        // Once, with boot services: they start, the region answers, all stop, status 0.
        let once = try h.run(siteArgs + ["--once"], timeout: 60, check: false)
        #expect(once.status == 0, "\(once.stderr)")
    }
}
