import Foundation
import TestSupport
import Testing

/// A machine at a site commissioned and deployed by the real `farrier agent` through the site
/// (issue 16): the site's script boots the ramdisk with the site's agent channel, the site
/// relays the agent's calls to the region over the site link, vouching for the MAC it holds the
/// caller's address for, and serves the image from its cache, pulled once from the region. The
/// region has no reservation for this MAC, so only the site can speak for it. A site cannot
/// speak for a machine that is not its own.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim and ipmitool"))
struct SiteAgentTests {
    static let mac = "52:54:00:5a:00:01"
    static let address = "127.90.0.1"
    static let strangerMAC = "52:54:00:5a:00:02"
    static let strangerAddress = "127.90.0.2"

    @Test func aSiteRelaysItsAgentsAndServesTheirImage() throws {
        let h = try Harness("site-agent")
        defer { h.cleanup() }
        let sim = try IPMISimulator(h)
        try sim.start()
        let link = "127.0.0.1:\(Int.random(in: 32000..<32700))"
        let cp = ControlPlane(h, flags: ["--site-listen", link])
        try cp.start()
        let dir = h.directory + "/site-a"
        try cp.joinSite("site-a", dir: dir)
        let (httpPort, agentPort, metricsPort) = (
            Int.random(in: 20000..<24000), Int.random(in: 28000..<32000), Int.random(in: 10000..<12000)
        )
        let site = try h.start(
            [
                ControlPlane.bin, "site", "run", "--region", link, "--data-dir", dir, "--interval", "1", "--log-level",
                "debug", "--boot", "--http-listen", "127.0.0.1:\(httpPort)", "--agent-listen",
                "127.0.0.1:\(agentPort)", "--metrics-listen", "127.0.0.1:\(metricsPort)", "--tftp-listen", "",
                "--dhcp-mode", "off", "--dhcp-reservation",
                "\(Self.mac)=\(Self.address)", "--dhcp-reservation", "\(Self.strangerMAC)=\(Self.strangerAddress)",
            ],
            log: "site.log"
        )
        try h.waitUntil("the site agent's link", timeout: 30, interval: 0.2) {
            guard site.isRunning else { throw Harness.CommandError(description: "site exited: \(h.read("site.log"))") }
            return h.read("site.log").contains("link up")
        }
        // The site's metrics are on their own listener, not on the boot network's HTTP port.
        let siteMetrics = try h.run(["curl", "-sf", "http://127.0.0.1:\(metricsPort)/metrics"], timeout: 10).stdout
        #expect(siteMetrics.contains("# TYPE farrier_dhcp_packets_received_total counter\n"))
        #expect(siteMetrics.contains("\nprocess_resident_memory_bytes "))
        let onBootPort = try h.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(httpPort)/metrics"],
            timeout: 10
        ).stdout
        #expect(onBootPort == "404")

        func script(_ mac: String, from: String) throws -> String {
            try h.run(
                [
                    "curl", "-sf", "--interface", from,
                    "http://127.0.0.1:\(httpPort)/boot/\(mac.replacingOccurrences(of: ":", with: "-")).ipxe?platform=pcbios&buildarch=x86_64",
                ],
                timeout: 10
            ).stdout
        }
        /// The kernel line of the site's ramdisk script for the machine, in a file for the agent.
        func cmdline() throws -> String {
            var kernel: String?
            try h.waitUntil("the site's ramdisk script", timeout: 60, interval: 0.2) {
                kernel = try script(Self.mac, from: Self.address).split(separator: "\n").first {
                    $0.hasPrefix("kernel ")
                }.map(String.init)
                return kernel != nil
            }
            let line = try #require(kernel)
            #expect(line.contains("farrier.url=https://127.0.0.1:\(agentPort)"), "\(line)")
            let path = h.directory + "/cmdline"
            try line.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let disk = h.directory + "/disk.img"
        try h.run(["truncate", "-s", "\(96 << 20)", disk])
        func agent(_ tag: String) throws -> Harness.Result {
            try h.run(
                [
                    ControlPlane.bin, "agent", "--cmdline", try cmdline(), "--device", disk, "--attempts", "3",
                    "--task-file", h.directory + "/task-\(tag).json", "--bind", Self.address, "--state-dir",
                    h.directory + "/agent-state-\(tag)",
                ],
                timeout: 180,
                check: false
            )
        }

        // Commissioning, through the site: the region never hears from the machine itself.
        try cp.cli([
            "machine", "enroll", "a1", "--mac", Self.mac, "--bmc", "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)",
            "--bmc-password-file", sim.passwordFile, "--site", "site-a", "--commission",
        ])
        let commission = try agent("commission")
        #expect(commission.status == 0, "\(commission.stderr)")
        try cp.waitFor("a1", "ready")
        #expect(try cp.machine("a1")["inventory"] as? [String: Any] != nil)

        // A deploy: the image comes from the site's cache, pulled from the region once.
        let raw = h.directory + "/img.raw"
        try h.run(["bash", "-c", "head -c 8388608 /dev/urandom > '\(raw)'"])
        try h.run(["bash", "-c", "printf 'label: gpt\\nstart=2048, type=L\\n' | sfdisk -q '\(raw)'"])
        try cp.cli(["image", "add", "img-1", raw])
        try cp.cli(["project", "create", "p"])
        try cp.cli(["machine", "deploy", "a1", "--image", "img-1", "--project", "p"])
        let deploy = try agent("deploy")
        #expect(deploy.status == 0, "\(deploy.stderr)")
        // Booted from its disk, the OS reports in through the site (relayed, as the agent's
        // calls are): from another address of the site it is refused; from its own, deployed.
        try cp.waitFor("a1", "deploying/os")
        let deployTask =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: h.directory + "/task-deploy.json"))
            ) as? [String: Any]
        let osToken = try #require(deployTask?["osToken"] as? String)
        let osReady = #"{"bootID":"b1"}"#
        let siteChannel = "https://127.0.0.1:\(agentPort)"
        let stranger = try cp.agent(
            "/os/v1/ready",
            mac: Self.mac,
            token: osToken,
            osReady,
            from: Self.strangerAddress,
            url: siteChannel
        )
        #expect(stranger.0 == 403, "\(stranger)")
        let reported = try cp.agent(
            "/os/v1/ready",
            mac: Self.mac,
            token: osToken,
            osReady,
            from: Self.address,
            url: siteChannel
        )
        #expect(reported.0 == 200, "\(reported)")
        try cp.waitFor("a1", "deployed")
        let imageSHA = String(try h.run(["sha256sum", raw]).stdout.prefix(64))
        let partition = String(
            try h.run(["bash", "-c", "tail -c +\((1 << 20) + 1) '\(disk)' | head -c \(6 << 20) | sha256sum"]).stdout
                .prefix(64)
        )
        let expected = String(
            try h.run(["bash", "-c", "tail -c +\((1 << 20) + 1) '\(raw)' | head -c \(6 << 20) | sha256sum"]).stdout
                .prefix(64)
        )
        #expect(partition == expected, "the disk does not hold the image")
        #expect(FileManager.default.fileExists(atPath: dir + "/cache/" + imageSHA), "not in the site's cache")
        // Deployed: the site boots it from its disk once the region's list says so.
        try h.waitUntil("the site's disk script", timeout: 30, interval: 0.2) {
            try script(Self.mac, from: Self.address).contains("boots its local disk")
        }

        // What the site does not do: speak for a machine that is not its own (the region
        // refuses: the stranger is enrolled without a site), or for an address it did not lease.
        try cp.cli([
            "machine", "enroll", "a2", "--mac", Self.strangerMAC, "--bmc",
            "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)", "--bmc-password-file", sim.passwordFile,
        ])
        let siteAgent = "https://127.0.0.1:\(agentPort)"
        func post(_ path: String, from: String, token: String? = nil, _ body: String) throws -> (Int, String) {
            try cp.agent(path, mac: Self.mac, token: token, body, from: from, url: siteAgent)
        }
        let hello = #"{"agentVersion":"stand-in","nonce":"0123456789abcdef0123"}"#
        let (strangerStatus, strangerBody) = try post("/agent/v1/hello", from: Self.strangerAddress, hello)
        #expect(strangerStatus == 403 && strangerBody.contains("no machine of site site-a"), "\(strangerBody)")
        let (anonStatus, _) = try post("/agent/v1/hello", from: "127.0.0.1", hello)
        #expect(anonStatus == 403)
        // Images: no token, 401; a made-up one, 403.
        func image(token: String?) throws -> String {
            try h.run(
                ["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{http_code}", "--interface", Self.address]
                    + (token.map { ["-H", "Authorization: Bearer \($0)"] } ?? [])
                    + ["https://127.0.0.1:\(agentPort)/images/\(imageSHA)"],
                timeout: 15
            ).stdout
        }
        #expect(try image(token: nil) == "401")
        #expect(try image(token: "a1.1.1.made-up") == "403")
        // The deploy's own token is spent: its step is over.
        let task =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: h.directory + "/task-deploy.json"))
            )
            as? [String: Any]
        #expect(try image(token: try #require(task?["token"] as? String)) == "403")
        // An admin token opens images at the region, never at a site.
        #expect(try image(token: cp.adminToken) == "403")

        // Released, and the region goes away during the wipe: the agent's reports wait at the
        // site (its token known from the hello the site relayed), and reach the region, in
        // order, when it is back; the release then completes.
        try cp.cli(["machine", "release", "a1"])
        var (status, body) = (0, "")
        try h.waitUntil("the wipe's hello through the site", timeout: 90, interval: 0.3) {
            (status, body) = try post(
                "/agent/v1/hello",
                from: Self.address,
                ControlPlane.hello(nonce: "fedcba9876543210fe")
            )
            return status != 503
        }
        let wipe = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
        #expect(status == 200 && wipe?["kind"] as? String == "wipe", "\(status) \(body)")
        let wipeToken = try #require(wipe?["token"] as? String)
        let region = try #require(cp.server)
        kill(region.processIdentifier, SIGKILL)
        region.waitUntilExit()
        let progress = #"{"stage":"wipe","bytesDone":1048576,"bytesTotal":3145728}"#
        // A token the site never saw is not kept: the region's absence, as before.
        let (madeUp, _) = try post("/agent/v1/progress", from: Self.address, token: "a1.9.9.made-up", progress)
        #expect(madeUp == 503)
        // Nor the right token from another address.
        let (elsewhere, _) = try post("/agent/v1/progress", from: "127.0.0.1", token: wipeToken, progress)
        #expect(elsewhere == 403)
        let (kept1, keptBody1) = try post("/agent/v1/progress", from: Self.address, token: wipeToken, progress)
        #expect(kept1 == 200, "\(keptBody1)")
        let (kept2, keptBody2) = try post("/agent/v1/done", from: Self.address, token: wipeToken, #"{"ok":true}"#)
        #expect(kept2 == 200, "\(keptBody2)")
        func waiting() throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: dir + "/agent-reports").filter { $0.hasSuffix(".json") }
        }
        #expect(try waiting().count == 2)
        // A new boot's hello waits behind them (503, which agents retry).
        let (behind, behindBody) = try post(
            "/agent/v1/hello",
            from: Self.address,
            ControlPlane.hello(nonce: "fedcba9876543210fe")
        )
        #expect(behind == 503 && behindBody.contains("reports of this machine wait"), "\(behindBody)")
        try cp.start(log: "server-2.log")
        // Ready only once the wipe's done reached the region (nothing else finishes a release).
        try cp.waitFor("a1", "ready", timeout: 90)
        #expect(try waiting().isEmpty)
        let delivered = h.read("site.log").split(separator: "\n").filter { $0.contains("agent report delivered") }
        #expect(
            delivered.count == 2 && delivered[0].contains("progress") && delivered[1].contains("done"),
            "\(delivered)"
        )
        site.terminate()
        try h.waitUntil("the site agent to stop", timeout: 20) { !site.isRunning }
        #expect(site.terminationStatus == 0, "\(h.read("site.log"))")
    }
}
