import Foundation
import TestSupport
import Testing

/// `farrier sim` against two real `farrier server` replicas on one PostgreSQL 15: a small
/// simulated fleet is enrolled from one file and commissioned (two of its BMCs refuse their
/// password and fail), deployed by `--count` into two projects while one replica is killed, and
/// released in one call; the simulator's counters show what the machines did.
@Suite(.serialized, .enabled(if: getuid() == 0, "needs root (PostgreSQL runs as nobody)"))
struct SimTests {
    static let bin = Harness.farrierBinary

    /// Starts `farrier sim` (booting from the server's HTTP port `http`) and waits until it has
    /// written its files: the server configuration, the BMC password, and the enrollment list.
    static func startSim(
        _ h: Harness,
        machines: Int,
        redfish: Int,
        http: Int,
        firstAddress: String,
        flags: [String]
    ) throws -> (sim: Process, config: String, enroll: String, password: String) {
        let config = h.directory + "/sim.yaml"
        let enroll = h.directory + "/enroll.yaml"
        let password = h.directory + "/bmc.pw"
        let sim = try h.start(
            [
                bin, "sim", "--machines", "\(machines)", "--redfish-listen", "127.0.0.1:\(redfish)", "--boot-url",
                "http://127.0.0.1:\(http)", "--first-address", firstAddress, "--boot-seconds", "0.3",
                "--poll-seconds", "1", "--write-config", config, "--write-enroll", enroll, "--write-password", password,
            ] + flags,
            log: "sim.log"
        )
        let last = String(format: "sim-%05d", machines)
        try h.waitUntil("the simulator's files", timeout: 30) {
            guard sim.isRunning else { throw Harness.CommandError(description: "sim exited: \(h.read("sim.log"))") }
            // The simulator writes the reservations, the password, then the enrollment file.
            return FileManager.default.fileExists(atPath: config) && FileManager.default.fileExists(atPath: password)
                && (try? String(contentsOfFile: enroll, encoding: .utf8))?.contains(last) == true
        }
        return (sim, config, enroll, password)
    }

    @Test func aSimulatedFleetGoesThroughItsLifecycleAcrossReplicas() throws {
        let h = try Harness("sim")
        let pg = try PostgresServer(h)
        defer {
            pg.stop()
            h.cleanup()
        }
        let url = try pg.createDatabase("farrier")
        // Below Linux's ephemeral ports (32768 and up), which outgoing connections may hold.
        let base = Int.random(in: 200..<260) * 100
        let (grpcA, grpcB, httpA, redfish) = ("127.0.0.1:\(base)", "127.0.0.1:\(base + 1)", base + 2, base + 10)
        let (sim, config, enroll, password) = try Self.startSim(
            h,
            machines: 12,
            redfish: redfish,
            http: httpA,
            firstAddress: "127.77.0.1",
            flags: ["--agent-seconds", "0.5", "--wrong-password-every", "6", "--image-share", "0.5"]
        )
        #expect(try String(contentsOfFile: config, encoding: .utf8).contains("02:fa:00:00:00:0c=127.77.0.12"))

        let data = h.directory + "/data"
        func replica(_ r: Int, log: String) throws -> Process {
            try h.start(
                [
                    Self.bin, "server", "--data-dir", data, "--log-level", "info", "--grpc-listen",
                    r == 0 ? grpcA : grpcB,
                    "--http-listen", "127.0.0.1:\(httpA + r * 3)", "--agent-listen", "127.0.0.1:\(httpA + 1 + r * 3)",
                    "--metrics-listen", "127.0.0.1:\(httpA + 2 + r * 3)", "--tftp-listen", "",
                    "--dhcp-mode", "off", "--config", config, "--database", url, "--lifecycle-max-deploys", "4",
                    "--lifecycle-max-wipes", "4", "--lifecycle-claim-ttl", "5",
                ],
                log: log
            )
        }
        let a = try replica(0, log: "server-a.log")
        try h.waitUntil("replica A's admin token", timeout: 30) {
            guard a.isRunning else {
                throw Harness.CommandError(description: "server exited: \(h.read("server-a.log"))")
            }
            return (try? h.adminToken(dataDir: data)) != nil
        }
        let b = try replica(1, log: "server-b.log")
        let token = try h.adminToken(dataDir: data)
        let both = "\(grpcA),\(grpcB)"
        @discardableResult
        func cli(_ args: [String], server: String = both, check: Bool = true) throws -> Harness.Result {
            try h.run([Self.bin] + args + ["--server", server, "--token", token], timeout: 120, check: check)
        }
        for server in [grpcA, grpcB] {
            try h.waitUntil("\(server) to answer", timeout: 30, interval: 0.2) {
                (try? cli(["token", "whoami"], server: server)) != nil
            }
        }
        func machines(_ args: [String] = []) throws -> [[String: Any]] {
            let out = try cli(["machine", "list", "-o", "json"] + args).stdout
            return try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
        }
        func count(_ state: String) throws -> Int { try machines().filter { $0["state"] as? String == state }.count }
        func stats() throws -> [String: Any] {
            let out = try h.run(["curl", "-sf", "http://127.0.0.1:\(redfish)/sim/v1/stats"], timeout: 10).stdout
            return try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] ?? [:]
        }

        // Enrolled from one file and commissioned: ten ready, the two whose BMC refuses the
        // password failed, saying so.
        let enrolled = try cli(["machine", "enroll", "--from", enroll, "--bmc-password-file", password, "--commission"])
        #expect(enrolled.stdout.contains("enrolled 12 of 12 machines"))
        try h.waitUntil("10 machines ready and 2 failed", timeout: 120, interval: 1) {
            try count("ready") == 10 && count("failed") == 2
        }
        let failed = try machines().filter { $0["state"] as? String == "failed" }
        #expect(Set(failed.compactMap { $0["name"] as? String }) == ["sim-00006", "sim-00012"])
        #expect(failed.allSatisfy { ($0["reason"] as? String ?? "").contains("authentication") }, "\(failed)")
        #expect(try machines().map { $0["name"] as? String ?? "" } == (1...12).map { String(format: "sim-%05d", $0) })
        #expect(try stats()["tasks"] as? [String: Int] == ["commission": 10])

        // Deployed by count into two projects; replica B is killed while they deploy, and A
        // finishes its machines once B's claims lapse.
        let image = h.directory + "/img.raw"
        try Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: URL(fileURLWithPath: image))
        try cli(["image", "add", "img", image])
        try cli(["project", "create", "p1"])
        try cli(["project", "create", "p2"])
        let d1 = try cli(["machine", "deploy", "--project", "p1", "--image", "img", "--count", "5"], server: grpcB)
        #expect(d1.stdout.contains("5 machines deploying"))
        #expect(try count("deploying") + count("deployed") == 5)
        kill(b.processIdentifier, SIGKILL)
        try cli(["machine", "deploy", "--project", "p2", "--image", "img", "--count", "5"], server: grpcA)
        let none = try cli(
            ["machine", "deploy", "--project", "p2", "--image", "img", "--count", "2"],
            server: grpcA,
            check: false
        )
        #expect(
            none.status != 0 && none.stderr.contains("deployed 0 of 2 machines")
                && none.stderr.contains("no ready machine"),
            "\(none.stderr)"
        )
        try h.waitUntil("10 machines deployed", timeout: 180, interval: 1) { try count("deployed") == 10 }
        #expect(try machines(["--project", "p1"]).count == 5)
        var s = try stats()
        #expect(s["deployed"] as? Int == 10)
        #expect((s["tasks"] as? [String: Int])?["deploy"] ?? 0 >= 10)
        #expect((s["imageBytes"] as? Int ?? 0) >= 10 * (1 << 19))
        #expect(s["helloRefusals"] as? Int == 0, "\(s)")

        // Released in one call (replica A alone now): the simulated disks are blank again.
        let names = try machines().filter { $0["state"] as? String == "deployed" }.compactMap { $0["name"] as? String }
        try cli(["machine", "release"] + names, server: grpcA)
        try h.waitUntil("10 machines ready again", timeout: 180, interval: 1) { try count("ready") == 10 }
        s = try stats()
        #expect(s["deployed"] as? Int == 0 && s["poweredOn"] as? Int == 0, "\(s)")
        #expect((s["tasks"] as? [String: Int])?["wipe"] ?? 0 >= 10)
        sim.terminate()
        try h.waitUntil("the simulator to end", timeout: 20) { !sim.isRunning }
        #expect(h.read("sim.log").contains("\"dones\""))
        _ = a
    }

    /// A simulated fleet behind two sites: each machine boots, says hello and downloads its
    /// image at its own site (`sim --site`), whose agent relays to the region (one server on
    /// SQLite) over its link. Commissioned and deployed through the sites; each site pulled
    /// the image once, and the region's timelines say which site each machine's boot went through.
    @Test func aSimulatedFleetBootsBehindItsSites() throws {
        let h = try Harness("sim-sites")
        defer { h.cleanup() }
        let base = Int.random(in: 200..<260) * 100
        let (grpc, http, agent, link, redfish) = ("127.0.0.1:\(base)", base + 2, base + 3, base + 5, base + 10)
        let sitePorts = [(base + 20, base + 30), (base + 21, base + 31)]
        let (sim, config, enroll, password) = try Self.startSim(
            h,
            machines: 6,
            redfish: redfish,
            http: http,
            firstAddress: "127.78.0.1",
            flags: ["--agent-seconds", "0.3"]
                + sitePorts.enumerated().flatMap {
                    ["--site", "site-\($0.offset + 1)=http://127.0.0.1:\($0.element.0)"]
                }
        )
        let enrollText = try String(contentsOfFile: enroll, encoding: .utf8)
        #expect(enrollText.components(separatedBy: "site: site-1").count == 4, "\(enrollText)")
        let data = h.directory + "/data"
        let region = try h.start(
            [
                Self.bin, "server", "--data-dir", data, "--log-level", "info", "--grpc-listen", grpc, "--http-listen",
                "127.0.0.1:\(http)", "--agent-listen", "127.0.0.1:\(agent)", "--tftp-listen", "", "--dhcp-mode", "off",
                "--site-listen", "127.0.0.1:\(link)", "--metrics-listen", "",
            ],
            log: "server.log"
        )
        try h.waitUntil("the region's admin token", timeout: 30) {
            guard region.isRunning else { throw Harness.CommandError(description: h.read("server.log")) }
            return (try? h.adminToken(dataDir: data)) != nil
        }
        let token = try h.adminToken(dataDir: data)
        @discardableResult
        func cli(_ args: [String]) throws -> Harness.Result {
            try h.run([Self.bin] + args + ["--server", grpc, "--token", token], timeout: 60)
        }
        try h.waitUntil("the region to answer", timeout: 30, interval: 0.2) { (try? cli(["token", "whoami"])) != nil }
        var sites: [Process] = []
        for (k, ports) in sitePorts.enumerated() {
            let name = "site-\(k + 1)"
            let added = try cli(["site", "add", name, "-o", "json"]).stdout
            let join = try #require(
                (try JSONSerialization.jsonObject(with: Data(added.utf8)) as? [String: Any])?["joinToken"] as? String
            )
            try h.run([
                "env", "-u", "FARRIER_TOKEN", "FARRIER_CONFIG_FILE=/nonexistent", Self.bin, "site", "join",
                "--join-token", join, "--name", name, "--data-dir", h.directory + "/" + name, "--server", grpc,
            ])
            sites.append(
                try h.start(
                    [
                        Self.bin, "site", "run", "--region", "127.0.0.1:\(link)", "--data-dir",
                        h.directory + "/" + name,
                        "--interval", "1", "--boot", "--config", config, "--dhcp-mode", "off", "--tftp-listen", "",
                        "--http-listen", "127.0.0.1:\(ports.0)", "--agent-listen", "127.0.0.1:\(ports.1)",
                        "--metrics-listen", "",
                    ],
                    log: name + ".log"
                )
            )
        }
        try h.waitUntil("both sites' links", timeout: 30, interval: 0.3) {
            let out = try cli(["site", "list", "-o", "json"]).stdout
            let list = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
            return list.filter { $0["link"] as? String == "up" }.count == 2
        }
        func count(_ state: String, site: String? = nil) throws -> Int {
            let out = try cli(
                ["machine", "list", "--state", state, "-o", "json"] + (site.map { ["--site", $0] } ?? [])
            )
            .stdout
            return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])?.count ?? 0
        }
        try cli(["machine", "enroll", "--from", enroll, "--bmc-password-file", password, "--commission"])
        try h.waitUntil("6 machines ready", timeout: 120, interval: 1) { try count("ready") == 6 }
        #expect(try count("ready", site: "site-1") == 3 && count("ready", site: "site-2") == 3)
        let image = h.directory + "/img.raw"
        try Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: image))
        try cli(["image", "add", "img", image])
        try cli(["project", "create", "p"])
        try cli(["machine", "deploy", "--project", "p", "--image", "img", "--count", "6"])
        try h.waitUntil("6 machines deployed", timeout: 120, interval: 1) { try count("deployed") == 6 }
        let stats = try JSONSerialization.jsonObject(
            with: Data(try h.run(["curl", "-sf", "http://127.0.0.1:\(redfish)/sim/v1/stats"]).stdout.utf8)
        )
        let s = try #require(stats as? [String: Any])
        #expect(s["deployed"] as? Int == 6 && s["helloRefusals"] as? Int == 0, "\(s)")
        #expect((s["imageBytes"] as? Int ?? 0) >= 6 * (1 << 20), "\(s)")
        // Each site holds the image in its cache (beside the region's iPXE binaries), pulled
        // from the region once: by its prefetch or by its first agent's download, whichever came
        // first. (The machines' agents download from their site's agent channel: the script the
        // site serves names no other.)
        let digest = String(try h.run(["sha256sum", image]).stdout.prefix(64))
        for (k, _) in sitePorts.enumerated() {
            let cache = try FileManager.default.contentsOfDirectory(atPath: h.directory + "/site-\(k + 1)/cache")
            #expect(cache.contains(digest), "\(cache)")
        }
        // The region sent the image twice over the links, once to each site.
        let sent = h.read("server.log").split(separator: "\n").filter {
            $0.contains("file sent to site") && $0.contains(digest)
        }
        #expect(sent.count == 2, "\(sent)")
        // The region's timelines come from the sites: sim-00001's from site-1, sim-00002's from site-2.
        for (name, site) in [("sim-00001", "site-1"), ("sim-00002", "site-2")] {
            let out = try cli(["machine", "show", name, "-o", "json"]).stdout
            #expect(out.contains("site=\(site)") && !out.contains("site=\(site == "site-1" ? "site-2" : "site-1")"))
        }
        sim.terminate()
        for p in sites { p.terminate() }
        try h.waitUntil("the simulator and the sites to end", timeout: 20) {
            !sim.isRunning && sites.allSatisfy { !$0.isRunning }
        }
    }

    /// A member's `release --wait` follows the release to its end, though the machine leaves
    /// the project when its wipe completes: the member can read how it ended, and nothing else
    /// about the machine now in the pool. One server on SQLite, two simulated machines.
    @Test func aMembersReleaseWaitEndsInSuccess() throws {
        let h = try Harness("sim-member")
        defer { h.cleanup() }
        let base = Int.random(in: 260..<320) * 100
        let (grpc, http, redfish) = ("127.0.0.1:\(base)", base + 2, base + 10)
        let (sim, config, enroll, password) = try Self.startSim(
            h,
            machines: 2,
            redfish: redfish,
            http: http,
            firstAddress: "127.78.0.1",
            flags: ["--agent-seconds", "2"]
        )
        let data = h.directory + "/data"
        let server = try h.start(
            [
                Self.bin, "server", "--data-dir", data, "--log-level", "info", "--grpc-listen", grpc,
                "--http-listen", "127.0.0.1:\(http)", "--agent-listen", "127.0.0.1:\(http + 1)", "--tftp-listen", "",
                "--dhcp-mode", "off", "--config", config, "--metrics-listen", "",
            ],
            log: "server.log"
        )
        try h.waitUntil("the admin token", timeout: 30) {
            guard server.isRunning else {
                throw Harness.CommandError(description: "server exited: \(h.read("server.log"))")
            }
            return (try? h.adminToken(dataDir: data)) != nil
        }
        let admin = try h.adminToken(dataDir: data)
        @discardableResult
        func cli(_ args: [String], token: String = admin, check: Bool = true) throws -> Harness.Result {
            try h.run([Self.bin] + args + ["--server", grpc, "--token", token], timeout: 120, check: check)
        }
        try h.waitUntil("the API", timeout: 30, interval: 0.2) { (try? cli(["token", "whoami"])) != nil }
        func state(_ name: String, token: String = admin) throws -> String {
            let out = try cli(["machine", "show", name, "-o", "json"], token: token).stdout
            let m = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] ?? [:]
            return m["state"] as? String ?? "?"
        }
        try cli(["machine", "enroll", "--from", enroll, "--bmc-password-file", password, "--commission"])
        try h.waitUntil("both machines ready", timeout: 120, interval: 1) {
            try state("sim-00001") == "ready" && state("sim-00002") == "ready"
        }
        let image = h.directory + "/img.raw"
        try Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: image))
        try cli(["image", "add", "img", image])
        try cli(["project", "create", "p1"])
        try cli(["project", "create", "p2"])
        let member = try cli(["token", "create", "--project", "p1"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        let other = try cli(["token", "create", "--project", "p2"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        try cli(["machine", "deploy", "sim-00001", "--image", "img", "--wait"], token: member)
        #expect(try state("sim-00001", token: member) == "deployed")

        // The member's release --wait follows the wipe to its end and succeeds.
        let released = try cli(
            ["machine", "release", "sim-00001", "--wait", "-o", "json"],
            token: member,
            check: false
        )
        #expect(released.status == 0, "release --wait: \(released.stdout) \(released.stderr)")
        // Progress lines while it waits, then the machine as JSON.
        let json = released.stdout.range(of: "\n{").map { String(released.stdout[$0.lowerBound...]) } ?? released.stdout
        let end = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        #expect(end?["state"] as? String == "ready", "\(released.stdout)")
        #expect(released.stdout.contains("releasing"), "the wait showed no progress: \(released.stdout)")
        #expect(try state("sim-00001") == "ready")

        // Afterwards the member reads how it ended, and nothing more: no inventory, no
        // project, no place in their list, no action; another project sees nothing at all.
        let view =
            try JSONSerialization.jsonObject(
                with: Data(try cli(["machine", "show", "sim-00001", "-o", "json"], token: member).stdout.utf8)
            ) as? [String: Any] ?? [:]
        #expect(view["state"] as? String == "ready" && view["inventory"] == nil && view["mac"] as? String ?? "" == "")
        let listed = try cli(["machine", "list", "-o", "json"], token: member).stdout
        #expect(!listed.contains("sim-00001"), "\(listed)")
        let power = try cli(["machine", "power", "sim-00001", "on"], token: member, check: false)
        #expect(power.status != 0 && power.stderr.contains("no machine named"), "\(power.stderr)")
        let seen = try cli(["machine", "show", "sim-00001"], token: other, check: false)
        #expect(seen.status != 0 && seen.stderr.contains("no machine named"), "\(seen.stderr)")

        // Once the machine moves on (deployed into another project), the former one loses even that.
        try cli(["machine", "deploy", "sim-00001", "--image", "img"], token: other)
        let gone = try cli(["machine", "show", "sim-00001"], token: member, check: false)
        #expect(gone.status != 0 && gone.stderr.contains("no machine named"), "\(gone.stderr)")
        sim.terminate()
        server.terminate()
    }
}
