import FarrierApp
import Foundation
import Logging
import Testing

/// The log-based SLO (issue 17 point 8): mtail (Debian's; missing, the test fails) runs
/// deploy/mtail's program over lines the server's own log handler renders, in both formats, and
/// counts each step's end and each failure once, whatever a reason holds; the rules on its
/// counters load and pass their unit tests in promtool; they read only what the program exports.
@Suite struct LogSLOTests {
    static let repository = SLORulesTests.repository
    static let program = repository.appendingPathComponent("deploy/mtail").path
    static let rules = repository.appendingPathComponent("deploy/prometheus/farrier-log-slo.rules.yml").path
    static let ruleTests = repository.appendingPathComponent("deploy/prometheus/farrier-log-slo.test.yml").path

    /// Runs a program to its end; its status, stdout and stderr.
    static func run(_ path: String, _ args: [String]) throws -> (Int32, String, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    /// The lines of a small day: two deploys (one failed, by its agent), a release whose wipe
    /// failed verification, a commission and one that failed a hardware test; with a reason
    /// that looks like other fields.
    static func lines(_ format: LineLogHandler.Format) -> [String] {
        let h = LineLogHandler(label: "farrier.control", level: .info, format: format)
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        func ended(_ machine: String, _ step: String, _ outcome: String, _ seconds: String) -> String {
            h.line(
                level: .info,
                message: "lifecycle step ended",
                metadata: [
                    "machine": "\(machine)", "step": "\(step)", "outcome": "\(outcome)", "seconds": "\(seconds)",
                    "trace_id": "\(trace)", "span_id": "00f067aa0ba902b7",
                ]
            )
        }
        func failed(_ machine: String, _ step: String, _ failure: String, _ reason: String, msg: String) -> String {
            h.line(
                level: .warning,
                message: msg,
                metadata: [
                    "machine": "\(machine)", "step": "\(step)", "failure": "\(failure)", "reason": "\(reason)",
                    "trace_id": "-",
                ]
            )
        }
        return [
            h.line(level: .info, message: "transition", metadata: ["machine": "a1", "event": "deploy"]),
            ended("a1", "deploying", "succeeded", "412.250"),
            failed(
                "a2",
                "deploying",
                "agent",
                #"agent: image " step=releasing outcome=succeeded seconds=1.0 trace_id=x "#,
                msg: "lifecycle step failed"
            ),
            ended("a2", "deploying", "failed", "30.000"),
            failed(
                "a3",
                "releasing",
                "wipe-not-verified",
                "agent: 3 blocks read back non-zero",
                msg: "lifecycle step failed: wipe verification failed, the machine's disks are not clean"
            ),
            ended("a3", "releasing", "failed", "901.500"),
            ended("a4", "commissioning", "succeeded", "61.000"),
            failed(
                "a5",
                "commissioning",
                "hardware-test",
                "test memtester failed: 3 errors",
                msg: "lifecycle step failed"
            ),
            ended("a5", "commissioning", "failed", "812.400"),
        ]
    }

    @Test(arguments: LineLogHandler.Format.allCases) func mtailCountsTheServersLines(
        _ format: LineLogHandler.Format
    )
        throws
    {
        #expect(
            FileManager.default.isExecutableFile(atPath: "/usr/bin/mtail"),
            "mtail is missing: apt-get install mtail (scripts/install-deps.sh does)"
        )
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-\(UUID()).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        try (Self.lines(format).joined(separator: "\n") + "\n").write(toFile: log, atomically: true, encoding: .utf8)
        let (status, out, err) = try Self.run(
            "/usr/bin/mtail",
            // (Port 0: even one_shot binds its HTTP port, and the two formats run at once.)
            [
                "--progs", Self.program, "--logs", log, "--one_shot", "--one_shot_format", "prometheus", "--address",
                "127.0.0.1", "--port", "0",
            ]
        )
        #expect(status == 0, "\(err)")
        var samples: [String: String] = [:]
        for line in out.split(separator: "\n") where line.hasPrefix("farrier_log_") {
            let parts = line.split(separator: " ")
            samples[
                String(parts[0]).replacingOccurrences(of: #",prog="farrier.mtail""#, with: "")
                    .replacingOccurrences(of: #"{prog="farrier.mtail"}"#, with: "")
            ] = String(parts[1])
        }
        let expected: [String: String] = [
            "farrier_log_deploys_succeeded_total": "1", "farrier_log_deploys_failed_total": "1",
            #"farrier_log_lifecycle_steps_ended_total{outcome="succeeded",step="deploying"}"#: "1",
            #"farrier_log_lifecycle_steps_ended_total{outcome="failed",step="deploying"}"#: "1",
            #"farrier_log_lifecycle_steps_ended_total{outcome="failed",step="releasing"}"#: "1",
            #"farrier_log_lifecycle_steps_ended_total{outcome="succeeded",step="commissioning"}"#: "1",
            #"farrier_log_lifecycle_steps_ended_total{outcome="failed",step="commissioning"}"#: "1",
            #"farrier_log_lifecycle_step_failures_total{failure="hardware-test",step="commissioning"}"#: "1",
            #"farrier_log_lifecycle_step_failures_total{failure="agent",step="deploying"}"#: "1",
            #"farrier_log_lifecycle_step_failures_total{failure="wipe-not-verified",step="releasing"}"#: "1",
            #"farrier_log_lifecycle_step_duration_seconds_sum{outcome="succeeded",step="deploying"}"#: "412.25",
            #"farrier_log_lifecycle_step_duration_seconds_bucket{outcome="succeeded",step="deploying",le="300"}"#: "0",
            #"farrier_log_lifecycle_step_duration_seconds_bucket{outcome="succeeded",step="deploying",le="600"}"#: "1",
        ]
        for (series, value) in expected {
            #expect(samples[series] == value, "\(format): \(series) is \(samples[series] ?? "absent")\n\(out)")
        }
        // Nothing else: a reason that looks like fields counted nothing.
        let counted = samples.filter { $0.key.contains("_total{") }
        #expect(counted.count == 8, "\(format): \(counted)")
    }

    @Test func promtoolTestsTheLogRulesOnWhatMtailExports() throws {
        let (checked, checkOut, _) = try Self.run(
            "/usr/bin/promtool",
            ["check", "rules", Self.rules]
        )
        #expect(checked == 0 && checkOut.contains("SUCCESS: 9 rules found"), "\(checkOut)")
        let (tested, testOut, testErr) = try Self.run("/usr/bin/promtool", ["test", "rules", Self.ruleTests])
        #expect(tested == 0, "\(testOut) \(testErr)")
        // The rules read the program's counters and their own records, nothing else.
        let program = try String(
            contentsOfFile: Self.program + "/farrier.mtail",
            encoding: .utf8
        )
        let exported = Set(
            program.split(separator: "\n").compactMap { line -> String? in
                let words = line.split(separator: " ")
                return words.count > 1 && ["counter", "histogram"].contains(words[0]) ? String(words[1]) : nil
            }
        )
        #expect(exported.count == 5, "\(exported)")
        let text = try String(contentsOfFile: Self.rules, encoding: .utf8)
        let recorded = Set(
            text.split(separator: "\n").compactMap { line -> String? in
                let t = line.trimmingCharacters(in: .whitespaces)
                return t.hasPrefix("- record: ") ? String(t.dropFirst("- record: ".count)) : nil
            }
        )
        let pattern = try Regex(#"farrier[_:][A-Za-z0-9_:]*"#)
        for line in text.split(separator: "\n") where line.contains("expr: ") {
            let names = Set(line.matches(of: pattern).map { String(line[$0.range]) })
            #expect(!names.isEmpty && names.isSubset(of: exported.union(recorded)), "\(line)")
        }
    }
}
