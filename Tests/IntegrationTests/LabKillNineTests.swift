import Foundation
import TestSupport
import Testing

/// kill -9 of the lab's server at every step of a real deploy: a lab VM, the real agent in the
/// real ramdisk, a real BMC. The server is armed with one failpoint per life (it SIGKILLs itself
/// right there), restarted with `farrier lab restart-server` armed with the next one, and so on
/// through the whole deploy; the last life has none. The deploy then ends `deployed`, was entered
/// once, never failed, boots the disk, and the image's bytes are on the VM's disk.
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

    @Test func killNineAtEveryStepOfARealDeploy() throws {
        try Harness.requireNoLab()
        let h = try Harness("lab-kill")
        let bin = Harness.farrierBinary
        defer {
            _ = try? h.run([bin, "lab", "down"], timeout: 120, check: false)
            h.cleanup()
        }
        let started = Date()
        try h.run([bin, "lab", "up", "--machines", "1", "--firmware", "bios", "--no-image"], timeout: 1800)
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

        func serverPID() throws -> Int32 {
            let state =
                try JSONSerialization.jsonObject(
                    with: Data(contentsOf: URL(fileURLWithPath: "/run/farrier-lab/state.json"))
                ) as? [String: Any]
            return try #require(state?["serverPID"] as? Int32 ?? (state?["serverPID"] as? Int).map(Int32.init))
        }
        func dead(_ pid: Int32) -> Bool {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return true }
            return status.contains("State:\tZ")
        }
        func restart(armed point: String?) throws {
            var args = [bin, "lab", "restart-server"]
            if let point { args = ["env", "FARRIER_FAILPOINTS=\(point)"] + args }
            try h.run(args, timeout: 120)
        }
        let serverLog = "/var/lib/farrier-lab/server.log"

        // Each life dies at its point; the next life resumes the deploy and dies at the next one.
        try restart(armed: Self.points[0])
        try h.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", h.directory + "/id"])
        // The server dies right after committing the deploy: the CLI may or may not see its answer.
        _ = try h.run(
            [bin, "machine", "deploy", "lab-1", "--image", "tiny", "--ssh-key", h.directory + "/id.pub"],
            timeout: 60,
            check: false
        )
        for (i, point) in Self.points.enumerated() {
            let pid = try serverPID()
            let t = Date()
            try h.waitUntil("the server to die at \(point)", timeout: 300, interval: 0.5) { dead(pid) }
            let log = (try? String(contentsOfFile: serverLog, encoding: .utf8)) ?? ""
            #expect(log.contains("failpoint \(point): killing the process"), "the server died, but not at \(point)")
            print("lab-kill: killed at \(point) after \(String(format: "%.1f", Date().timeIntervalSince(t))) s")
            try restart(armed: i + 1 < Self.points.count ? Self.points[i + 1] : nil)
        }
        try h.waitUntil("lab-1 deployed", timeout: 120, interval: 1) { try machine()["state"] as? String == "deployed" }

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
        print("lab-kill: \(Self.points.count) kills, deployed in \(Int(Date().timeIntervalSince(started))) s in all")
    }
}
