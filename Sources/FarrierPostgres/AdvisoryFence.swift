import FarrierCore
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import Synchronization

/// `DHCPFence` on session advisory locks (`pg_try_advisory_lock`), on a connection of its own:
/// a lock lives as long as the session that took it, so a replica that dies, or whose
/// connection the database closes, holds nothing. Keys are hashed (`hashtext`) into the
/// second half of a two-part lock ID whose first half is Farrier's DHCP space; two networks
/// whose names collide would share one holder, never get two.
final class AdvisoryFence: DHCPFence {
    /// The first half of every lock ID this fence takes ("DHCP" in ASCII).
    static let space: Int32 = 0x4448_4350
    let configuration: PostgresConnection.Configuration
    /// How long `check()` and each statement wait for the database.
    let timeout: Duration
    let logger: Logger
    let state = Mutex<PostgresConnection?>(nil)

    init(configuration: PostgresConnection.Configuration, timeout: Duration, logger: Logger) {
        self.configuration = configuration.connecting(within: timeout)
        self.timeout = timeout
        self.logger = logger
    }

    func acquire(_ keys: [String]) async throws -> Bool {
        let conn = try await connection()
        do {
            for key in keys.sorted() {
                let query: PostgresQuery = "SELECT pg_try_advisory_lock(\(Self.space), hashtext(\(key)))"
                let taken = try await bounded(conn) { [logger] in
                    var taken = false
                    for try await row in try await conn.query(query, logger: logger) {
                        taken = try row.decode(Bool.self)
                    }
                    return taken
                }
                if !taken {
                    _ = try await bounded(conn) { [logger] in
                        try await conn.query("SELECT pg_advisory_unlock_all()", logger: logger)
                    }
                    return false
                }
            }
            return true
        } catch {
            drop(conn)
            throw PostgresStore.storeError(error)
        }
    }

    func check() async throws {
        guard let conn = state.withLock({ $0 }), !conn.isClosed else {
            throw StoreError(.unavailable, "the DHCP fence's connection to PostgreSQL is closed")
        }
        do {
            _ = try await bounded(conn) { [logger] in try await conn.query("SELECT 1", logger: logger) }
        } catch {
            drop(conn)
            throw PostgresStore.storeError(error)
        }
    }

    func release() async {
        guard
            let conn = state.withLock({ c -> PostgresConnection? in
                defer { c = nil }
                return c
            })
        else { return }
        // Awaited, so the session has ended when this returns (the database lets go of its keys
        // as the session's backend exits, an instant later), but bounded: a close the server
        // never answers must not hold a replica stepping down.
        _ = try? await bounded(conn) { try await conn.close() }
    }

    func connection() async throws -> PostgresConnection {
        if let c = state.withLock({ $0 }), !c.isClosed { return c }
        let conn = try await PostgresConnection.connect(
            on: MultiThreadedEventLoopGroup.singleton.next(),
            configuration: configuration,
            id: 0,
            logger: logger
        )
        state.withLock { $0 = conn }
        return conn
    }

    func drop(_ conn: PostgresConnection) {
        state.withLock { c in if c === conn { c = nil } }
        LeaseConnection.close(conn)
    }

    /// `work`'s result, or `unavailable` once `timeout` has passed: then the connection is
    /// closed (which fails the statement in flight and lets go of the locks at the database) and
    /// the caller returns at once, whether or not the statement has noticed. (A task group would
    /// wait for the statement's task: one that never ended held the fence's caller for good.)
    func bounded<T: Sendable>(
        _ conn: PostgresConnection,
        _ work: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        try await Outcome.first(
            of: work,
            within: timeout,
            or: StoreError(.unavailable, "PostgreSQL did not answer within \(timeout) (DHCP fence)"),
            onTimeout: { LeaseConnection.close(conn) }
        )
    }
}
