import Foundation
import TestSupport
import Testing

/// The real `farrier agent`, run on this host against a real server and an ipmi_sim BMC, with
/// its kernel command line taken from the machine's iPXE script and a file standing in for the
/// disk: commissioning inventory, deploys of raw, raw.gz and raw.zst images with SHA-256
/// verification, the cloud-init config drive (checked with sfdisk, blkid and mtools), quick and
/// full wipes, and a corrupted image. The agent speaks from the machine's reserved address
/// (`--bind`) over the HTTPS channel, pinning the certificate the script names.
@Suite(.serialized, .enabled(if: IPMISimulator.available, "needs root, ipmi_sim and ipmitool"))
struct AgentTests {
    static let mac = "52:54:00:ee:00:01"

    /// The kernel line the iPXE script would boot, once a step wants the ramdisk, in a file.
    func cmdline(_ cp: ControlPlane) throws -> String {
        var kernel: String?
        try cp.h.waitUntil("ramdisk script", timeout: 60, interval: 0.2) {
            kernel = try cp.script(mac: Self.mac).split(separator: "\n").first { $0.hasPrefix("kernel ") }.map(
                String.init
            )
            return kernel != nil
        }
        let path = cp.h.directory + "/cmdline"
        try kernel!.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Runs the agent with the kernel line the iPXE script would boot, once a step wants it.
    func agent(_ cp: ControlPlane, disk: String, log: String, extra: [String] = []) throws -> Harness.Result {
        try cp.h.run(
            [
                ControlPlane.bin, "agent", "--cmdline", try cmdline(cp), "--device", disk, "--attempts", "3",
                "--task-file", cp.h.directory + "/task.json", "--bind", ControlPlane.address(of: Self.mac),
                "--state-dir", cp.h.directory + "/agent-state",
            ] + extra,
            timeout: 120,
            check: false
        )
    }

    /// Gives a raw image file a GPT with one Linux partition from 1 MiB to its end, as real images have.
    func partition(_ h: Harness, _ raw: String) throws {
        try h.run(["bash", "-c", "printf 'label: gpt\\nstart=2048, type=L\\n' | sfdisk -q '\(raw)'"])
    }

    /// SHA-256 of `count` bytes of a file from byte `from`.
    func sha(_ h: Harness, _ path: String, from: Int, count: Int) throws -> String {
        String(
            try h.run(["bash", "-c", "tail -c +\(from + 1) '\(path)' | head -c \(count) | sha256sum"]).stdout.prefix(64)
        )
    }

    /// A server and an ipmi_sim BMC, with machine a1 enrolled and commissioned by the real agent
    /// (its disk is the file `disk`): a1 is ready when this returns.
    func commissioned(
        _ h: Harness,
        disk: String,
        flags: [String] = [],
        environment: [String] = []
    ) throws -> ControlPlane {
        let sim = try IPMISimulator(h)
        try sim.start()
        let cp = ControlPlane(h, flags: flags)
        cp.environment = environment
        try cp.start()
        try cp.cli([
            "machine", "enroll", "a1", "--mac", Self.mac, "--bmc", "ipmi://\(IPMISimulator.user)@127.0.0.1:\(sim.port)",
            "--bmc-password-file", sim.passwordFile, "--commission",
        ])
        // An agent that is pointed at a server with another certificate says nothing to it.
        let line = try String(contentsOfFile: try cmdline(cp), encoding: .utf8)
        let pin = try #require(line.range(of: "farrier.cert=sha256:")).upperBound
        let flipped = line[pin] == "0" ? "1" : "0"
        let tampered = h.directory + "/cmdline-tampered"
        try (String(line[..<pin]) + flipped + String(line[line.index(after: pin)...])).write(
            toFile: tampered,
            atomically: true,
            encoding: .utf8
        )
        let refused = try h.run(
            [
                ControlPlane.bin, "agent", "--cmdline", tampered, "--device", disk, "--attempts", "1",
                "--bind", ControlPlane.address(of: Self.mac), "--state-dir", h.directory + "/agent-state",
            ],
            timeout: 60,
            check: false
        )
        #expect(refused.status != 0 && refused.stderr.contains("not the pinned"), "\(refused.stderr)")
        #expect(try cp.state("a1").hasPrefix("commissioning"))
        let commission = try agent(cp, disk: disk, log: "agent-commission.log")
        #expect(commission.status == 0, "\(commission.stderr)")
        try cp.waitFor("a1", "ready")
        return cp
    }

    /// The last test run's results by name (and disk), from `machine show -o json`.
    func results(_ cp: ControlPlane, _ name: String = "a1") throws -> [String: [String: Any]] {
        let run = try #require(try cp.machine(name)["burnIn"] as? [String: Any], "no test run")
        var out: [String: [String: Any]] = [:]
        for r in run["results"] as? [[String: Any]] ?? [] {
            out[[r["name"] as? String, r["target"] as? String].compactMap { $0 }.joined(separator: " ")] = r
        }
        return out
    }

    /// Commissioning tests (issue 18 point 7) with the real agent and this host's stress-ng,
    /// memtester and smartctl, on a file for a disk: the built-ins and an admin's script pass
    /// with their numbers; a failing script fails the step naming it, counted as a hardware
    /// fault, with its output for admins; retry runs it again, abort ends it; a stand-in
    /// stress-ng that finds an error fails cpu-stress. Members add and read no scripts.
    @Test func burnInWithTheRealAgent() throws {
        let h = try Harness("agent-burn-in")
        defer { h.cleanup() }
        let disk = h.directory + "/disk.img"
        try h.run(["truncate", "-s", "\(64 << 20)", disk])
        let cp = try commissioned(h, disk: disk)

        let ok = h.directory + "/ok-check.sh"
        try "echo \"checking $FARRIER_MACHINE: $FARRIER_DISKS\"\necho link_mbps=25000 > \"$FARRIER_RESULT\"\n".write(
            toFile: ok,
            atomically: true,
            encoding: .utf8
        )
        let fail = h.directory + "/fail-check.sh"
        try "echo 'fan 2: 0 RPM'\nexit 3\n".write(toFile: fail, atomically: true, encoding: .utf8)
        let added = try cp.cli(["test-script", "add", "ok-check", ok, "--timeout", "30", "--description", "links"])
        #expect(added.stdout.hasPrefix("ok-check version 1 sha256 "), "\(added.stdout)")
        // The same again is the same version; a built-in's name is refused.
        #expect(
            try cp.cli(["test-script", "add", "ok-check", ok, "--timeout", "30", "--description", "links"]).stdout
                == added.stdout
        )
        let builtinName = try cp.cli(["test-script", "add", "memtester", ok, "--timeout", "30"], check: false)
        #expect(builtinName.status == 13 && builtinName.stderr.contains("built-in"), "\(builtinName.stderr)")
        try cp.cli(["test-script", "add", "fail-check", fail, "--timeout", "30"])
        let listed = try cp.cli(["test-script", "list", "-o", "name"]).stdout
        #expect(listed == "cpu-stress\nmemory-stress\nmemtester\nsmart\ndisk-read\nfail-check\nok-check\n", "\(listed)")
        // A bad parameter or test name changes nothing.
        let badParam = try cp.cli(
            ["machine", "commission", "a1", "--tests", "cpu", "--param", "cpu-stress.seconds=0"],
            check: false
        )
        #expect(badParam.status == 13 && badParam.stderr.contains("must be 1-86400"), "\(badParam.stderr)")
        let unknown = try cp.cli(["machine", "commission", "a1", "--tests", "cpux"], check: false)
        #expect(unknown.status == 13 && unknown.stderr.contains("unknown test 'cpux'"), "\(unknown.stderr)")
        #expect(try cp.state("a1") == "ready")

        // Members: no adding, no content, no output.
        try cp.cli(["project", "create", "p"])
        let member = try cp.cli(["token", "create", "--project", "p"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        #expect(
            try cp.cli(["test-script", "add", "x", ok, "--timeout", "5"], token: member, check: false).status == 17
        )
        #expect(try cp.cli(["test-script", "show", "ok-check", "--content"], token: member, check: false).status == 17)
        #expect(try cp.cli(["test-script", "remove", "ok-check"], token: member, check: false).status == 17)
        #expect(try cp.cli(["test-script", "show", "ok-check", "--content"]).stdout.contains("link_mbps=25000"))

        // Everything passes.
        try cp.cli([
            "machine", "commission", "a1", "--tests", "cpu,memory,disk,ok-check", "--param", "cpu-stress.seconds=2",
            "--param", "memory-stress.seconds=2", "--param", "memory-stress.percent=10", "--param", "memtester.mib=8",
            "--param", "disk-read.seconds=2",
        ])
        let passed = try agent(cp, disk: disk, log: "agent-tests.log")
        #expect(passed.status == 0, "\(passed.stderr)")
        try cp.waitFor("a1", "ready")
        let r = try results(cp)
        func metric(_ key: String, _ name: String) -> Double {
            (r[key]?["metrics"] as? [String: Any])?[name] as? Double ?? -1
        }
        func status(_ key: String) -> String { r[key]?["status"] as? String ?? "absent" }
        #expect(status("cpu-stress") == "passed" && metric("cpu-stress", "bogo_ops") > 0, "\(r["cpu-stress"] ?? [:])")
        #expect(status("memory-stress") == "passed", "\(r["memory-stress"] ?? [:])")
        #expect(status("memtester") == "passed" && metric("memtester", "mib") >= 8, "\(r["memtester"] ?? [:])")
        #expect(status("smart disk.img") == "skipped", "\(r)")
        #expect(status("disk-read disk.img") == "passed" && metric("disk-read disk.img", "read_mb_per_s") > 0, "\(r)")
        #expect(status("ok-check") == "passed" && metric("ok-check", "link_mbps") == 25000, "\(r["ok-check"] ?? [:])")
        let shown = try cp.cli(["machine", "show", "a1"]).stdout
        #expect(shown.contains("Tests:") && shown.contains("5 passed, 1 skipped"), "\(shown)")
        #expect(shown.contains("ok-check@1") && shown.contains("link_mbps=25000"), "\(shown)")
        let okOutput = try cp.cli(["machine", "show", "a1", "--test-output", "ok-check"]).stdout
        #expect(okOutput.contains("checking a1: \(disk)"), "\(okOutput)")
        // A member asking for output is refused before anything is looked up.
        #expect(
            try cp.cli(["machine", "show", "a1", "--test-output", "ok-check"], token: member, check: false).status == 17
        )

        // A failing script fails the step, naming it, as a hardware fault.
        try cp.cli(["machine", "commission", "a1", "--tests", "fail-check"])
        let failing = try agent(cp, disk: disk, log: "agent-fail.log")
        #expect(failing.status == 0, "the agent did its task; the test failed: \(failing.stderr)")
        try cp.waitFor("a1", "failed")
        let reason = try cp.machine("a1")["reason"] as? String ?? ""
        #expect(reason == "commissioning failed: test fail-check@1 failed: exit 3: fan 2: 0 RPM", "\(reason)")
        let failOutput = try cp.cli(["machine", "show", "a1", "--test-output", "fail-check"]).stdout
        #expect(failOutput.contains("fan 2: 0 RPM"), "\(failOutput)")
        let metrics = try h.run(["curl", "-sf", cp.metricsURL]).stdout
        #expect(
            metrics.contains(#"farrier_lifecycle_step_failures_total{step="commissioning",failure="hardware-test"} 1"#),
            "\(metrics.split(separator: "\n").filter { $0.contains("step_failures") })"
        )
        // In use by a failed commissioning (a retry needs it): not removed.
        let inUse = try cp.cli(["test-script", "remove", "fail-check"], check: false)
        #expect(inUse.status == 19 && inUse.stderr.contains("a1"), "\(inUse.status) \(inUse.stderr)")
        // Retry runs it again; abort ends the step, and then it can go.
        try cp.cli(["machine", "retry", "a1"])
        let again = try agent(cp, disk: disk, log: "agent-retry.log")
        #expect(again.status == 0, "\(again.stderr)")
        try cp.waitFor("a1", "failed")
        try cp.cli(["machine", "abort", "a1"])
        try cp.waitFor("a1", "enrolled")
        #expect(
            try cp.cli(["test-script", "remove", "fail-check"]).stdout == "test script fail-check removed (1 version)\n"
        )

        // A stress-ng that finds an error (exit 2) fails cpu-stress.
        let tools = h.directory + "/tools"
        try FileManager.default.createDirectory(atPath: tools, withIntermediateDirectories: true)
        try "#!/bin/sh\necho 'stress-ng: fail: [1] cpu: computation error'\nexit 2\n".write(
            toFile: tools + "/stress-ng",
            atomically: true,
            encoding: .utf8
        )
        try h.run(["chmod", "755", tools + "/stress-ng"])
        try cp.cli(["machine", "commission", "a1", "--tests", "cpu", "--param", "cpu-stress.seconds=1"])
        let broken = try agent(cp, disk: disk, log: "agent-stand-in.log", extra: ["--tool-path", tools])
        #expect(broken.status == 0, "\(broken.stderr)")
        try cp.waitFor("a1", "failed")
        let why = try cp.machine("a1")["reason"] as? String ?? ""
        #expect(why.hasPrefix("commissioning failed: test cpu-stress failed"), "\(why)")
    }

    func sha(_ h: Harness, _ path: String, bytes: Int? = nil) throws -> String {
        let cmd = bytes.map { "head -c \($0) '\(path)' | sha256sum" } ?? "sha256sum '\(path)'"
        return String(try h.run(["bash", "-c", cmd]).stdout.prefix(64))
    }

    @Test func commissionDeployMetadataWipeWithTheRealAgent() throws {
        let h = try Harness("agent")
        defer { h.cleanup() }
        let disk = h.directory + "/disk.img"
        let diskBytes = 96 << 20  // the 8 MiB image, and the 64 MiB config drive at the end
        try h.run(["truncate", "-s", "\(diskBytes)", disk])

        // Commissioning: the inventory is this host's.
        let cp = try commissioned(h, disk: disk)
        let inventory = try #require(try cp.machine("a1")["inventory"] as? [String: Any])
        let cpus = try h.run(["nproc", "--all"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect("\(inventory["cores"] ?? "")" == cpus)
        #expect((inventory["memoryBytes"] as? Int ?? 0) > 0)
        // Root device hints against this host's inventory (issue 18 point 5): hints no disk
        // matches are refused, listing the disks; the machine's hints reach the agent's task.
        let hostDisk = try #require(
            (inventory["disks"] as? [[String: Any]])?.first?["name"] as? String,
            "the host's inventory lists no disk: \(inventory)"
        )
        let unmatched = try cp.cli(["machine", "root-device", "a1", "serial=no-such-disk"], check: false)
        #expect(
            unmatched.status == 19
                && unmatched.stderr.contains("no disk matches the root device hints serial=no-such-disk")
                && unmatched.stderr.contains(hostDisk),
            "\(unmatched.status): \(unmatched.stderr)"
        )
        try cp.cli(["machine", "root-device", "a1", "name=/dev/\(hostDisk)"])
        #expect(try cp.machine("a1")["rootDevice"] as? [String] == ["name=\(hostDisk)"])

        // Three encodings of one 8 MiB raw image.
        let raw = h.directory + "/img.raw"
        try h.run(["bash", "-c", "head -c 8388608 /dev/urandom > '\(raw)'"])
        try partition(h, raw)
        try h.run(["bash", "-c", "gzip -k '\(raw)' && zstd -q -k '\(raw)'"])
        try cp.cli(["project", "create", "p"])
        try cp.cli(["project", "create", "pq", "--wipe-policy", "quick"])
        try cp.cli(["image", "add", "img-raw", raw])
        try cp.cli(["image", "add", "img-gz", raw + ".gz"])
        try cp.cli(["image", "add", "img-zst", raw + ".zst"])
        // The partition's bytes (the agent then adds the config drive to the GPT around them).
        let rawSHA = try sha(h, raw, from: 1 << 20, count: 6 << 20)
        try h.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", h.directory + "/id"])
        try "#cloud-config\nruncmd: [ [ touch, /farrier-was-here ] ]\n".write(
            toFile: h.directory + "/user-data",
            atomically: true,
            encoding: .utf8
        )

        // (image, project, --wipe given or nil for the project's policy, the wipe that runs)
        for (image, project, asked, wipe) in [
            ("img-zst", "p", nil, "full"), ("img-gz", "pq", "full", "full"), ("img-raw", "pq", nil, "quick"),
        ] {
            try h.run(["bash", "-c", "head -c \(diskBytes) /dev/urandom > '\(disk)'"])  // old contents
            try cp.cli([
                "machine", "deploy", "a1", "--image", image, "--project", project, "--ssh-key", h.directory + "/id.pub",
                "--user-data", h.directory + "/user-data",
            ])
            let run = try agent(cp, disk: disk, log: "agent-\(image).log")
            #expect(run.status == 0, "\(image): \(run.stderr)")
            // The disk is written and booted; "deployed" waits for its OS to report in.
            try cp.waitFor("a1", "deploying/os")
            #expect(
                try sha(h, disk, from: 1 << 20, count: 6 << 20) == rawSHA,
                "\(image): the disk does not hold the image"
            )

            // The config drive: a GPT partition at the disk's end (sfdisk reads the table back
            // whole, its backup header moved to the disk's end), FAT labelled CIDATA (blkid),
            // holding the NoCloud files (mtools).
            let check = try h.run(["sfdisk", "--verify", disk], check: false)
            #expect(
                check.status == 0 && !check.stdout.contains("differ"),
                "sfdisk --verify: \(check.stdout) \(check.stderr)"
            )
            let dump = try h.run(["sfdisk", "--dump", disk]).stdout
            let line = try #require(
                dump.split(separator: "\n").first { $0.contains("config-2") },
                "no config drive: \(dump)"
            )
            let start = try #require(
                line.split(separator: ",").first { $0.contains("start=") }.flatMap {
                    Int($0.split(separator: "=")[1].trimmingCharacters(in: .whitespaces))
                }
            )
            let size = try #require(
                line.split(separator: ",").first { $0.contains("size=") }.flatMap {
                    Int($0.split(separator: "=")[1].trimmingCharacters(in: .whitespaces))
                }
            )
            #expect(
                (start + size) * 512 <= diskBytes - 33 * 512 && (start + size) * 512 >= diskBytes - 34 * 512 - (1 << 20)
            )
            let label = try h.run(["blkid", "-p", "-O", "\(start * 512)", "-s", "LABEL", "-o", "value", disk]).stdout
            #expect(label.trimmingCharacters(in: .whitespacesAndNewlines) == "CIDATA")
            func file(_ name: String) throws -> String {
                try h.run(["env", "MTOOLS_SKIP_CHECK=1", "mtype", "-i", "\(disk)@@\(start * 512)", "::\(name)"]).stdout
            }
            let meta = try file("meta-data")
            #expect(meta.contains("local-hostname: a1"))
            #expect(
                meta.contains(
                    String(
                        try String(contentsOfFile: h.directory + "/id.pub", encoding: .utf8).split(separator: " ")[1]
                    )
                )
            )
            #expect(try file("user-data").contains("/farrier-was-here"))
            // vendor-data: Farrier's cloud-config and the OS's reporter (a shell script, with
            // the deployment's OS token, this agent channel's URL and its certificate's pin).
            let vendor = try file("vendor-data")
            #expect(vendor.hasPrefix("Content-Type: multipart/mixed"), "\(vendor)")
            #expect(vendor.contains("disable_root: false"))
            let reporter = try #require(
                vendor.components(separatedBy: "Content-Type: text/x-shellscript; charset=\"us-ascii\"\n\n").last?
                    .components(separatedBy: "\n--==farrier-vendor-data==--").first
            )
            try reporter.write(toFile: h.directory + "/os-report.sh", atomically: true, encoding: .utf8)
            let syntax = try h.run(["sh", "-n", h.directory + "/os-report.sh"], check: false)
            #expect(syntax.status == 0, "\(syntax.stderr)")
            func between(_ start: String) -> String? {
                reporter.components(separatedBy: start + " <<'FARRIER_EOF'\n").dropFirst().first?
                    .components(separatedBy: "\nFARRIER_EOF").first
            }
            let python = try #require(between("cat > /usr/local/lib/farrier/os-report"))
            try python.write(toFile: h.directory + "/os-report.py", atomically: true, encoding: .utf8)
            let compiled = try h.run(
                [
                    "python3", "-c", "import ast,sys; ast.parse(open(sys.argv[1]).read())",
                    h.directory + "/os-report.py",
                ],
                check: false
            )
            #expect(compiled.status == 0, "\(compiled.stderr)")
            let settingsText = try #require(between("cat > /etc/farrier/os-report.json"))
            let settings = try #require(
                try JSONSerialization.jsonObject(with: Data(settingsText.utf8)) as? [String: String]
            )
            // The kernel line the agent ran with (saved by `cmdline`).
            let kernel = try String(contentsOfFile: h.directory + "/cmdline", encoding: .utf8)
            #expect(kernel.contains("farrier.url=\(settings["url"] ?? "?") "), "\(settings) \(kernel)")
            #expect(kernel.contains("farrier.cert=sha256:\(settings["sha256"] ?? "?") "), "\(settings) \(kernel)")
            // The OS reports in with what its vendor-data holds (the stand-in OS: curl, from the
            // machine's address); then the machine is deployed.
            let osToken = try #require(settings["token"])
            let (status, answer) = try cp.agent("/os/v1/ready", mac: Self.mac, token: osToken, #"{"bootID":"b1"}"#)
            #expect(status == 200, "\(answer)")
            try cp.waitFor("a1", "deployed")
            // The seed came in the task over the agent channel; the console never shows it.
            let task =
                try JSONSerialization.jsonObject(
                    with: Data(contentsOf: URL(fileURLWithPath: h.directory + "/task.json"))
                ) as? [String: Any]
            #expect(
                (task?["seed"] as? [String: Any])?["userData"] as? String
                    == "#cloud-config\nruncmd: [ [ touch, /farrier-was-here ] ]\n"
            )
            #expect((task?["rootDevice"] as? [String: Any])?["name"] as? String == hostDisk, "\(image)")
            let token = try #require(task?["token"] as? String)
            #expect(task?["osToken"] as? String == osToken)
            #expect(
                !run.stderr.contains(token) && !run.stderr.contains(osToken)
                    && !run.stderr.contains("farrier-was-here"),
                "the agent printed a secret"
            )

            // Release: the wipe runs through the agent. A quick wipe is refused where the
            // project's policy is full, and changes nothing.
            if project == "p" {
                let refused = try cp.cli(["machine", "release", "a1", "--wipe", "quick"], check: false)
                #expect(
                    refused.status != 0 && refused.stderr.contains("quick wipe leaves this tenant's data"),
                    "\(refused.stderr)"
                )
                #expect(try cp.machine("a1")["state"] as? String == "deployed")
            }
            try cp.cli(["machine", "release", "a1"] + (asked.map { ["--wipe", $0] } ?? []))
            let w = try agent(cp, disk: disk, log: "agent-wipe-\(image).log")
            #expect(w.status == 0, "\(w.stderr)")
            try cp.waitFor("a1", "ready")
            let zeroMiB = String(try h.run(["bash", "-c", "head -c 1048576 /dev/zero | sha256sum"]).stdout.prefix(64))
            #expect(try sha(h, disk, bytes: 1 << 20) == zeroMiB, "first MiB not zero after a \(wipe) wipe")
            let last = String(try h.run(["bash", "-c", "tail -c 1048576 '\(disk)' | sha256sum"]).stdout.prefix(64))
            #expect(last == zeroMiB, "last MiB not zero after a \(wipe) wipe")
            let middle = try h.run([
                "bash", "-c", "tail -c +1048577 '\(disk)' | head -c 1048576 | tr -d '\\000' | wc -c",
            ]).stdout
            if wipe == "full" {
                #expect(middle.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "full wipe left data")
                let left = try h.run(["bash", "-c", "tr -d '\\000' < '\(disk)' | wc -c"]).stdout
                #expect(
                    left.trimmingCharacters(in: .whitespacesAndNewlines) == "0",
                    "full wipe left \(left) non-zero bytes"
                )
                #expect(w.stderr.contains("random 4 KiB blocks read back as zeroes"), "\(w.stderr)")
            } else {
                #expect(middle.trimmingCharacters(in: .whitespacesAndNewlines) != "0", "quick wipe wrote the middle")
            }
            // Released: the deploy's token is dead.
            let (dead, _) = try cp.agent(
                "/agent/v1/progress",
                mac: Self.mac,
                token: token,
                #"{"stage":"x","bytesDone":0,"bytesTotal":0}"#
            )
            #expect(dead == 403)
        }

        // A stored image whose bytes changed: the agent refuses it and the deploy fails.
        let info = try cp.json(["image", "show", "img-raw"])
        let blob = cp.data + "/images/sha256/" + (info["sha256"] as? String ?? "")
        try h.run(["bash", "-c", "printf 'X' | dd of='\(blob)' bs=1 seek=4096 conv=notrunc status=none"])
        // The last release was quick (project pq's policy): a1 still holds pq's data, so no
        // other project gets it.
        let other = try cp.cli(
            ["machine", "deploy", "a1", "--image", "img-raw", "--project", "p", "--ssh-key", h.directory + "/id.pub"],
            check: false
        )
        #expect(other.status != 0 && other.stderr.contains("may still hold another project's data"), "\(other.stderr)")
        try cp.cli([
            "machine", "deploy", "a1", "--image", "img-raw", "--project", "pq", "--ssh-key", h.directory + "/id.pub",
        ])
        let bad = try agent(cp, disk: disk, log: "agent-bad.log")
        #expect(bad.status != 0, "the agent deployed a changed image: \(bad.stderr.suffix(1500))")
        try cp.waitFor("a1", "failed")
        #expect((try cp.machine("a1")["reason"] as? String ?? "").contains("does not match"))
    }

    /// kill -9 of the server in the middle of an image download: the agent asks for the rest
    /// with a Range request once the server is back, and the deploy completes with the right bytes.
    @Test func imageDownloadResumesAfterTheServerIsKilled() throws {
        let h = try Harness("agent-resume")
        defer { h.cleanup() }
        let size = 512 << 20
        let raw = h.directory + "/big.raw"
        let disk = h.directory + "/disk.img"
        try h.run(["bash", "-c", "{ head -c 8388608 /dev/urandom; head -c \(size - (8 << 20)) /dev/zero; } > '\(raw)'"])
        try partition(h, raw)
        try h.run(["truncate", "-s", String(size + (80 << 20)), disk])
        let cp = try commissioned(h, disk: disk)
        try cp.cli(["project", "create", "p"])
        try cp.cli(["image", "add", "big", raw])
        try h.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", h.directory + "/id"])
        try cp.cli([
            "machine", "deploy", "a1", "--image", "big", "--project", "p", "--ssh-key", h.directory + "/id.pub",
        ])
        let agent = try h.start(
            [
                ControlPlane.bin, "agent", "--cmdline", try cmdline(cp), "--device", disk, "--attempts", "30",
                "--bind", ControlPlane.address(of: Self.mac), "--state-dir", h.directory + "/agent-state",
                "--task-file", h.directory + "/task.json",
            ],
            log: "agent.log"
        )
        // Blocks written to the disk file so far (the image's zeros are written, not skipped).
        func written() -> Int {
            var st = stat()
            return stat(disk, &st) == 0 ? Int(st.st_blocks) * 512 : 0
        }
        try h.waitUntil("the agent to be writing the image", timeout: 120, interval: 0.01) { written() > 32 << 20 }
        let at = written()
        let server = try #require(cp.server)
        kill(server.processIdentifier, SIGKILL)
        server.waitUntilExit()
        try cp.start(log: "server-after.log")
        try h.waitUntil("the agent to finish", timeout: 300, interval: 0.2) { !agent.isRunning }
        let log = h.read("agent.log")
        #expect(agent.terminationStatus == 0, "agent: \(log)")
        #expect(at < size, "the image was already written when the server was killed")
        #expect(log.contains("resumed"), "the download was not resumed: \(log)")
        // Written and booted; its OS (the stand-in, with the task's OS token) reports in.
        try cp.waitFor("a1", "deploying/os")
        let task =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: h.directory + "/task.json")))
            as? [String: Any]
        let osToken = try #require(task?["osToken"] as? String)
        #expect(try cp.agent("/os/v1/ready", mac: Self.mac, token: osToken, #"{"bootID":"b1"}"#).0 == 200)
        try cp.waitFor("a1", "deployed")
        // The image's bytes, between its GPT and the backup header the config drive moved.
        #expect(
            try sha(h, disk, from: 1 << 20, count: size - (2 << 20))
                == (try sha(h, raw, from: 1 << 20, count: size - (2 << 20))),
            "the disk does not hold the image"
        )
    }
}
