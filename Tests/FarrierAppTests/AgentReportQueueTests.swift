import FarrierCore
import Foundation
import Testing

@testable import FarrierApp

/// The reports a site keeps while its region is away: durable across a restart, in the order
/// received, and vouched for only with the token the region gave that machine.
@Suite struct AgentReportQueueTests {
    @Test func reportsSurviveARestartInOrder() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-reports-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (a, b) = (MACAddress([0x52, 0x54, 0, 1, 0, 1]), MACAddress([0x52, 0x54, 0, 1, 0, 2]))
        let q = try AgentReportQueue(directory: dir + "/reports", tokensFile: dir + "/tokens.json")
        #expect(!q.vouches(mac: a, token: "t-a"))
        try q.remember(mac: a, token: "t-a")
        #expect(q.vouches(mac: a, token: "t-a") && !q.vouches(mac: a, token: "t-b") && !q.vouches(mac: b, token: "t-a"))
        try q.enqueue(mac: a, call: "progress", token: "t-a", body: Data("1".utf8))
        try q.enqueue(mac: b, call: "done", token: "t-b", body: Data("2".utf8))
        try q.enqueue(mac: a, call: "done", token: "t-a", body: Data("3".utf8))
        // A write cut short by a crash leaves a temporary file: not a report, removed at start.
        try Data("{".utf8).write(to: URL(fileURLWithPath: dir + "/reports/00000000000000000009.json.tmp-1-ab"))

        let again = try AgentReportQueue(directory: dir + "/reports", tokensFile: dir + "/tokens.json")
        #expect(again.depth == 3 && again.waiting(mac: a) && again.waiting(mac: b))
        #expect(again.vouches(mac: a, token: "t-a"))
        let pending = again.pending()
        #expect(pending.map { String(decoding: $0.body, as: UTF8.self) } == ["1", "2", "3"])
        #expect(pending.map(\.call) == ["progress", "done", "done"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/reports").count == 3)
        // New ones go behind, numbered after the last kept.
        try again.enqueue(mac: b, call: "progress", token: "t-b", body: Data("4".utf8))
        for r in pending { again.remove(r) }
        #expect(again.depth == 1 && !again.waiting(mac: a) && again.waiting(mac: b))
        #expect(again.pending().map { String(decoding: $0.body, as: UTF8.self) } == ["4"])
    }
}
