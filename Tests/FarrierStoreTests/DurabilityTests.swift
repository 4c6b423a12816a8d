import FarrierCore
import Foundation
import GRDB
import Testing

@testable import FarrierStore

/// What "on disk before the ACK" rests on: the writer connection runs in WAL mode with
/// synchronous = FULL, so every commit fsyncs the WAL.
@Suite struct DurabilityTests {
    @Test func theWriterSyncsEveryCommit() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-dur-\(UUID())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = try SQLiteStore(path: dir + "/farrier.sqlite")
        try s.commit([Lease(mac: MACAddress("52:54:00:00:00:01")!, address: IPv4Address(10, 0, 0, 2), expires: Date())])
        let (mode, sync) = try await s.db.write { db in
            (try String.fetchOne(db, sql: "PRAGMA journal_mode"), try Int.fetchOne(db, sql: "PRAGMA synchronous"))
        }
        #expect(mode == "wal")
        #expect(sync == 2, "synchronous = FULL (2) on the writer")
    }
}
