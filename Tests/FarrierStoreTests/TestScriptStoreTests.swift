import FarrierCore
import Foundation
import Testing

/// Commissioning test scripts and test output (issue 18 point 7), in both stores: versions
/// count up, a retried add changes nothing, content is shared by hash and goes with its last
/// version, a script a commissioning needs stays, and only the last run's output is kept.
@Suite struct TestScriptStoreTests {
    static let t = Date(timeIntervalSince1970: 1_800_000_000)

    static func script(_ name: String, _ content: String, limit: Int = 60, description: String = "") -> TestScript {
        TestScript(
            name: name,
            version: 0,
            // A stand-in for the hash: one per content, the same in every process.
            sha256: content.utf8.map { String(format: "%02x", $0) }.joined(),
            size: content.utf8.count,
            limitSeconds: limit,
            description: description,
            createdBy: "admin",
            created: t
        )
    }

    @Test(arguments: StoreKind.allCases) func versionsCountUpAndARetriedAddChangesNothing(
        _ kind: StoreKind
    ) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let one = try await s.addTestScript(Self.script("nic-check", "exit 0\n"), content: Array("exit 0\n".utf8))
            #expect(one.version == 1)
            // The same content, limit and description again: the same version.
            let again = try await s.addTestScript(Self.script("nic-check", "exit 0\n"), content: Array("exit 0\n".utf8))
            #expect(again == one)
            // A new limit is a new version, with the same content (stored once).
            let two = try await s.addTestScript(
                Self.script("nic-check", "exit 0\n", limit: 120),
                content: Array("exit 0\n".utf8)
            )
            #expect(two.version == 2 && two.sha256 == one.sha256)
            let three = try await s.addTestScript(Self.script("nic-check", "exit 1\n"), content: Array("exit 1\n".utf8))
            #expect(three.version == 3)
            _ = try await s.addTestScript(Self.script("a-first", "true\n"), content: Array("true\n".utf8))
            // Another script with the first one's content: it keeps that content.
            _ = try await s.addTestScript(Self.script("z-same", "exit 0\n"), content: Array("exit 0\n".utf8))
            let all = try await s.testScripts()
            #expect(
                all.map { "\($0.name)@\($0.version)" } == [
                    "a-first@1", "nic-check@1", "nic-check@2", "nic-check@3", "z-same@1",
                ]
            )
            #expect(try await s.testScriptContent(sha256: three.sha256) == Array("exit 1\n".utf8))
            #expect(try await s.testScriptContent(sha256: "none") == nil)
            // Every version goes, and content no version names.
            #expect(try await s.removeTestScript(name: "nic-check") == 3)
            #expect(try await s.testScripts().map(\.name) == ["a-first", "z-same"])
            #expect(try await s.testScriptContent(sha256: one.sha256) == Array("exit 0\n".utf8))
            #expect(try await s.testScriptContent(sha256: three.sha256) == nil)
            let gone = await #expect(throws: StoreError.self) { try await s.removeTestScript(name: "nic-check") }
            #expect(gone?.code == .notFound && gone?.message == "no test script named 'nic-check'")
        }
    }

    @Test(arguments: StoreKind.allCases) func aScriptACommissioningNeedsStays(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let v = try await s.addTestScript(Self.script("fan-check", "exit 0\n"), content: Array("exit 0\n".utf8))
            let mac = MACAddress("52:54:00:00:0b:01")!
            let m = try await s.enroll(
                name: "b1",
                mac: mac,
                bmc: try BMCReference(url: "ipmi://admin@198.18.0.9"),
                sealedPassword: [1],
                at: Self.t
            )
            let run = BurnIn(
                tests: [TestSpec(name: "fan-check", kind: .script, version: 1, sha256: v.sha256, limitSeconds: 60)],
                requestedBy: "admin",
                requested: Self.t,
                step: 1
            )
            _ = try await s.update(machineID: m.id) { x in
                x.state = .commissioning
                x.burnIn = run
                x.testAllowance = 60
                return []
            }
            let steps = try await s.machineSteps()
            #expect(steps.first { $0.id == m.id }?.testAllowance == 60)
            #expect(try await s.machine(id: m.id)?.burnIn == run)
            let kept = await #expect(throws: StoreError.self) { try await s.removeTestScript(name: "fan-check") }
            #expect(kept?.code == .inUse && kept?.message.contains("b1") == true, "\(String(describing: kept))")
            // Failed in commissioning: a retry would need it.
            _ = try await s.update(machineID: m.id) { x in
                x.state = .failed
                x.failedStep = .commissioning
                return []
            }
            await #expect(throws: StoreError.self) { try await s.removeTestScript(name: "fan-check") }
            // Ready again: nothing needs it.
            _ = try await s.update(machineID: m.id) { x in
                x.state = .ready
                x.failedStep = nil
                return []
            }
            #expect(try await s.removeTestScript(name: "fan-check") == 1)
        }
    }

    @Test(arguments: StoreKind.allCases) func onlyTheLastRunsOutputIsKeptAndItGoesWithTheMachine(
        _ kind: StoreKind
    ) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let m = try await s.enroll(
                name: "b2",
                mac: MACAddress("52:54:00:00:0b:02")!,
                bmc: try BMCReference(url: "ipmi://admin@198.18.0.9"),
                sealedPassword: [1],
                at: Self.t
            )
            let first = [
                TestOutput(name: "smart", target: "vda", output: "no SMART"),
                TestOutput(name: "smart", target: "nvme0n1", output: "PASSED"),
                TestOutput(name: "cpu-stress", target: "", output: "stress-ng: info: passed"),
            ]
            try await s.putTestOutputs(machineID: m.id, runID: "r1", first)
            #expect(try await s.testOutputs(machineID: m.id, runID: "r1") == first)
            // The same run again (a retried answer) replaces it.
            try await s.putTestOutputs(machineID: m.id, runID: "r1", Array(first.prefix(1)))
            #expect(try await s.testOutputs(machineID: m.id, runID: "r1") == Array(first.prefix(1)))
            try await s.putTestOutputs(
                machineID: m.id,
                runID: "r2",
                [TestOutput(name: "memtester", target: "", output: "ok")]
            )
            #expect(try await s.testOutputs(machineID: m.id, runID: "r1").isEmpty)
            #expect(try await s.testOutputs(machineID: m.id, runID: "r2").count == 1)
            try await s.deleteMachine(id: m.id)
            #expect(try await s.testOutputs(machineID: m.id, runID: "r2").isEmpty)
        }
    }
}
