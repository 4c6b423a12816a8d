import Dispatch
import FarrierCore
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The built-in tests (docs/burn-in-design.md §5): Farrier's code around stress-ng, memtester
/// and smartctl, and its own read test of a disk. Each takes its `TestContext` and comes to a
/// `TestOutcome`; what the tools print is read by the pure parsers further down
/// (`StressNGOutput`, `MemtesterOutput`, `SmartctlOutput`), which the tests check on fixtures.
enum BuiltinTests {
    static func test(named name: String) -> ((TestContext) -> TestOutcome)? {
        switch name {
        case "cpu-stress": return cpuStress
        case "memory-stress": return memoryStress
        case "memtester": return memtester
        case "smart": return smart
        case "disk-read": return diskRead
        default: return nil
        }
    }

    /// `stress-ng --cpu 0` (every CPU) through every method, verifying results.
    static func cpuStress(_ c: TestContext) -> TestOutcome {
        let seconds = max(1, c.parameter("seconds") ?? 300)
        return stress(c, stressor: "cpu", ["--cpu", "0", "--cpu-method", "all", "--verify"], seconds: seconds)
    }

    /// `stress-ng --vm`: a quarter as many workers as threads, over `percent` of the memory.
    static func memoryStress(_ c: TestContext) -> TestOutcome {
        let seconds = max(1, c.parameter("seconds") ?? 300)
        let percent = c.parameter("percent") ?? 75
        let workers = max(1, (c.threads ?? 1) / 4)
        return stress(
            c,
            stressor: "vm",
            ["--vm", "\(workers)", "--vm-bytes", "\(percent)%", "--vm-method", "all", "--verify"],
            seconds: seconds
        )
    }

    static func stress(_ c: TestContext, stressor: String, _ arguments: [String], seconds: Int) -> TestOutcome {
        let yaml = c.scratch + "/stress-ng.yaml"
        let run = c.run(["stress-ng"] + arguments + ["--timeout", "\(seconds)s", "--metrics-brief", "--yaml", yaml])
        if let halted = stopped(run, "stress-ng", limit: c.limitSeconds) { return halted }
        let code = run.exitCode ?? -1
        let entries = StressNGOutput.entries(yaml: TestRunner.readSmallFile(yaml, limit: 1 << 20) ?? "")
        var metrics: [String: Double] = [:]
        if let entry = entries.first(where: { $0.stressor == stressor }) {
            metrics["bogo_ops"] = entry.values["bogo-ops"]
            metrics["bogo_ops_per_s"] = entry.values["bogo-ops-per-second-real-time"]
        }
        var outcome = TestOutcome(
            StressNGOutput.status(exitCode: code),
            "",
            metrics: metrics,
            exitCode: code,
            output: run.output
        )
        let text = run.output.text
        let said = (StressNGOutput.failureLine(text) ?? TestOutcome.lastLine(text)).map { ": \($0)" } ?? ""
        if outcome.status == .passed {
            guard let ops = metrics["bogo_ops"] else {
                outcome.status = .error
                outcome.summary = "stress-ng exited 0 but its YAML has no metrics for \(stressor)"
                return outcome
            }
            let rate = metrics["bogo_ops_per_s"].map { ", \(format($0, 1)) bogo ops/s" } ?? ""
            outcome.summary = "stress-ng \(stressor) for \(seconds) s: \(format(ops, 0)) bogo ops\(rate), verified"
        } else if outcome.status == .skipped {
            outcome.summary = "stress-ng exit 4: the \(stressor) stressor is not implemented here"
        } else {
            outcome.summary = "stress-ng exit \(code)\(said)"
        }
        return outcome
    }

    /// `memtester` over the memory asked for (`mib`; 0: what is available, less 256 MiB for the
    /// ramdisk), in up to 8 processes side by side (memtester is single-threaded).
    static func memtester(_ c: TestContext) -> TestOutcome {
        let loops = max(1, c.parameter("loops") ?? 1)
        var total = c.parameter("mib") ?? 0
        if total <= 0 {
            let meminfo = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) ?? ""
            guard let available = MemtesterOutput.availableMiB(meminfo: meminfo) else {
                return TestOutcome(.error, "cannot read MemAvailable from /proc/meminfo")
            }
            total = max(16, available - 256)
        }
        let (count, each) = MemtesterOutput.split(totalMiB: total, threads: c.threads)
        let command = ["memtester", "\(each)M", "\(loops)"]
        var screens = Array(repeating: MemtesterOutput.Screen(), count: count)
        let runs = CommandRunner.runAll(
            Array(repeating: command, count: count),
            limitSeconds: c.limitSeconds,
            environment: c.environment
        ) { index, chunk in
            screens[index].feed(chunk)
        }
        var output = CapturedOutput()
        for i in screens.indices {
            screens[i].finish()
            output.append(Array("memtester \(i + 1)/\(count): \(command.joined(separator: " "))\n".utf8))
            output.append(Array(screens[i].lines.text.utf8))
        }
        let errors = screens.reduce(0) { $0 + $1.failures }
        let tested = screens.reduce(Int64(0)) { $0 + ($1.gotBytes ?? Int64(each) << 20) }
        var metrics = ["errors": Double(errors), "mib": Double(tested) / 1_048_576]
        if let memory = c.memoryBytes, memory > 0 {
            metrics["coverage_percent"] = Double(tested) / Double(memory) * 100
        }
        let codes = runs.compactMap(\.exitCode)
        let exitCode = codes.first { $0 != 0 } ?? codes.first
        let size = "\(format(Double(tested) / 1_048_576, 0)) MiB in \(count) process\(count == 1 ? "" : "es")"
        func outcome(_ status: TestStatus, _ summary: String) -> TestOutcome {
            TestOutcome(status, summary, metrics: metrics, exitCode: exitCode, output: output)
        }
        // Not started, or no memtester in the ramdisk (the shell's 126, 127): nothing was tested.
        if let missing = runs.first(where: { $0.failure != nil || $0.exitCode == 126 || $0.exitCode == 127 }),
            let halted = Self.stopped(missing, "memtester", limit: c.limitSeconds)
        {
            return outcome(halted.status, halted.summary)
        }
        // Exit bits (memtester's source): 0x01 it could not start; 0x02 a stuck address line;
        // 0x04 another test found an error.
        if errors > 0 || codes.contains(where: { $0 < 8 && $0 & 0x06 != 0 }) {
            let first = screens.lazy.compactMap(\.firstFailure).first.map { ", first: \($0)" } ?? ""
            return outcome(.failed, "\(errors) error\(errors == 1 ? "" : "s") over \(size)\(first)")
        }
        if let halted = runs.lazy.compactMap({ Self.stopped($0, "memtester", limit: c.limitSeconds) }).first {
            return outcome(halted.status, halted.summary)
        }
        if let bad = exitCode, bad != 0 {
            let said = screens.lazy.compactMap { TestOutcome.lastLine($0.lines.text) }.first.map { ": \($0)" } ?? ""
            return outcome(.error, "memtester could not run (exit \(bad))\(said)")
        }
        return outcome(.passed, "\(size), \(loops) loop\(loops == 1 ? "" : "s"): no errors")
    }

    /// SMART through smartctl: the health and attributes, then (ATA and SCSI, mode short or long)
    /// a self-test, waited for, and the self-test log's newest entry. NVMe gets health only:
    /// smartctl 7.3 has no NVMe self-test.
    static func smart(_ c: TestContext) -> TestOutcome {
        guard let device = c.disk else { return TestOutcome(.error, "no disk to test: the ramdisk sees none") }
        let mode = c.spec.parameters["mode"] ?? "short"
        let deadline = ContinuousClock.now + CommandRunner.duration(c.limitSeconds)
        var transcript = CapturedOutput()
        var metrics: [String: Double] = [:]
        var exitCode: Int32?
        func smartctl(_ arguments: [String]) -> CommandOutcome {
            let left = Double((deadline - ContinuousClock.now).components.seconds)
            let run = c.run(["smartctl"] + arguments + [device], limit: max(5, min(60, left)), keep: 4 << 20)
            transcript.append(Array("$ smartctl \(arguments.joined(separator: " ")) \(device)\n".utf8))
            transcript.append(run.bytes)
            transcript.append([0x0A])
            return run
        }
        func finish(_ status: TestStatus, _ summary: String) -> TestOutcome {
            TestOutcome(status, summary, metrics: metrics, exitCode: exitCode, output: transcript)
        }
        let info = smartctl(["-j", "-H", "-A", "-i"])
        exitCode = info.exitCode
        if let halted = stopped(info, "smartctl", limit: 60, missingTool: false) {
            return finish(halted.status, halted.summary)
        }
        let health = SmartctlOutput.health(json: info.bytes, exitStatus: info.exitCode ?? 0)
        if let why = health.noSMART { return finish(.skipped, "no SMART: \(why)") }
        if let why = health.unreadable { return finish(.error, why) }
        metrics = health.metrics
        let problems = health.problems.joined(separator: "; ")
        if health.isNVMe {
            let note = mode == "health" ? "health only" : "health only: smartctl 7.3 cannot start an NVMe self-test"
            return health.problems.isEmpty ? finish(.passed, note) : finish(.failed, "\(problems); \(note)")
        }
        if !health.problems.isEmpty { return finish(.failed, problems) }
        if mode == "health" { return finish(.passed, "health passed (mode health: no self-test)") }
        let kind = mode == "long" ? "long" : "short"
        let started = smartctl(["-j", "-t", kind])
        if let halted = stopped(started, "smartctl -t \(kind)", limit: 60, missingTool: false) {
            return finish(halted.status, halted.summary)
        }
        let said = SmartctlOutput.messages(json: started.bytes)
        // A self-test already running (an agent restarted in this boot): its result will do.
        let running = said.contains { $0.contains("Can't start self-test without aborting current test") }
        if (started.exitCode ?? 0) & 0x07 != 0, !running {
            return finish(.error, "cannot start a \(kind) self-test: \(said.first ?? "exit \(started.exitCode ?? 0)")")
        }
        // SCSI has no self-test status in -c: its log says whether one is running.
        let scsi = health.protocolName == "SCSI"
        var inProgress = true
        while inProgress, deadline - ContinuousClock.now > .seconds(15) {
            pause(seconds: 10)
            let check = smartctl(scsi ? ["-j", "-l", "selftest"] : ["-j", "-c"])
            if check.timedOut || check.exitCode == nil { continue }
            inProgress = SmartctlOutput.selfTestInProgress(json: check.bytes) ?? false
        }
        if inProgress {
            _ = smartctl(["-X"])
            return finish(.timedOut, "the \(kind) self-test was still running after \(Int(c.limitSeconds)) s: aborted")
        }
        let log = smartctl(["-j", "-l", "selftest"])
        guard let newest = SmartctlOutput.newestSelfTest(json: log.bytes) else {
            return finish(.error, "the self-test log has no entry after the \(kind) self-test")
        }
        if newest.passed { return finish(.passed, "self-test \(kind): \(newest.description); health passed") }
        return finish(.failed, "self-test \(kind): \(newest.description)")
    }

    /// The disk's read speed (`DiskRead`), on a thread of its own: a read that never returns
    /// (a dying disk) ends the test at its limit, not the agent.
    static func diskRead(_ c: TestContext) -> TestOutcome {
        guard let device = c.disk else { return TestOutcome(.error, "no disk to test: the ramdisk sees none") }
        let seconds = Double(max(1, c.parameter("seconds") ?? 30))
        let minimum = c.parameter("min-mbps").map { Double($0) }
        let box = OutcomeBox()
        let done = DispatchSemaphore(value: 0)
        let reader = Thread {
            box.set(DiskRead.measure(path: device, seconds: seconds, minimumMBps: minimum))
            done.signal()
        }
        reader.name = "disk-read"
        reader.start()
        guard done.wait(timeout: .now() + c.limitSeconds) == .success else {
            return TestOutcome(.timedOut, "reading \(device) did not end within \(Int(c.limitSeconds)) s")
        }
        return box.value ?? TestOutcome(.error, "the read thread came to no outcome")
    }

    /// The outcome of a command that ended before saying anything of its own: it could not
    /// start, ran past its limit, was killed by a signal, or (`missingTool`) its shell found no
    /// such program (126, 127). Nil when it exited with a status of its own.
    static func stopped(
        _ run: CommandOutcome,
        _ tool: String,
        limit: Double,
        missingTool: Bool = true
    ) -> TestOutcome? {
        let said = TestOutcome.lastLine(run.output.text).map { ": \($0)" } ?? ""
        if let failure = run.failure { return TestOutcome(.error, "cannot start \(tool): \(failure)") }
        if run.timedOut {
            let summary = "\(tool) still running after \(Int(limit)) s: killed\(said)"
            return TestOutcome(.timedOut, summary, output: run.output)
        }
        if let signal = run.signal {
            return TestOutcome(.error, "\(tool) was killed by signal \(signal)\(said)", output: run.output)
        }
        guard let code = run.exitCode else {
            return TestOutcome(.error, "\(tool): its exit status was lost", output: run.output)
        }
        if missingTool, code == 126 || code == 127 {
            return TestOutcome(.error, "\(tool) cannot run (exit \(code))\(said)", exitCode: code, output: run.output)
        }
        return nil
    }

    /// Waits `seconds` (poll(2) with no descriptor; a signal may end it early).
    static func pause(seconds: Double) {
        _ = Glibc.poll(nil, 0, Int32(max(0, min(seconds, 3600)) * 1000))
    }

    static func format(_ value: Double, _ places: Int) -> String { String(format: "%.\(places)f", value) }
}

/// A result handed from a thread that may outlive its waiter.
final class OutcomeBox: Sendable {
    private let stored = Mutex<TestOutcome?>(nil)
    func set(_ outcome: TestOutcome) { stored.withLock { $0 = outcome } }
    var value: TestOutcome? { stored.withLock { $0 } }
}

/// stress-ng 0.15's output: its exit status (stress-ng.h) and its `--yaml` file, read by lines
/// (FarrierAgent has no YAML library). The file, as 0.15.06 writes it:
///
///     metrics:
///         - stressor: cpu
///           bogo-ops: 3269
///           bogo-ops-per-second-usr-sys-time: 1633.650502
///           bogo-ops-per-second-real-time: 1633.177082
///           wall-clock-time: 2.001620
///           ...
enum StressNGOutput {
    /// One entry of the `metrics:` list: its stressor and its numbers, by their YAML keys.
    struct Entry: Sendable, Equatable {
        var stressor: String
        var values: [String: Double]
    }

    /// 0 passed; 2 (a stressor failed, verification included) or 5 (a stressor was killed by a
    /// signal) failed; 4 (not implemented here) skipped; 1 (usage), 3 (no resource) and
    /// anything else: the test could not run.
    static func status(exitCode: Int32) -> TestStatus {
        switch exitCode {
        case 0: .passed
        case 2, 5: .failed
        case 4: .skipped
        default: .error
        }
    }

    /// The `metrics:` list's entries, in order.
    static func entries(yaml: String) -> [Entry] {
        var entries: [Entry] = []
        var inMetrics = false
        for raw in yaml.split(whereSeparator: \.isNewline) {
            let line = String(raw)
            if line.hasPrefix("---") || line.hasPrefix("...") {
                inMetrics = false
                continue
            }
            // A key at the margin starts a section; a list may sit at the margin under it.
            if !line.hasPrefix(" ") && !line.hasPrefix("-") {
                inMetrics = line.trimmingCharacters(in: .whitespaces) == "metrics:"
                continue
            }
            guard inMetrics else { continue }
            var text = line.trimmingCharacters(in: .whitespaces)
            if text.hasPrefix("- ") {
                entries.append(Entry(stressor: "", values: [:]))
                text = String(text.dropFirst(2)).trimmingCharacters(in: .whitespaces)
            }
            guard !entries.isEmpty, let colon = text.firstIndex(of: ":") else { continue }
            let key = text[..<colon].trimmingCharacters(in: .whitespaces)
            var value = text[text.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let quote = value.first, quote == "'" || quote == "\"", value.last == quote {
                value = String(value.dropFirst().dropLast())
            }
            if key == "stressor" {
                entries[entries.count - 1].stressor = value
            } else if let number = Double(value) {
                entries[entries.count - 1].values[key] = number
            }
        }
        return entries
    }

    /// The first line stress-ng logged as a failure or an error, for the summary.
    static func failureLine(_ output: String) -> String? {
        output.split(whereSeparator: \.isNewline).first { $0.contains(" fail:") || $0.contains(" error:") }
            .map { String($0.trimmingCharacters(in: .whitespaces).prefix(160)) }
    }
}

/// memtester 4.6's output. It draws its progress with backspaces (`setting  12` overwritten by
/// `testing  12`, a spinner, then `ok`), and writes `FAILURE: …` lines to standard error, one for
/// each error found; its exit status has bits for what failed.
enum MemtesterOutput {
    /// The output as a terminal shows it, line by line, fed as it comes: a backspace moves back
    /// over what the next bytes overwrite. Counts the `FAILURE` lines.
    struct Screen: Sendable {
        static let maxColumns = 512
        private var line: [UInt8] = []
        private var column = 0
        /// The rendered lines (trailing blanks removed), head and tail.
        private(set) var lines = CapturedOutput()
        private(set) var failures = 0
        private(set) var firstFailure: String?
        /// What its `got  8MB (8388608 bytes)` line says it tested.
        private(set) var gotBytes: Int64?
        /// It got to its last line, `Done.`.
        private(set) var done = false

        init() {}

        mutating func feed(_ bytes: some Sequence<UInt8>) {
            for byte in bytes {
                switch byte {
                case 0x08: column = max(0, column - 1)
                case 0x0A: endLine()
                case 0x0D: column = 0
                default:
                    if column < line.count {
                        line[column] = byte
                    } else if column == line.count, line.count < Self.maxColumns {
                        line.append(byte)
                    }
                    column += 1
                }
            }
        }

        /// The last line, if the output did not end with a newline.
        mutating func finish() {
            if !line.isEmpty { endLine() }
        }

        private mutating func endLine() {
            var end = line.count
            while end > 0, line[end - 1] == 0x20 { end -= 1 }
            let text = String(decoding: line[..<end], as: UTF8.self)
            line.removeAll(keepingCapacity: true)
            column = 0
            lines.append(Array((text + "\n").utf8))
            if text.contains("FAILURE") {
                failures += 1
                if firstFailure == nil { firstFailure = String(text.trimmingCharacters(in: .whitespaces).prefix(120)) }
            }
            if text.hasPrefix("got "), let open = text.firstIndex(of: "("), let close = text.range(of: " bytes)"),
                open < close.lowerBound
            {
                gotBytes = Int64(text[text.index(after: open)..<close.lowerBound])
            }
            if text == "Done." { done = true }
        }
    }

    static func parse(_ text: String) -> Screen {
        var screen = Screen()
        screen.feed(text.utf8)
        screen.finish()
        return screen
    }

    /// `MemAvailable` of /proc/meminfo, in MiB.
    static func availableMiB(meminfo: String) -> Int? {
        for line in meminfo.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            guard fields.count >= 2, let kib = Int(fields[1]) else { return nil }
            return kib / 1024
        }
        return nil
    }

    /// `totalMiB` over up to min(threads, 8) processes of at least 4 MiB each.
    static func split(totalMiB: Int, threads: Int?) -> (processes: Int, eachMiB: Int) {
        let processes = max(1, min(min(threads ?? 1, 8), totalMiB / 4))
        return (processes, max(4, totalMiB / processes))
    }
}

/// smartctl 7.3's JSON (`-j`), by the key names of its source (ataprint.cpp, scsiprint.cpp,
/// nvmeprint.cpp). Its exit status has bits: 0x01 command line or device type not understood,
/// 0x02 device open failed, 0x04 a SMART command failed, 0x08 the disk is failing, 0x10 a
/// pre-failure attribute is at or below its threshold, 0x20–0x80 trouble in the past.
enum SmartctlOutput {
    /// What `smartctl -j -H -A -i` says of a device.
    struct Health: Sendable, Equatable {
        /// Why smartctl has no SMART for the device (a virtio disk, a file), or nil.
        var noSMART: String?
        /// Why the answer cannot be used, or nil.
        var unreadable: String?
        /// `device.protocol`: ATA, SCSI or NVMe.
        var protocolName = ""
        var isNVMe = false
        /// What fails the disk now (none: healthy).
        var problems: [String] = []
        var metrics: [String: Double] = [:]
    }

    /// A self-test log's newest entry.
    struct SelfTest: Sendable, Equatable {
        var passed: Bool
        var description: String
    }

    static func health(json: [UInt8], exitStatus: Int32) -> Health {
        var h = Health()
        guard let root = object(json) else {
            h.unreadable = "smartctl's output is not JSON (exit \(exitStatus))"
            return h
        }
        let said = messages(root)
        let passed = flag(value(root, "smart_status", "passed"))
        if let unknown = said.first(where: { $0.contains("Unable to detect device type") }) {
            h.noSMART = unknown
            return h
        }
        if exitStatus & 0x02 != 0, passed == nil {
            h.noSMART = said.first ?? "smartctl cannot open the device"
            return h
        }
        if flag(value(root, "smart_support", "available")) == false {
            h.noSMART = "the device has no SMART"
            return h
        }
        if exitStatus & 0x01 != 0 {
            h.unreadable = "smartctl did not take the command: \(said.first ?? "exit \(exitStatus)")"
            return h
        }
        h.protocolName = value(root, "device", "protocol") as? String ?? ""
        h.isNVMe = value(root, "device", "type") as? String == "nvme" || h.protocolName == "NVMe"
        let nvme = value(root, "nvme_smart_health_information_log") as? [String: Any]
        guard passed != nil || (h.isNVMe && nvme != nil) else {
            h.unreadable = "smartctl gave no health status: \(said.first ?? "exit \(exitStatus)")"
            return h
        }
        if exitStatus & 0x08 != 0 || passed == false { h.problems.append("SMART overall health: FAILED") }
        let table = value(root, "ata_smart_attributes", "table") as? [Any] ?? []
        let attributes = table.compactMap { $0 as? [String: Any] }
        if exitStatus & 0x10 != 0 {
            let failing = attributes.filter { $0["when_failed"] as? String == "now" }
                .compactMap { $0["name"] as? String }
            let names = failing.isEmpty ? "" : " (\(failing.joined(separator: ", ")))"
            h.problems.append("a pre-failure attribute is at or below its threshold\(names)")
        }
        h.metrics["power_on_hours"] = number(value(root, "power_on_time", "hours"))
        h.metrics["temp_c"] = number(value(root, "temperature", "current"))
        let counted = [5: "reallocated", 197: "pending", 198: "uncorrectable"]
        for attribute in attributes {
            guard let id = number(attribute["id"]).map({ Int($0) }), let key = counted[id] else { continue }
            h.metrics[key] = number(value(attribute, "raw", "value"))
        }
        if let nvme {
            h.metrics["percentage_used"] = number(nvme["percentage_used"])
            h.metrics["media_errors"] = number(nvme["media_errors"])
            if h.metrics["power_on_hours"] == nil { h.metrics["power_on_hours"] = number(nvme["power_on_hours"]) }
            if h.metrics["temp_c"] == nil { h.metrics["temp_c"] = number(nvme["temperature"]) }
            if let warning = number(nvme["critical_warning"]), warning != 0 {
                h.problems.append("NVMe critical warning 0x\(String(Int(warning), radix: 16))")
            }
            if let spare = number(nvme["available_spare"]), let threshold = number(nvme["available_spare_threshold"]),
                spare < threshold
            {
                h.problems.append("available spare \(Int(spare))% is under its threshold \(Int(threshold))%")
            }
        }
        return h
    }

    /// Whether a self-test is running: ATA from `-c` (`ata_smart_data.self_test.status.value`,
    /// 0xF in its high nibble), SCSI from `-l selftest` (its newest entry). Nil: neither there.
    static func selfTestInProgress(json: [UInt8]) -> Bool? {
        guard let root = object(json) else { return nil }
        if let status = number(value(root, "ata_smart_data", "self_test", "status", "value")) {
            return Int(status) >> 4 == 0xF
        }
        if let newest = value(root, "scsi_self_test_0") as? [String: Any] {
            if flag(newest["self_test_in_progress"]) == true { return true }
            return number(value(newest, "result", "value")).map { Int($0) == 0xF } ?? false
        }
        return nil
    }

    /// The newest entry of `-l selftest`: ATA's standard log (`status.passed`, absent for a
    /// test that was aborted, is not a pass), or SCSI's (result 0: completed without error).
    static func newestSelfTest(json: [UInt8]) -> SelfTest? {
        guard let root = object(json) else { return nil }
        if let table = value(root, "ata_smart_self_test_log", "standard", "table") as? [Any],
            let newest = table.first as? [String: Any]
        {
            let type = value(newest, "type", "string") as? String ?? "self-test"
            let status = value(newest, "status", "string") as? String ?? "no status"
            return SelfTest(passed: flag(value(newest, "status", "passed")) == true, description: "\(type): \(status)")
        }
        if let newest = value(root, "scsi_self_test_0") as? [String: Any] {
            let code = value(newest, "code", "string") as? String ?? "self-test"
            let result = value(newest, "result", "string") as? String ?? "no result"
            return SelfTest(passed: number(value(newest, "result", "value")) == 0, description: "\(code): \(result)")
        }
        return nil
    }

    /// `smartctl.messages[].string`.
    static func messages(json: [UInt8]) -> [String] { object(json).map { messages($0) } ?? [] }

    static func messages(_ root: [String: Any]) -> [String] {
        let list = value(root, "smartctl", "messages") as? [Any] ?? []
        return list.compactMap { ($0 as? [String: Any])?["string"] as? String }
    }

    static func object(_ json: [UInt8]) -> [String: Any]? {
        guard !json.isEmpty else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(json))) as? [String: Any]
    }

    /// The value at `path` in nested objects.
    static func value(_ root: Any?, _ path: String...) -> Any? {
        var v = root
        for key in path { v = (v as? [String: Any])?[key] }
        return v
    }

    static func number(_ v: Any?) -> Double? { (v as? NSNumber)?.doubleValue }

    static func flag(_ v: Any?) -> Bool? {
        if let b = v as? Bool { return b }
        return (v as? NSNumber)?.boolValue
    }
}

/// The read test of one disk, never a write: sequential 1 MiB reads from its start (wrapping at
/// its end) for half the time, then random 4 KiB reads across it for the other half, with the
/// page cache bypassed (O_DIRECT) where the device or file system allows.
enum DiskRead {
    static let chunk = 1 << 20
    static let block = 4096

    static func measure(path: String, seconds: Double, minimumMBps: Double?) -> TestOutcome {
        var direct = true
        var fd = open(path, O_RDONLY | O_CLOEXEC | DiskEraser.O_DIRECT)
        if fd < 0, errno == EINVAL {
            direct = false
            fd = openBuffered(path)
        }
        guard fd >= 0 else { return TestOutcome(.error, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let size = Int64(lseek(fd, 0, SEEK_END))
        guard size >= Int64(block) else {
            return TestOutcome(.error, "\(path) reads as \(size) bytes: nothing to test")
        }
        var memory: UnsafeMutableRawPointer?
        guard posix_memalign(&memory, block, chunk) == 0, let buffer = memory else {
            return TestOutcome(.error, "cannot allocate an aligned read buffer")
        }
        defer { free(buffer) }
        let half = CommandRunner.duration(seconds / 2)

        var offset: Int64 = 0
        var sequential: Int64 = 0
        let sequentialStart = ContinuousClock.now
        while ContinuousClock.now - sequentialStart < half {
            // Whole blocks only (O_DIRECT); a last piece smaller than one is left out.
            let length = Int(min(Int64(chunk), size - offset)) & ~(block - 1)
            let n = length > 0 ? pread(fd, buffer, length, off_t(offset)) : 0
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                if e == EINVAL, direct, sequential == 0 {
                    // Opened with O_DIRECT, but the file system refuses such reads.
                    direct = false
                    close(fd)
                    fd = openBuffered(path)
                    guard fd >= 0 else {
                        return TestOutcome(.error, "cannot open \(path): \(String(cString: strerror(errno)))")
                    }
                    continue
                }
                return failure(path, offset: offset, errno: e)
            }
            sequential += Int64(n)
            offset += Int64(n)
            if n == 0 || offset >= size { offset = 0 }
        }
        let sequentialSeconds = toSeconds(ContinuousClock.now - sequentialStart)

        let blocks = size / Int64(block)
        var rng = SplitMix64(seed: UInt64.random(in: 0...UInt64.max))
        var latencies = LatencyReservoir(capacity: 65_536)
        var reads = 0
        let randomStart = ContinuousClock.now
        var now = randomStart
        while now - randomStart < half {
            let at = Int64.random(in: 0..<blocks, using: &rng) * Int64(block)
            let before = ContinuousClock.now
            let n = pread(fd, buffer, block, off_t(at))
            now = ContinuousClock.now
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                return failure(path, offset: at, errno: e)
            }
            reads += 1
            latencies.add(toSeconds(now - before), using: &rng)
        }
        let randomSeconds = toSeconds(now - randomStart)

        let mbps = sequentialSeconds > 0 ? Double(sequential) / 1e6 / sequentialSeconds : 0
        let iops = randomSeconds > 0 ? Double(reads) / randomSeconds : 0
        var metrics = ["read_mb_per_s": mbps, "iops_4k": iops]
        let p99 = latencies.percentile(0.99).map { $0 * 1000 }
        if let p99 { metrics["lat_p99_ms"] = p99 }
        let how = direct ? "O_DIRECT" : "buffered: O_DIRECT refused, the page cache may serve reads"
        let numbers = [
            "sequential \(BuiltinTests.format(mbps, 1)) MB/s", "random 4 KiB \(BuiltinTests.format(iops, 0)) IOPS",
            p99.map { "p99 \(BuiltinTests.format($0, 2)) ms" } ?? "p99 unknown",
        ].joined(separator: ", ")
        let details = [
            "\(path): \(size) bytes, \(how)",
            "sequential: \(sequential) bytes in \(BuiltinTests.format(sequentialSeconds, 3)) s",
            "random: \(reads) reads of 4 KiB in \(BuiltinTests.format(randomSeconds, 3)) s", "",
        ]
        var output = CapturedOutput()
        output.append(Array(details.joined(separator: "\n").utf8))
        if let minimumMBps, mbps < minimumMBps {
            let floor = BuiltinTests.format(minimumMBps, 0)
            let summary = "\(numbers): under the minimum \(floor) MB/s (\(how))"
            return TestOutcome(.failed, summary, metrics: metrics, output: output)
        }
        return TestOutcome(.passed, "\(numbers) (\(how))", metrics: metrics, output: output)
    }

    static func openBuffered(_ path: String) -> Int32 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 { _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) }
        return fd
    }

    static func failure(_ path: String, offset: Int64, errno e: Int32) -> TestOutcome {
        TestOutcome(.failed, "read error on \(path) at offset \(offset): \(String(cString: strerror(e))) (errno \(e))")
    }

    static func toSeconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

/// A bounded, uniform sample of latencies (reservoir sampling), for a percentile of a run of any
/// length in fixed memory.
struct LatencyReservoir: Sendable {
    let capacity: Int
    private(set) var samples: [Double] = []
    /// Values offered in all.
    private(set) var seen = 0

    init(capacity: Int) { self.capacity = max(1, capacity) }

    mutating func add<G: RandomNumberGenerator>(_ value: Double, using rng: inout G) {
        seen += 1
        if samples.count < capacity {
            samples.append(value)
            return
        }
        let slot = Int.random(in: 0..<seen, using: &rng)
        if slot < capacity { samples[slot] = value }
    }

    /// The nearest-rank percentile (`p` from 0 to 1) of the sample; nil when it is empty.
    func percentile(_ p: Double) -> Double? {
        guard !samples.isEmpty else { return nil }
        let sorted = samples.sorted()
        let rank = Int((p * Double(sorted.count)).rounded(.up))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }
}

/// A fast generator for the random reads' offsets (SplitMix64): the system's would make a
/// system call for each read it times.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
