import Foundation
import TestSupport
import Testing

/// The control plane through a real server process, the CLI and real BMCs (ipmi_sim), with a
/// stand-in agent: lifecycle, next boot (iPXE script and BMC boot device), projects and tokens,
/// tenant isolation RPC by RPC, bad requests, timeouts, and kill -9 at every step.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim and ipmitool"))
struct ControlPlaneTests {
    static let mac1 = "52:54:00:cc:00:01", mac2 = "52:54:00:cc:00:02"

    /// Two ipmi_sim BMCs, two machines enrolled and commissioned to `ready` through the agent.
    func setUp(_ h: Harness, flags: [String]) throws -> (ControlPlane, IPMISimulator, IPMISimulator) {
        let s1 = try IPMISimulator(h, name: "bmc1")
        let s2 = try IPMISimulator(h, name: "bmc2")
        try s1.start()
        try s2.start()
        let cp = ControlPlane(h, flags: flags)
        try cp.start()
        for (name, mac, sim) in [("m1", Self.mac1, s1), ("m2", Self.mac2, s2)] {
            try cp.cli([
                "machine", "enroll", name, "--mac", mac, "--bmc", "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)",
                "--bmc-password-file", sim.passwordFile, "--commission",
            ])
        }
        for (name, mac, sim) in [("m1", Self.mac1, s1), ("m2", Self.mac2, s2)] {
            // Commissioning: the reconciler sets PXE for the next boot and powers on.
            try cp.waitFor(name, "commissioning/agent")
            #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("on"))
            #expect(try sim.ipmitool(["chassis", "bootparam", "get", "5"]).contains("Force PXE"))
            let task = try cp.runAgent(mac: mac)
            #expect(task["kind"] as? String == "commission")
            // Finish: powered off, ready, with the inventory.
            try cp.waitFor(name, "ready")
            #expect(try sim.ipmitool(["chassis", "power", "status"]).contains("off"))
        }
        return (cp, s1, s2)
    }

    /// The state in SQLite (the default) or in a PostgreSQL 15 of the test's own (`--database`).
    static let databases = ["sqlite", "postgres"]

    /// A PostgreSQL server for a test on "postgres", and the flags that point farrier at it.
    func database(_ kind: String, _ h: Harness) throws -> (PostgresServer?, [String]) {
        guard kind == "postgres" else { return (nil, []) }
        let pg = try PostgresServer(h)
        return (pg, ["--database", try pg.createDatabase("farrier")])
    }

    @Test(arguments: Self.databases) func lifecycleTenancyAndBadRequests(_ databaseKind: String) throws {
        let h = try Harness("control-plane")
        let (pg, dbFlags) = try database(databaseKind, h)
        defer {
            pg?.stop()
            h.cleanup()
        }
        let (cp, s1, s2) = try setUp(
            h,
            flags: ["--lifecycle-max-deploys", "1", "--lifecycle-step-timeout", "rescuing=10"] + dbFlags
        )
        let m1 = try cp.machine("m1")
        let inventory = m1["inventory"] as? [String: Any]
        #expect(inventory?["cores"] as? Int == 4)
        #expect((inventory?["disks"] as? [[String: Any]])?.first?["model"] as? String == "QEMU HARDDISK")
        #expect(m1["nextBoot"] as? String == "wait")

        // Admin: projects, tokens, an image.
        try cp.cli(["project", "create", "team-a", "--require-tag", "env"])
        try cp.cli(["project", "create", "team-b"])
        let tokenA = try cp.cli(["token", "create", "--project", "team-a"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        let tokenB = try cp.cli(["token", "create", "--project", "team-b"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        #expect(tokenA.hasPrefix("fa_") && tokenA != tokenB)
        // Tokens are stored hashed: the secret is nowhere in the database.
        let db =
            try pg.map {
                Data(
                    try h.run(["pg_dump", "-h", "127.0.0.1", "-p", "\($0.port)", "-U", "farrier", "farrier"]).stdout
                        .utf8
                )
            }
            ?? Data(contentsOf: URL(fileURLWithPath: cp.data + "/farrier.sqlite"))
        #expect(db.count > 1000 && db.range(of: Data(tokenA.utf8)) == nil)
        let image = h.directory + "/img.raw"
        try Data((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: URL(fileURLWithPath: image))
        try cp.cli(["image", "add", "debian-12", image, "--os", "debian-12"])

        // A member's deploy lacking the project's required tag is refused, and changes nothing.
        let refused = try cp.cli(["machine", "deploy", "--image", "debian-12"], token: tokenA, check: false)
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("requires the tags env"))
        #expect(try cp.state("m1") == "ready" && cp.state("m2") == "ready")

        // Deploy by constraints: each project gets one machine; deploys run one at a time.
        try h.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", h.directory + "/id"])
        let keyFile = h.directory + "/id.pub"
        let a = try cp.json(
            [
                "machine", "deploy", "--image", "debian-12", "--tag", "env=dev", "--min-cores", "2", "--ssh-key",
                keyFile,
            ],
            token: tokenA
        )
        let nameA = try #require(a["name"] as? String)
        let b = try cp.json(["machine", "deploy", "--image", "debian-12"], token: tokenB)
        let nameB = try #require(b["name"] as? String)
        #expect(nameA != nameB)
        let (macA, simA) = nameA == "m1" ? (Self.mac1, s1) : (Self.mac2, s2)
        let (macB, simB) = nameA == "m1" ? (Self.mac2, s2) : (Self.mac1, s1)
        try cp.waitFor(nameA, "deploying/agent")
        #expect(try cp.state(nameB) == "deploying/queued")  // max-deploys 1
        // Being deployed: the script boots the ramdisk, never the disk.
        #expect(try cp.script(mac: macA).contains("farrier.mode=agent"))
        // The script carries no credential: the agent channel's URL and certificate fingerprint only.
        let script = try cp.script(mac: macA)
        #expect(script.contains("farrier.cert=sha256:") && script.contains("farrier.url=https://"))
        #expect(!script.contains("token"), "\(script)")
        // From any other address the script names nothing and boots nothing.
        let elsewhere = try cp.script(mac: macA, from: "127.0.0.1")
        #expect(!elsewhere.contains(nameA) && !elsewhere.contains("deploying") && !elsewhere.contains("farrier.mode"))
        #expect(elsewhere.contains("not known to Farrier"))
        // Nor may another address say hello for it.
        let (foreign, _) = try cp.agent(
            "/agent/v1/hello",
            mac: macA,
            token: nil,
            ControlPlane.hello(nonce: UUID().uuidString),
            from: "127.0.0.1"
        )
        #expect(foreign == 403)
        #expect(try cp.state(nameA) == "deploying/agent")
        let task = try cp.runAgent(
            mac: macA,
            withTask: { task in
                #expect(task["kind"] as? String == "deploy")
                let img = try #require(task["image"] as? [String: Any])
                let path = try #require(img["path"] as? String)
                let token = try #require(task["token"] as? String)
                // The image is served with Range, to this agent (its token, its address) only.
                func get(_ args: [String]) throws -> String {
                    try h.run(
                        ["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{http_code}", "-r", "0-1023"] + args + [
                            cp.agentURL + path
                        ]
                    ).stdout
                }
                #expect(
                    try get(["--interface", ControlPlane.address(of: macA), "-H", "Authorization: Bearer \(token)"])
                        == "206"
                )
                #expect(try get(["--interface", "127.0.0.1", "-H", "Authorization: Bearer \(token)"]) == "403")
                #expect(try get(["--interface", ControlPlane.address(of: macA)]) == "401")
                // A second agent in the same boot (another nonce) is refused; the first keeps its token.
                let (again, body) = try cp.agent(
                    "/agent/v1/hello",
                    mac: macA,
                    token: nil,
                    ControlPlane.hello(nonce: UUID().uuidString)
                )
                #expect(again == 409 && body.contains("already said hello"), "\(again) \(body)")
                // The seed for the config drive is in the task, not behind a URL.
                let seed = try #require(task["seed"] as? [String: Any])
                #expect((seed["metaData"] as? String)?.contains("instance-id:") == true)
            }
        )
        #expect(task["kind"] as? String == "deploy")
        try cp.waitFor(nameA, "deployed")
        // Deployed: disk persistently, and the script boots the disk too.
        #expect(try simA.ipmitool(["chassis", "bootparam", "get", "5"]).contains("Hard-Drive"))
        #expect(try cp.script(mac: macA).contains("sanboot"))
        #expect(try cp.machine(nameA)["project"] as? String == "team-a")
        // B's deploy started only now.
        try cp.waitFor(nameB, "deploying/agent")
        try cp.runAgent(mac: macB)
        try cp.waitFor(nameB, "deployed")
        _ = simB

        // The finished step's agent token is dead.
        #expect(try !cp.offersRamdisk(mac: macA))

        // Tenant isolation, RPC by RPC: member A on B's machine gets NOT_FOUND or PERMISSION_DENIED.
        let before = try cp.machine(nameB)
        let probes: [[String]] = [
            ["machine", "show", nameB], ["machine", "power", nameB], ["machine", "power", nameB, "off"],
            ["machine", "bootdev", nameB, "pxe"], ["machine", "release", nameB], ["machine", "rescue", nameB],
            ["machine", "exit-rescue", nameB], ["machine", "restart", nameB], ["machine", "retry", nameB],
            ["machine", "abort", nameB], ["machine", "update", nameB, "--label", "x=y"], ["machine", "delete", nameB],
            ["machine", "commission", nameB], ["machine", "deploy", nameB, "--image", "debian-12", "--tag", "env=x"],
            [
                "machine", "enroll", nameB, "--mac", macB, "--bmc", "ipmi://a@127.0.0.1", "--bmc-password-file",
                s1.passwordFile,
            ],
            ["machine", "list", "--project", "team-b"], ["project", "show", "team-b"], ["project", "list"],
            ["token", "list"], ["token", "create", "--project", "team-a"], ["image", "rm", "debian-12"],
        ]
        for probe in probes {
            let r = try cp.cli(probe, token: tokenA, check: false)
            #expect(r.status != 0, "member A ran \(probe)")
            #expect(r.stderr.contains("notFound") || r.stderr.contains("permissionDenied"), "\(probe): \(r.stderr)")
        }
        // Console (a stream) and watch (a stream) too.
        let console = try h.run(
            [
                "bash", "-c", "echo | \"$0\" machine console \"$1\" --server \"$2\" --token \"$3\"", ControlPlane.bin,
                nameB, cp.grpc, tokenA,
            ],
            timeout: 30,
            check: false
        )
        #expect(console.status != 0 && console.stderr.contains("notFound"), "\(console.stderr)")
        let watch = try cp.cli(["machine", "watch", nameB], token: tokenA, check: false)
        #expect(watch.status != 0 && watch.stderr.contains("notFound"))
        // Lists show only the member's own.
        let listA = try cp.cli(["machine", "list", "-o", "json"], token: tokenA).stdout
        #expect(listA.contains("\"\(nameA)\"") && !listA.contains("\"\(nameB)\""))
        // A member sees their machine, not its BMC, and no timeline from before their tenure;
        // the admin sees both.
        let asMember = try cp.json(["machine", "show", nameA], token: tokenA)
        let asAdmin = try cp.json(["machine", "show", nameA])
        #expect(
            asMember["bmc"] == nil || (asMember["bmc"] as? String ?? "").isEmpty,
            "member sees the BMC: \(asMember["bmc"] ?? "")"
        )
        #expect((asAdmin["bmc"] as? String ?? "").hasPrefix("ipmi://"), "\(asAdmin["bmc"] ?? "")")
        let adminTimeline = asAdmin["timeline"] as? [[String: Any]] ?? []
        let memberTimeline = asMember["timeline"] as? [[String: Any]] ?? []
        #expect(
            memberTimeline.count < adminTimeline.count,
            "member \(memberTimeline.count), admin \(adminTimeline.count) events"
        )
        // Nothing about B changed.
        let after = try cp.machine(nameB)
        #expect(after["state"] as? String == before["state"] as? String)
        #expect((after["labels"] as? [String: String]) == (before["labels"] as? [String: String]))
        #expect(try simB.ipmitool(["chassis", "power", "status"]).contains("on"))
        // Unauthenticated and forged tokens are refused.
        #expect(try cp.cli(["machine", "list"], token: "fa_forged", check: false).stderr.contains("not valid"))

        // Bad requests: precise errors, nothing changed.
        let bad: [([String], String)] = [
            (["machine", "update", nameA, "--label", "bad key=v"], "may only contain"),
            (["machine", "update", nameA, "--tag", "k=v"], "needs an admin token"),
            (["machine", "update", nameA, "--label", "k=" + String(repeating: "v", count: 300)], "longer than 255"),
            (["machine", "deploy", "--image", "no-such-image", "--tag", "env=x"], "no image named 'no-such-image'"),
            (["machine", "show", String(repeating: "x", count: 200)], "longer than 100"),
            // Enumerated arguments: the CLI refuses them itself, naming the valid values (the
            // server's own refusal of the same values is in APITests).
            (["machine", "release", nameA, "--wipe", "sideways"], "Please provide one of 'quick' and 'full'"),
            (["machine", "list", "--state", "sleeping"], "- exiting-rescue"),
        ]
        for (args, message) in bad {
            let r = try cp.cli(args, token: tokenA, check: false)
            #expect(r.status != 0 && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        let badAdmin: [([String], String)] = [
            (
                [
                    "machine", "enroll", "Bad_Name", "--mac", "52:54:00:cc:00:09", "--bmc", "ipmi://a@127.0.0.1",
                    "--bmc-password-file", s1.passwordFile,
                ], "may only contain"
            ),
            (["project", "create", "x-"], "must not start or end"),
            (["token", "create", "--role", "root"], "Please provide one of 'admin' and 'member'"),
            (["machine", "deploy", "--image", "debian-12", "--project", "nope"], "no project named 'nope'"),
            (
                ["machine", "deploy", nameA, "--image", "debian-12", "--project", "team-a", "--tag", "env=x"],
                "already deployed"
            ),
            (
                ["machine", "deploy", "--image", "debian-12", "--project", "team-b", "--min-cores", "64"],
                "no ready machine"
            ),
            (["image", "add", "gz", image, "--format", "raw.gz"], "bytes are not compressed"),
            // Store errors end the call with their code (the API's one error mapping).
            (["project", "rm", "team-a"], "failedPrecondition: project 'team-a' still has 1 machine"),
            (["project", "create", "team-a"], "alreadyExists: project 'team-a' already exists"),
        ]
        for (args, message) in badAdmin {
            let r = try cp.cli(args, check: false)
            #expect(r.status != 0 && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        #expect(try cp.state(nameA) == "deployed")
        #expect(try cp.json(["image", "show", "debian-12"])["name"] as? String == "debian-12")

        // Rescue with no agent answering times out (10 s: the rescue with the agent below must finish
        // within it on two cores shared with the lab's VMs) into failed; retry runs it again;
        // abort goes back to deployed.
        try cp.cli(["machine", "rescue", nameA], token: tokenA)
        try cp.waitFor(nameA, "failed", timeout: 30)
        let failed = try cp.machine(nameA)
        #expect(failed["failedStep"] as? String == "rescuing")
        #expect((failed["reason"] as? String ?? "").contains("timed out"))
        let waitFail = try cp.cli(
            ["machine", "retry", nameA, "--wait", "--timeout", "30"],
            token: tokenA,
            check: false
        )
        #expect(waitFail.status != 0 && waitFail.stderr.contains("failed in rescuing"), "\(waitFail.stderr)")
        try cp.cli(["machine", "abort", nameA], token: tokenA)
        #expect(try cp.state(nameA) == "deployed")

        // Rescue with the agent, exit rescue, then release (wipe) back to the pool.
        try cp.cli(["machine", "rescue", nameA], token: tokenA)
        #expect(try cp.runAgent(mac: macA)["kind"] as? String == "rescue")
        try cp.waitFor(nameA, "rescue")
        #expect(try cp.script(mac: macA).contains("farrier.mode=rescue"))
        // Leaving rescue boots the disk; --wait waits for the OS to report in from it.
        let exiting = try h.start(
            [
                ControlPlane.bin, "machine", "exit-rescue", nameA, "--wait", "--timeout", "60", "--server", cp.grpc,
                "--token", tokenA,
            ] + cp.clientFlags,
            log: "exit-rescue.log"
        )
        try cp.reportOS(mac: macA, before: { #expect(exiting.isRunning, "\(h.read("exit-rescue.log"))") })
        try h.waitUntil("exit-rescue --wait to end", timeout: 60) { !exiting.isRunning }
        #expect(exiting.terminationStatus == 0, "\(h.read("exit-rescue.log"))")
        #expect(try cp.state(nameA) == "deployed")
        try cp.cli(["machine", "release", nameA], token: tokenA)
        #expect(try cp.runAgent(mac: macA)["kind"] as? String == "wipe")
        try cp.waitFor(nameA, "ready")
        #expect(try simA.ipmitool(["chassis", "power", "status"]).contains("off"))
        let released = try cp.machine(nameA)
        #expect(released["project"] == nil && released["deployment"] == nil)
        // Released: member A reads how the release ended and nothing else (no MAC, no BMC, no
        // project), does not list it, and cannot act on it.
        let releasedView = try cp.json(["machine", "show", nameA], token: tokenA)
        #expect(
            releasedView["state"] as? String == "ready" && releasedView["mac"] as? String ?? "" == ""
                && releasedView["bmc"] == nil
        )
        #expect(!(try cp.cli(["machine", "list"], token: tokenA).stdout.contains(nameA)))
        #expect(try cp.cli(["machine", "rescue", nameA], token: tokenA, check: false).stderr.contains("notFound"))

        // The event stream replays the story in order (then follows live; `timeout` ends it).
        let events = try h.run(
            [
                "timeout", "8", ControlPlane.bin, "machine", "watch", nameA, "--after", "1", "--server", cp.grpc,
                "--token", cp.adminToken,
            ],
            timeout: 20,
            check: false
        ).stdout
        let states = events.split(separator: "\n").compactMap { line -> String? in
            guard line.contains("transition:") else { return nil }
            return line.split(separator: " ").dropFirst(3).first.map(String.init)
        }
        var order = ["deploying/queued", "deployed", "rescuing/queued", "failed", "deployed", "ready"].makeIterator()
        var want = order.next()
        for s in states where s == want { want = order.next() }
        #expect(want == nil, "transitions seen: \(states)")
    }

    /// kill -9 of the server at every step of a deploy and a release: after a restart the work
    /// resumes, the machine ends where it should, and the only action ever repeated is the one
    /// that was in flight.
    /// Issue 18 points 2 and 3 against ipmi_sim: the power sync reads every enrolled BMC, marks a
    /// ready machine powered on behind Farrier's back (an event and a metric, nothing done), and
    /// a BMC that does not answer; maintenance holds a machine out of every step, the power sync
    /// and allocation, only admins set it, and it starts only between steps.
    @Test(arguments: Self.databases) func powerSyncAndMaintenance(_ databaseKind: String) throws {
        let h = try Harness("power-sync")
        let (pg, dbFlags) = try database(databaseKind, h)
        defer {
            pg?.stop()
            h.cleanup()
        }
        let (cp, s1, _) = try setUp(h, flags: ["--power-sync-interval", "1"] + dbFlags)
        func power(_ name: String) throws -> [String: Any] { try cp.machine(name)["power"] as? [String: Any] ?? [:] }
        func metric(_ series: String) throws -> Int? {
            Harness.metric(try h.run(["curl", "-sf", cp.metricsURL]).stdout, series)
        }

        // Read: ready machines are off, as their state expects.
        try h.waitUntil("m1's power read", timeout: 30, interval: 0.5) {
            try power("m1")["state"] as? String == "off" && power("m1")["read"] != nil
        }
        #expect(try power("m1")["expected"] == nil)

        // Powered on behind Farrier's back: drift, an event, a metric; nothing is done about it.
        _ = try s1.ipmitool(["chassis", "power", "on"])
        try h.waitUntil("m1's drift", timeout: 30, interval: 0.5) { try power("m1")["expected"] as? String == "off" }
        #expect(try power("m1")["state"] as? String == "on")
        #expect(try cp.cli(["machine", "list"]).stdout.contains("on, expected off"))
        #expect(try cp.cli(["machine", "show", "m1"]).stdout.contains("DRIFT: its state expects off"))
        try h.waitUntil("the drift metric", timeout: 10, interval: 0.5) {
            try metric("farrier_power_drift_machines") == 1
        }
        let watched = try h.run(
            [
                "timeout", "8", ControlPlane.bin, "machine", "watch", "m1", "--after", "1", "--server", cp.grpc,
                "--token",
                cp.adminToken,
            ],
            timeout: 20,
            check: false
        ).stdout
        #expect(watched.contains("power drift: found on, but a ready machine should be off"), "\(watched)")
        #expect(try s1.ipmitool(["chassis", "power", "status"]).contains("on"))
        #expect(try cp.state("m1") == "ready")

        // A BMC nobody answers for: marked, with the error and since when (the error for admins).
        try cp.cli([
            "machine", "enroll", "m3", "--mac", "52:54:00:cc:00:09", "--bmc", "ipmi://admin@127.0.0.1:9",
            "--bmc-password-file", s1.passwordFile,
        ])
        try h.waitUntil("m3's BMC marked", timeout: 60, interval: 0.5) { try power("m3")["failingSince"] != nil }
        #expect(try (power("m3")["error"] as? String ?? "").contains("127.0.0.1:9"))
        #expect(try power("m3")["state"] as? String == "unknown")
        try h.waitUntil("the unreachable metric", timeout: 10, interval: 0.5) {
            try metric("farrier_bmc_unreachable_machines") == 1
        }

        // Maintenance: bad requests are refused with what to do, and change nothing.
        try cp.cli(["project", "create", "team-a"])
        let member = try cp.cli(["token", "create", "--project", "team-a"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        let noReason = try cp.cli(["machine", "maintenance", "on", "m1"], check: false)
        #expect(noReason.status == 64 && noReason.stderr.contains("maintenance needs a reason"), "\(noReason.stderr)")
        let asMember = try cp.cli(["machine", "maintenance", "on", "m1", "--reason", "x"], token: member, check: false)
        #expect(
            asMember.status != 0 && asMember.stderr.contains("maintenance needs an admin token"),
            "\(asMember.stderr)"
        )
        let unknown = try cp.cli(["machine", "maintenance", "on", "nope", "--reason", "x"], check: false)
        #expect(unknown.status != 0 && unknown.stderr.contains("no machine named or with MAC 'nope'"))
        #expect(try cp.machine("m1")["maintenance"] == nil)

        // On: shown by list and show; no step starts on it; the power sync leaves it alone.
        #expect(
            try cp.cli(["machine", "maintenance", "on", "m1", "--reason", "DIMM swap in slot B2"]).stdout
                == "machine m1 maintenance on: DIMM swap in slot B2\n"
        )
        let held = try cp.machine("m1")["maintenance"] as? [String: Any]
        #expect(held?["reason"] as? String == "DIMM swap in slot B2" && held?["since"] != nil && held?["by"] != nil)
        #expect(try cp.cli(["machine", "list"]).stdout.contains("DIMM swap in slot B2"))
        // Held, it is no longer counted as drifting (its drift is cleared: it is not read).
        #expect(try power("m1")["expected"] == nil)
        try h.waitUntil("the drift gauge back to 0", timeout: 10, interval: 0.5) {
            try metric("farrier_power_drift_machines") == 0
        }
        let commission = try cp.cli(["machine", "commission", "m1"], check: false)
        #expect(commission.stderr.contains("m1 is in maintenance (DIMM swap in slot B2"), "\(commission.stderr)")
        #expect(try cp.state("m1") == "ready")
        let readBefore = try power("m1")["read"] as? String
        // Two of m2's reads (2 rounds at least) while m1's stays as it was.
        var m2Reads: Set<String> = []
        try h.waitUntil("two power sync rounds", timeout: 30, interval: 0.3) {
            if let r = try power("m2")["read"] as? String { m2Reads.insert(r) }
            return m2Reads.count >= 3
        }
        #expect(try power("m1")["read"] as? String == readBefore)
        // An admin's own power action still works.
        #expect(try cp.cli(["machine", "power", "m1", "off"]).stdout.contains("off: ok"))

        // Off: read again (the admin's power off ended the drift), and steps may start.
        #expect(try cp.cli(["machine", "maintenance", "off", "m1"]).stdout == "machine m1 maintenance off\n")
        try h.waitUntil("m1 read again", timeout: 30, interval: 0.5) {
            try power("m1")["read"] as? String != readBefore && power("m1")["expected"] == nil
        }
        #expect(try cp.machine("m1")["maintenance"] == nil)

        // Only between steps: refused while m2 commissions.
        try cp.cli(["machine", "commission", "m2"])
        let duringStep = try cp.cli(["machine", "maintenance", "on", "m2", "--reason", "x"], check: false)
        #expect(duringStep.status != 0 && duringStep.stderr.contains("only between steps"), "\(duringStep.stderr)")
        #expect(try cp.machine("m2")["maintenance"] == nil)
    }

    @Test(arguments: Self.databases) func killNineAtEveryStepResumes(_ databaseKind: String) throws {
        let h = try Harness("kill-nine")
        let (pg, dbFlags) = try database(databaseKind, h)
        defer {
            pg?.stop()
            h.cleanup()
        }
        let (cp, s1, _) = try setUp(h, flags: dbFlags)
        try cp.cli(["project", "create", "p"])
        try cp.addTestImage(byte: 7)
        // The first round has no failpoint: it measures the power-offs of one clean deploy (the
        // off edge of a cycle is logged when commanded; the on edge comes later, so it is not counted).
        let points = [
            "", "controller.after-commit.deploying", "reconciler.boot.before-action", "reconciler.boot.after-action",
            "agent.hello.after-commit", "agent.done.after-commit", "reconciler.finish.before-action",
            "reconciler.finish.after-action", "controller.after-commit.deployed",
        ]
        // ipmi_sim runs its chassis program asynchronously (a cycle's on edge comes later), so
        // each round is counted once the peer's log has been quiet for 2 s (bounded).
        func quietLog() throws -> String {
            var last = s1.chassisLog
            var quietSince = Date()
            try h.waitUntil("ipmi_sim chassis log to settle", timeout: 30, interval: 0.25) {
                let now = s1.chassisLog
                if now != last {
                    last = now
                    quietSince = Date()
                }
                return Date().timeIntervalSince(quietSince) >= 2
            }
            return last
        }
        func powerActions(since start: Int) throws -> Int {
            try quietLog().dropFirst(start).components(separatedBy: "set power").count - 1
        }
        var cleanOps = 0
        var lastEvent: Int64 = 1
        for point in points {
            let logStart = try quietLog().count
            if point.isEmpty {
                try cp.cli(["machine", "deploy", "m1", "--image", "img", "--project", "p"])
                try cp.runAgent(mac: Self.mac1)
                try cp.waitFor("m1", "deployed")
                try cp.cli(["machine", "release", "m1"])
                try cp.runAgent(mac: Self.mac1)
                try cp.waitFor("m1", "ready")
                cleanOps = try powerActions(since: logStart)
                #expect(cleanOps >= 3)  // on for the ramdisk, cycle to the disk, on and off for the wipe
                lastEvent = try cp.eventsSince(lastEvent).last
                continue
            }
            // Deploy with the server armed to SIGKILL itself at `point`.
            cp.stop()
            try cp.start(failpoints: [point], log: "server-\(point).log")
            let deploy = try cp.cli(["machine", "deploy", "m1", "--image", "img", "--project", "p"], check: false)
            // The agent runs until the server dies (its requests may fail once it is gone).
            if point != "controller.after-commit.deploying" {
                _ = try? cp.runAgent(mac: Self.mac1, timeout: 30)
            }
            try cp.waitForCrash()
            // Restart without failpoints: the deploy resumes and completes.
            try cp.start(log: "server-after-\(point).log")
            if [
                "agent.done.after-commit", "reconciler.finish.before-action", "reconciler.finish.after-action",
                "controller.after-commit.deployed",
            ].contains(point) {
                // The image was written: the ramdisk is never offered again for this deploy.
                #expect(
                    try !cp.offersRamdisk(mac: Self.mac1),
                    "\(point): ramdisk offered again after the agent finished"
                )
            }
            if (try? cp.state("m1")) == "ready" {
                Issue.record("\(point): the committed deploy was lost (\(deploy.stderr))")
                continue
            }
            if try cp.state("m1") != "deployed" {
                let phase = try cp.machine("m1")["phase"] as? String
                if phase != "finish" && phase != "os" {
                    _ = try? cp.runAgent(mac: Self.mac1, timeout: 30)
                }
                // The agent's part was done before the kill: the OS reports in once the disk
                // boots (a report the dead server took down with it is sent again).
                if try cp.state("m1") != "deployed" { try cp.reportOS(mac: Self.mac1) }
                try cp.waitFor("m1", "deployed", timeout: 60)
            }
            #expect(try s1.ipmitool(["chassis", "bootparam", "get", "5"]).contains("Hard-Drive"), "\(point)")
            #expect(try cp.script(mac: Self.mac1).contains("sanboot"), "\(point)")
            // Release back to the pool, then count this round's power actions.
            try cp.cli(["machine", "release", "m1"])
            try cp.runAgent(mac: Self.mac1)
            try cp.waitFor("m1", "ready")
            let ops = try powerActions(since: logStart)
            // At most the action in flight at the kill runs twice (ipmi_sim's asynchronous cycle
            // makes the exact count vary by one), and the deploy was entered exactly once.
            #expect(ops <= 2 * cleanOps, "\(point): \(ops) power actions, a clean round takes \(cleanOps)")
            let (events, last) = try cp.eventsSince(lastEvent)
            let entered = events.split(separator: "\n").filter { $0.contains("deploying/queued  transition:") }.count
            #expect(entered == 1, "\(point): deploy entered \(entered) times:\n\(events)")
            lastEvent = last
        }
    }
}
