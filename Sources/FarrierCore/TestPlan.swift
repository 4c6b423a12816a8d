import Foundation

// Commissioning tests and burn-in (docs/burn-in-design.md): what a commissioning may ask the
// agent to run, as pure values. The agent, the stores and the API use these; nothing here does
// I/O.

/// One test as the agent gets it: a built-in (Farrier's code around stress-ng, memtester or
/// smartctl, or its own disk reader) with its checked parameters, or an admin's script at one
/// version.
public struct TestSpec: Codable, Sendable, Hashable {
    public enum Kind: String, Codable, Sendable { case builtin, script }
    public var name: String
    public var kind: Kind
    /// A script's version and content hash (the content itself rides in the agent's task only).
    public var version: Int?
    public var sha256: String?
    public var script: String?
    /// The test's own time limit, in seconds; a per-disk test's limit is for each disk.
    public var limitSeconds: Int
    /// A built-in's parameters, every key present (defaults filled in), already checked.
    public var parameters: [String: String]

    public init(
        name: String,
        kind: Kind,
        version: Int? = nil,
        sha256: String? = nil,
        script: String? = nil,
        limitSeconds: Int,
        parameters: [String: String] = [:]
    ) {
        self.name = name
        self.kind = kind
        self.version = version
        self.sha256 = sha256
        self.script = script
        self.limitSeconds = limitSeconds
        self.parameters = parameters
    }

    /// `name`, or `name@version` for a script.
    public var label: String { version.map { "\(name)@\($0)" } ?? name }
}

/// How one test ended. A string on the wire, so an older peer passes a newer status on.
public struct TestStatus: RawRepresentable, Codable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public static let passed = TestStatus(rawValue: "passed")
    public static let failed = TestStatus(rawValue: "failed")
    /// Not applicable here (no SMART on a virtio disk; a script that exits 77).
    public static let skipped = TestStatus(rawValue: "skipped")
    public static let timedOut = TestStatus(rawValue: "timed-out")
    /// Could not run: a tool missing, output not understood.
    public static let error = TestStatus(rawValue: "error")

    /// Whether it fails the commissioning as a hardware fault.
    public var failsHardware: Bool { self == .failed || self == .timedOut }
    public var description: String { rawValue }
}

/// One test's result as the agent reports it.
public struct TestResult: Codable, Sendable, Hashable {
    public var name: String
    public var version: Int?
    /// The disk of a per-disk test (`nvme0n1`), nil otherwise.
    public var target: String?
    public var status: TestStatus
    /// Start and end on the agent's monotonic clock, in seconds.
    public var start: Double
    public var end: Double
    public var exitCode: Int32?
    /// At most `TestPlan.maxMetrics`, keys as `TestPlan.metricKeyProblem` allows.
    public var metrics: [String: Double]
    /// One line for people, at most `TestPlan.maxSummary` characters.
    public var summary: String
    /// The head and tail of the test's output; the store keeps it apart from the machine.
    public var output: String?
    /// How many bytes of output there were in all.
    public var outputBytes: Int64?

    public init(
        name: String,
        version: Int? = nil,
        target: String? = nil,
        status: TestStatus,
        start: Double,
        end: Double,
        exitCode: Int32? = nil,
        metrics: [String: Double] = [:],
        summary: String = "",
        output: String? = nil,
        outputBytes: Int64? = nil
    ) {
        self.name = name
        self.version = version
        self.target = target
        self.status = status
        self.start = start
        self.end = end
        self.exitCode = exitCode
        self.metrics = metrics
        self.summary = summary
        self.output = output
        self.outputBytes = outputBytes
    }

    public var seconds: Double { max(0, end - start) }

    /// `name`, `name@version` for a script, then the disk of a per-disk test: `smart nvme0n1`.
    public var label: String {
        [version.map { "\(name)@\($0)" } ?? name, target].compactMap { $0 }.joined(separator: " ")
    }
}

/// A machine's last test run: what was asked, by whom, and what came back.
public struct BurnIn: Codable, Sendable, Hashable {
    public var runID: String
    /// Resolved when asked; a script's content is left out.
    public var tests: [TestSpec]
    public var requestedBy: String
    public var requested: Date
    /// Set when the results are in, or the run was aborted.
    public var finished: Date?
    /// Without their output.
    public var results: [TestResult]
    /// The generation of the commissioning step that runs it (a retry of that step runs it
    /// again; a later step's retry does not).
    public var step: Int?

    public init(
        runID: String = UUID().uuidString.lowercased(),
        tests: [TestSpec],
        requestedBy: String,
        requested: Date,
        finished: Date? = nil,
        results: [TestResult] = [],
        step: Int? = nil
    ) {
        self.runID = runID
        self.tests = tests
        self.requestedBy = requestedBy
        self.requested = requested
        self.finished = finished
        self.results = results
        self.step = step
    }

    /// Whether the agent still has this run to do.
    public var open: Bool { finished == nil }

    /// The ramdisk archive with the built-ins' tools (stress-ng, memtester, smartctl), loaded
    /// beside the initrd only by a commissioning boot whose open run needs one of them.
    public static let overlay = "burnin.img"

    /// Whether the agent needs the tools' archive for this run: it is open and has a built-in
    /// other than disk-read (the agent's own code); scripts use what busybox has.
    public var needsTools: Bool {
        open && tests.contains { $0.kind == .builtin && $0.name != "disk-read" }
    }
}

/// One stored version of an admin's test script (its content is kept by hash, apart).
public struct TestScript: Codable, Sendable, Hashable {
    public var name: String
    public var version: Int
    public var sha256: String
    public var size: Int
    public var limitSeconds: Int
    public var description: String
    public var createdBy: String
    public var created: Date

    public init(
        name: String,
        version: Int,
        sha256: String,
        size: Int,
        limitSeconds: Int,
        description: String,
        createdBy: String,
        created: Date
    ) {
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.size = size
        self.limitSeconds = limitSeconds
        self.description = description
        self.createdBy = createdBy
        self.created = created
    }
}

/// What `--tests` and `--param` asked for, checked for form; scripts are resolved later.
public struct TestRequest: Sendable, Hashable {
    /// A test asked for: a built-in, or a script at a version (nil: its newest).
    public struct Test: Sendable, Hashable {
        public var name: String
        public var version: Int?
    }
    /// In the order asked, aliases expanded, each once.
    public var tests: [Test]
    /// Per built-in test, the parameters given (checked).
    public var parameters: [String: [String: String]]
}

/// The built-in tests, their parameters and limits, and the checks on what a request names.
public enum TestPlan {
    /// A built-in's parameter: an integer in a range, or one of some words.
    public struct Parameter: Sendable {
        public var key: String
        public var defaultValue: String?
        public var range: ClosedRange<Int>?
        public var choices: [String]?

        static func int(_ key: String, _ defaultValue: Int?, _ range: ClosedRange<Int>) -> Parameter {
            Parameter(key: key, defaultValue: defaultValue.map(String.init), range: range, choices: nil)
        }
        static func oneOf(_ key: String, _ defaultValue: String, _ choices: [String]) -> Parameter {
            Parameter(key: key, defaultValue: defaultValue, range: nil, choices: choices)
        }

        /// Why `value` does not do, or nil.
        func problem(_ value: String) -> String? {
            if let range {
                guard let n = Int(value), range.contains(n) else {
                    return "must be \(range.lowerBound)-\(range.upperBound)"
                }
            }
            if let choices, !choices.contains(value) {
                return "must be one of \(choices.joined(separator: ", "))"
            }
            return nil
        }
    }

    public struct Builtin: Sendable {
        public var name: String
        public var parameters: [Parameter]
        /// Run once for each disk (its limit counts once for each).
        public var perDisk: Bool
        /// Its time limit in seconds, from its parameters (defaults filled in).
        public var limit: @Sendable ([String: String]) -> Int
    }

    static func number(_ p: [String: String], _ key: String) -> Int { p[key].flatMap { Int($0) } ?? 0 }

    /// In the order `test-script list` shows them.
    public static let builtins: [Builtin] = [
        Builtin(
            name: "cpu-stress",
            parameters: [.int("seconds", 300, 1...86_400)],
            perDisk: false,
            limit: { TestPlan.number($0, "seconds") + 120 }
        ),
        Builtin(
            name: "memory-stress",
            parameters: [.int("seconds", 300, 1...86_400), .int("percent", 75, 10...90)],
            perDisk: false,
            limit: { TestPlan.number($0, "seconds") + 120 }
        ),
        Builtin(
            name: "memtester",
            // mib 0: what the ramdisk leaves free.
            parameters: [
                .int("mib", 0, 0...16_777_216), .int("loops", 1, 1...10), .int("seconds", 7200, 60...172_800),
            ],
            perDisk: false,
            limit: { TestPlan.number($0, "seconds") }
        ),
        Builtin(
            name: "smart",
            parameters: [.oneOf("mode", "short", ["health", "short", "long"])],
            perDisk: true,
            // A long self-test takes what the drive says (hours on a large disk): a day at most.
            limit: { ["health": 60, "short": 600][$0["mode"] ?? ""] ?? 86_400 }
        ),
        Builtin(
            name: "disk-read",
            parameters: [.int("seconds", 30, 1...3600), .int("min-mbps", nil, 1...100_000)],
            perDisk: true,
            limit: { TestPlan.number($0, "seconds") * 2 + 60 }
        ),
    ]

    public static func builtin(_ name: String) -> Builtin? { builtins.first { $0.name == name } }

    /// Short names for groups of built-ins, in the order they run.
    public static let aliases: [(name: String, tests: [String])] = [
        ("cpu", ["cpu-stress"]),
        ("memory", ["memory-stress", "memtester"]),
        ("disk", ["smart", "disk-read"]),
    ]

    public static let maxTests = 16
    public static let maxMetrics = 16
    public static let maxSummary = 256
    /// A commissioning's step limit grows with its tests, up to this.
    public static let maxStepLimit: Duration = .seconds(7 * 86_400)
    /// Disks counted for per-disk tests before the inventory says how many there are.
    public static let assumedDisks = 8

    /// Checks the form of `--tests` (each a name, `name@N` or a comma-separated list of them)
    /// and `--param TEST.KEY=VALUE`: aliases expanded, each test once, parameters only for
    /// built-ins asked for, with known keys and values in range.
    public static func parse(tests: [String], parameters: [String]) -> Result<TestRequest, InputProblem> {
        var asked: [TestRequest.Test] = []
        for token in tests.flatMap({ $0.split(separator: ",") }) {
            let text = token.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            let parts = text.split(separator: "@", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let name = parts[0]
            var version: Int?
            if parts.count == 2 {
                guard let v = Int(parts[1]), v >= 1 else {
                    return .failure(InputProblem("test '\(text)': a version is a whole number from 1"))
                }
                version = v
            }
            let alias = aliases.first { $0.name == name }
            if alias != nil || builtin(name) != nil, version != nil {
                return .failure(InputProblem("test '\(text)': built-in tests have no versions"))
            }
            if let alias {
                for t in alias.tests where !asked.contains(where: { $0.name == t }) {
                    asked.append(TestRequest.Test(name: t))
                }
                continue
            }
            if builtin(name) == nil, let problem = labelProblem(name) {
                return .failure(InputProblem("test '\(text)': \(problem)"))
            }
            if let other = asked.first(where: { $0.name == name }) {
                if other.version == version { continue }
                return .failure(InputProblem("test '\(name)' is asked for twice, at different versions"))
            }
            asked.append(TestRequest.Test(name: name, version: version))
        }
        guard asked.count <= maxTests else {
            return .failure(InputProblem("\(asked.count) tests: at most \(maxTests) in one commissioning"))
        }
        if asked.isEmpty && !parameters.isEmpty {
            return .failure(InputProblem("--param needs --tests: it sets a parameter of a test that runs"))
        }
        var given: [String: [String: String]] = [:]
        for p in parameters {
            let pair = p.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let path = pair[0].split(separator: ".", maxSplits: 1).map(String.init)
            guard pair.count == 2, path.count == 2, !pair[1].isEmpty else {
                return .failure(InputProblem("--param \(p): the form is TEST.KEY=VALUE"))
            }
            let (test, key, value) = (path[0], path[1], pair[1])
            guard let b = builtin(test) else {
                return .failure(
                    InputProblem("--param \(p): '\(test)' is not a built-in test (only built-ins take parameters)")
                )
            }
            guard asked.contains(where: { $0.name == test }) else {
                return .failure(InputProblem("--param \(p): \(test) is not among the tests"))
            }
            guard let parameter = b.parameters.first(where: { $0.key == key }) else {
                let valid = b.parameters.map(\.key).joined(separator: ", ")
                return .failure(InputProblem("--param \(p): unknown key '\(key)' (valid: \(valid))"))
            }
            if let problem = parameter.problem(value) { return .failure(InputProblem("--param \(p): \(problem)")) }
            if given[test]?[key] != nil {
                return .failure(InputProblem("--param \(p): \(test).\(key) is given twice"))
            }
            given[test, default: [:]][key] = value
        }
        return .success(TestRequest(tests: asked, parameters: given))
    }

    /// The tests to run: built-ins with every parameter filled in, scripts at the version asked
    /// for (else their newest), from `scripts` (every version of each stored script).
    public static func resolve(
        _ request: TestRequest,
        scripts: [String: [TestScript]]
    ) -> Result<[TestSpec], InputProblem> {
        var specs: [TestSpec] = []
        for test in request.tests {
            let (name, version) = (test.name, test.version)
            if let b = builtin(name) {
                var p: [String: String] = [:]
                for parameter in b.parameters { if let d = parameter.defaultValue { p[parameter.key] = d } }
                p.merge(request.parameters[name] ?? [:]) { _, given in given }
                specs.append(TestSpec(name: name, kind: .builtin, limitSeconds: b.limit(p), parameters: p))
                continue
            }
            let versions = (scripts[name] ?? []).sorted { $0.version < $1.version }
            guard let newest = versions.last else {
                let names = scripts.filter { !$0.value.isEmpty }.keys.sorted()
                return .failure(
                    InputProblem(
                        "unknown test '\(name)' (built-in: \(builtins.map(\.name).joined(separator: ", ")); "
                            + "aliases: \(aliases.map(\.name).joined(separator: ", ")); "
                            + "scripts: \(names.isEmpty ? "none" : names.joined(separator: ", ")))"
                    )
                )
            }
            let chosen = version.flatMap { v in versions.first { $0.version == v } } ?? newest
            if let version, chosen.version != version {
                let range = "\(versions[0].version)-\(newest.version)"
                return .failure(InputProblem("test '\(name)@\(version)': it has versions \(range)"))
            }
            specs.append(
                TestSpec(
                    name: name,
                    kind: .script,
                    version: chosen.version,
                    sha256: chosen.sha256,
                    limitSeconds: chosen.limitSeconds
                )
            )
        }
        return .success(specs)
    }

    /// A commissioning step's limit with these tests: `base` (the configured commissioning
    /// timeout) and every test's own limit, per-disk ones once for each disk (`disks`, or
    /// `assumedDisks` before the inventory is known); at most `maxStepLimit`.
    public static func stepLimit(_ specs: [TestSpec], disks: Int?, base: Duration) -> Duration {
        let n = max(1, disks ?? assumedDisks)
        var seconds = 0
        for s in specs {
            let each = max(0, s.limitSeconds)
            seconds += (s.kind == .builtin && builtin(s.name)?.perDisk == true) ? each * n : each
        }
        return min(base + .seconds(seconds), maxStepLimit)
    }

    /// Seconds a run of `specs` adds to its commissioning step's configured limit.
    public static func allowance(_ specs: [TestSpec], disks: Int?) -> Int {
        Int(stepLimit(specs, disks: disks, base: .zero).components.seconds)
    }

    /// Why `name` cannot name an admin's script, or nil: a DNS label (1–63 of a–z, 0–9 and
    /// `-`, not at either end) that no built-in or alias has.
    public static func nameProblem(_ name: String) -> String? {
        if builtin(name) != nil || aliases.contains(where: { $0.name == name }) {
            return "'\(name)' is a built-in test's name"
        }
        return labelProblem(name)
    }

    static func labelProblem(_ name: String) -> String? {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-")
        guard (1...63).contains(name.count), name.allSatisfy(allowed.contains), name.first != "-", name.last != "-"
        else {
            return "a test's name is 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
        }
        return nil
    }

    /// Why a metric's key does not do, or nil: 1–40 of a–z, 0–9 and `_`.
    public static func metricKeyProblem(_ key: String) -> String? {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789_")
        guard (1...40).contains(key.count), key.allSatisfy(allowed.contains) else {
            return "a metric's name is 1-40 of a-z, 0-9 and '_'"
        }
        return nil
    }

    /// What a commissioning makes of its run's results.
    public enum Verdict: Sendable, Hashable {
        case passed
        /// A test failed or ran past its limit: the hardware is at fault.
        case hardware(String)
        /// A test could not run, or has no result: the agent (or its ramdisk) is at fault.
        case agent(String)
    }

    /// A metric's value for people: whole numbers without a fraction, others to 2 places.
    public static func format(_ value: Double) -> String {
        if value.rounded() == value, abs(value) < 1e15 { return String(Int64(value)) }
        return String(format: "%.2f", value)
    }

    public static let maxResults = 256
    /// The agent keeps 4 KiB of head and 12 KiB of tail, and a line between them.
    public static let maxOutputBytes = 16_384 + 256
    public static let maxReason = 512

    /// Text from the boot network, made safe to store (PostgreSQL refuses NUL) and to print:
    /// control characters other than newline and tab (and those too, unless `lines`) become
    /// spaces.
    public static func printable(_ text: String, lines: Bool = false) -> String {
        String(
            String.UnicodeScalarView(
                text.unicodeScalars.map { c in
                    let control = c.value < 0x20 || (0x7f...0x9f).contains(c.value)
                    let kept = lines && (c == "\n" || c == "\t")
                    return control && !kept ? " " : c
                }
            )
        )
    }

    /// A disk's name as a result may give it (`nvme0n1`, `disk.img`): at most 64 of letters,
    /// digits, `.`, `_` and `-`, else nil.
    static func deviceName(_ text: String) -> String? {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard (1...64).contains(text.count), text.allSatisfy(allowed.contains) else { return nil }
        return text
    }

    /// An agent's results as the server keeps them: only for tests of `run` (by name and, for
    /// scripts, version), at most `maxResults`, metrics and summary bounded, without their
    /// output (returned apart, each at most `maxOutputBytes`); and what they add up to.
    public static func accept(
        _ reported: [TestResult],
        for run: BurnIn
    ) -> (results: [TestResult], outputs: [TestOutput], verdict: Verdict) {
        var results: [TestResult] = []
        var outputs: [TestOutput] = []
        for var r in reported.prefix(maxResults) {
            guard let spec = run.tests.first(where: { $0.name == r.name }), spec.version == r.version else { continue }
            if let target = r.target {
                guard let name = deviceName(target) else { continue }
                r.target = name
            }
            r.metrics = Dictionary(
                uniqueKeysWithValues: r.metrics.filter { metricKeyProblem($0.key) == nil && $0.value.isFinite }
                    .sorted { $0.key < $1.key }.prefix(maxMetrics).map { ($0.key, $0.value) }
            )
            r.summary = printable(String(r.summary.prefix(maxSummary)))
            if let text = r.output {
                var bytes = Array(text.utf8)
                if bytes.count > maxOutputBytes { bytes = Array(bytes.suffix(maxOutputBytes)) }
                let output = printable(String(decoding: bytes, as: UTF8.self), lines: true)
                outputs.append(TestOutput(name: r.name, target: r.target ?? "", output: output))
            }
            r.output = nil
            results.append(r)
        }
        for spec in run.tests where !results.contains(where: { $0.name == spec.name }) {
            return (
                results, outputs,
                .agent(
                    "the agent reported no result for test \(spec.label) (a ramdisk or site from before burn-in, "
                        + "or no disk to test)"
                )
            )
        }
        func line(_ r: TestResult) -> String {
            "\(r.label) \(r.status)" + (r.summary.isEmpty ? "" : ": \(r.summary)")
        }
        let faults = results.filter { $0.status.failsHardware }
        if !faults.isEmpty {
            return (
                results, outputs,
                .hardware(String(("test " + faults.map(line).joined(separator: "; test ")).prefix(maxReason)))
            )
        }
        // An error, or a status this server does not know, is not a pass.
        let broken = results.filter { ![.passed, .skipped].contains($0.status) }
        if !broken.isEmpty {
            return (
                results, outputs,
                .agent(String(("test " + broken.map(line).joined(separator: "; test ")).prefix(maxReason)))
            )
        }
        return (results, outputs, .passed)
    }
}
