import Crypto
import FarrierBMC
import FarrierControl
import FarrierCore
import FarrierStore
import Foundation
import Logging
import Synchronization
import Testing

/// What a log handler was given: level, message and metadata of each record.
final class CapturedLogs: Sendable {
    struct Record: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }
    let records = Mutex<[Record]>([])

    var logger: Logger {
        Logger(label: "test") { _ in Handler(logs: self) }
    }

    func matching(_ message: String) -> [Record] { records.withLock { $0.filter { $0.message.hasPrefix(message) } } }

    struct Handler: LogHandler {
        let logs: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }
            logs.records.withLock {
                $0.append(
                    Record(level: event.level, message: "\(event.message)", metadata: merged.mapValues { "\($0)" })
                )
            }
        }
    }
}

/// Every failed step logs one line at warning with the machine, the step, the class and the
/// reason (issue 17 point 8): what a log pipeline counts for the log-based SLO.
@Suite struct FailureLogTests {
    let store: SQLiteStore
    let logs = CapturedLogs()
    let controller: Controller

    init() throws {
        store = try SQLiteStore()
        controller = Controller(
            store: store,
            pool: BMCPool(vault: CredentialVault(key: SymmetricKey(size: .bits256))),
            agentKey: SymmetricKey(size: .bits256),
            logger: logs.logger
        )
    }

    func inStep(_ name: String, _ mac: String) async throws -> Machine {
        var m = try await store.enroll(
            name: name,
            mac: MACAddress(mac)!,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9623"),
            sealedPassword: [1],
            at: Date()
        )
        m = try await controller.apply(.commission, machineID: m.id)
        // Past the queue and the BMC's boot: the agent's phase.
        return try await store.update(machineID: m.id) { x in
            x.phase = .agent
            return []
        }
    }

    @Test func anAgentsFailureLogsOneLine() async throws {
        let m = try await inStep("a", "52:54:00:00:00:01")
        let token = try await controller.agentHello(
            peer: m.mac,
            hello: AgentHello(agentVersion: "test", inventory: nil, nonce: String(repeating: "n", count: 32))
        ).token
        try await controller.agentDone(token: token, peer: m.mac, result: AgentResult(ok: false, error: "disk on fire"))
        let lines = logs.matching("lifecycle step failed")
        #expect(lines.count == 1, "\(lines)")
        let line = try #require(lines.first)
        #expect(line.level == .warning)
        #expect(line.metadata["machine"] == "a" && line.metadata["step"] == "commissioning")
        #expect(line.metadata["failure"] == "agent" && line.metadata["reason"] == "agent: disk on fire")
    }

    @Test func aTimeoutOrABMCFailureLogsOneLine() async throws {
        let m = try await inStep("b", "52:54:00:00:00:02")
        await controller.fail(
            machineID: m.id,
            generation: m.generation,
            reason: "timed out after 60 s in phase boot",
            failure: .timeout
        )
        // A second failure of the same step (a late worker) is not a second failure.
        await controller.fail(machineID: m.id, generation: m.generation, reason: "again", failure: .bmc)
        let lines = logs.matching("lifecycle step failed")
        #expect(lines.count == 1, "\(lines)")
        #expect(lines.first?.metadata["failure"] == "timeout" && lines.first?.metadata["machine"] == "b")
        #expect(lines.first?.metadata["reason"] == "timed out after 60 s in phase boot")
        #expect(try await store.machine(id: m.id)?.state == .failed)
    }
}
