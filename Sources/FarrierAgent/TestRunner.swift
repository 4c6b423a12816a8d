import Crypto
import FarrierCore
import Foundation
import SystemSupport
import WireSupport

#if canImport(Glibc)
import Glibc
#endif

// Commissioning tests (docs/burn-in-design.md §5): the runner, the way it runs a command under
// a time limit, and admin scripts. The built-in tests are in BuiltinTests.swift.

/// The first 4 KiB and the last 12 KiB of a byte stream, and how long the stream was: what a
/// test's result keeps of its output, however much it printed. A pure value.
public struct CapturedOutput: Sendable, Hashable {
    public static let headBytes = 4096
    public static let tailBytes = 12_288

    /// The stream's first bytes, up to `headBytes`.
    public private(set) var head: [UInt8] = []
    /// The last bytes after the head, up to `tailBytes`, as a ring: once it is full, the oldest
    /// byte is at `ringStart`.
    private var ring: [UInt8] = []
    private var ringStart = 0
    /// Bytes in the whole stream.
    public private(set) var total: Int64 = 0

    public init() {}

    /// The bytes kept after the head, oldest first.
    public var tail: [UInt8] {
        var out = Array(ring[ringStart...])
        out.append(contentsOf: ring[..<ringStart])
        return out
    }

    /// Whether bytes between the head and the tail were left out.
    public var overflowed: Bool { total > Int64(head.count + ring.count) }

    /// The head and the tail as text (bytes that are not UTF-8 replaced), with a line between
    /// them saying how many bytes were left out, if any were.
    public var text: String {
        let left = total - Int64(head.count + ring.count)
        guard left > 0 else { return String(decoding: head + tail, as: UTF8.self) }
        return String(decoding: head, as: UTF8.self) + "\n[… \(left) bytes left out …]\n"
            + String(decoding: tail, as: UTF8.self)
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        total += Int64(bytes.count)
        var rest = bytes[...]
        if head.count < Self.headBytes {
            let n = min(Self.headBytes - head.count, rest.count)
            head.append(contentsOf: rest.prefix(n))
            rest = rest.dropFirst(n)
        }
        if rest.isEmpty { return }
        if rest.count >= Self.tailBytes {
            ring = Array(rest.suffix(Self.tailBytes))
            ringStart = 0
            return
        }
        if ring.count < Self.tailBytes {
            let n = min(Self.tailBytes - ring.count, rest.count)
            ring.append(contentsOf: rest.prefix(n))
            rest = rest.dropFirst(n)
        }
        // The ring is full: the rest overwrites its oldest bytes (at most twice round its end).
        while !rest.isEmpty {
            let n = min(Self.tailBytes - ringStart, rest.count)
            ring.replaceSubrange(ringStart..<ringStart + n, with: rest.prefix(n))
            ringStart = (ringStart + n) % Self.tailBytes
            rest = rest.dropFirst(n)
        }
    }

    public mutating func append(_ bytes: [UInt8]) { bytes.withUnsafeBytes { append($0) } }
}

/// How one command ended.
struct CommandOutcome: Sendable {
    /// Its exit status; nil when a signal ended it, or it could not be reaped.
    var exitCode: Int32?
    /// The signal that ended it.
    var signal: Int32?
    /// It was still running at its limit, and was killed.
    var timedOut = false
    var output = CapturedOutput()
    /// The whole output, up to the bytes asked for (`keep`), for a parser.
    var bytes: [UInt8] = []
    /// Why it could not start, or nil.
    var failure: String?
}

/// Runs commands the way tests run: each in a session of its own, through `/bin/sh` so that
/// the kernel's OOM killer takes the test before the agent, with standard output and error on
/// a pipe this thread reads with poll(2) against a deadline. At the limit the command's process
/// group gets SIGTERM, then SIGKILL 10 s later; what the command leaves behind in its group (a
/// background job) gets SIGKILL when it ends. Every wait is bounded.
enum CommandRunner {
    /// The PATH of a test, after the agent's `--tool-path` when one is given.
    static let systemPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    /// Run by /bin/sh with the command in `$0` and `$@`: the test raises its own OOM score (the
    /// agent lowers its own to -1000), then becomes the command. Standard error goes to /dev/null
    /// first, so a /proc that refuses the write says nothing into the test's output.
    static let wrapper = "echo 1000 2>/dev/null >/proc/self/oom_score_adj; exec \"$0\" \"$@\""
    /// Seconds from SIGTERM to SIGKILL at the limit, and then for SIGKILL to take.
    static let termGrace = 10.0
    static let killGrace = 5.0

    /// `PATH` (the tool path first, when given), then `variables` as `KEY=value`.
    static func environment(toolPath: String?, _ variables: [(String, String)] = []) -> [String] {
        let path = "PATH=" + (toolPath.map { $0 + ":" } ?? "") + systemPath
        return [path] + variables.map { "\($0.0)=\($0.1)" }
    }

    /// Runs `command` (looked up in `environment`'s PATH) for at most `limitSeconds`, in
    /// `directory` when given. `keep`: bytes of its output to keep whole, besides the head and tail.
    static func run(
        _ command: [String],
        limitSeconds: Double,
        environment: [String],
        directory: String? = nil,
        keep: Int = 0
    ) -> CommandOutcome {
        let outcomes = runAll(
            [command],
            limitSeconds: limitSeconds,
            environment: environment,
            directory: directory,
            keep: keep
        )
        return outcomes.first ?? CommandOutcome(failure: "no command")
    }

    /// Runs `commands` side by side, all under one limit; `onOutput` gets each one's output as
    /// it comes (the command's index, the bytes). One outcome for each command, in order.
    static func runAll(
        _ commands: [[String]],
        limitSeconds: Double,
        environment: [String],
        directory: String? = nil,
        keep: Int = 0,
        onOutput: (Int, UnsafeRawBufferPointer) -> Void = { _, _ in }
    ) -> [CommandOutcome] {
        let deadline = ContinuousClock.now + duration(limitSeconds)
        var outcomes = commands.map { _ in CommandOutcome() }
        var children: [Child] = []
        for (i, command) in commands.enumerated() {
            do {
                children.append(try start(command, index: i, environment: environment, directory: directory))
            } catch {
                outcomes[i].failure = "\(error)"
            }
        }
        var io = Reader(keep: keep)
        io.wait(&children, until: deadline, onOutput: onOutput)
        if children.contains(where: { !$0.reaped }) {
            for i in children.indices where !children[i].reaped { children[i].timedOut = true }
            send(SIGTERM, to: children)
            io.wait(&children, until: ContinuousClock.now + duration(termGrace), onOutput: onOutput)
            send(SIGKILL, to: children)
            io.wait(&children, until: ContinuousClock.now + duration(killGrace), onOutput: onOutput)
        }
        for i in children.indices {
            // What the command left running in its group goes with it.
            if children[i].reaped { kill(-children[i].pid, SIGKILL) }
            io.drain(&children[i], reads: 64, onOutput: onOutput)
            if children[i].fd >= 0 { close(children[i].fd) }
            children[i].fd = -1
            outcomes[children[i].index] = outcome(children[i])
        }
        return outcomes
    }

    /// One running command.
    struct Child {
        var index: Int
        var pid: pid_t
        /// The pipe's read end; -1 once closed.
        var fd: Int32
        /// Its wait status, once reaped.
        var status: Int32?
        var reaped = false
        var timedOut = false
        var output = CapturedOutput()
        var bytes: [UInt8] = []
    }

    /// `seconds` as a duration, whole milliseconds (negative: none; at most about 31 years).
    static func duration(_ seconds: Double) -> Duration {
        .milliseconds(Int64(max(0, min(seconds, 1e9)) * 1000))
    }

    static func start(_ command: [String], index: Int, environment: [String], directory: String?) throws -> Child {
        guard !command.isEmpty else { throw AgentFailure("an empty command") }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw AgentFailure("cannot make a pipe: \(String(cString: strerror(errno)))") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        // The child has its own copy once it is started.
        defer { close(fds[1]) }
        do {
            let pid = try ProcessSpawn.spawn(
                ["/bin/sh", "-c", wrapper] + command,
                outputFD: fds[1],
                directory: directory,
                environment: environment
            )
            return Child(index: index, pid: pid, fd: fds[0])
        } catch {
            close(fds[0])
            throw AgentFailure(error.description)
        }
    }

    /// `signal` to each child still running, and to its process group.
    static func send(_ signal: Int32, to children: [Child]) {
        for c in children where !c.reaped {
            kill(-c.pid, signal)
            kill(c.pid, signal)
        }
    }

    static func outcome(_ c: Child) -> CommandOutcome {
        var o = CommandOutcome(timedOut: c.timedOut, output: c.output, bytes: c.bytes)
        if let s = c.status {
            if s & 0x7f == 0 { o.exitCode = (s >> 8) & 0xff } else { o.signal = s & 0x7f }
        }
        return o
    }

    /// Reads the children's pipes and reaps them.
    struct Reader {
        var keep: Int
        var buffer = [UInt8](repeating: 0, count: 65_536)

        init(keep: Int) { self.keep = keep }

        /// Until every child is reaped or `deadline` passes, reading their output meanwhile.
        mutating func wait(
            _ children: inout [Child],
            until deadline: ContinuousClock.Instant,
            onOutput: (Int, UnsafeRawBufferPointer) -> Void
        ) {
            while true {
                Self.reap(&children)
                guard children.contains(where: { !$0.reaped }) else { return }
                let left = deadline - ContinuousClock.now
                guard left > .zero else { return }
                // At most 100 ms at a time, so an exit is seen soon even while output flows.
                let (seconds, attoseconds) = left.components
                let ms = min(seconds * 1000 + attoseconds / 1_000_000_000_000_000, 99) + 1
                pump(&children, milliseconds: Int32(ms), onOutput: onOutput)
            }
        }

        static func reap(_ children: inout [Child]) {
            for i in children.indices where !children[i].reaped {
                var status: Int32 = 0
                let r = waitpid(children[i].pid, &status, WNOHANG)
                if r == children[i].pid {
                    children[i].status = status
                    children[i].reaped = true
                } else if r < 0, errno != EINTR {
                    // ECHILD: reaped by someone else; its status is lost.
                    children[i].reaped = true
                }
            }
        }

        /// Waits up to `milliseconds` for output, and reads what came.
        mutating func pump(
            _ children: inout [Child],
            milliseconds: Int32,
            onOutput: (Int, UnsafeRawBufferPointer) -> Void
        ) {
            let open = children.indices.filter { children[$0].fd >= 0 }
            var fds = open.map { pollfd(fd: children[$0].fd, events: Int16(POLLIN), revents: 0) }
            // No pipe left open (the command closed its output): this only waits.
            let ready: Int32
            if fds.isEmpty {
                ready = Glibc.poll(nil, 0, milliseconds)
            } else {
                ready = Glibc.poll(&fds, nfds_t(fds.count), milliseconds)
            }
            guard ready > 0 else { return }
            for (k, p) in fds.enumerated() where p.revents != 0 {
                drain(&children[open[k]], reads: 16, onOutput: onOutput)
            }
        }

        /// Reads what the pipe holds (at most `reads` reads); closes it at its end or an error.
        mutating func drain(_ child: inout Child, reads: Int, onOutput: (Int, UnsafeRawBufferPointer) -> Void) {
            var left = reads
            while child.fd >= 0, left > 0 {
                left -= 1
                let fd = child.fd
                let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    let limit = self.keep
                    buffer.withUnsafeBytes { raw in
                        let chunk = UnsafeRawBufferPointer(rebasing: raw[0..<n])
                        child.output.append(chunk)
                        if child.bytes.count < limit {
                            child.bytes.append(contentsOf: chunk.prefix(limit - child.bytes.count))
                        }
                        onOutput(child.index, chunk)
                    }
                    continue
                }
                if n < 0, errno == EINTR { continue }
                if n < 0, errno == EAGAIN { return }
                close(fd)
                child.fd = -1
            }
        }
    }
}

/// What one test came to, before the runner makes it a `TestResult`.
struct TestOutcome: Sendable {
    var status: TestStatus
    var summary: String
    var metrics: [String: Double] = [:]
    var exitCode: Int32?
    var output = CapturedOutput()

    init(
        _ status: TestStatus,
        _ summary: String,
        metrics: [String: Double] = [:],
        exitCode: Int32? = nil,
        output: CapturedOutput = CapturedOutput()
    ) {
        self.status = status
        self.summary = summary
        self.metrics = metrics
        self.exitCode = exitCode
        self.output = output
    }

    /// The last line of `text` that is not blank, shortened: what a failing command said last.
    static func lastLine(_ text: String) -> String? {
        text.split(whereSeparator: \.isNewline).last { !$0.allSatisfy(\.isWhitespace) }
            .map { String($0.trimmingCharacters(in: .whitespaces).prefix(160)) }
    }
}

/// What a test runs with.
struct TestContext: Sendable {
    var spec: TestSpec
    var machine: String
    /// The disk of a per-disk test (`/dev/vda`), nil otherwise.
    var disk: String?
    /// Every disk to test (`/dev` paths).
    var disks: [String]
    var memoryBytes: Int64?
    var threads: Int?
    /// A fresh directory of the test's own, removed after it.
    var scratch: String
    /// The commands' environment: PATH only.
    var environment: [String]
    var log: @Sendable (String) -> Void

    /// The test's own limit, in seconds.
    var limitSeconds: Double { Double(max(1, spec.limitSeconds)) }

    /// An integer parameter (they were checked when asked for), nil when not given.
    func parameter(_ key: String) -> Int? { spec.parameters[key].flatMap { Int($0) } }

    func run(_ command: [String], limit: Double? = nil, keep: Int = 0) -> CommandOutcome {
        CommandRunner.run(command, limitSeconds: limit ?? limitSeconds, environment: environment, keep: keep)
    }
}

/// An admin script's `FARRIER_RESULT` file: its first 16 valid `key=number` lines (keys as
/// `TestPlan.metricKeyProblem` allows, finite numbers; the first of a key counts) are metrics.
enum ScriptResult {
    static func metrics(_ text: String) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in text.split(whereSeparator: \.isNewline) where out.count < TestPlan.maxMetrics {
            let pair = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pair.count == 2 else { continue }
            let key = pair[0].trimmingCharacters(in: .whitespaces)
            guard TestPlan.metricKeyProblem(key) == nil, out[key] == nil,
                let value = Double(pair[1].trimmingCharacters(in: .whitespaces)), value.isFinite
            else { continue }
            out[key] = value
        }
        return out
    }
}

/// Runs a commissioning's tests one after another, each under its own limit, and reports every
/// one of them: a failure never stops the run. Per-disk built-ins run once for each disk.
/// Blocking: call it on a thread of its own.
public final class TestRunner: Sendable {
    /// Goes before the standard directories in the tests' PATH (`--tool-path`, for tests).
    let toolPath: String?
    /// Where scripts and scratch directories go (`/run/farrier-agent/tests`: the ramdisk's tmpfs).
    let scratchRoot: String
    let log: @Sendable (String) -> Void
    /// Seconds on the task's monotonic clock, for the results' start and end.
    let clock: @Sendable () -> Double

    public init(
        toolPath: String?,
        scratchRoot: String,
        log: @escaping @Sendable (String) -> Void,
        clock: @escaping @Sendable () -> Double
    ) {
        self.toolPath = toolPath
        self.scratchRoot = scratchRoot
        self.log = log
        self.clock = clock
    }

    /// One run of one test: a per-disk built-in once for each disk.
    struct Planned {
        var spec: TestSpec
        var disk: String?
    }

    /// Runs `specs` in order. `disks`: `/dev` paths, for per-disk built-ins and scripts'
    /// `FARRIER_DISKS`; `progress` gets `test NAME (i/n)` as each run starts.
    public func run(
        _ specs: [TestSpec],
        machine: String,
        disks: [String],
        memoryBytes: Int64?,
        threads: Int?,
        progress: (String) -> Void
    ) -> [TestResult] {
        var plan: [Planned] = []
        for spec in specs {
            if spec.kind == .builtin, TestPlan.builtin(spec.name)?.perDisk == true, !disks.isEmpty {
                for disk in disks { plan.append(Planned(spec: spec, disk: disk)) }
            } else {
                plan.append(Planned(spec: spec, disk: nil))
            }
        }
        var results: [TestResult] = []
        for (i, item) in plan.enumerated() {
            progress("test \(item.spec.name) (\(i + 1)/\(plan.count))")
            results.append(
                runOne(item, machine: machine, disks: disks, memoryBytes: memoryBytes, threads: threads)
            )
        }
        return results
    }

    func runOne(_ item: Planned, machine: String, disks: [String], memoryBytes: Int64?, threads: Int?) -> TestResult {
        let spec = item.spec
        let target = item.disk.map { $0.split(separator: "/").last.map(String.init) ?? $0 }
        let what = spec.label + (target.map { " on \($0)" } ?? "")
        log("test \(what): starting (limit \(spec.limitSeconds) s)")
        let start = self.clock()
        let outcome: TestOutcome
        if spec.kind == .script {
            outcome = runScript(spec, machine: machine, disks: disks)
        } else {
            outcome = runBuiltin(
                spec,
                disk: item.disk,
                machine: machine,
                disks: disks,
                memoryBytes: memoryBytes,
                threads: threads
            )
        }
        let result = Self.result(outcome, spec: spec, target: target, start: start, end: self.clock())
        log(
            "test \(what): \(result.status) in \(String(format: "%.1f", result.seconds)) s"
                + (result.summary.isEmpty ? "" : ": \(result.summary)")
        )
        return result
    }

    /// The result as reported: metrics with valid keys and finite values only (the first
    /// `TestPlan.maxMetrics` by name), the summary on one line and at most `TestPlan.maxSummary`
    /// characters, the output's head and tail.
    static func result(_ o: TestOutcome, spec: TestSpec, target: String?, start: Double, end: Double) -> TestResult {
        var metrics: [String: Double] = [:]
        for key in o.metrics.keys.sorted() where metrics.count < TestPlan.maxMetrics {
            guard let value = o.metrics[key], value.isFinite, TestPlan.metricKeyProblem(key) == nil else { continue }
            metrics[key] = value
        }
        let line = o.summary.split(whereSeparator: \.isNewline).joined(separator: " ")
        return TestResult(
            name: spec.name,
            version: spec.version,
            target: target,
            status: o.status,
            start: start,
            end: max(start, end),
            exitCode: o.exitCode,
            metrics: metrics,
            summary: String(line.prefix(TestPlan.maxSummary)),
            output: o.output.text,
            outputBytes: o.output.total
        )
    }

    func runBuiltin(
        _ spec: TestSpec,
        disk: String?,
        machine: String,
        disks: [String],
        memoryBytes: Int64?,
        threads: Int?
    ) -> TestOutcome {
        guard TestPlan.builtin(spec.name) != nil, let test = BuiltinTests.test(named: spec.name) else {
            return TestOutcome(.error, "unknown built-in test '\(spec.name)': this agent does not have it")
        }
        let scratch: String
        do { scratch = try freshDirectory(spec.name + ".scratch") } catch {
            return TestOutcome(.error, "cannot make a scratch directory under \(scratchRoot): \(error)")
        }
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let context = TestContext(
            spec: spec,
            machine: machine,
            disk: disk,
            disks: disks,
            memoryBytes: memoryBytes,
            threads: threads,
            scratch: scratch,
            environment: CommandRunner.environment(toolPath: toolPath),
            log: log
        )
        return test(context)
    }

    /// An admin's script: written to `scratchRoot/NAME` (0700), its SHA-256 checked, run as
    /// `/bin/sh FILE` in a fresh scratch directory with `FARRIER_*` variables. Exit 0 passed,
    /// 77 skipped, anything else failed.
    func runScript(_ spec: TestSpec, machine: String, disks: [String]) -> TestOutcome {
        if let problem = TestPlan.nameProblem(spec.name) {
            return TestOutcome(.error, "script '\(spec.name)' cannot run: \(problem)")
        }
        guard let content = spec.script, let expected = spec.sha256 else {
            return TestOutcome(.error, "script \(spec.label): the task carries no content or hash for it")
        }
        let file = scratchRoot + "/" + spec.name
        let scratch: String
        do {
            try makeRoot()
            try SecretFile.create(file, Array(content.utf8), mode: 0o700, exclusive: false)
            let written = FileManager.default.contents(atPath: file) ?? Data()
            guard Self.sha256Hex(Array(written)) == Self.normalized(expected) else {
                unlink(file)
                return TestOutcome(.error, "script \(spec.label): content does not match its hash")
            }
            scratch = try freshDirectory(spec.name + ".scratch")
        } catch {
            return TestOutcome(.error, "script \(spec.label) cannot be put in place: \(error)")
        }
        // Neither the script nor its scratch directory outlives its run.
        defer {
            try? FileManager.default.removeItem(atPath: scratch)
            unlink(file)
        }
        let resultFile = scratch + "/result"
        let environment = CommandRunner.environment(
            toolPath: toolPath,
            [
                ("FARRIER_MACHINE", machine),
                ("FARRIER_TEST", spec.name),
                ("FARRIER_DISKS", disks.joined(separator: " ")),
                ("FARRIER_SCRATCH", scratch),
                ("FARRIER_RESULT", resultFile),
            ]
        )
        let limit = Double(max(1, spec.limitSeconds))
        let run = CommandRunner.run(
            ["/bin/sh", file],
            limitSeconds: limit,
            environment: environment,
            directory: scratch
        )
        let metrics = ScriptResult.metrics(Self.readSmallFile(resultFile, limit: 65_536) ?? "")
        let said = TestOutcome.lastLine(run.output.text).map { ": \($0)" } ?? ""
        var outcome = TestOutcome(.failed, "", metrics: metrics, exitCode: run.exitCode, output: run.output)
        if let failure = run.failure {
            outcome.status = .error
            outcome.summary = "cannot start /bin/sh: \(failure)"
        } else if run.timedOut {
            outcome.status = .timedOut
            outcome.summary = "still running after \(spec.limitSeconds) s: killed" + said
        } else if let signal = run.signal {
            outcome.summary = "killed by signal \(signal)" + said
        } else if let code = run.exitCode {
            outcome.status = code == 0 ? .passed : code == 77 ? .skipped : .failed
            outcome.summary = "exit \(code)" + said
        } else {
            outcome.status = .error
            outcome.summary = "its exit status was lost"
        }
        return outcome
    }

    func makeRoot() throws {
        try FileManager.default.createDirectory(
            atPath: scratchRoot,
            withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700]
        )
    }

    /// `scratchRoot/name`, empty and 0700 (anything there before is removed).
    func freshDirectory(_ name: String) throws -> String {
        try makeRoot()
        let path = scratchRoot + "/" + name
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        try FileManager.default.createDirectory(
            atPath: path,
            withIntermediateDirectories: false,
            attributes: [.posixPermissions: 0o700]
        )
        return path
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).hexString
    }

    /// A hash as the server may write it (`sha256:` first, capitals), as `sha256Hex` writes it.
    static func normalized(_ hash: String) -> String {
        let lower = hash.lowercased()
        return lower.hasPrefix("sha256:") ? String(lower.dropFirst(7)) : lower
    }

    /// At most `limit` bytes of a regular file (never a FIFO a script left there, which would
    /// block the open), as text; nil if there is none.
    static func readSmallFile(_ path: String, limit: Int) -> String? {
        guard (try? FileManager.default.attributesOfItem(atPath: path))?[.type] as? FileAttributeType == .typeRegular,
            let handle = FileHandle(forReadingAtPath: path)
        else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: limit) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
}
