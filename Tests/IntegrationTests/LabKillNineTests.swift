import Foundation
import TestSupport
import Testing

/// kill -9 of the lab's server at every step of a real deploy: a lab VM, the real agent in the
/// real ramdisk, a real BMC. The server is armed with one failpoint per life (it SIGKILLs itself
/// right there), restarted with `farrier lab restart-server` armed with the next one, and so on
/// through the whole deploy; the last life has none. The deploy then ends `deployed`, was entered
/// once, never failed, boots the disk, and the image's bytes are on the VM's disk.
///
/// On PostgreSQL the lab runs two replicas, one life at a time, alternating: each point's life
/// is one replica armed with it, and the next life is the other replica (the agent's points
/// are the boot network's replica's), which takes over what the dead one left: its claims after
/// their 5 s, and an action done but not committed. At the end both run.
@Suite(
    .serialized,
    .enabled(
        if: Harness.canRun
            && ProcessInfo.processInfo.environment["FARRIER_SKIP_LAB_DEPLOY"] == nil,
        "needs root, the peers from install-deps.sh, and a clean lab (Harness.requireNoLab)"
    )
)
struct LabKillNineTests {
    static let points = [
        "controller.after-commit.deploying", "reconciler.boot.before-action", "reconciler.boot.after-action",
        "agent.hello.after-commit", "agent.done.after-commit", "reconciler.finish.before-action",
        "reconciler.finish.after-action", "controller.after-commit.deployed",
    ]

    @Test(arguments: ["sqlite", "postgres"]) func killNineAtEveryStepOfARealDeploy(database: String) throws {
        try Harness.requireNoLab()
        let h = try Harness("lab-kill")
        let bin = Harness.farrierBinary
        defer {
            _ = try? h.run([bin, "lab", "down"], timeout: 120, check: false)
            h.cleanup()
        }
        let started = Date()
        try h.run(
            [bin, "lab", "up", "--machines", "1", "--firmware", "bios", "--no-image", "--database", database]
                + (database == "postgres" ? ["--replicas", "2"] : []),
            timeout: 1800
        )
        func machine() throws -> [String: Any] {
            let out = try h.run([bin, "machine", "show", "lab-1", "-o", "json"], timeout: 30).stdout
            return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]) ?? [:]
        }
        try h.waitUntil("lab-1 commissioned", timeout: 300, interval: 2) {
            try machine()["state"] as? String == "ready"
        }
        print("lab-kill: lab up and commissioned in \(Int(Date().timeIntervalSince(started))) s")

        // A small image, uploaded as qcow2: the server converts it to raw once, at upload.
        let raw = h.directory + "/tiny.raw"
        let qcow2 = h.directory + "/tiny.qcow2"
        try h.run(["dd", "if=/dev/urandom", "of=\(raw)", "bs=1M", "count=8", "status=none"])
        // With a partition table, as real images have (the config drive is added to it).
        try h.run(["bash", "-c", "printf 'label: gpt\\nstart=2048, type=L\\n' | sfdisk -q '\(raw)'"])
        try h.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2])
        try h.run([bin, "image", "add", "tiny", qcow2], timeout: 120)
        let rawSHA = try h.run(["sha256sum", raw]).stdout.prefix(64)
        let shown = try h.run([bin, "image", "show", "tiny", "-o", "json"]).stdout
        #expect(shown.contains(String(rawSHA)), "the stored image is not the converted raw: \(shown)")

        /// The replicas' process ids (one on SQLite), the boot network's first.
        func serverPIDs() throws -> [Int32] {
            let state =
                try JSONSerialization.jsonObject(
                    with: Data(contentsOf: URL(fileURLWithPath: "/run/farrier-lab/state.json"))
                ) as? [String: Any]
            let boot: Int32? = (state?["serverPID"] as? Int).map { Int32($0) }
            let first = try #require(boot, "the lab's server pid: \(String(describing: state))")
            let others = (state?["extraReplicas"] as? [[String: Any]] ?? []).compactMap {
                ($0["pid"] as? Int).map(Int32.init)
            }
            try #require(others.count == (database == "postgres" ? 1 : 0), "replicas: \(String(describing: state))")
            return [first] + others
        }
        func dead(_ pid: Int32) -> Bool {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return true }
            return status.contains("State:\tZ")
        }
        /// Starts the next life: one replica armed with `point`, or every replica, unarmed.
        func restart(armed point: String?, replica: Int?) throws {
            // A short claim: a dead replica's machines wait 5 s for another, not the default 20 s.
            let args =
                ["env", "FARRIER_LIFECYCLE_CLAIM_TTL=5"] + (point.map { ["FARRIER_FAILPOINTS=\($0)"] } ?? [])
                + [bin, "lab", "restart-server"] + (replica.map { ["--replica", String($0)] } ?? [])
            try h.run(args, timeout: 120)
        }
        let serverLogs = ["/var/lib/farrier-lab/server.log", "/var/lib/farrier-lab/server-2.log"]
        /// The tail of every replica's log, for a failure message.
        func logTails() -> String {
            (serverLogs + ["/var/lib/farrier-lab/lab-1/serial.log"]).map { path in
                // Lossy: firmware writes bytes that are not UTF-8 to the serial log.
                let text = String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self)
                return "--- \(path)\n" + Harness.logExcerpt(text, lines: 25)
            }.joined(separator: "\n")
        }
        // Which replica lives each point's life (1: the one on the boot network). On SQLite the
        // one server. On PostgreSQL one replica runs at a time and the lives alternate, so what a
        // dead one left (its claims, a half-done action) the other takes over; the agent's points
        // are the boot network's replica's, which serves the agent channel.
        let owners = database == "postgres" ? [2, 1, 2, 1, 1, 2, 1, 2] : [1, 1, 1, 1, 1, 1, 1, 1]
        if database == "postgres" {
            // The boot network's replica dies first: the deploy goes to replica 2 (the CLI,
            // given both, moves on from the one that does not answer).
            let first = try serverPIDs()[0]
            #expect(kill(first, SIGKILL) == 0)
            try h.waitUntil("replica 1 to die", timeout: 30, interval: 0.2) { dead(first) }
        }

        // Each life dies at its point; the next life resumes the deploy and dies at the next one.
        try restart(armed: Self.points[0], replica: database == "postgres" ? owners[0] : nil)
        try h.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", h.directory + "/id"])
        // The image has no OS to report in: its user-data turns cloud-init's vendor-data (which
        // carries the reporter) off, so the deploy ends once the disk boots, as an untracked one.
        let userData = h.directory + "/user-data"
        try "#cloud-config\nvendor_data: {enabled: false}\n".write(toFile: userData, atomically: true, encoding: .utf8)
        // The server dies right after committing the deploy: the CLI may or may not see its answer.
        _ = try h.run(
            [
                bin, "machine", "deploy", "lab-1", "--image", "tiny", "--ssh-key", h.directory + "/id.pub",
                "--user-data", userData,
            ],
            timeout: 60,
            check: false
        )
        for (i, point) in Self.points.enumerated() {
            let owner = owners[i]
            let pid = try serverPIDs()[owner - 1]
            let t = Date()
            do {
                try h.waitUntil("replica \(owner) to die at \(point)", timeout: 300, interval: 0.5) { dead(pid) }
            } catch {
                print(logTails())
                throw error
            }
            let died = serverLogs.indices.filter {
                ((try? String(contentsOfFile: serverLogs[$0], encoding: .utf8)) ?? "")
                    .contains("failpoint \(point): killing the process")
            }
            #expect(died == [owner - 1], "replica \(owner) died, but not at \(point) (logs naming it: \(died))")
            print(
                "lab-kill \(database): replica \(owner) killed at \(point) after \(String(format: "%.1f", Date().timeIntervalSince(t))) s"
            )
            if i + 1 < Self.points.count {
                try restart(armed: Self.points[i + 1], replica: database == "postgres" ? owners[i + 1] : nil)
            } else {
                try restart(armed: nil, replica: nil)
            }
        }
        try h.waitUntil("lab-1 deployed", timeout: 120, interval: 1) { try machine()["state"] as? String == "deployed" }
        #expect((try machine()["deployment"] as? [String: Any])?["osTracked"] as? Bool == false)

        // Entered once, never failed; the next boot is the disk, in the script and at the BMC.
        let events = try h.run(
            ["timeout", "5", bin, "machine", "watch", "lab-1", "--after", "1"],
            timeout: 30,
            check: false
        ).stdout
        let entered = events.split(separator: "\n").filter { $0.contains("deploying/queued  transition:") }.count
        #expect(entered == 1, "deploy entered \(entered) times:\n\(events)")
        #expect(!events.contains("failed"), "a step failed:\n\(events)")
        #expect(try machine()["nextBoot"] as? String == "disk")
        let vm = try #require(
            (try JSONSerialization.jsonObject(with: Data(try h.run([bin, "lab", "status", "-o", "json"]).stdout.utf8))
                as? [String: Any])?["vms"]
                as? [[String: Any]]
        ).first
        let bmc = (vm?["bmcAddress"] as? String ?? "").split(separator: ":").map(String.init)
        let boot = try h.run(
            [
                "ipmitool", "-I", "lanplus", "-C", "3", "-H", bmc[0], "-p", bmc[1], "-U", "admin", "-f",
                "/var/lib/farrier-lab/bmc-password",
                "chassis", "bootparam", "get", "5",
            ],
            timeout: 30
        ).stdout
        #expect(boot.contains("Hard-Drive") || boot.contains("Disk"), "BMC boot device: \(boot)")

        // The image's bytes are on the disk (read from the host with the VM off).
        try h.run([bin, "machine", "power", "lab-1", "off"], timeout: 60)
        try h.waitUntil("lab-1's QEMU to stop", timeout: 60, interval: 0.5) {
            !FileManager.default.fileExists(atPath: "/var/lib/farrier-lab/lab-1/qemu.pid")
        }
        let onDisk = h.directory + "/on-disk.raw"
        try h.run(
            [
                "qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1M", "count=8",
                "if=/var/lib/farrier-lab/lab-1/disk.qcow2", "of=\(onDisk)",
            ],
            timeout: 60
        )
        // The image's partition (its GPT now also lists the config drive at the disk's end).
        func partition(_ file: String) throws -> Substring {
            try h.run(["bash", "-c", "tail -c +1048577 '\(file)' | head -c 6291456 | sha256sum"]).stdout.prefix(64)
        }
        #expect(try partition(onDisk) == (try partition(raw)), "the disk does not hold the image")
        print(
            "lab-kill \(database): \(Self.points.count) kills, deployed in \(Int(Date().timeIntervalSince(started))) s in all"
        )
    }
}
