import FarrierCore
import Foundation
import Testing

/// Commissioning tests (issue 18 point 7, docs/burn-in-design.md §2): the form of `--tests` and
/// `--param`, resolving scripts, the step's limit, script names, and the wire form.
struct TestPlanTests {
    /// The names asked for, `name@version` for pinned ones, or the refusal.
    func parsed(_ tests: [String], _ parameters: [String] = []) -> String {
        switch TestPlan.parse(tests: tests, parameters: parameters) {
        case .success(let r):
            return r.tests.map { t in t.version.map { "\(t.name)@\($0)" } ?? t.name }.joined(separator: " ")
        case .failure(let p): return "error: \(p.description)"
        }
    }

    static let created = Date(timeIntervalSince1970: 1_800_000_000)
    static func script(_ name: String, _ version: Int, limit: Int = 60) -> TestScript {
        TestScript(
            name: name,
            version: version,
            sha256: String(repeating: "\(version)", count: 64),
            size: 10,
            limitSeconds: limit,
            description: "",
            createdBy: "admin",
            created: created
        )
    }
    static let scripts = ["nic-check": [script("nic-check", 2), script("nic-check", 1), script("nic-check", 3)]]

    func resolved(_ tests: [String], _ parameters: [String] = []) throws -> Result<[TestSpec], InputProblem> {
        let request = try TestPlan.parse(tests: tests, parameters: parameters).get()
        return TestPlan.resolve(request, scripts: Self.scripts)
    }

    @Test func aliasesExpandInOrderAndEachTestRunsOnce() {
        #expect(parsed(["cpu,memory,disk"]) == "cpu-stress memory-stress memtester smart disk-read")
        #expect(parsed(["disk", "smart", " cpu ,, cpu-stress"]) == "smart disk-read cpu-stress")
        #expect(parsed(["nic-check@2", "memtester", "nic-check@2"]) == "nic-check@2 memtester")
        #expect(parsed([]) == "")
    }

    @Test func badTestNamesAreRefusedWithTheReason() {
        #expect(parsed(["nic-check@0"]) == "error: test 'nic-check@0': a version is a whole number from 1")
        #expect(parsed(["nic-check@x"]) == "error: test 'nic-check@x': a version is a whole number from 1")
        #expect(parsed(["cpu@2"]) == "error: test 'cpu@2': built-in tests have no versions")
        #expect(parsed(["smart@1"]) == "error: test 'smart@1': built-in tests have no versions")
        #expect(parsed(["Nic_Check"]).hasPrefix("error: test 'Nic_Check': a test's name is 1-63 of a-z"))
        #expect(parsed(["-x"]).hasPrefix("error: test '-x': a test's name"))
        #expect(parsed(["a@1", "a@2"]) == "error: test 'a' is asked for twice, at different versions")
        let seventeen = (1...17).map { "s\($0)" }
        #expect(parsed(seventeen) == "error: 17 tests: at most 16 in one commissioning")
        #expect(parsed((1...16).map { "s\($0)" }).split(separator: " ").count == 16)
    }

    @Test func parametersAreCheckedAgainstTheTestsAsked() {
        let tests = ["cpu,memory"]
        #expect(parsed(tests, ["cpu-stress.seconds=3", "memtester.mib=8"]) == "cpu-stress memory-stress memtester")
        #expect(
            parsed([], ["cpu-stress.seconds=3"])
                == "error: --param needs --tests: it sets a parameter of a test that runs"
        )
        #expect(
            parsed(tests, ["cpu-stress.seconds"]) == "error: --param cpu-stress.seconds: the form is TEST.KEY=VALUE"
        )
        #expect(parsed(tests, ["seconds=3"]) == "error: --param seconds=3: the form is TEST.KEY=VALUE")
        #expect(
            parsed(tests, ["cpu-stress.seconds="]) == "error: --param cpu-stress.seconds=: the form is TEST.KEY=VALUE"
        )
        #expect(
            parsed(tests + ["nic-check"], ["nic-check.x=1"])
                == "error: --param nic-check.x=1: 'nic-check' is not a built-in test (only built-ins take parameters)"
        )
        #expect(parsed(tests, ["smart.mode=long"]) == "error: --param smart.mode=long: smart is not among the tests")
        #expect(
            parsed(tests, ["memtester.size=1G"])
                == "error: --param memtester.size=1G: unknown key 'size' (valid: mib, loops, seconds)"
        )
        #expect(parsed(tests, ["cpu-stress.seconds=0"]) == "error: --param cpu-stress.seconds=0: must be 1-86400")
        #expect(parsed(tests, ["cpu-stress.seconds=5m"]) == "error: --param cpu-stress.seconds=5m: must be 1-86400")
        #expect(parsed(tests, ["memory-stress.percent=95"]) == "error: --param memory-stress.percent=95: must be 10-90")
        #expect(
            parsed(["disk"], ["smart.mode=fast"])
                == "error: --param smart.mode=fast: must be one of health, short, long"
        )
        #expect(
            parsed(tests, ["cpu-stress.seconds=3", "cpu-stress.seconds=4"])
                == "error: --param cpu-stress.seconds=4: cpu-stress.seconds is given twice"
        )
    }

    @Test func builtinsGetEveryParameterAndTheirLimit() throws {
        let specs = try resolved(["cpu,disk"], ["cpu-stress.seconds=3", "disk-read.min-mbps=200"]).get()
        #expect(specs.map(\.name) == ["cpu-stress", "smart", "disk-read"])
        #expect(specs.allSatisfy { $0.kind == .builtin && $0.version == nil && $0.sha256 == nil })
        #expect(specs[0].parameters == ["seconds": "3"] && specs[0].limitSeconds == 123)
        #expect(specs[1].parameters == ["mode": "short"] && specs[1].limitSeconds == 600)
        #expect(specs[2].parameters == ["seconds": "30", "min-mbps": "200"] && specs[2].limitSeconds == 120)
        let long = try resolved(["smart"], ["smart.mode=long"]).get()
        #expect(long[0].limitSeconds == 86_400)
        let memtester = try resolved(["memtester"]).get()
        #expect(memtester[0].parameters == ["mib": "0", "loops": "1", "seconds": "7200"])
        #expect(memtester[0].limitSeconds == 7200)
    }

    @Test func scriptsResolveToTheVersionAskedOrTheNewest() throws {
        let newest = try resolved(["nic-check"]).get()
        #expect(newest.count == 1 && newest[0].kind == .script && newest[0].version == 3)
        #expect(newest[0].sha256 == String(repeating: "3", count: 64) && newest[0].label == "nic-check@3")
        #expect(newest[0].script == nil && newest[0].parameters.isEmpty && newest[0].limitSeconds == 60)
        #expect(try resolved(["nic-check@1"]).get()[0].version == 1)
        let missing = try resolved(["nic-check@7"])
        #expect("\(missing)".contains("test 'nic-check@7': it has versions 1-3"))
        let unknown = try resolved(["cpux"])
        guard case .failure(let problem) = unknown else {
            Issue.record("an unknown test resolved: \(unknown)")
            return
        }
        #expect(
            problem.description
                == "unknown test 'cpux' (built-in: cpu-stress, memory-stress, memtester, smart, disk-read; "
                + "aliases: cpu, memory, disk; scripts: nic-check)"
        )
        let none = TestPlan.resolve(try TestPlan.parse(tests: ["x"], parameters: []).get(), scripts: [:])
        #expect("\(none)".contains("scripts: none"))
    }

    @Test func theStepLimitGrowsWithTheTestsAndPerDiskOnesCountEachDisk() throws {
        let base: Duration = .seconds(1800)
        let specs = try resolved(["cpu,disk,nic-check"], ["cpu-stress.seconds=3"]).get()
        // 123 (cpu-stress) + 60 (nic-check), and per disk 600 (smart) + 120 (disk-read).
        #expect(TestPlan.stepLimit(specs, disks: 2, base: base) == .seconds(1800 + 183 + 2 * 720))
        #expect(TestPlan.stepLimit(specs, disks: nil, base: base) == .seconds(1800 + 183 + 8 * 720))
        #expect(TestPlan.stepLimit(specs, disks: 0, base: base) == .seconds(1800 + 183 + 720))
        #expect(TestPlan.stepLimit([], disks: 3, base: base) == base)
        let days = try resolved(["memtester,smart"], ["memtester.seconds=172800", "smart.mode=long"]).get()
        #expect(TestPlan.stepLimit(days, disks: 24, base: base) == TestPlan.maxStepLimit)
    }

    @Test func scriptNamesAreLabelsNoBuiltinHas() {
        #expect(TestPlan.nameProblem("nic-check") == nil)
        #expect(TestPlan.nameProblem(String(repeating: "a", count: 63)) == nil)
        #expect(TestPlan.nameProblem(String(repeating: "a", count: 64)) != nil)
        for taken in ["cpu", "memory", "disk", "cpu-stress", "memtester", "smart", "disk-read"] {
            #expect(TestPlan.nameProblem(taken) == "'\(taken)' is a built-in test's name")
        }
        for bad in ["", "NIC", "nic_check", "-nic", "nic-", "nic check", "nïc"] {
            #expect(TestPlan.nameProblem(bad) != nil, "\(bad)")
        }
        #expect(TestPlan.metricKeyProblem("bogo_ops_per_s") == nil)
        #expect(TestPlan.metricKeyProblem("Bogo") != nil && TestPlan.metricKeyProblem("") != nil)
        #expect(TestPlan.metricKeyProblem(String(repeating: "a", count: 41)) != nil)
    }

    @Test func aRunRoundTripsAndAnUnknownStatusPassesThrough() throws {
        let run = BurnIn(
            runID: "r1",
            tests: try resolved(["cpu"]).get(),
            requestedBy: "admin",
            requested: Self.created,
            results: [
                TestResult(
                    name: "cpu-stress",
                    status: .passed,
                    start: 10,
                    end: 313.5,
                    exitCode: 0,
                    metrics: ["bogo_ops_per_s": 48210.5],
                    summary: "ok"
                ),
                TestResult(name: "smart", target: "nvme0n1", status: TestStatus(rawValue: "flaky"), start: 1, end: 0),
            ]
        )
        let data = try JSONEncoder().encode(run)
        let back = try JSONDecoder().decode(BurnIn.self, from: data)
        #expect(back == run)
        #expect(back.results[1].status.rawValue == "flaky" && !back.results[1].status.failsHardware)
        #expect(back.results[0].seconds == 303.5 && back.results[1].seconds == 0)
        #expect(TestStatus.failed.failsHardware && TestStatus.timedOut.failsHardware)
        #expect(!TestStatus.error.failsHardware && !TestStatus.skipped.failsHardware)
        #expect(String(decoding: try JSONEncoder().encode(TestStatus.timedOut), as: UTF8.self) == "\"timed-out\"")
    }

    @Test func resultsAreBoundedAndAddUpToAVerdict() throws {
        let run = BurnIn(
            runID: "r1",
            tests: try resolved(["cpu", "disk"]).get(),
            requestedBy: "admin",
            requested: Self.created
        )
        func r(_ name: String, _ status: TestStatus, target: String? = nil, summary: String = "") -> TestResult {
            TestResult(name: name, target: target, status: status, start: 0, end: 1, summary: summary)
        }
        var big = r("cpu-stress", .passed, summary: String(repeating: "s", count: 1000))
        big.metrics = Dictionary(uniqueKeysWithValues: (0..<40).map { ("m\($0)", Double($0)) })
        big.metrics["Bad-Key"] = 1
        big.metrics["nan"] = .nan
        big.output = String(repeating: "o", count: 100_000)
        let passing = [big, r("smart", .skipped, target: "vda"), r("disk-read", .passed, target: "vda")]
        let ok = TestPlan.accept(passing, for: run)
        #expect(ok.verdict == .passed)
        #expect(
            ok.results[0].summary.count == TestPlan.maxSummary && ok.results[0].metrics.count == TestPlan.maxMetrics
        )
        #expect(ok.results[0].metrics["Bad-Key"] == nil && ok.results[0].metrics["nan"] == nil)
        #expect(ok.results.allSatisfy { $0.output == nil })
        let kept = String(repeating: "o", count: TestPlan.maxOutputBytes)
        #expect(ok.outputs == [TestOutput(name: "cpu-stress", target: "", output: kept)])
        // A test not asked for is dropped; one asked for without a result is the agent's fault.
        let missing = TestPlan.accept([r("cpu-stress", .passed), r("memtester", .failed)], for: run)
        #expect(missing.results.map(\.name) == ["cpu-stress"])
        guard case .agent(let why) = missing.verdict else {
            Issue.record("\(missing.verdict)")
            return
        }
        #expect(why.hasPrefix("the agent reported no result for test smart"))
        // Failures name every failed test; an error or an unknown status is never a pass.
        let bad = TestPlan.accept(
            passing + [
                r("smart", .failed, target: "nvme0n1", summary: "critical warning 0x4"),
                r("disk-read", .timedOut, target: "nvme0n1"),
            ],
            for: run
        )
        #expect(
            bad.verdict
                == .hardware("test smart nvme0n1 failed: critical warning 0x4; test disk-read nvme0n1 timed-out")
        )
        let odd = TestPlan.accept(passing + [r("disk-read", TestStatus(rawValue: "flaky"), target: "sdb")], for: run)
        #expect(odd.verdict == .agent("test disk-read sdb flaky"))
        #expect(TestPlan.format(3) == "3" && TestPlan.format(48210.456) == "48210.46")
        // What the boot network sends is made safe to store and print; a disk name that is not one drops its result.
        var hostile = r("disk-read", .passed, target: "vda", summary: "ok\u{0}\u{1b}[2Jcleared\nline")
        hostile.output = "a\u{0}b\nc\u{1b}[31m"
        let cleaned = TestPlan.accept(
            passing.filter { $0.name != "disk-read" } + [hostile, r("disk-read", .passed, target: "../etc")],
            for: run
        )
        #expect(cleaned.results.last?.summary == "ok  [2Jcleared line" && cleaned.results.count == 3)
        #expect(cleaned.outputs.last?.output == "a b\nc [31m")
    }
}
