import FarrierAPI
import FarrierControl
import FarrierCore
import FarrierStore
import Foundation
import Testing

/// Replicas starting together on an empty database (sharing a data directory) bootstrap one
/// admin token and one default project: one of them writes the token file, the others make
/// nothing and fail nothing.
@Suite struct BootstrapTests {
    @Test func replicasStartingTogetherMakeOneAdminToken() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-bootstrap-\(UUID())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/farrier.sqlite"
        let stores = try (0..<4).map { _ in try SQLiteStore(path: path) }
        let secrets = try await withThrowingTaskGroup(of: String?.self) { group in
            for s in stores { group.addTask { try await bootstrapAdminToken(store: s, dataDir: dir) } }
            var out: [String?] = []
            for try await r in group { out.append(r) }
            return out
        }
        let made = secrets.compactMap { $0 }
        #expect(made.count == 1, "\(secrets)")
        let tokens = try await stores[0].tokens()
        #expect(tokens.count == 1 && tokens.first?.role == .admin)
        let file = try String(contentsOfFile: dir + "/admin.token", encoding: .utf8).trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        #expect(file == made.first)
        #expect(try await stores[0].token(secretSHA256: TokenSecret.hash(file)) != nil)
        #expect(try await stores[0].projects().map(\.name) == ["default"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".new-") }.isEmpty)
        // A later start makes nothing.
        #expect(try await bootstrapAdminToken(store: stores[1], dataDir: dir) == nil)
    }
}
