import Foundation
import TestSupport
import Testing

/// A site linked to two region replicas on one PostgreSQL 15 (issue 16): a replica killed with
/// SIGKILL in the middle of a deploy through the site changes nothing at the site. The site
/// keeps running and serving, its agent's reports reach the other replica, which finishes the
/// deploy, and the region's timeline of the machine is the site's, each event once, in order.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim, ipmitool and PostgreSQL 15"))
struct SiteReplicaTests {
    static let mac = "52:54:00:5c:00:01"
    static let address = "127.92.0.1"

    @Test func aReplicaKilledDuringASiteDeployChangesNothingAtTheSite() throws {
        let h = try Harness("site-replica")
        let pg = try PostgresServer(h)
        defer {
            pg.stop()
            h.cleanup()
        }
        let sim = try IPMISimulator(h)
        try sim.start()
        let database = try pg.createDatabase("farrier")
        let linkPorts = (Int.random(in: 24000..<25000), Int.random(in: 25000..<26000))
        let flags = ["--database", database, "--lifecycle-claim-ttl", "5"]
        // Both replicas share the database and the data directory (its site CA among its keys).
        let a = ControlPlane(h, flags: flags + ["--site-listen", "127.0.0.1:\(linkPorts.0)"])
        try a.start(log: "server-a.log")
        let b = ControlPlane(h, flags: flags + ["--site-listen", "127.0.0.1:\(linkPorts.1)"])
        try b.start(log: "server-b.log")
        let dir = h.directory + "/site-a"
        try a.joinSite("site-a", dir: dir)
        let (httpPort, agentPort) = (Int.random(in: 26000..<27000), Int.random(in: 27000..<28000))
        let site = try h.start(
            [
                ControlPlane.bin, "site", "run", "--region", "127.0.0.1:\(linkPorts.0),127.0.0.1:\(linkPorts.1)",
                "--data-dir", dir, "--interval", "1", "--log-level", "debug", "--boot", "--http-listen",
                "127.0.0.1:\(httpPort)", "--agent-listen", "127.0.0.1:\(agentPort)", "--tftp-listen", "",
                "--dhcp-mode", "off", "--dhcp-reservation", "\(Self.mac)=\(Self.address)", "--metrics-listen", "",
            ],
            log: "site.log"
        )
        try h.waitUntil("the site's link", timeout: 30, interval: 0.2) {
            guard site.isRunning else { throw Harness.CommandError(description: "site exited: \(h.read("site.log"))") }
            return h.read("site.log").contains("link up")
        }
        let siteAgent = "https://127.0.0.1:\(agentPort)"
        func script() throws -> String {
            let path = "/boot/\(Self.mac.replacingOccurrences(of: ":", with: "-")).ipxe?platform=pcbios"
            return try h.run(
                ["curl", "-sf", "--interface", Self.address, "http://127.0.0.1:\(httpPort)\(path)"],
                timeout: 10
            ).stdout
        }
        /// Says hello through the site once the site offers the ramdisk and the region booted
        /// the machine; returns the task.
        func hello(nonce: String) throws -> [String: Any] {
            try h.waitUntil("the site's ramdisk script", timeout: 90, interval: 0.3) {
                try script().contains("farrier.mode=agent")
            }
            var (status, body) = (0, "")
            try h.waitUntil("hello through the site", timeout: 90, interval: 0.3) {
                (status, body) = try a.agent(
                    "/agent/v1/hello",
                    mac: Self.mac,
                    token: nil,
                    ControlPlane.hello(nonce: nonce),
                    from: Self.address,
                    url: siteAgent
                )
                return status != 503
            }
            return try #require(
                status == 200 ? try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] : nil,
                "hello: \(status) \(body)"
            )
        }
        func report(_ path: String, token: String, _ body: String) throws {
            let (status, answer) = try a.agent(
                path,
                mac: Self.mac,
                token: token,
                body,
                from: Self.address,
                url: siteAgent
            )
            #expect(status == 200, "\(path): \(status) \(answer)")
        }

        // Commissioned through the site, with both replicas up.
        try b.cli([
            "machine", "enroll", "m1", "--mac", Self.mac, "--bmc", "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)",
            "--bmc-password-file", sim.passwordFile, "--site", "site-a", "--commission",
        ])
        let commission = try hello(nonce: "commission-nonce-0123")
        let commissionToken = try #require(commission["token"] as? String)
        try report("/agent/v1/done", token: commissionToken, #"{"ok":true,"inventory":\#(ControlPlane.inventory)}"#)
        try b.waitFor("m1", "ready")

        func listed() throws -> [String: Any]? {
            let out = try b.cli(["site", "list", "-o", "json"]).stdout
            return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])?.first
        }
        // The site says it has a BMC channel open to each replica.
        try h.waitUntil("two BMC channels in the site's heartbeat", timeout: 30, interval: 0.3) {
            try listed()?["bmcChannels"] as? Int == 2
        }

        // A deploy through the site; replica A dies (SIGKILL) after the agent's hello.
        let raw = h.directory + "/img.raw"
        try h.run(["bash", "-c", "head -c 4194304 /dev/urandom > '\(raw)'"])
        try h.run(["bash", "-c", "printf 'label: gpt\\nstart=2048, type=L\\n' | sfdisk -q '\(raw)'"])
        try b.cli(["image", "add", "img-1", raw])
        try b.cli(["project", "create", "p"])
        try b.cli(["machine", "deploy", "m1", "--image", "img-1", "--project", "p"])
        let deploy = try hello(nonce: "deploy-nonce-012345678")
        #expect(deploy["kind"] as? String == "deploy")
        let deployToken = try #require(deploy["token"] as? String)
        let killed = try #require(a.server)
        kill(killed.processIdentifier, SIGKILL)
        killed.waitUntilExit()
        try report("/agent/v1/progress", token: deployToken, #"{"stage":"write","bytesDone":1,"bytesTotal":2}"#)
        try report("/agent/v1/done", token: deployToken, #"{"ok":true,"osReporter":true}"#)
        // The replica left boots the disk; the OS reports in through the site.
        try b.waitFor("m1", "deploying/os", timeout: 90)
        let osToken = try #require(deploy["osToken"] as? String)
        try report("/os/v1/ready", token: osToken, #"{"bootID":"b1"}"#)
        try b.waitFor("m1", "deployed", timeout: 90)

        // Nothing changed at the site: it runs, it links to the replica left, it boots the
        // machine's disk as that replica says, and the region has its timeline once, in order.
        #expect(site.isRunning, "\(h.read("site.log"))")
        try h.waitUntil("the site's disk script", timeout: 30, interval: 0.3) {
            try script().contains("boots its local disk")
        }
        try h.waitUntil("the site's queue delivered to the replica left", timeout: 30, interval: 0.3) {
            let s = try listed()
            return s?["link"] as? String == "up" && (s?["queueDepth"] as? Int ?? -1) == 0
        }
        // One BMC channel left, to B (the site's channel to A ended with it).
        try h.waitUntil("one BMC channel in the site's heartbeat", timeout: 60, interval: 0.3) {
            try listed()?["bmcChannels"] as? Int == 1
        }
        let sql = """
            SELECT stage || '|' || event || '|' || detail FROM timeline_event WHERE mac = '\(Self.mac)' ORDER BY id
            """
        // (Polled: the site may record a last script fetch after its queue was counted.)
        var (atSite, atRegion) = ([String](), [String]())
        try? h.waitUntil("the machine's timeline at the region", timeout: 30, interval: 0.3) {
            atRegion = try pg.psql("farrier", sql).split(separator: "\n").map(String.init)
            atSite = try h.sqliteTimeline(dir + "/site.sqlite", mac: Self.mac, taggedAs: "site-a")
            return atRegion == atSite
        }
        #expect(atSite.contains { $0.contains("state=deploying") }, "\(atSite)")
        #expect(atRegion == atSite, "site: \(atSite)\nregion: \(atRegion)")
        site.terminate()
        try h.waitUntil("the site agent to stop", timeout: 20) { !site.isRunning }
        #expect(site.terminationStatus == 0, "\(h.read("site.log"))")
    }
}
