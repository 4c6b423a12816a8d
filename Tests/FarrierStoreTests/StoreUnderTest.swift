import FarrierCore
import FarrierPostgres
import FarrierStore
import Foundation
import Logging
import Testing
import TestSupport

/// The stores the contract tests run against.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

/// One store for one test: SQLite in a temporary file, or a PostgreSQL 15 server of its own
/// (TestSupport.PostgresServer) with a fresh database. `close()` closes every store opened on it,
/// stops the server and removes the files.
final class StoreUnderTest: @unchecked Sendable {
    let kind: StoreKind
    let harness: Harness
    let postgres: PostgresServer?
    let location: String
    let timelineLimit: Int
    private(set) var store: any StateStore
    private var opened: [any StateStore] = []

    init(_ kind: StoreKind, timelineLimit: Int = 500) async throws {
        self.kind = kind
        self.timelineLimit = timelineLimit
        harness = try Harness("store-\(kind.rawValue)")
        switch kind {
        case .sqlite:
            postgres = nil
            location = harness.directory + "/farrier.sqlite"
        case .postgres:
            do {
                let server = try PostgresServer(harness)
                postgres = server
                location = try server.createDatabase("farrier")
            } catch {
                harness.cleanup()
                throw error
            }
        }
        store = try await Self.open(kind, location, timelineLimit: timelineLimit)
        opened.append(store)
    }

    static func open(_ kind: StoreKind, _ location: String, timelineLimit: Int) async throws -> any StateStore {
        switch kind {
        case .sqlite: try SQLiteStore(path: location, timelineLimit: timelineLimit)
        case .postgres:
            try await PostgresStore(url: location, timelineLimit: timelineLimit, logger: Logger(label: "test.postgres"))
        }
    }

    /// Another store on the same database: a restarted server, or a second replica.
    func reopen() async throws -> any StateStore {
        let s = try await Self.open(kind, location, timelineLimit: timelineLimit)
        opened.append(s)
        return s
    }

    func close() {
        for s in opened { (s as? PostgresStore)?.close() }
        opened = []
        postgres?.stop()
        harness.cleanup()
    }
}
