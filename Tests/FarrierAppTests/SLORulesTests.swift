import FarrierTelemetry
import Foundation
import Testing

/// The SLOs as code (`deploy/prometheus`) and the Grafana dashboard (`deploy/grafana`): the
/// rules load and their unit tests pass in Prometheus's own `promtool` (Debian's prometheus
/// package; missing, the test fails), and every query in the rules and the dashboard names a
/// family Farrier exports or a rule the rules record.
@Suite struct SLORulesTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let rules = repository.appendingPathComponent("deploy/prometheus/farrier-slo.rules.yml").path
    static let ruleTests = repository.appendingPathComponent("deploy/prometheus/farrier-slo.test.yml").path
    static let dashboard = repository.appendingPathComponent("deploy/grafana/farrier-fleet.json").path

    /// Runs promtool in the rules' directory; its status and output.
    static func promtool(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/promtool")
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: rules).deletingLastPathComponent()
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func promtoolChecksAndTestsTheRules() throws {
        #expect(
            FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool"),
            "promtool is missing: apt-get install prometheus (scripts/install-deps.sh does)"
        )
        let (checked, checkOut) = try Self.promtool(["check", "rules", Self.rules])
        #expect(checked == 0, "\(checkOut)")
        #expect(checkOut.contains("SUCCESS: 47 rules found"), "\(checkOut)")
        let (tested, testOut) = try Self.promtool(["test", "rules", Self.ruleTests])
        #expect(tested == 0, "\(testOut)")
    }

    /// The metric names a PromQL expression reads: Farrier's families (a histogram's by its
    /// base name), gRPC's and the process's, and recorded rules.
    static func names(in expr: String) -> Set<String> {
        var out = Set<String>()
        let pattern = try! Regex(#"(?:farrier[_:]|grpc_server_|process_)[A-Za-z0-9_:]*"#)
        for match in expr.matches(of: pattern) {
            var name = String(expr[match.range])
            for suffix in ["_bucket", "_count", "_sum"] where name.hasSuffix(suffix) && !name.contains(":") {
                let base = String(name.dropLast(suffix.count))
                if MetricFamilies.help[base] != nil { name = base }
            }
            out.insert(name)
        }
        return out
    }

    @Test func everyQueryNamesAMetricFarrierExports() throws {
        let rulesText = try String(contentsOfFile: Self.rules, encoding: .utf8)
        let recorded = Set(
            rulesText.split(separator: "\n").compactMap { line -> String? in
                let t = line.trimmingCharacters(in: .whitespaces)
                return t.hasPrefix("- record: ") ? String(t.dropFirst("- record: ".count)) : nil
            }
        )
        #expect(recorded.count == 37, "\(recorded.count)")
        let known = Set(MetricFamilies.help.keys).union(recorded)
        // The rules' own expressions.
        let ruleExprs = rulesText.split(separator: "\n").compactMap { line -> String? in
            let t = line.trimmingCharacters(in: .whitespaces)
            return t.hasPrefix("expr: ") ? String(t.dropFirst("expr: ".count)) : nil
        }
        #expect(ruleExprs.count == 47)
        for e in ruleExprs {
            let unknown = Self.names(in: e).subtracting(known)
            #expect(unknown.isEmpty, "rule reads \(unknown): \(e)")
        }
        // The dashboard's queries.
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.dashboard)))
        var exprs: [String] = []
        func walk(_ v: Any) {
            if let d = v as? [String: Any] {
                if let e = d["expr"] as? String { exprs.append(e) }
                d.values.forEach(walk)
            } else if let a = v as? [Any] {
                a.forEach(walk)
            }
        }
        walk(json)
        #expect(exprs.count >= 20, "\(exprs.count)")
        var read = Set<String>()
        for e in exprs {
            let names = Self.names(in: e)
            #expect(!names.isEmpty, "names no metric: \(e)")
            #expect(names.subtracting(known).isEmpty, "dashboard reads \(names.subtracting(known)): \(e)")
            read.formUnion(names)
        }
        // It shows each SLO.
        for slo in ["deploy_errors", "deploy_slow", "release_errors", "dhcp_unanswered", "bmc_errors"] {
            #expect(read.contains("farrier:\(slo):ratio_rate1h"), "\(slo)")
        }
    }
}
