import FarrierCore
import Foundation
import Testing

@testable import FarrierAPI

/// What a machine's test run shows over the API (issue 18 point 7): admins see it all; a
/// member sees its machine's results and numbers, never an admin's name or a script's words
/// (its summary is its last line of output), and never output.
@Suite struct BurnInViewTests {
    static func machine() -> Machine {
        var m = Machine(
            name: "b1",
            mac: MACAddress("52:54:00:00:0d:01")!,
            architecture: .x86_64,
            firmware: .bios,
            state: .ready,
            firstSeen: Date(),
            lastSeen: Date()
        )
        m.burnIn = BurnIn(
            tests: [
                TestSpec(name: "smart", kind: .builtin, limitSeconds: 600),
                TestSpec(name: "fan-check", kind: .script, version: 2, sha256: "ab", limitSeconds: 60),
            ],
            requestedBy: "ops-alice",
            requested: Date(),
            finished: Date(),
            results: [
                TestResult(
                    name: "smart",
                    target: "nvme0n1",
                    status: .passed,
                    start: 0,
                    end: 1,
                    metrics: ["temp_c": 41],
                    summary: "health only",
                    outputBytes: 900
                ),
                TestResult(
                    name: "fan-check",
                    version: 2,
                    status: .failed,
                    start: 1,
                    end: 2,
                    exitCode: 3,
                    metrics: ["fans": 0],
                    summary: "exit 3: rack 7 PDU secret-name",
                    outputBytes: 40
                ),
            ]
        )
        return m
    }

    @Test func membersSeeResultsNotScriptsWordsOrWhoAsked() async throws {
        let m = Self.machine()
        let admin = Principal(tokenID: "1", tokenName: "admin", role: .admin, project: nil)
        let member = Principal(tokenID: "2", tokenName: "dev", role: .member, project: "p")
        let full = Caller.$principal.withValue(admin) { Farrier_V1_Machine(m, timeline: []) }
        #expect(full.burnIn.requestedBy == "ops-alice" && full.burnIn.tests == ["smart", "fan-check@2"])
        #expect(full.burnIn.results.map(\.summary) == ["health only", "exit 3: rack 7 PDU secret-name"])
        #expect(full.burnIn.results.map(\.outputBytes) == [900, 40])
        let seen = Caller.$principal.withValue(member) { Farrier_V1_Machine(m, timeline: []) }
        #expect(seen.burnIn.requestedBy == "")
        #expect(seen.burnIn.results.map(\.status) == ["passed", "failed"])
        #expect(seen.burnIn.results.map(\.metrics) == [["temp_c": 41], ["fans": 0]])
        #expect(seen.burnIn.results.map(\.summary) == ["health only", ""])
        #expect(
            seen.burnIn.results.map(\.outputBytes) == [0, 0] && seen.burnIn.results.allSatisfy { $0.output.isEmpty }
        )
    }
}
