import FarrierCore
import Foundation
import Testing

@testable import FarrierAgent

#if canImport(Glibc)
import Glibc
#endif

/// The burn-in's pure parts: the output capture, and each parser on its fixtures
/// (BurnInFixtures.swift: captured from this host's tools where they can run here, hand-made
/// from smartctl's key names for drives that are not here), passing and failing.
@Suite struct BurnInParserTests {
    @Test func capturedOutputKeepsItsHeadAndTailAndCountsTheRest() {
        var small = CapturedOutput()
        small.append(Array("hello\nworld\n".utf8))
        #expect(small.text == "hello\nworld\n" && small.total == 12 && !small.overflowed)

        let bytes = (0..<1_048_576).map { UInt8(truncatingIfNeeded: $0 / 251 + $0) }
        var big = CapturedOutput()
        var offset = 0
        // Chunks of odd sizes, so the ring wraps inside them.
        while offset < bytes.count {
            let n = min(1000 + offset % 7919, bytes.count - offset)
            big.append(Array(bytes[offset..<offset + n]))
            offset += n
        }
        #expect(big.total == 1_048_576 && big.overflowed)
        #expect(big.head.count == 4096 && big.head == Array(bytes.prefix(4096)))
        #expect(big.tail.count == 12_288 && big.tail == Array(bytes.suffix(12_288)))
        #expect(big.text.contains("\n[… \(1_048_576 - 16_384) bytes left out …]\n"))
        // All of it in one chunk, larger than the ring: the same.
        var whole = CapturedOutput()
        whole.append(bytes)
        #expect(whole.head == big.head && whole.tail == big.tail && whole.total == big.total)
    }

    @Test func stressNGYAMLAndExitStatus() {
        let cpu = StressNGOutput.entries(yaml: BurnInFixtures.stressNGCPU)
        #expect(cpu.count == 1 && cpu.first?.stressor == "cpu", "\(cpu)")
        #expect(cpu.first?.values["bogo-ops"] == 1475)
        #expect(cpu.first?.values["bogo-ops-per-second-real-time"] == 1474.856885)
        // system-info's numbers are not a stressor's.
        #expect(cpu.first?.values["uptime"] == nil && cpu.first?.values.count == 8)
        let vm = StressNGOutput.entries(yaml: BurnInFixtures.stressNGVM)
        #expect(vm.count == 1 && vm.first?.stressor == "vm" && vm.first?.values["bogo-ops"] == 0)
        #expect(StressNGOutput.entries(yaml: "").isEmpty)
        #expect(StressNGOutput.entries(yaml: BurnInFixtures.stressNGFailure).isEmpty)
        // A list at the margin, quoted values.
        let flat = StressNGOutput.entries(yaml: "metrics:\n- stressor: 'vm'\n  bogo-ops: 12\n- stressor: cpu\n")
        #expect(
            flat == [
                StressNGOutput.Entry(stressor: "vm", values: ["bogo-ops": 12]),
                StressNGOutput.Entry(stressor: "cpu", values: [:]),
            ]
        )

        #expect(StressNGOutput.status(exitCode: 0) == .passed)
        #expect(StressNGOutput.status(exitCode: 2) == .failed && StressNGOutput.status(exitCode: 5) == .failed)
        #expect(StressNGOutput.status(exitCode: 4) == .skipped)
        #expect([Int32(1), 3, 6, 7, 127].allSatisfy { StressNGOutput.status(exitCode: $0) == .error })
        let line = StressNGOutput.failureLine(BurnInFixtures.stressNGFailure)
        #expect(line?.hasPrefix("stress-ng: fail:") == true && line?.contains("verification failed") == true)
        #expect(StressNGOutput.failureLine("stress-ng: info:  [1] successful run completed in 2.00s\n") == nil)
    }

    @Test func memtesterOutputAsATerminalShowsIt() {
        let ok = MemtesterOutput.parse(BurnInFixtures.memtesterPass)
        #expect(ok.failures == 0 && ok.firstFailure == nil && ok.done && ok.gotBytes == 8_388_608)
        let lines = ok.lines.text.split(separator: "\n").map(String.init)
        #expect(lines.contains("  Stuck Address       : ok"), "\(lines)")
        #expect(lines.contains("  Random Value        : ok"), "\(lines)")
        #expect(lines.filter { $0.hasSuffix(": ok") }.count == 18, "\(lines)")
        #expect(!ok.lines.text.contains("\u{8}") && !ok.lines.text.contains("setting"))

        let bad = MemtesterOutput.parse(BurnInFixtures.memtesterFail)
        #expect(bad.failures == 3 && bad.done)
        #expect(
            bad.firstFailure
                == "Stuck Address       : testing   1FAILURE: possible bad address line at offset 0x0000000000012a40.",
            "\(String(describing: bad.firstFailure))"
        )
        // Fed in pieces that split lines and backspace runs: the same.
        var pieces = MemtesterOutput.Screen()
        let bytes = Array(BurnInFixtures.memtesterFail.utf8)
        var at = 0
        while at < bytes.count {
            let n = min(7, bytes.count - at)
            pieces.feed(bytes[at..<at + n])
            at += n
        }
        pieces.finish()
        #expect(pieces.failures == 3 && pieces.lines == bad.lines)

        #expect(MemtesterOutput.availableMiB(meminfo: "MemTotal:  2014520 kB\nMemAvailable:    1048576 kB\n") == 1024)
        #expect(MemtesterOutput.availableMiB(meminfo: "MemTotal:  2014520 kB\n") == nil)
        let one = MemtesterOutput.split(totalMiB: 8, threads: nil)
        #expect(one.processes == 1 && one.eachMiB == 8)
        let many = MemtesterOutput.split(totalMiB: 100_000, threads: 64)
        #expect(many.processes == 8 && many.eachMiB == 12_500)
        let few = MemtesterOutput.split(totalMiB: 10, threads: 8)
        #expect(few.processes == 2 && few.eachMiB == 5)
    }

    func json(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test func smartctlOnAFileOrVirtioHasNoSMART() {
        let file = SmartctlOutput.health(json: json(BurnInFixtures.smartctlFile), exitStatus: 1)
        #expect(file.noSMART?.contains("Unable to detect device type") == true, "\(file)")
        #expect(SmartctlOutput.health(json: json("{}"), exitStatus: 2).noSMART != nil)
        let garbled = SmartctlOutput.health(json: json("sh: exec: smartctl: not found"), exitStatus: 127)
        #expect(garbled.unreadable != nil && garbled.noSMART == nil)
    }

    @Test func smartctlATAHealthAndSelfTest() {
        let ok = SmartctlOutput.health(json: json(BurnInFixtures.smartctlATAPass), exitStatus: 0)
        #expect(ok.noSMART == nil && ok.unreadable == nil && ok.problems.isEmpty, "\(ok)")
        #expect(ok.protocolName == "ATA" && !ok.isNVMe)
        let expected: [String: Double] = [
            "power_on_hours": 12873, "temp_c": 33, "reallocated": 0, "pending": 0, "uncorrectable": 0,
        ]
        #expect(ok.metrics == expected, "\(ok.metrics)")
        let bad = SmartctlOutput.health(json: json(BurnInFixtures.smartctlATAFail), exitStatus: 0x18)
        #expect(bad.problems.count == 2, "\(bad.problems)")
        #expect(bad.problems.first == "SMART overall health: FAILED")
        #expect(bad.problems.last?.contains("Reallocated_Sector_Ct") == true, "\(bad.problems)")
        #expect(bad.metrics["reallocated"] == 1200 && bad.metrics["pending"] == 16 && bad.metrics["uncorrectable"] == 8)
        // The prefail bit alone, health passing: still a failure.
        let prefail = SmartctlOutput.health(json: json(BurnInFixtures.smartctlATAPass), exitStatus: 0x10)
        #expect(prefail.problems.count == 1 && prefail.problems[0].hasPrefix("a pre-failure attribute"))
        // Bits for the past only (0x40 error log, 0x80 self-test log): numbers, no failure.
        #expect(SmartctlOutput.health(json: json(BurnInFixtures.smartctlATAPass), exitStatus: 0xC0).problems.isEmpty)

        #expect(SmartctlOutput.selfTestInProgress(json: json(BurnInFixtures.smartctlSelfTestRunning)) == true)
        #expect(SmartctlOutput.selfTestInProgress(json: json(BurnInFixtures.smartctlSelfTestDone)) == false)
        #expect(SmartctlOutput.selfTestInProgress(json: json(BurnInFixtures.smartctlATAPass)) == nil)
        let passed = SmartctlOutput.newestSelfTest(json: json(BurnInFixtures.smartctlLogPassed))
        #expect(passed == SmartctlOutput.SelfTest(passed: true, description: "Short offline: Completed without error"))
        let failed = SmartctlOutput.newestSelfTest(json: json(BurnInFixtures.smartctlLogFailed))
        #expect(failed == SmartctlOutput.SelfTest(passed: false, description: "Short offline: Completed: read failure"))
        #expect(SmartctlOutput.newestSelfTest(json: json(BurnInFixtures.smartctlATAPass)) == nil)
    }

    /// The same parsers on a real ATA device: QEMU's emulated SATA disk, as smartctl 7.3 in the
    /// ramdisk read it (health passed, the attributes' numbers, a short self-test done and logged).
    @Test func smartctlOnQEMUsATADisk() {
        let health = SmartctlOutput.health(json: json(BurnInFixtures.qemuATAInfo), exitStatus: 0)
        #expect(health.noSMART == nil && health.unreadable == nil && health.problems.isEmpty, "\(health)")
        #expect(health.protocolName == "ATA" && !health.isNVMe)
        #expect(health.metrics["power_on_hours"] == 1 && health.metrics["temp_c"] == 31, "\(health.metrics)")
        #expect(health.metrics["reallocated"] == 0, "\(health.metrics)")
        #expect(SmartctlOutput.selfTestInProgress(json: json(BurnInFixtures.qemuATACapabilities)) == false)
        let newest = SmartctlOutput.newestSelfTest(json: json(BurnInFixtures.qemuATASelfTestLog))
        #expect(newest == SmartctlOutput.SelfTest(passed: true, description: "Short offline: Completed without error"))
    }

    @Test func smartctlSCSISelfTestLog() {
        #expect(SmartctlOutput.selfTestInProgress(json: json(BurnInFixtures.smartctlSCSIRunning)) == true)
        #expect(SmartctlOutput.selfTestInProgress(json: json(BurnInFixtures.smartctlSCSIDone)) == false)
        let done = SmartctlOutput.newestSelfTest(json: json(BurnInFixtures.smartctlSCSIDone))
        #expect(done == SmartctlOutput.SelfTest(passed: true, description: "Background short: Completed"))
        #expect(SmartctlOutput.newestSelfTest(json: json(BurnInFixtures.smartctlSCSIRunning))?.passed == false)
    }

    @Test func smartctlNVMeHealth() {
        let ok = SmartctlOutput.health(json: json(BurnInFixtures.smartctlNVMePass), exitStatus: 0)
        #expect(ok.isNVMe && ok.problems.isEmpty && ok.noSMART == nil && ok.unreadable == nil, "\(ok)")
        let expected: [String: Double] = [
            "power_on_hours": 1250, "temp_c": 41, "percentage_used": 3, "media_errors": 0,
        ]
        #expect(ok.metrics == expected, "\(ok.metrics)")
        let bad = SmartctlOutput.health(json: json(BurnInFixtures.smartctlNVMeFail), exitStatus: 0x08)
        #expect(
            bad.problems == [
                "SMART overall health: FAILED", "NVMe critical warning 0x5",
                "available spare 4% is under its threshold 10%",
            ],
            "\(bad.problems)"
        )
        #expect(bad.metrics["percentage_used"] == 104 && bad.metrics["media_errors"] == 17)
    }

    @Test func scriptResultFileMetrics() {
        let lines = [
            "link_mbps=25000", "bad key=1", "Temp=3", "temp_c = 41.5", "nan_value=nan", "link_mbps=1", "no number here",
        ]
        let text = (lines + (0..<20).map { "m\($0)=\($0)" }).joined(separator: "\n")
        let metrics = ScriptResult.metrics(text)
        #expect(metrics.count == 16, "\(metrics)")
        #expect(metrics["link_mbps"] == 25000 && metrics["temp_c"] == 41.5 && metrics["m13"] == 13)
        #expect(metrics["Temp"] == nil && metrics["nan_value"] == nil && metrics["m14"] == nil)
        #expect(ScriptResult.metrics("").isEmpty)
    }

    @Test func latencyPercentileFromABoundedSample() {
        var rng = SplitMix64(seed: 1)
        var sample = LatencyReservoir(capacity: 1000)
        for v in (1...100).reversed() { sample.add(Double(v), using: &rng) }
        #expect(sample.percentile(0.99) == 99 && sample.percentile(0.5) == 50 && sample.percentile(1) == 100)
        var bounded = LatencyReservoir(capacity: 10)
        for v in 0..<10_000 { bounded.add(Double(v), using: &rng) }
        #expect(bounded.samples.count == 10 && bounded.seen == 10_000)
        #expect(LatencyReservoir(capacity: 5).percentile(0.99) == nil)
    }

    @Test func aResultKeepsValidMetricsAndAShortSummary() {
        var outcome = TestOutcome(.passed, "line one\nline two " + String(repeating: "x", count: 400))
        for i in 0..<20 { outcome.metrics["m\(i)"] = Double(i) }
        outcome.metrics["Bad Key"] = 1
        outcome.metrics["inf"] = .infinity
        outcome.output.append(Array("out\n".utf8))
        let spec = TestSpec(name: "probe", kind: .script, version: 3, limitSeconds: 5)
        let r = TestRunner.result(outcome, spec: spec, target: "vda", start: 2, end: 1)
        #expect(r.metrics.count == TestPlan.maxMetrics && r.metrics["Bad Key"] == nil && r.metrics["inf"] == nil)
        #expect(r.summary.count == TestPlan.maxSummary && r.summary.hasPrefix("line one line two x"))
        #expect(r.version == 3 && r.target == "vda" && r.end == 2 && r.output == "out\n" && r.outputBytes == 4)
    }

    /// The outputs of a run stay under the server's body limit: the first results keep theirs,
    /// the one that meets the budget keeps its tail, the rest none.
    @Test func theRunsOutputsStayWithinTheBudget() {
        func r(_ name: String, _ bytes: Int) -> TestResult {
            TestResult(
                name: name,
                status: .passed,
                start: 0,
                end: 1,
                output: String(repeating: "x", count: bytes - 1) + "!",
                outputBytes: Int64(bytes)
            )
        }
        let cut = Agent.withinBudget([r("a", 600), r("b", 600), r("c", 600), r("d", 10)], budget: 1000)
        #expect(cut.map { $0.output?.utf8.count ?? 0 } == [600, 400, 0, 0])
        #expect(cut[1].output?.hasSuffix("!") == true && cut.map(\.outputBytes) == [600, 600, 600, 10])
        #expect(Agent.outputBudget == 786_432)
    }
}

/// The runner on this host, with /bin/sh scripts and the real tools (skipped where a tool is
/// missing: scripts/install-deps.sh installs them). Each test has a directory of its own.
@Suite(.serialized) struct TestRunnerTests {
    static func directory() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-burnin-\(UUID())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    static func runner(_ dir: String) -> TestRunner {
        let origin = ContinuousClock.now
        return TestRunner(
            toolPath: nil,
            scratchRoot: dir + "/tests",
            log: { print("runner: \($0)") },
            clock: {
                let d = ContinuousClock.now - origin
                return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
            }
        )
    }

    static func script(_ name: String, _ content: String, limit: Int = 30) -> TestSpec {
        TestSpec(
            name: name,
            kind: .script,
            version: 1,
            sha256: TestRunner.sha256Hex(Array(content.utf8)),
            script: content,
            limitSeconds: limit
        )
    }

    /// A built-in as a commissioning resolves it (defaults filled in).
    static func builtin(_ name: String, _ parameters: [String] = []) throws -> TestSpec {
        let request = try TestPlan.parse(tests: [name], parameters: parameters).get()
        guard let spec = try TestPlan.resolve(request, scripts: [:]).get().first else {
            throw AgentFailure("\(name) resolves to no test")
        }
        return spec
    }

    static func run(_ dir: String, _ specs: [TestSpec], disks: [String] = []) -> [TestResult] {
        runner(dir).run(specs, machine: "m1", disks: disks, memoryBytes: nil, threads: nil) { _ in }
    }

    /// Whether `pid` is gone (a zombie that no one has reaped yet counts), checked for up to 5 s.
    static func gone(_ pid: pid_t) -> Bool {
        for _ in 0..<100 {
            if kill(pid, 0) != 0 { return true }
            if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")"), stat[close...].dropFirst(2).first == "Z"
            {
                return true
            }
            usleep(50_000)
        }
        return false
    }

    @Test func aScriptPastItsLimitIsKilledWithItsChild() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pidFile = dir + "/sleep.pid"
        let spec = Self.script("sleeper", "sleep 600 &\necho $! > '\(pidFile)'\nwait\n", limit: 1)
        let started = ContinuousClock.now
        let results = Self.run(dir, [spec])
        let took = ContinuousClock.now - started
        let result = try #require(results.first)
        #expect(results.count == 1 && result.status == .timedOut, "\(result)")
        #expect(took < .seconds(15), "took \(took)")
        #expect(result.exitCode == nil && result.summary.hasPrefix("still running after 1 s"), "\(result.summary)")
        let text = try String(contentsOfFile: pidFile, encoding: .utf8)
        let pid = try #require(pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(Self.gone(pid), "the script's sleep (pid \(pid)) is still running")
    }

    @Test func exitStatusesAreStatusesAndEveryTestRuns() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let specs = [
            Self.script("skipper", "echo not here\nexit 77\n"),
            Self.script("failer", "echo broken link >&2\nexit 3\n"),
            Self.script("passer", "exit 0\n"),
        ]
        var stages: [String] = []
        let results = Self.runner(dir).run(specs, machine: "m1", disks: [], memoryBytes: nil, threads: nil) {
            stages.append($0)
        }
        #expect(results.map(\.status) == [TestStatus.skipped, .failed, .passed], "\(results)")
        #expect(results.map(\.name) == ["skipper", "failer", "passer"] && results.allSatisfy { $0.version == 1 })
        #expect(stages == ["test skipper (1/3)", "test failer (2/3)", "test passer (3/3)"])
        #expect(results[0].output?.contains("not here") == true && results[0].exitCode == 77)
        #expect(results[1].exitCode == 3 && results[1].summary == "exit 3: broken link", "\(results[1].summary)")
        #expect(results.allSatisfy { $0.end >= $0.start && $0.target == nil })
    }

    @Test func aScriptGetsItsVariablesAndReportsMetrics() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let content = """
            [ "$FARRIER_MACHINE" = m1 ] || exit 10
            [ "$FARRIER_TEST" = probe ] || exit 11
            [ "$FARRIER_DISKS" = "/dev/vda /dev/nvme0n1" ] || exit 12
            [ "$(pwd)" = "$FARRIER_SCRATCH" ] || exit 13
            case "$FARRIER_RESULT" in "$FARRIER_SCRATCH"/*) ;; *) exit 14 ;; esac
            case "$PATH" in */usr/sbin:*) ;; *) exit 15 ;; esac
            echo "link_mbps=25000" > "$FARRIER_RESULT"
            echo "not a metric" >> "$FARRIER_RESULT"
            echo "temp_c=41.5" >> "$FARRIER_RESULT"
            echo checked
            """
        let results = Self.runner(dir).run(
            [Self.script("probe", content)],
            machine: "m1",
            disks: ["/dev/vda", "/dev/nvme0n1"],
            memoryBytes: nil,
            threads: nil
        ) { _ in }
        let result = try #require(results.first)
        #expect(result.status == .passed && result.exitCode == 0, "\(result)")
        let expected: [String: Double] = ["link_mbps": 25000, "temp_c": 41.5]
        #expect(result.metrics == expected, "\(result.metrics)")
        #expect(result.output == "checked\n" && result.outputBytes == 8)
        // Neither the script nor its scratch directory is left.
        #expect(!FileManager.default.fileExists(atPath: dir + "/tests/probe"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/tests/probe.scratch"))
    }

    @Test func aScriptsOutputIsKeptAsHeadAndTail() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spec = Self.script("talker", "dd if=/dev/zero bs=1024 count=1024 2>/dev/null | tr '\\000' x\n")
        let result = try #require(Self.run(dir, [spec]).first)
        #expect(result.status == .passed && result.outputBytes == 1_048_576, "\(result)")
        let marker = "\n[… \(1_048_576 - 16_384) bytes left out …]\n"
        #expect(result.output?.contains(marker) == true)
        #expect(result.output?.utf8.count == 16_384 + marker.utf8.count)
    }

    @Test func aScriptNotMatchingItsHashOrAnUnknownBuiltinIsAnError() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var tampered = Self.script("tampered", "exit 0\n")
        tampered.script = "exit 1\n"
        let unknown = TestSpec(name: "gpu-burn", kind: .builtin, limitSeconds: 10)
        let results = Self.run(dir, [tampered, unknown])
        #expect(results.map(\.status) == [TestStatus.error, .error], "\(results)")
        #expect(results[0].summary.contains("content does not match its hash"), "\(results[0].summary)")
        #expect(results[1].summary.contains("unknown built-in test 'gpu-burn'"), "\(results[1].summary)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/tests/tampered"))
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/stress-ng"), "needs stress-ng"))
    func cpuStressWithStressNG() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spec = try Self.builtin("cpu-stress", ["cpu-stress.seconds=2"])
        let result = try #require(Self.run(dir, [spec]).first)
        #expect(result.status == .passed, "\(result.summary)\n\(result.output ?? "")")
        let ops = result.metrics["bogo_ops"] ?? 0
        #expect(ops > 0 && (result.metrics["bogo_ops_per_s"] ?? 0) > 0, "\(result.metrics)")
        #expect(result.exitCode == 0 && result.seconds >= 1.5 && result.seconds < 60, "\(result.seconds) s")
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/memtester"), "needs memtester"))
    func memtesterOverEightMiB() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spec = try Self.builtin("memtester", ["memtester.mib=8"])
        let result = try #require(Self.run(dir, [spec]).first)
        #expect(result.status == .passed, "\(result.summary)\n\(result.output ?? "")")
        #expect(result.metrics["mib"] == 8 && result.metrics["errors"] == 0, "\(result.metrics)")
        #expect(result.output?.contains("Done.") == true && result.output?.contains("\u{8}") == false)
    }

    @Test func diskReadOnAFile() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/disk.img"
        #expect(FileManager.default.createFile(atPath: disk, contents: Data(count: 64 << 20)))
        let written = try FileManager.default.attributesOfItem(atPath: disk)[.modificationDate] as? Date
        let spec = try Self.builtin("disk-read", ["disk-read.seconds=2"])
        let result = try #require(Self.run(dir, [spec], disks: [disk]).first)
        #expect(result.status == .passed && result.target == "disk.img", "\(result)")
        #expect((result.metrics["read_mb_per_s"] ?? 0) > 0 && (result.metrics["iops_4k"] ?? 0) > 0, "\(result.metrics)")
        #expect(result.metrics["lat_p99_ms"] != nil, "\(result.metrics)")
        // Not what was asked for: a failure, with the numbers.
        let slow = try Self.builtin("disk-read", ["disk-read.seconds=1", "disk-read.min-mbps=100000"])
        let failed = try #require(Self.run(dir, [slow], disks: [disk]).first)
        #expect(failed.status == .failed && failed.summary.contains("under the minimum 100000 MB/s"), "\(failed)")
        #expect((failed.metrics["read_mb_per_s"] ?? 0) > 0)
        // Read only: the file was never written.
        let after = try FileManager.default.attributesOfItem(atPath: disk)
        #expect(after[.modificationDate] as? Date == written && written != nil)
        #expect((after[.size] as? NSNumber)?.intValue == 64 << 20)
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/smartctl"), "needs smartctl"))
    func smartOnFilesIsSkippedOncePerDisk() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disks = [dir + "/a.img", dir + "/b.img"]
        for d in disks { #expect(FileManager.default.createFile(atPath: d, contents: Data(count: 1 << 20))) }
        let spec = try Self.builtin("smart")
        let results = Self.run(dir, [spec], disks: disks)
        #expect(results.map { $0.target ?? "" } == ["a.img", "b.img"], "\(results)")
        #expect(results.allSatisfy { $0.status == .skipped && $0.summary.hasPrefix("no SMART") }, "\(results)")
    }
}
