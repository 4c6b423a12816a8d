import FarrierCore
import FarrierPostgres
import FarrierStore
import Foundation
import Logging
import TestSupport
import Testing

/// The stores the contract tests run against.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

/// Runs `body` with a store of `kind`, then closes it (stores, server, files), also when `body`
/// throws.
func withStore<T>(
    _ kind: StoreKind,
    timelineLimit: Int = 500,
    _ body: (StoreUnderTest) async throws -> T
) async throws -> T {
    let under = try await StoreUnderTest(kind, timelineLimit: timelineLimit)
    do {
        let result = try await body(under)
        await under.close()
        return result
    } catch {
        await under.close()
        throw error
    }
}

/// One store for one test: SQLite in a temporary file, or a PostgreSQL 15 server of its own
/// (TestSupport.PostgresServer) with a fresh database. `close()` closes every store opened on it,
/// stops the server and removes the files.
///
/// Starting and stopping the server waits on processes: that runs on a thread of its own
/// (`offPool`), never on the cooperative pool the other tests' async work needs.
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
            let harness = self.harness
            do {
                let (server, url) = try await offPool { () throws -> (PostgresServer, String) in
                    let server = try PostgresServer(harness)
                    return (server, try server.createDatabase("farrier"))
                }
                postgres = server
                location = url
            } catch {
                await offPool { harness.cleanup() }
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

    func close() async {
        for s in opened { (s as? PostgresStore)?.close() }
        opened = []
        let (postgres, harness) = (self.postgres, self.harness)
        await offPool {
            postgres?.stop()
            harness.cleanup()
        }
    }
}
