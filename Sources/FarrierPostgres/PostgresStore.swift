import FarrierCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization
import SystemSupport

/// Farrier's state in PostgreSQL, for several server replicas sharing one database (SQLite
/// stays the embedded default).
///
/// Each record is a row with the columns the store looks things up by, and the record itself as
/// JSON (`body`): the columns are what constraints and indexes need (unique names and MACs, a
/// machine's project and state), the body is the value the domain defines. A transaction that
/// changes a machine locks its row (`SELECT … FOR UPDATE`), so two replicas never commit
/// conflicting changes to one machine; allocation also takes a transaction-scoped advisory lock.
///
/// PostgreSQL's default `synchronous_commit = on` flushes the WAL before COMMIT returns, so a
/// lease or a transition is durable when a method returns, as with SQLite.
///
/// The control-plane stores are async, on a `PostgresClient` pool. `LeaseStore` is synchronous
/// (the DHCP socket threads call it on their own threads): it runs on one dedicated connection
/// through NIO futures it waits for, so it never waits on the cooperative thread pool.
public final class PostgresStore: StateStore {
    let client: PostgresClient
    let runner: Task<Void, Never>
    /// A pool of its own for single-statement reads (a page of machines, a machine, a token):
    /// the API's and the agents' reads do not queue for a connection behind transactions that
    /// wait their turn for a lock (every lifecycle commit takes the event lock).
    let reader: PostgresClient
    let readerRunner: Task<Void, Never>
    let leaseConnection: LeaseConnection
    let listener: EventListener
    /// For connections of their own (the DHCP fence).
    let connectionConfiguration: PostgresConnection.Configuration
    let logger: Logger
    /// Timeline rows kept per machine; older rows are pruned as new ones arrive.
    public let timelineLimit: Int
    /// The longest any one call waits for the database (a connection, then its statements)
    /// before it fails with `StoreError.Code.unavailable`: an unreachable database fails calls,
    /// it does not hang them.
    public let timeout: Duration

    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, with
    /// `?sslmode=disable|prefer|require`; the default is prefer) and runs pending migrations.
    public init(
        url: String,
        timelineLimit: Int = 500,
        timeout: Duration = .seconds(30),
        logger: Logger = Logger(label: "farrier.postgres")
    ) async throws {
        var config = try PostgresURL(url)
        // The server ends what the client stopped waiting for: a statement, a lock wait or an
        // idle transaction past the bound is cancelled there too, so a timed-out call cannot
        // commit later or hold a pooled connection.
        let ms = String(timeout.components.seconds * 1000)
        let limits = [("statement_timeout", ms), ("lock_timeout", ms), ("idle_in_transaction_session_timeout", ms)]
        config.client.options.additionalStartupParameters += limits
        config.connection.options.additionalStartupParameters += limits
        let client = PostgresClient(configuration: config.client, backgroundLogger: logger)
        self.client = client
        runner = Task { await client.run() }
        var readerConfiguration = config.client
        readerConfiguration.options.maximumConnections = 8
        let reader = PostgresClient(configuration: readerConfiguration, backgroundLogger: logger)
        self.reader = reader
        readerRunner = Task { await reader.run() }
        leaseConnection = LeaseConnection(configuration: config.connection, timeout: timeout, logger: logger)
        listener = EventListener(configuration: config.connection, channel: Self.channel, logger: logger)
        connectionConfiguration = config.connection
        self.logger = logger
        self.timelineLimit = timelineLimit
        self.timeout = timeout
        do {
            try await migrate()
        } catch {
            close()
            throw error
        }
    }

    /// The URL without its password, for logs.
    public static func redacted(_ url: String) -> String { PostgresURL.redacted(url) }

    /// The channel a commit with machine events is announced on (NOTIFY, delivered at commit).
    static let channel = "farrier_events"

    /// Calls `handler` whenever any replica (this one included) commits machine events, and
    /// each time the listening connection is made again (something may have been missed while
    /// it was down): a replica's watchers and reconciler wake for what another replica did.
    public func onEvents(_ handler: @escaping @Sendable () -> Void) {
        listener.add(handler)
    }

    /// A fence for DHCP between the replicas on this database (`DHCPFence`), on a connection
    /// of its own, bounded by the store's timeout but at most 2 s per statement: a holder that
    /// stops hearing from the database stops answering DHCP within that.
    public func dhcpFence() -> any DHCPFence {
        AdvisoryFence(configuration: connectionConfiguration, timeout: min(timeout, .seconds(2)), logger: logger)
    }

    /// Closes the pool, the lease connection and the listener.
    public func close() {
        runner.cancel()
        readerRunner.cancel()
        leaseConnection.close()
        listener.close()
    }

    deinit { close() }

    // MARK: Transactions and errors

    /// Runs `body` in a transaction on a pooled connection: COMMIT when it returns, ROLLBACK
    /// when it throws. Database errors become `StoreError`s.
    func transaction<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T
    {
        do {
            return try await bounded { [client, logger] in
                try await client.withConnection { conn in
                    try await conn.query("BEGIN", logger: logger)
                    do {
                        let result = try await body(conn)
                        try await conn.query("COMMIT", logger: logger)
                        return result
                    } catch {
                        _ = try? await conn.query("ROLLBACK", logger: logger)
                        throw error
                    }
                }
            }
        } catch {
            throw Self.storeError(error)
        }
    }

    /// One statement outside a transaction.
    func run<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await pooled(client, body)
    }

    /// One read-only statement, on the reader pool.
    func read<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await pooled(reader, body)
    }

    /// `body` on a connection of `pool`, bounded by the store's timeout, its errors `StoreError`s.
    func pooled<T: Sendable>(
        _ pool: PostgresClient,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        do {
            return try await bounded { try await pool.withConnection { conn in try await body(conn) } }
        } catch {
            throw Self.storeError(error)
        }
    }

    /// `work`'s result, or `unavailable` once `timeout` has passed: the caller returns then,
    /// and the work is cancelled (the pool drops its wait for a connection; the server's own
    /// statement, lock and idle-transaction timeouts, set to the same bound, end a statement in
    /// flight and roll its transaction back).
    func bounded<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) async throws -> T {
        try await Outcome.first(
            of: work,
            within: timeout,
            or: StoreError(.unavailable, "PostgreSQL did not answer within \(timeout.components.seconds) s")
        )
    }

    /// An error a caller's closure threw inside a transaction; `storeError` unwraps it.
    struct CallerError: Error {
        let error: any Error
    }

    /// A `StoreError` for any error: store errors and a caller's own errors pass, a unique violation (SQLSTATE 23505) is
    /// `alreadyExists`, a foreign key violation (23503) `inUse`, everything else from the
    /// database is `unavailable`.
    static func storeError(_ error: any Error) -> any Error {
        if error is StoreError { return error }
        if let e = error as? CallerError { return e.error }
        if let e = error as? PSQLError {
            if e.serverInfo?[.sqlState] == "23503" {
                return StoreError(.inUse, "still referred to: \(e.serverInfo?[.detail] ?? "a foreign key")")
            }
            if e.serverInfo?[.sqlState] == "23505" {
                return StoreError(
                    .alreadyExists,
                    "already exists: \(e.serverInfo?[.detail] ?? "a unique value is taken")"
                )
            }
            return StoreError(.unavailable, "PostgreSQL: \(e.serverInfo?[.message] ?? "\(e.code)")")
        }
        if error is DecodingError || error is EncodingError { return StoreError(.corrupt, "corrupt row: \(error)") }
        return StoreError(.unavailable, "PostgreSQL: \(error)")
    }

    // MARK: Migrations

    /// Versioned migrations: each runs once, in order, in one transaction with the others
    /// pending, under an advisory lock (replicas starting together migrate once). A migration
    /// is never edited once shipped; add a new one.
    static let migrations: [(name: String, statements: [String])] = [
        (
            "v1",
            [
                """
                CREATE TABLE machine (
                  id text PRIMARY KEY, name text NOT NULL UNIQUE, mac text NOT NULL UNIQUE,
                  state text NOT NULL, project text, last_seen timestamptz NOT NULL,
                  body jsonb NOT NULL, bmc_secret bytea)
                """,
                "CREATE INDEX machine_state ON machine (state)",
                "CREATE INDEX machine_project ON machine (project)",
                "CREATE TABLE machine_event (id bigserial PRIMARY KEY, machine_id text NOT NULL, body jsonb NOT NULL)",
                "CREATE INDEX machine_event_machine ON machine_event (machine_id, id)",
                """
                CREATE TABLE timeline_event (
                  id bigserial PRIMARY KEY, mac text NOT NULL, time timestamptz NOT NULL,
                  stage text NOT NULL, event text NOT NULL, detail text NOT NULL)
                """,
                "CREATE INDEX timeline_event_mac ON timeline_event (mac, id)",
                """
                CREATE TABLE lease (
                  mac text PRIMARY KEY, address text NOT NULL UNIQUE, expires timestamptz NOT NULL, hostname text)
                """,
                "CREATE TABLE seen_address (mac text PRIMARY KEY, address text NOT NULL, seen timestamptz NOT NULL)",
                "CREATE TABLE project (name text PRIMARY KEY, body jsonb NOT NULL)",
                """
                CREATE TABLE api_token (
                  id text PRIMARY KEY, secret_sha256 text NOT NULL UNIQUE, project text REFERENCES project (name),
                  created timestamptz NOT NULL, body jsonb NOT NULL)
                """,
                "CREATE TABLE image (name text PRIMARY KEY, sha256 text NOT NULL, body jsonb NOT NULL)",
                "CREATE INDEX image_sha256 ON image (sha256)",
            ]
        ),
        (
            "v2-work-claim",
            [
                // Claims on machines' work (WorkClaimStore); `until` is on the database's clock.
                "CREATE TABLE work_claim (machine_id text PRIMARY KEY, owner text NOT NULL, token bigint NOT NULL, until timestamptz NOT NULL)",
                "CREATE INDEX machine_phase ON machine ((body->>'phase'))",
            ]
        ),
        (
            "v3-pages-and-pool",
            [
                // Pages are in bytewise name order (COLLATE "C"), whatever the database's locale.
                "CREATE INDEX machine_name_c ON machine (name COLLATE \"C\")",
                // The pool in allocation order (fewest cores, least memory, name).
                """
                CREATE INDEX machine_pool ON machine (
                  (COALESCE((body->'inventory'->>'cores')::bigint, 0)), (COALESCE((body->'inventory'->>'memoryBytes')::bigint, 0)),
                  (name COLLATE "C"))
                WHERE state = 'ready' AND project IS NULL
                """,
            ]
        ),
        (
            "v4-running-index",
            [
                // Admission counts the machines past `queued` in each step (updateCounting): on
                // this partial index that costs the running machines (a few hundred under the
                // caps), not every machine in a step (10 000 commissioning at once).
                "CREATE INDEX machine_running ON machine (state) WHERE body->>'phase' NOT IN ('queued', 'none')"
            ]
        ),
        (
            "v5-site",
            [
                // Sites (issue 16); a join token's hash is a column so that spending it is one
                // conditional UPDATE.
                "CREATE TABLE site (name text PRIMARY KEY, join_token_sha256 text UNIQUE, body jsonb NOT NULL)"
            ]
        ),
        (
            "v6-machine-site",
            [
                // A machine's site, as a column of its body that the database keeps and checks:
                // a site with machines cannot be deleted, and a machine cannot name a site that
                // is gone, whatever runs at the same time. Indexed for `machine list --site`.
                "ALTER TABLE machine ADD COLUMN site text GENERATED ALWAYS AS (body->>'site') STORED REFERENCES site (name)",
                "CREATE INDEX machine_site ON machine (site)",
            ]
        ),
        (
            "v7-site-events",
            [
                // The highest number of the site's own timeline events appended here: each is
                // delivered once, whatever is sent again.
                "ALTER TABLE site ADD COLUMN event_mark bigint NOT NULL DEFAULT 0"
            ]
        ),
        (
            "v8-site-lease",
            [
                // What each site last said its machines lease (decided and kept at the site;
                // here to show and reach the machines). Gone with the site.
                """
                CREATE TABLE site_lease (
                  mac text PRIMARY KEY, site text NOT NULL REFERENCES site (name) ON DELETE CASCADE,
                  address text NOT NULL, expires timestamptz NOT NULL, hostname text)
                """,
                "CREATE INDEX site_lease_site ON site_lease (site)",
            ]
        ),
        (
            "v9-bulk-enroll",
            [
                // Named BMC credentials, the password sealed under the name; a machine's link to
                // one is a column of its body the database checks (one in use cannot be removed).
                """
                CREATE TABLE bmc_credential (
                  name text PRIMARY KEY, username text NOT NULL, secret bytea NOT NULL, created timestamptz NOT NULL)
                """,
                """
                ALTER TABLE machine ADD COLUMN bmc_credential text
                  GENERATED ALWAYS AS (body->>'bmcCredential') STORED REFERENCES bmc_credential (name)
                """,
                "CREATE INDEX machine_bmc_credential ON machine (bmc_credential)",
            ]
        ),
        (
            "v10-networks",
            [
                // Networks for deployed machines (a site with networks cannot be removed), and
                // the static addresses machines hold on them: one row per address, so no two
                // machines hold one; gone with their machine; a network with any cannot be
                // removed. Allocations lock the network's row (FOR UPDATE) around reading what
                // is used and inserting.
                "CREATE TABLE network (name text PRIMARY KEY, site text REFERENCES site (name), body jsonb NOT NULL)",
                """
                CREATE TABLE network_address (
                  network text NOT NULL REFERENCES network (name), address text NOT NULL,
                  machine_id text NOT NULL REFERENCES machine (id) ON DELETE CASCADE,
                  PRIMARY KEY (network, address))
                """,
                "CREATE INDEX network_address_machine ON network_address (machine_id)",
            ]
        ),
        (
            "v11-burn-in",
            [
                // Admins' test scripts, every version (the version's fields in body), their
                // content by hash; the output of each machine's last run, gone with the
                // machine. A machine's run and step limit ride in its body.
                "CREATE TABLE test_script_content (sha256 text PRIMARY KEY, content bytea NOT NULL)",
                """
                CREATE TABLE test_script (
                  name text NOT NULL, version integer NOT NULL,
                  sha256 text NOT NULL REFERENCES test_script_content (sha256), body jsonb NOT NULL,
                  PRIMARY KEY (name, version))
                """,
                """
                CREATE TABLE test_output (
                  machine_id text NOT NULL REFERENCES machine (id) ON DELETE CASCADE, run_id text NOT NULL,
                  name text NOT NULL, target text NOT NULL DEFAULT '', seq integer NOT NULL, output text NOT NULL,
                  PRIMARY KEY (machine_id, run_id, name, target))
                """,
            ]
        ),
    ]

    /// An arbitrary constant: the advisory lock migrations take.
    static let migrationLock: Int64 = 0x4641_5252_4945_5201

    func migrate() async throws {
        try await transaction { [self] conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", logger: logger)
            try await conn.query(
                "CREATE TABLE IF NOT EXISTS farrier_migration (name text PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())",
                logger: logger
            )
            var applied = Set<String>()
            for try await name in try await conn.query("SELECT name FROM farrier_migration", logger: logger).decode(
                String.self
            ) {
                applied.insert(name)
            }
            for m in Self.migrations where !applied.contains(m.name) {
                for s in m.statements { try await conn.query(PostgresQuery(unsafeSQL: s), logger: logger) }
                try await conn.query("INSERT INTO farrier_migration (name) VALUES (\(m.name))", logger: logger)
                logger.info("database migrated", metadata: ["migration": "\(m.name)"])
            }
        }
    }

    /// The names of the migrations applied, in the order they run (`migrations`' order: the
    /// pending ones apply in one transaction, so their times tie, and "v10" sorts before "v2"
    /// by name). A name this release does not know comes last.
    public func appliedMigrations() async throws -> [String] {
        let names = try await run { [self] conn in
            var names: [String] = []
            for try await n in try await conn.query(
                "SELECT name FROM farrier_migration ORDER BY applied, name",
                logger: logger
            )
            .decode(String.self) {
                names.append(n)
            }
            return names
        }
        let rank = Dictionary(uniqueKeysWithValues: Self.migrations.enumerated().map { ($1.name, $0) })
        return names.enumerated().sorted { a, b in
            (rank[a.element] ?? Int.max, a.offset) < (rank[b.element] ?? Int.max, b.offset)
        }.map(\.element)
    }

    // MARK: JSON bodies

    static func json<T: Encodable>(_ value: T) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = .sortedKeys
        return String(decoding: try e.encode(value), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(text.utf8))
        } catch {
            throw StoreError(.corrupt, "corrupt row: \(T.self): \(error)")
        }
    }

    func machines(_ conn: PostgresConnection, _ query: PostgresQuery) async throws -> [Machine] {
        var out: [Machine] = []
        for try await body in try await conn.query(query, logger: logger).decode(String.self) {
            out.append(try Self.decode(Machine.self, body))
        }
        return out
    }

    func one<T: Decodable & Sendable>(_ type: T.Type, _ query: PostgresQuery) async throws -> T? {
        try await read { [self] conn in
            for try await body in try await conn.query(query, logger: logger).decode(String.self) {
                return try Self.decode(T.self, body)
            }
            return nil
        }
    }

    func all<T: Decodable & Sendable>(_ type: T.Type, _ query: PostgresQuery) async throws -> [T] {
        try await read { [self] conn in
            var out: [T] = []
            for try await body in try await conn.query(query, logger: logger).decode(String.self) {
                out.append(try Self.decode(T.self, body))
            }
            return out
        }
    }

    /// Inserts or rewrites a machine's row from its value (the BMC secret is kept apart).
    func write(_ m: Machine, conn: PostgresConnection, insert: Bool) async throws {
        let body = try Self.json(m)
        if insert {
            try await conn.query(
                """
                INSERT INTO machine (id, name, mac, state, project, last_seen, body)
                VALUES (\(m.id), \(m.name), \(m.mac.description), \(m.state.rawValue), \(m.project), \(m.lastSeen), \(body)::jsonb)
                """,
                logger: logger
            )
        } else {
            try await conn.query(
                """
                UPDATE machine SET name = \(m.name), mac = \(m.mac.description), state = \(m.state.rawValue),
                  project = \(m.project), last_seen = \(m.lastSeen), body = \(body)::jsonb
                WHERE id = \(m.id)
                """,
                logger: logger
            )
        }
    }
}

// MARK: MachineStore

extension PostgresStore {
    public func recordSighting(
        mac: MACAddress,
        platform: ClientPlatform,
        at time: Date,
        create: Int?
    ) async throws -> Machine? {
        try await transaction { [self] conn in
            if var m = try await machines(
                conn,
                "SELECT body::text FROM machine WHERE mac = \(mac.description) FOR UPDATE"
            ).first {
                // A sighting that may not create (an HTTP script fetch, which anyone can make)
                // writes at most once a minute per machine, unless it fills in the platform.
                let fills =
                    (m.architecture == .unknown && platform.architecture != .unknown)
                    || (m.firmware == .unknown && platform.firmware != .unknown)
                if create == nil, !fills, time.timeIntervalSince(m.lastSeen) < 60 { return m }
                m.lastSeen = time
                if m.architecture == .unknown, platform.architecture != .unknown {
                    m.architecture = platform.architecture
                }
                if m.firmware == .unknown, platform.firmware != .unknown { m.firmware = platform.firmware }
                try await write(m, conn: conn, insert: false)
                return m
            }
            guard let create else { return nil }
            // Replicas count and insert one at a time, so together they stay under the cap.
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.discoveryLock))", logger: logger)
            var discovered = 0
            for try await n in try await conn.query(
                "SELECT count(*) FROM machine WHERE state = 'discovered'",
                logger: logger
            ).decode(Int.self) {
                discovered = n
            }
            guard discovered < create else { return nil }
            let m = Machine(
                name: Machine.defaultName(for: mac),
                mac: mac,
                architecture: platform.architecture,
                firmware: platform.firmware,
                firstSeen: time,
                lastSeen: time
            )
            try await write(m, conn: conn, insert: true)
            return m
        }
    }

    public func pruneDiscovered(lastSeenBefore before: Date) async throws -> [MACAddress] {
        try await transaction { [self] conn in
            var macs: [String] = []
            let rows = try await conn.query(
                """
                DELETE FROM machine WHERE state = 'discovered' AND project IS NULL AND body->'bmc' IS NULL
                  AND last_seen < \(before) RETURNING mac
                """,
                logger: logger
            )
            for try await mac in rows.decode(String.self) { macs.append(mac) }
            if !macs.isEmpty {
                try await conn.query("DELETE FROM timeline_event WHERE mac = ANY(\(macs))", logger: logger)
            }
            return macs.compactMap { MACAddress($0) }
        }
    }

    public func machine(mac: MACAddress) async throws -> Machine? {
        try await one(Machine.self, "SELECT body::text FROM machine WHERE mac = \(mac.description)")
    }

    public func machine(id: String) async throws -> Machine? {
        try await one(Machine.self, "SELECT body::text FROM machine WHERE id = \(id)")
    }

    public func machine(name: String) async throws -> Machine? {
        try await one(Machine.self, "SELECT body::text FROM machine WHERE name = \(name)")
    }

    public func machines() async throws -> [Machine] {
        try await all(Machine.self, "SELECT body::text FROM machine ORDER BY name COLLATE \"C\"")
    }

    public func machines(_ query: MachineQuery) async throws -> [Machine] {
        // Names compare bytewise ("C"), as Swift and SQLite compare them, whatever the
        // database's locale: a page token is the last name of the previous page.
        var sql = "SELECT body::text FROM machine WHERE true"
        var binds = PostgresBindings()
        if let states = query.states {
            binds.append(states.map(\.rawValue).sorted())
            sql += " AND state = ANY($\(binds.count))"
        }
        if let project = query.project {
            binds.append(project)
            sql += " AND project = $\(binds.count)"
        }
        if let zone = query.zone {
            binds.append(zone)
            sql += " AND body->>'zone' = $\(binds.count)"
        }
        if let site = query.site {
            binds.append(site)
            sql += " AND site = $\(binds.count)"
        }
        if let after = query.after {
            binds.append(after)
            sql += " AND name COLLATE \"C\" > $\(binds.count)"
        }
        sql += " ORDER BY name COLLATE \"C\""
        if let limit = query.limit {
            binds.append(max(0, limit))
            sql += " LIMIT $\(binds.count)"
        }
        return try await all(Machine.self, PostgresQuery(unsafeSQL: sql, binds: binds))
    }

    public func machineCounts() async throws -> [MachineCount] {
        try await all(
            MachineCount.self,
            """
            SELECT json_build_object('state', state, 'site', site, 'zone', coalesce(body->>'zone', ''),
                'project', project, 'count', count(*))::text
            FROM machine GROUP BY state, site, body->>'zone', project
            """
        )
    }

    public func machineSteps() async throws -> [MachineStep] {
        // Only the scan's fields, built into JSON with Machine's keys (and its encoding of
        // dates): the database sends a few hundred bytes a machine, not its inventory.
        let states = Lifecycle.steps.map(\.rawValue).sorted()
        return try await all(
            MachineStep.self,
            """
            SELECT json_build_object('id', id, 'name', name, 'state', state, 'phase', body->'phase',
                'generation', body->'generation', 'stepStarted', body->'stepStarted', 'progress', body->'progress',
                'testAllowance', body->'testAllowance')::text
            FROM machine WHERE state = ANY(\(states))
            """
        )
    }

    public func enroll(
        name: String,
        mac: MACAddress,
        bmc: BMCReference,
        sealedPassword: [UInt8],
        credential: String?,
        at time: Date
    ) async throws -> Machine {
        try await transaction { [self] conn in
            if let byName = try await machines(conn, "SELECT body::text FROM machine WHERE name = \(name) FOR UPDATE")
                .first,
                byName.mac != mac
            {
                throw StoreError(
                    .alreadyExists,
                    "machine name '\(name)' is already used by the machine with MAC \(byName.mac)"
                )
            }
            var m: Machine
            let insert: Bool
            if let existing = try await machines(
                conn,
                "SELECT body::text FROM machine WHERE mac = \(mac.description) FOR UPDATE"
            ).first {
                m = existing
                m.name = name
                // discovered ─enroll─▶ enrolled; a machine further along keeps its state.
                if m.state == .discovered { m.state = .enrolled }
                insert = false
            } else {
                m = Machine(
                    name: name,
                    mac: mac,
                    architecture: .unknown,
                    firmware: .unknown,
                    state: .enrolled,
                    firstSeen: time,
                    lastSeen: time
                )
                insert = true
            }
            m.bmc = bmc
            m.bmcCredential = credential
            try await write(m, conn: conn, insert: insert)
            try await conn.query(
                "UPDATE machine SET bmc_secret = \(ByteBuffer(bytes: sealedPassword)) WHERE id = \(m.id)",
                logger: logger
            )
            return m
        }
    }

    public func enroll(_ batch: [Enrollment], at time: Date) async throws -> [Machine] {
        try await transaction { [self] conn in
            var out: [Machine] = []
            for e in batch {
                if let c = e.credential {
                    var now: [UInt8]?
                    for try await secret in try await conn.query(
                        "SELECT secret FROM bmc_credential WHERE name = \(c) FOR SHARE",
                        logger: logger
                    ).decode(ByteBuffer.self) { now = Array(secret.readableBytesView) }
                    try e.checkCredential(current: now)
                }
                try e.checkName(
                    heldBy: try await machines(conn, "SELECT body::text FROM machine WHERE name = \(e.name) FOR UPDATE")
                        .first?.mac
                )
                let existing = try await machines(
                    conn,
                    "SELECT body::text FROM machine WHERE mac = \(e.mac.description) FOR UPDATE"
                ).first
                let m = try e.machine(replacing: existing, at: time)
                let insert = existing == nil
                try await write(m, conn: conn, insert: insert)
                try await conn.query(
                    "UPDATE machine SET bmc_secret = \(ByteBuffer(bytes: e.sealedPassword)) WHERE id = \(m.id)",
                    logger: logger
                )
                out.append(m)
            }
            return out
        }
    }

    public func addBMCCredential(_ c: BMCCredential) async throws {
        try await transaction { [self] conn in
            var taken = false
            for try await _ in try await conn.query(
                "SELECT 1 FROM bmc_credential WHERE name = \(c.name) FOR UPDATE",
                logger: logger
            ) { taken = true }
            if taken {
                throw StoreError(
                    .alreadyExists,
                    "BMC credential '\(c.name)' already exists; replace it (--replace) or pick another name"
                )
            }
            try await conn.query(
                """
                INSERT INTO bmc_credential (name, username, secret, created)
                VALUES (\(c.name), \(c.user), \(ByteBuffer(bytes: c.sealedPassword)), \(c.created))
                """,
                logger: logger
            )
        }
    }

    public func replaceBMCCredential(_ c: BMCCredential, machineSecrets: [String: [UInt8]]) async throws {
        try await transaction { [self] conn in
            var found = false
            for try await _ in try await conn.query(
                "SELECT 1 FROM bmc_credential WHERE name = \(c.name) FOR UPDATE",
                logger: logger
            ) { found = true }
            guard found else { throw StoreError(.notFound, "no BMC credential named '\(c.name)'") }
            let users = try await machines(
                conn,
                "SELECT body::text FROM machine WHERE bmc_credential = \(c.name) FOR UPDATE"
            )
            guard Set(users.map(\.id)) == Set(machineSecrets.keys) else {
                throw StoreError(.inUse, "the machines using BMC credential '\(c.name)' changed meanwhile; try again")
            }
            try await conn.query(
                """
                UPDATE bmc_credential SET username = \(c.user), secret = \(ByteBuffer(bytes: c.sealedPassword))
                WHERE name = \(c.name)
                """,
                logger: logger
            )
            for var m in users {
                m.bmc?.user = c.user
                try await write(m, conn: conn, insert: false)
                try await conn.query(
                    "UPDATE machine SET bmc_secret = \(ByteBuffer(bytes: machineSecrets[m.id] ?? [])) WHERE id = \(m.id)",
                    logger: logger
                )
            }
        }
    }

    public func bmcCredential(name: String) async throws -> BMCCredential? {
        try await read { [self] conn in
            for try await (n, user, secret, created) in try await conn.query(
                "SELECT name, username, secret, created FROM bmc_credential WHERE name = \(name)",
                logger: logger
            ).decode((String, String, ByteBuffer, Date).self) {
                return BMCCredential(
                    name: n,
                    user: user,
                    sealedPassword: Array(secret.readableBytesView),
                    created: created
                )
            }
            return nil
        }
    }

    public func bmcCredentials() async throws -> [BMCCredential] {
        try await read { [self] conn in
            var out: [BMCCredential] = []
            for try await (n, user, created, count) in try await conn.query(
                """
                SELECT c.name, c.username, c.created, (SELECT count(*) FROM machine m WHERE m.bmc_credential = c.name)
                FROM bmc_credential c ORDER BY c.name COLLATE "C"
                """,
                logger: logger
            ).decode((String, String, Date, Int64).self) {
                out.append(
                    BMCCredential(name: n, user: user, sealedPassword: [], created: created, machines: Int(count))
                )
            }
            return out
        }
    }

    public func machines(usingCredential name: String) async throws -> [String] {
        try await read { [self] conn in
            var out: [String] = []
            for try await id in try await conn.query(
                "SELECT id FROM machine WHERE bmc_credential = \(name) ORDER BY id",
                logger: logger
            ).decode(String.self) { out.append(id) }
            return out
        }
    }

    public func removeBMCCredential(name: String) async throws -> Bool {
        try await transaction { [self] conn in
            var n: Int64 = 0
            for try await c in try await conn.query(
                "SELECT count(*) FROM machine WHERE bmc_credential = \(name)",
                logger: logger
            ).decode(Int64.self) { n = c }
            if n > 0 {
                throw StoreError(
                    .inUse,
                    "BMC credential '\(name)' is used by \(n) machine(s); enroll them with another password or credential first"
                )
            }
            var removed = false
            for try await _ in try await conn.query(
                "DELETE FROM bmc_credential WHERE name = \(name) RETURNING name",
                logger: logger
            ) { removed = true }
            return removed
        }
    }

    public func sealedBMCPassword(machineID: String) async throws -> [UInt8]? {
        try await run { [self] conn in
            for try await secret in try await conn.query(
                "SELECT bmc_secret FROM machine WHERE id = \(machineID)",
                logger: logger
            )
            .decode(ByteBuffer?.self) {
                return secret.map { Array($0.readableBytesView) }
            }
            return nil
        }
    }

    public func update(
        machineID: String,
        fence: WorkClaim?,
        _ body: @escaping @Sendable (inout Machine) throws -> [MachineEvent]
    ) async throws -> Machine {
        try await transaction { [self] conn in
            guard
                let m = try await machines(conn, "SELECT body::text FROM machine WHERE id = \(machineID) FOR UPDATE")
                    .first
            else {
                throw StoreError(.notFound, "no machine with id \(machineID)")
            }
            if let fence { try await check(fence, conn: conn) }
            return try await apply(body, to: m, conn: conn)
        }
    }

    /// The advisory lock every counting update takes: admissions serialize, so the count each
    /// sees includes the others'.
    static let admissionLock: Int64 = 0x4641_5252_4945_5203

    public func updateCounting(
        machineID: String,
        fence: WorkClaim?,
        _ body: @escaping @Sendable (inout Machine, _ running: [MachineState: Int]) throws -> [MachineEvent]
    ) async throws -> Machine {
        try await transaction { [self] conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.admissionLock))", logger: logger)
            guard
                let m = try await machines(conn, "SELECT body::text FROM machine WHERE id = \(machineID) FOR UPDATE")
                    .first
            else {
                throw StoreError(.notFound, "no machine with id \(machineID)")
            }
            if let fence { try await check(fence, conn: conn) }
            var running: [MachineState: Int] = [:]
            let rows = try await conn.query(
                "SELECT state, count(*)::bigint FROM machine WHERE body->>'phase' NOT IN ('queued', 'none') AND body->>'phase' <> 'os' GROUP BY state",
                logger: logger
            )
            for try await (state, n) in rows.decode((String, Int64).self) {
                if let s = MachineState(rawValue: state) { running[s] = Int(n) }
            }
            let counted = running
            return try await apply({ x in try body(&x, counted) }, to: m, conn: conn)
        }
    }

    /// Throws `fenced` unless the claim is live and still this holder's. Checked after the
    /// machine's row is locked, against the clock now (not the transaction's start), and the
    /// claim's row stays share-locked to the commit: a takeover (which updates that row) waits
    /// until this transaction has committed, and then acts on what it committed.
    func check(_ claim: WorkClaim, conn: PostgresConnection) async throws {
        let rows = try await conn.query(
            """
            SELECT 1 FROM work_claim WHERE machine_id = \(claim.machineID) AND owner = \(claim.owner)
              AND token = \(claim.token) AND until > clock_timestamp()
            FOR SHARE
            """,
            logger: logger
        )
        for try await _ in rows.decode(Int.self) { return }
        throw StoreError(.fenced, "the claim \(claim) on machine \(claim.machineID) lapsed or was taken over")
    }

    /// The advisory lock event inserts take (see `apply`).
    static let eventLock: Int64 = 0x4641_5252_4945_5204

    /// The advisory lock allocations take: they choose among all machines, so two at once
    /// would choose alike.
    static let allocationLock: Int64 = 0x4641_5252_4945_5202
    /// Taken by a sighting that would create a discovered machine, around the count of
    /// discovered machines and the insert (the cap, `discovery.max-machines`, across replicas).
    static let discoveryLock: Int64 = 0x4641_5252_4945_5205

    public func allocate(
        _ accept: @escaping @Sendable (Machine) -> Bool,
        _ body: @escaping @Sendable (inout Machine) throws -> [MachineEvent]
    ) async throws -> Machine? {
        try await transaction { [self] conn in
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.allocationLock))", logger: logger)
            // The pool, smallest first (MachineStore.allocate's order), a batch at a time, each batch
            // starting after the last one read (keyset, on the index machine_pool): a machine
            // that leaves or joins the pool meanwhile (a deploy by name, a release, which do not
            // take the allocation lock) moves no other machine out of the way.
            let batch = 100
            var picked: Machine?
            var after: (cores: Int64, memory: Int64, name: String)?
            let order =
                "COALESCE((body->'inventory'->>'cores')::bigint, 0), COALESCE((body->'inventory'->>'memoryBytes')::bigint, 0), name COLLATE \"C\""
            search: for _ in 0..<1_000_000 {
                var sql = "SELECT body::text FROM machine WHERE state = 'ready' AND project IS NULL"
                var binds = PostgresBindings()
                if let after {
                    binds.append(after.cores)
                    binds.append(after.memory)
                    binds.append(after.name)
                    sql += " AND (\(order)) > ($1, $2, $3)"
                }
                sql += " ORDER BY \(order) LIMIT \(batch)"
                let rows = try await machines(conn, PostgresQuery(unsafeSQL: sql, binds: binds))
                for m in rows where accept(m) {
                    picked = m
                    break search
                }
                guard rows.count == batch, let last = rows.last else { break }
                after = (Int64(last.inventory?.cores ?? 0), last.inventory?.memoryBytes ?? 0, last.name)
            }
            guard let picked else { return nil }
            // Lock the chosen row and make sure it is still in the pool and still taken (a
            // transition by name, on this replica or another, does not take the allocation lock).
            // Whatever else changed meanwhile (a power reading, a label) does not matter.
            guard
                let current = try await machines(
                    conn,
                    "SELECT body::text FROM machine WHERE id = \(picked.id) FOR UPDATE"
                ).first,
                current.state == .ready, current.project == nil, current.generation == picked.generation,
                accept(current)
            else {
                throw StoreError(.unavailable, "machine \(picked.name) changed while it was being allocated; try again")
            }
            return try await apply(body, to: current, conn: conn)
        }
    }

    func apply(
        _ body: @Sendable (inout Machine) throws -> [MachineEvent],
        to machine: Machine,
        conn: PostgresConnection
    ) async throws -> Machine {
        var m = machine
        var events: [MachineEvent]
        do {
            events = try body(&m)
        } catch {
            // The caller's own refusal (a state check, a hint no disk meets) is theirs to
            // report: it passes through the transaction's error mapping unchanged.
            throw CallerError(error: error)
        }
        if m.name != machine.name {
            for try await _ in try await conn.query("SELECT 1 FROM machine WHERE name = \(m.name)", logger: logger)
                .decode(Int.self)
            {
                throw StoreError(.alreadyExists, "machine name '\(m.name)' is already in use")
            }
        }
        // A machine joins only a project that exists when it commits. The share lock waits for
        // a delete of that project in flight (then finds no row), and a delete waits for this
        // commit (then counts this machine and refuses): a deploy and a project's delete racing
        // on two replicas cannot leave a machine in a project that is gone.
        if let project = m.project, project != machine.project {
            var exists = false
            for try await _ in try await conn.query(
                "SELECT 1 FROM project WHERE name = \(project) FOR SHARE",
                logger: logger
            ).decode(Int.self) {
                exists = true
            }
            guard exists else { throw StoreError(.notFound, "no project named '\(project)'") }
        }
        events += try await syncAddresses(from: machine, to: &m, conn: conn)
        try await write(m, conn: conn, insert: false)
        // Event ids are handed out at insert, and a watcher reads "after the last id it saw": so
        // transactions that insert events take this lock first and hold it to their commit,
        // which makes ids commit in order (no watcher skips a later-committed lower id). Every
        // replica listening hears of them when (and only if) this transaction commits.
        // One statement takes the lock, inserts and notifies: every lifecycle commit in the
        // fleet passes through this lock, so it is held for that statement and the COMMIT, not
        // for a round trip per event (with a replica's threads busy, each round trip waited
        // for them, and the whole fleet's commits queued behind it).
        if !events.isEmpty {
            let ids = events.map(\.machineID)
            let bodies = try events.map { try Self.json($0) }
            try await conn.query(
                """
                WITH locked AS (SELECT pg_advisory_xact_lock(\(Self.eventLock))),
                  inserted AS (
                    INSERT INTO machine_event (machine_id, body)
                    SELECT e.machine_id, e.body::jsonb
                    FROM locked, unnest(\(ids)::text[], \(bodies)::text[]) WITH ORDINALITY AS e(machine_id, body, n)
                    ORDER BY e.n
                    RETURNING 1)
                SELECT pg_notify(\(Self.channel), '') FROM (SELECT count(*) FROM inserted) AS done
                """,
                logger: logger
            )
        }
        return m
    }

    /// Keeps the machine's static addresses those of its deployment's plan, in its write (as
    /// `SQLiteStore.syncAddresses`). The rows of the networks it takes addresses on are locked
    /// first, in name order, so two writes allocating on one network take turns (what one
    /// reads as used stays so to its commit), and writes on {A, B} and {B, A} cannot deadlock.
    /// No query for a machine that holds none before or after.
    func syncAddresses(from old: Machine, to m: inout Machine, conn: PostgresConnection) async throws -> [MachineEvent]
    {
        if let refusal = AddressAllocation.siteChangeProblem(from: old, to: m) { throw refusal }
        let before = AddressAllocation.held(old)
        let pending = AddressAllocation.pending(m)
        let asked = Set(pending + AddressAllocation.held(m).subtracting(before).map(\.network))
        var networks: [String: Network] = [:]
        for name in asked.sorted() {
            let rows = try await conn.query(
                "SELECT body::text FROM network WHERE name = \(name) FOR UPDATE",
                logger: logger
            )
            for try await body in rows.decode(String.self) { networks[name] = try Self.decode(Network.self, body) }
        }
        var events: [MachineEvent] = []
        if !pending.isEmpty {
            var used: [String: Set<IPAddress>] = [:]
            for name in pending where networks[name] != nil {
                let rows = try await conn.query(
                    "SELECT address FROM network_address WHERE network = \(name) AND machine_id <> \(m.id)",
                    logger: logger
                )
                for try await address in rows.decode(String.self) {
                    if let a = IPAddress(address) { used[name, default: []].insert(a) }
                }
            }
            events += try AddressAllocation.allocate(&m, networks: networks, used: used)
        }
        let after = AddressAllocation.held(m)
        guard before != after else { return events }
        for k in before.subtracting(after) {
            try await conn.query(
                """
                DELETE FROM network_address
                WHERE network = \(k.network) AND address = \(k.address.description) AND machine_id = \(m.id)
                """,
                logger: logger
            )
        }
        for k in after.subtracting(before).sorted() {
            guard networks[k.network] != nil else { throw StoreError(.notFound, "no network named '\(k.network)'") }
            let rows = try await conn.query(
                """
                INSERT INTO network_address (network, address, machine_id)
                VALUES (\(k.network), \(k.address.description), \(m.id))
                ON CONFLICT (network, address) DO UPDATE SET machine_id = network_address.machine_id
                RETURNING machine_id
                """,
                logger: logger
            )
            for try await holder in rows.decode(String.self) where holder != m.id {
                throw StoreError(.alreadyExists, "address \(k.address) on network \(k.network) is already taken")
            }
        }
        return events + AddressAllocation.released(before.subtracting(after), by: m)
    }

    public func claimWork(machineID: String, owner: String, ttl: Duration) async throws -> WorkClaim? {
        let seconds = Double(ttl.components.seconds)
        return try await run { [self] conn in
            // Renewing a live claim keeps its token; taking a lapsed one (even one's own) bumps it.
            let rows = try await conn.query(
                """
                INSERT INTO work_claim AS c (machine_id, owner, token, until)
                VALUES (\(machineID), \(owner), 1, now() + \(seconds) * interval '1 second')
                ON CONFLICT (machine_id) DO UPDATE SET
                  owner = EXCLUDED.owner,
                  token = CASE WHEN c.until > now() THEN c.token ELSE c.token + 1 END,
                  until = EXCLUDED.until
                WHERE c.owner = EXCLUDED.owner OR c.until <= now()
                RETURNING token
                """,
                logger: logger
            )
            for try await token in rows.decode(Int64.self) {
                return WorkClaim(machineID: machineID, owner: owner, token: token)
            }
            return nil
        }
    }

    public func renewWork(_ claim: WorkClaim, ttl: Duration) async throws -> Bool {
        let seconds = Double(ttl.components.seconds)
        return try await run { [self] conn in
            let rows = try await conn.query(
                """
                UPDATE work_claim SET until = now() + \(seconds) * interval '1 second'
                WHERE machine_id = \(claim.machineID) AND owner = \(claim.owner) AND token = \(claim.token) AND until > now()
                RETURNING 1
                """,
                logger: logger
            )
            for try await _ in rows.decode(Int.self) { return true }
            return false
        }
    }

    public func releaseWork(_ claim: WorkClaim) async throws {
        _ = try await run { [self] conn in
            try await conn.query(
                """
                UPDATE work_claim SET until = 'epoch'
                WHERE machine_id = \(claim.machineID) AND owner = \(claim.owner) AND token = \(claim.token)
                """,
                logger: logger
            )
        }
    }

    public func deleteMachine(id: String) async throws {
        try await transaction { [self] conn in
            let rows = try await conn.query("DELETE FROM machine WHERE id = \(id) RETURNING mac", logger: logger)
            for try await mac in rows.decode(String.self) {
                try await conn.query("DELETE FROM timeline_event WHERE mac = \(mac)", logger: logger)
                try await conn.query("DELETE FROM lease WHERE mac = \(mac)", logger: logger)
            }
            try await conn.query("DELETE FROM machine_event WHERE machine_id = \(id)", logger: logger)
            try await conn.query("DELETE FROM work_claim WHERE machine_id = \(id)", logger: logger)
        }
    }

    public func events(after: Int64, machineID: String?, limit: Int) async throws -> [MachineEvent] {
        try await run { [self] conn in
            let rows: PostgresRowSequence
            if let machineID {
                rows = try await conn.query(
                    "SELECT id, body::text FROM machine_event WHERE id > \(after) AND machine_id = \(machineID) ORDER BY id LIMIT \(limit)",
                    logger: logger
                )
            } else {
                rows = try await conn.query(
                    "SELECT id, body::text FROM machine_event WHERE id > \(after) ORDER BY id LIMIT \(limit)",
                    logger: logger
                )
            }
            var out: [MachineEvent] = []
            for try await (id, body) in rows.decode((Int64, String).self) {
                var e = try Self.decode(MachineEvent.self, body)
                e.id = id
                out.append(e)
            }
            return out
        }
    }

    public func lastEventID(machineID: String?) async throws -> Int64 {
        try await run { [self] conn in
            let query: PostgresQuery =
                if let machineID {
                    "SELECT max(id) FROM machine_event WHERE machine_id = \(machineID)"
                } else {
                    "SELECT max(id) FROM machine_event"
                }
            for try await id in try await conn.query(query, logger: logger).decode(Int64?.self) {
                return id ?? 0
            }
            return 0
        }
    }

    public func appendTimeline(_ events: [TimelineEvent]) async throws {
        guard !events.isEmpty else { return }
        try await transaction { [self] conn in try await insertTimeline(conn, events) }
    }

    /// Appends events, keeping the newest `timelineLimit` of each MAC.
    func insertTimeline(_ conn: PostgresConnection, _ events: [TimelineEvent]) async throws {
        for e in events {
            try await conn.query(
                """
                INSERT INTO timeline_event (mac, time, stage, event, detail)
                VALUES (\(e.mac.description), \(e.time), \(e.stage.rawValue), \(e.event), \(e.detail))
                """,
                logger: logger
            )
        }
        for mac in Set(events.map(\.mac.description)) {
            try await conn.query(
                """
                DELETE FROM timeline_event WHERE mac = \(mac) AND id <= (
                  SELECT id FROM timeline_event WHERE mac = \(mac) ORDER BY id DESC LIMIT 1 OFFSET \(timelineLimit))
                """,
                logger: logger
            )
        }
    }

    public func appendSiteEvents(
        name: String,
        certificateSerial: String,
        after: Int64,
        events: [SiteEvent],
        through: Int64
    ) async throws -> Int64? {
        try await transaction { [self] conn in
            var mark: Int64?
            let rows = try await conn.query(
                """
                SELECT event_mark FROM site WHERE name = \(name) AND body->>'certificateSerial' = \(certificateSerial)
                FOR UPDATE
                """,
                logger: logger
            )
            for try await m in rows.decode(Int64.self) { mark = m }
            guard let mark else { return nil }
            guard let (fresh, next) = SiteEvent.delivery(mark: mark, after: after, events: events, through: through)
            else { return mark }
            var macs = Set<String>()
            // FOR SHARE: a machine deleted meanwhile does not keep a timeline.
            let machines = try await conn.query(
                "SELECT mac FROM machine WHERE site = \(name) FOR SHARE",
                logger: logger
            )
            for try await mac in machines.decode(String.self) { macs.insert(mac) }
            try await insertTimeline(conn, fresh.map(\.event).filter { macs.contains($0.mac.description) })
            try await conn.query("UPDATE site SET event_mark = \(next) WHERE name = \(name)", logger: logger)
            return next
        }
    }

    public func timeline(mac: MACAddress, limit: Int) async throws -> [TimelineEvent] {
        try await run { [self] conn in
            var out: [TimelineEvent] = []
            let rows = try await conn.query(
                "SELECT time, stage, event, detail FROM timeline_event WHERE mac = \(mac.description) ORDER BY id DESC LIMIT \(limit)",
                logger: logger
            )
            for try await (time, stage, event, detail) in rows.decode((Date, String, String, String).self) {
                out.append(
                    TimelineEvent(
                        mac: mac,
                        time: time,
                        stage: TimelineEvent.Stage(rawValue: stage) ?? .dhcp,
                        event: event,
                        detail: detail
                    )
                )
            }
            return out.reversed()
        }
    }
}

// MARK: TenancyStore, ImageStore

extension PostgresStore {
    public func createProject(_ p: Project) async throws {
        try await transaction { [self] conn in
            for try await _ in try await conn.query("SELECT 1 FROM project WHERE name = \(p.name)", logger: logger)
                .decode(Int.self)
            {
                throw StoreError(.alreadyExists, "project '\(p.name)' already exists")
            }
            try await conn.query(
                "INSERT INTO project (name, body) VALUES (\(p.name), \(try Self.json(p))::jsonb)",
                logger: logger
            )
        }
    }

    public func projects() async throws -> [Project] {
        try await all(Project.self, "SELECT body::text FROM project ORDER BY name")
    }

    public func project(name: String) async throws -> Project? {
        try await one(Project.self, "SELECT body::text FROM project WHERE name = \(name)")
    }

    public func deleteProject(name: String) async throws -> Bool {
        try await transaction { [self] conn in
            // Locks the project's row against a concurrent delete of it, and against a machine
            // joining it: a deploy share-locks the row it joins (apply), so it commits before
            // this count or finds the project gone.
            var exists = false
            for try await _ in try await conn.query(
                "SELECT 1 FROM project WHERE name = \(name) FOR UPDATE",
                logger: logger
            ).decode(Int.self) {
                exists = true
            }
            guard exists else { return false }
            let machines = try await count(conn, "SELECT count(*) FROM machine WHERE project = \(name)")
            if machines > 0 {
                throw StoreError(.inUse, "project '\(name)' still has \(machines) machine(s); release them first")
            }
            let tokens = try await count(conn, "SELECT count(*) FROM api_token WHERE project = \(name)")
            if tokens > 0 {
                throw StoreError(.inUse, "project '\(name)' still has \(tokens) token(s); revoke them first")
            }
            try await conn.query("DELETE FROM project WHERE name = \(name)", logger: logger)
            return true
        }
    }

    func count(_ conn: PostgresConnection, _ query: PostgresQuery) async throws -> Int {
        for try await n in try await conn.query(query, logger: logger).decode(Int.self) { return n }
        return 0
    }

    public func createToken(_ t: APIToken) async throws {
        try await transaction { [self] conn in
            if let project = t.project,
                try await count(conn, "SELECT count(*) FROM project WHERE name = \(project)") == 0
            {
                throw StoreError(.notFound, "no project named '\(project)'")
            }
            try await conn.query(
                """
                INSERT INTO api_token (id, secret_sha256, project, created, body)
                VALUES (\(t.id), \(t.secretSHA256), \(t.project), \(t.created), \(try Self.json(t))::jsonb)
                """,
                logger: logger
            )
        }
    }

    public func token(secretSHA256: String) async throws -> APIToken? {
        try await one(APIToken.self, "SELECT body::text FROM api_token WHERE secret_sha256 = \(secretSHA256)")
    }

    public func tokens() async throws -> [APIToken] {
        try await all(APIToken.self, "SELECT body::text FROM api_token ORDER BY created, id")
    }

    public func revokeToken(id: String) async throws -> Bool {
        try await run { [self] conn in
            let rows = try await conn.query("DELETE FROM api_token WHERE id = \(id) RETURNING id", logger: logger)
            for try await _ in rows.decode(String.self) { return true }
            return false
        }
    }

    // MARK: Sites

    public func createSite(_ site: Site) async throws {
        try await transaction { [self] conn in
            if try await count(conn, "SELECT count(*) FROM site WHERE name = \(site.name)") > 0 {
                throw StoreError(.alreadyExists, "site '\(site.name)' already exists")
            }
            try await conn.query(
                """
                INSERT INTO site (name, join_token_sha256, body)
                VALUES (\(site.name), \(site.joinTokenSHA256), \(try Self.json(site))::jsonb)
                """,
                logger: logger
            )
        }
    }

    public func sites() async throws -> [Site] {
        try await all(Site.self, "SELECT body::text FROM site ORDER BY name COLLATE \"C\"")
    }

    public func site(name: String) async throws -> Site? {
        try await one(Site.self, "SELECT body::text FROM site WHERE name = \(name)")
    }

    public func site(joinTokenSHA256: String) async throws -> Site? {
        try await one(
            Site.self,
            """
            SELECT body::text FROM site
            WHERE join_token_sha256 = \(joinTokenSHA256) OR body->>'spentTokenSHA256' = \(joinTokenSHA256)
            """
        )
    }

    public func completeJoin(
        name: String,
        joinTokenSHA256: String,
        certificateSerial: String,
        certificateNotAfter: Date,
        certificatePEM: String,
        at: Date
    ) async throws -> Bool {
        try await transaction { [self] conn in
            var site: Site?
            for try await body in try await conn.query(
                "SELECT body::text FROM site WHERE name = \(name) AND join_token_sha256 = \(joinTokenSHA256) FOR UPDATE",
                logger: logger
            ).decode(String.self) {
                site = try Self.decode(Site.self, body)
            }
            guard var s = site else { return false }
            s.joinTokenSHA256 = nil
            s.spentTokenSHA256 = joinTokenSHA256
            s.certificateSerial = certificateSerial
            s.certificateNotAfter = certificateNotAfter
            s.certificatePEM = certificatePEM
            s.joined = at
            try await conn.query(
                "UPDATE site SET join_token_sha256 = NULL, body = \(try Self.json(s))::jsonb WHERE name = \(name)",
                logger: logger
            )
            return true
        }
    }

    public func recordSiteLink(name: String, certificateSerial: String, link: SiteLink) async throws -> Bool {
        let body = try Self.json(link)
        return try await run { [self] conn in
            let rows = try await conn.query(
                """
                UPDATE site SET body = jsonb_set(body, '{link}', \(body)::jsonb)
                WHERE name = \(name) AND body->>'certificateSerial' = \(certificateSerial) RETURNING name
                """,
                logger: logger
            )
            for try await _ in rows.decode(String.self) { return true }
            return false
        }
    }

    public func recordSiteLeases(name: String, certificateSerial: String, leases: [Lease]) async throws -> Int? {
        try await transaction { [self] conn in
            var found = false
            let rows = try await conn.query(
                """
                SELECT name FROM site WHERE name = \(name) AND body->>'certificateSerial' = \(certificateSerial)
                FOR UPDATE
                """,
                logger: logger
            )
            for try await _ in rows.decode(String.self) { found = true }
            guard found else { return nil }
            var macs = Set<String>()
            let machines = try await conn.query(
                "SELECT mac FROM machine WHERE site = \(name) FOR SHARE",
                logger: logger
            )
            for try await mac in machines.decode(String.self) { macs.insert(mac) }
            try await conn.query("DELETE FROM site_lease WHERE site = \(name)", logger: logger)
            // The last lease a MAC is given wins, as in the site's table.
            var byMAC: [String: Lease] = [:]
            for l in leases where macs.contains(l.mac.description) { byMAC[l.mac.description] = l }
            let kept = byMAC.values.sorted { $0.mac.description < $1.mac.description }
            guard !kept.isEmpty else { return 0 }
            // One statement for all of them (a site's few thousand leases, every few seconds).
            try await conn.query(
                """
                INSERT INTO site_lease (mac, site, address, expires, hostname)
                SELECT l.mac, \(name), l.address, l.expires, NULLIF(l.hostname, '')
                FROM unnest(\(kept.map(\.mac.description))::text[], \(kept.map(\.address.description))::text[],
                  \(kept.map(\.expires))::timestamptz[], \(kept.map { $0.hostname ?? "" })::text[])
                  AS l (mac, address, expires, hostname)
                ON CONFLICT (mac) DO UPDATE SET site = EXCLUDED.site, address = EXCLUDED.address,
                  expires = EXCLUDED.expires, hostname = EXCLUDED.hostname
                """,
                logger: logger
            )
            return kept.count
        }
    }

    public func siteLeases(macs: [MACAddress]) async throws -> [Lease] {
        guard !macs.isEmpty else { return [] }
        return try await pooledLeases(
            """
            SELECT l.mac, l.address, l.expires, l.hostname FROM site_lease l
            JOIN machine m ON m.mac = l.mac AND m.site = l.site
            WHERE l.mac = ANY(\(macs.map(\.description)))
            """
        )
    }

    public func deleteSite(name: String) async throws -> Bool {
        try await run { [self] conn in
            let rows = try await conn.query("DELETE FROM site WHERE name = \(name) RETURNING name", logger: logger)
            for try await _ in rows.decode(String.self) { return true }
            return false
        }
    }

    // MARK: TestScriptStore

    public func addTestScript(_ script: TestScript, content: [UInt8]) async throws -> TestScript {
        try await transaction { [self] conn in
            // Adds of one name take turns: each sees the version the one before it added.
            try await conn.query(
                "SELECT pg_advisory_xact_lock(hashtext(\("test-script:" + script.name)))",
                logger: logger
            )
            let newest = try await firstBody(
                TestScript.self,
                conn,
                "SELECT body::text FROM test_script WHERE name = \(script.name) ORDER BY version DESC LIMIT 1"
            )
            if let newest, newest.sha256 == script.sha256, newest.limitSeconds == script.limitSeconds,
                newest.description == script.description
            {
                return newest
            }
            var stored = script
            stored.version = (newest?.version ?? 0) + 1
            try await conn.query(
                """
                INSERT INTO test_script_content (sha256, content) VALUES (\(script.sha256), \(ByteBuffer(bytes: content)))
                ON CONFLICT (sha256) DO NOTHING
                """,
                logger: logger
            )
            try await conn.query(
                """
                INSERT INTO test_script (name, version, sha256, body)
                VALUES (\(stored.name), \(stored.version), \(stored.sha256), \(try Self.json(stored))::jsonb)
                """,
                logger: logger
            )
            return stored
        }
    }

    public func testScripts() async throws -> [TestScript] {
        try await all(TestScript.self, "SELECT body::text FROM test_script ORDER BY name COLLATE \"C\", version")
    }

    public func testScriptContent(sha256: String) async throws -> [UInt8]? {
        try await run { [self] conn in
            for try await content in try await conn.query(
                "SELECT content FROM test_script_content WHERE sha256 = \(sha256)",
                logger: logger
            ).decode(ByteBuffer.self) {
                return Array(content.readableBytesView)
            }
            return nil
        }
    }

    public func removeTestScript(name: String) async throws -> Int {
        try await transaction { [self] conn in
            try await conn.query("SELECT pg_advisory_xact_lock(hashtext(\("test-script:" + name)))", logger: logger)
            let versions = try await count(conn, "SELECT count(*) FROM test_script WHERE name = \(name)")
            guard versions > 0 else { throw StoreError(.notFound, "no test script named '\(name)'") }
            // The machines that need it now are locked to the commit, as an image's delete
            // locks its users. A commissioning that resolved the script before this and
            // commits after it finds no content when its task is made: that test ends as an
            // error, never a pass.
            let users = try await machines(
                conn,
                """
                SELECT body::text FROM machine WHERE body->'burnIn' IS NOT NULL AND state IN ('commissioning', 'failed')
                ORDER BY name COLLATE "C" FOR UPDATE
                """
            ).filter { $0.needsTestScript(name) }
            if !users.isEmpty {
                throw StoreError(
                    .inUse,
                    "test script '\(name)' is among the tests of \(users.map(\.name).joined(separator: ", ")) "
                        + "(commissioning, or failed in it); let them finish or abort them first"
                )
            }
            try await conn.query("DELETE FROM test_script WHERE name = \(name)", logger: logger)
            try await conn.query(
                """
                DELETE FROM test_script_content c WHERE NOT EXISTS (SELECT 1 FROM test_script s WHERE s.sha256 = c.sha256)
                """,
                logger: logger
            )
            return versions
        }
    }

    public func putTestOutputs(machineID: String, runID: String, _ outputs: [TestOutput]) async throws {
        try await transaction { [self] conn in
            try await conn.query("DELETE FROM test_output WHERE machine_id = \(machineID)", logger: logger)
            for (i, o) in outputs.enumerated() {
                try await conn.query(
                    """
                    INSERT INTO test_output (machine_id, run_id, name, target, seq, output)
                    VALUES (\(machineID), \(runID), \(o.name), \(o.target), \(i), \(o.output))
                    ON CONFLICT (machine_id, run_id, name, target) DO UPDATE SET output = EXCLUDED.output
                    """,
                    logger: logger
                )
            }
        }
    }

    public func testOutputs(machineID: String, runID: String) async throws -> [TestOutput] {
        try await run { [self] conn in
            var out: [TestOutput] = []
            for try await (name, target, output) in try await conn.query(
                """
                SELECT name, target, output FROM test_output WHERE machine_id = \(machineID) AND run_id = \(runID)
                ORDER BY seq
                """,
                logger: logger
            ).decode((String, String, String).self) {
                out.append(TestOutput(name: name, target: target, output: output))
            }
            return out
        }
    }

    /// The first row's JSON body, inside a transaction (`one` reads on a connection of its own).
    func firstBody<T: Decodable>(_ type: T.Type, _ conn: PostgresConnection, _ query: PostgresQuery) async throws -> T?
    {
        for try await body in try await conn.query(query, logger: logger).decode(String.self) {
            return try Self.decode(T.self, body)
        }
        return nil
    }

    // MARK: NetworkStore

    /// The advisory lock network creates take around their overlap check and insert.
    static let networkLock: Int64 = 0x4641_5252_4945_5206

    public func createNetwork(_ network: Network) async throws {
        try await transaction { [self] conn in
            // Creates take turns: the overlap check below sees every network committed before.
            try await conn.query("SELECT pg_advisory_xact_lock(\(Self.networkLock))", logger: logger)
            if try await count(conn, "SELECT count(*) FROM network WHERE name = \(network.name)") > 0 {
                throw StoreError(.alreadyExists, "network '\(network.name)' already exists")
            }
            // The site's row is share-locked to the commit: a delete of the site waits, then
            // finds the network and is refused.
            if let site = network.site,
                try await count(conn, "SELECT count(*) FROM (SELECT 1 FROM site WHERE name = \(site) FOR SHARE) s") == 0
            {
                throw StoreError(.notFound, "no site named '\(site)'")
            }
            var others: [Network] = []
            for try await body in try await conn.query("SELECT body::text FROM network", logger: logger).decode(
                String.self
            ) {
                others.append(try Self.decode(Network.self, body))
            }
            if let clash = network.overlap(with: others) { throw StoreError(.alreadyExists, clash) }
            try await conn.query(
                "INSERT INTO network (name, site, body) VALUES (\(network.name), \(network.site), \(try Self.json(network))::jsonb)",
                logger: logger
            )
        }
    }

    public func networks() async throws -> [Network] {
        try await all(Network.self, "SELECT body::text FROM network ORDER BY name COLLATE \"C\"")
    }

    public func network(name: String) async throws -> Network? {
        try await one(Network.self, "SELECT body::text FROM network WHERE name = \(name)")
    }

    public func deleteNetwork(name: String) async throws {
        try await transaction { [self] conn in
            // Locked as an allocation locks it: none can start on it until this commits.
            guard
                try await count(conn, "SELECT count(*) FROM (SELECT 1 FROM network WHERE name = \(name) FOR UPDATE) n")
                    > 0
            else { throw StoreError(.notFound, "no network named '\(name)'") }
            var holders: [String] = []
            let rows = try await conn.query(
                """
                SELECT DISTINCT m.name FROM network_address a JOIN machine m ON m.id = a.machine_id
                WHERE a.network = \(name) ORDER BY m.name
                """,
                logger: logger
            )
            for try await holder in rows.decode(String.self) { holders.append(holder) }
            if !holders.isEmpty {
                throw StoreError(
                    .inUse,
                    "network '\(name)' has addresses held by \(holders.joined(separator: ", ")); release them first"
                )
            }
            try await conn.query("DELETE FROM network WHERE name = \(name)", logger: logger)
        }
    }

    public func networkAddresses(network: String) async throws -> [HeldAddress] {
        try await read { [self] conn in
            var out: [HeldAddress] = []
            let rows = try await conn.query(
                """
                SELECT a.address, a.machine_id, m.name, m.mac FROM network_address a JOIN machine m ON m.id = a.machine_id
                WHERE a.network = \(network)
                """,
                logger: logger
            )
            for try await (address, id, name, mac) in rows.decode((String, String, String, String).self) {
                guard let a = IPAddress(address), let mac = MACAddress(mac) else { continue }
                out.append(HeldAddress(network: network, address: a, machineID: id, machine: name, mac: mac))
            }
            return out.sorted { $0.address < $1.address }
        }
    }

    public func addImage(_ i: ImageInfo) async throws {
        try await transaction { [self] conn in
            if try await count(conn, "SELECT count(*) FROM image WHERE name = \(i.name)") > 0 {
                throw StoreError(
                    .alreadyExists,
                    "image '\(i.name)' already exists; remove it first or pick another name"
                )
            }
            try await conn.query(
                "INSERT INTO image (name, sha256, body) VALUES (\(i.name), \(i.sha256), \(try Self.json(i))::jsonb)",
                logger: logger
            )
        }
    }

    public func images() async throws -> [ImageInfo] {
        try await all(ImageInfo.self, "SELECT body::text FROM image ORDER BY name")
    }

    public func image(name: String) async throws -> ImageInfo? {
        try await one(ImageInfo.self, "SELECT body::text FROM image WHERE name = \(name)")
    }

    public func deleteImage(name: String) async throws -> Bool {
        try await transaction { [self] conn in
            var users: [String] = []
            let rows = try await conn.query(
                "SELECT name FROM machine WHERE body->'deployment'->>'image' = \(name) ORDER BY name FOR UPDATE",
                logger: logger
            )
            for try await user in rows.decode(String.self) { users.append(user) }
            if !users.isEmpty {
                throw StoreError(
                    .inUse,
                    "image '\(name)' is in use by \(users.joined(separator: ", ")); release them first"
                )
            }
            let deleted = try await conn.query("DELETE FROM image WHERE name = \(name) RETURNING name", logger: logger)
            for try await _ in deleted.decode(String.self) { return true }
            return false
        }
    }

    public func imageReferenced(sha256: String) async throws -> Bool {
        try await run { [self] conn in try await count(conn, "SELECT count(*) FROM image WHERE sha256 = \(sha256)") > 0
        }
    }
}

// MARK: LeaseStore

extension PostgresStore {
    public func leases() throws -> [Lease] {
        try leaseConnection.run { session in
            let result = try session.query("SELECT mac, address, expires, hostname FROM lease")
            return try result.rows.compactMap { row in
                let (mac, address, expires, hostname) = try row.decode((String, String, Date, String?).self)
                return Self.lease(mac, address, expires, hostname)
            }
        }
    }

    /// On the pool, for the API: never waits on the DHCP threads' connection.
    public func currentLeases() async throws -> [Lease] {
        try await pooledLeases("SELECT mac, address, expires, hostname FROM lease")
    }

    public func currentLeases(macs: [MACAddress]) async throws -> [Lease] {
        try await pooledLeases(
            "SELECT mac, address, expires, hostname FROM lease WHERE mac = ANY(\(macs.map(\.description)))"
        )
    }

    /// The leases a query of (mac, address, expires, hostname) selects, on the pool.
    func pooledLeases(_ query: PostgresQuery) async throws -> [Lease] {
        try await read { [self] conn in
            var out: [Lease] = []
            let rows = try await conn.query(query, logger: logger)
            for try await (mac, address, expires, hostname) in rows.decode((String, String, Date, String?).self) {
                if let lease = Self.lease(mac, address, expires, hostname) { out.append(lease) }
            }
            return out
        }
    }

    /// A lease row as a value; nil for a row whose MAC or address does not parse.
    static func lease(_ mac: String, _ address: String, _ expires: Date, _ hostname: String?) -> Lease? {
        guard let m = MACAddress(mac), let ip = IPv4Address(address) else { return nil }
        return Lease(mac: m, address: ip, expires: expires, hostname: hostname)
    }

    public func commit(_ batch: [Lease]) throws {
        guard !batch.isEmpty else { return }
        // As SQLite's INSERT OR REPLACE does row by row: each lease displaces the rows it
        // conflicts with, on its MAC or on its address. Played through here, then every stored
        // row any lease of the batch conflicts with is deleted and what remains is inserted.
        var byMAC: [String: Lease] = [:]
        var holder: [String: String] = [:]
        for l in batch {
            let mac = l.mac.description
            let address = l.address.description
            if let old = byMAC[mac] { holder[old.address.description] = nil }
            if let displaced = holder[address] { byMAC[displaced] = nil }
            byMAC[mac] = l
            holder[address] = mac
        }
        let leases = Array(byMAC.values)
        let macs = batch.map(\.mac.description)
        let addresses = batch.map(\.address.description)
        try leaseConnection.transaction { session in
            try session.query("DELETE FROM lease WHERE mac = ANY(\(macs)) OR address = ANY(\(addresses))")
            // Sent back to back; NIO queues them on the connection in order.
            let inserts = leases.map { l in
                session.send(
                    "INSERT INTO lease (mac, address, expires, hostname) VALUES (\(l.mac.description), \(l.address.description), \(l.expires), \(l.hostname))"
                )
            }
            for f in inserts { _ = try session.wait(f) }
        }
    }

    public func deleteLease(mac: MACAddress) throws {
        _ = try leaseConnection.run { session in
            try session.query("DELETE FROM lease WHERE mac = \(mac.description)")
        }
    }

    public func recordSeenAddress(mac: MACAddress, address: IPv4Address, at time: Date) throws {
        _ = try leaseConnection.run { session in
            try session.query(
                """
                INSERT INTO seen_address (mac, address, seen) VALUES (\(mac.description), \(address.description), \(time))
                ON CONFLICT (mac) DO UPDATE SET address = EXCLUDED.address, seen = EXCLUDED.seen
                """
            )
        }
    }

    public func seenAddresses(since cutoff: Date) throws -> [(mac: MACAddress, address: IPv4Address)] {
        try leaseConnection.run { session in
            try session.query("DELETE FROM seen_address WHERE seen < \(cutoff)")
            let result = try session.query("SELECT mac, address FROM seen_address ORDER BY seen")
            return try result.rows.compactMap { row in
                let (mac, address) = try row.decode((String, String).self)
                guard let m = MACAddress(mac), let ip = IPv4Address(address) else { return nil }
                return (m, ip)
            }
        }
    }
}

/// LISTEN on a connection of its own, from the first handler on until closed; the connection
/// is made again (after a second) whenever it fails.
final class EventListener: Sendable {
    let configuration: PostgresConnection.Configuration
    let channel: String
    let logger: Logger
    let state = Mutex<(handlers: [@Sendable () -> Void], task: Task<Void, Never>?, closed: Bool)>(([], nil, false))

    init(configuration: PostgresConnection.Configuration, channel: String, logger: Logger) {
        self.configuration = configuration
        self.channel = channel
        self.logger = logger
    }

    func add(_ handler: @escaping @Sendable () -> Void) {
        state.withLock { s in
            guard !s.closed else { return }
            s.handlers.append(handler)
            if s.task == nil { s.task = Task { await self.listen() } }
        }
    }

    func fire() {
        for h in state.withLock({ $0.handlers }) { h() }
    }

    func listen() async {
        while !Task.isCancelled {
            do {
                let conn = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
                do {
                    try await conn.listen(on: channel) { notifications in
                        fire()  // caught up: whatever was committed while not listening is read now
                        for try await _ in notifications { fire() }
                    }
                } catch {
                    if !Task.isCancelled {
                        logger.warning("listening for other replicas' events failed", metadata: ["error": "\(error)"])
                    }
                }
                try? await conn.close()
            } catch {
                if !Task.isCancelled {
                    logger.warning(
                        "cannot connect to listen for other replicas' events",
                        metadata: ["error": "\(error)"]
                    )
                }
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    func close() {
        let task = state.withLock { s -> Task<Void, Never>? in
            s.closed = true
            s.handlers = []
            defer { s.task = nil }
            return s.task
        }
        task?.cancel()
    }
}

/// The first of a bounded call's outcomes (its result or its timeout) resumes the caller.
final class Outcome<T: Sendable>: Sendable {
    let state = Mutex<(continuation: CheckedContinuation<T, any Error>?, done: Bool)>((nil, false))
    let timer = Mutex<(task: Task<Void, Never>?, done: Bool)>((nil, false))

    /// The timeout's task, cancelled (no longer sleeping) once the call has finished.
    func setTimer(_ t: Task<Void, Never>) {
        let cancelNow = timer.withLock { s -> Bool in
            if s.done { return true }
            s.task = t
            return false
        }
        if cancelNow { t.cancel() }
    }

    func start(_ c: CheckedContinuation<T, any Error>) {
        let early = state.withLock { s -> Bool in
            if s.done { return true }
            s.continuation = c
            return false
        }
        // Never: finish cannot run before start hands the continuation over.
        if early { c.resume(throwing: StoreError(.unavailable, "PostgreSQL call ended before it began")) }
    }

    /// `work`'s result, or `timedOut` once `timeout` has passed, whichever comes first: the
    /// caller is resumed then, whether or not `work` has ended (a task group would wait for it).
    /// On the timeout, `work`'s task is cancelled and `onTimeout` runs.
    static func first(
        of work: @escaping @Sendable () async throws -> T,
        within timeout: Duration,
        or timedOut: StoreError,
        onTimeout: @escaping @Sendable () -> Void = {}
    ) async throws -> T {
        let outcome = Outcome<T>()
        return try await withCheckedThrowingContinuation { continuation in
            outcome.start(continuation)
            let task = Task { outcome.finish(with: await Result(catching: { try await work() })) }
            outcome.setTimer(
                Task {
                    try? await Task.sleep(for: timeout)
                    if outcome.finish(with: .failure(timedOut)) {
                        onTimeout()
                        task.cancel()
                    }
                }
            )
        }
    }

    /// Resumes the caller if nothing did yet; says whether this call did.
    @discardableResult
    func finish(with result: Result<T, any Error>) -> Bool {
        let c = state.withLock { s -> CheckedContinuation<T, any Error>? in
            guard !s.done else { return nil }
            s.done = true
            defer { s.continuation = nil }
            return s.continuation
        }
        c?.resume(with: result)
        if c != nil {
            timer.withLock { s in
                s.done = true
                s.task?.cancel()
                s.task = nil
            }
        }
        return c != nil
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// The DHCP threads' connection: one, opened on first use and again after a failure, used by
/// one thread at a time. Its calls wait on NIO futures, never on the cooperative pool, so they
/// may be made from any thread that is not an event loop.
final class LeaseConnection: Sendable {
    let configuration: PostgresConnection.Configuration
    let timeout: Duration
    let logger: Logger
    let state = Mutex<PostgresConnection?>(nil)
    let ids = Atomic<Int>(0)

    init(configuration: PostgresConnection.Configuration, timeout: Duration, logger: Logger) {
        self.configuration = configuration.connecting(within: timeout)
        self.timeout = timeout
        self.logger = logger
    }

    /// Waits for `future`, at most `timeout`: then the connection is closed (which fails what
    /// is in flight on it) and the wait fails.
    func wait<T: Sendable>(_ future: EventLoopFuture<T>, on conn: PostgresConnection) throws -> T {
        let promise = future.eventLoop.makePromise(of: T.self)
        future.cascade(to: promise)
        let timer = future.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanosecondsClamped)) {
            promise.fail(
                StoreError(.unavailable, "PostgreSQL did not answer within \(self.timeout.components.seconds) s")
            )
            Self.close(conn)
        }
        defer { timer.cancel() }
        return try promise.futureResult.wait()
    }

    /// One connection's statements, each waited for at most `timeout`.
    struct Session {
        let owner: LeaseConnection
        let conn: PostgresConnection
        func send(_ q: PostgresQuery) -> EventLoopFuture<PostgresQueryResult> { conn.query(q, logger: owner.logger) }
        func wait<T: Sendable>(_ f: EventLoopFuture<T>) throws -> T { try owner.wait(f, on: conn) }
        @discardableResult
        func query(_ q: PostgresQuery) throws -> PostgresQueryResult { try wait(send(q)) }
    }

    func run<T>(_ body: (Session) throws -> T) throws -> T {
        do {
            return try state.withLock { current -> T in
                let conn: PostgresConnection
                if let c = current, !c.isClosed {
                    conn = c
                } else {
                    let id = ids.add(1, ordering: .relaxed).newValue
                    conn = try PostgresConnection.connect(
                        on: MultiThreadedEventLoopGroup.singleton.next(),
                        configuration: configuration,
                        id: id,
                        logger: logger
                    ).wait()  // bounded by the configuration's connect timeout
                    current = conn
                }
                do {
                    return try body(Session(owner: self, conn: conn))
                } catch {
                    // A failed statement may leave the connection mid-transaction: start afresh.
                    Self.close(conn)
                    current = nil
                    throw error
                }
            }
        } catch {
            throw PostgresStore.storeError(error)
        }
    }

    func transaction<T>(_ body: (Session) throws -> T) throws -> T {
        try run { session in
            try session.query("BEGIN")
            let result = try body(session)
            try session.query("COMMIT")
            return result
        }
    }

    /// Closes without waiting; the connection is kept until it is closed (PostgresNIO requires
    /// a connection to be closed before it is released).
    static func close(_ conn: PostgresConnection) {
        let closing: EventLoopFuture<Void> = conn.close()
        closing.whenComplete { _ in withExtendedLifetime(conn) {} }
    }

    func close() {
        state.withLock { current in
            if let c = current { Self.close(c) }
            current = nil
        }
    }
}

extension PostgresConnection.Configuration {
    /// The same, with connecting bounded by `timeout` (the store's bound on every call).
    func connecting(within timeout: Duration) -> Self {
        var c = self
        c.options.connectTimeout = .init(timeout)
        return c
    }
}

/// A `postgres://` URL, as libpq takes it: user, password, host, port, database and `sslmode`.
struct PostgresURL {
    var client: PostgresClient.Configuration
    var connection: PostgresConnection.Configuration

    init(_ text: String) throws {
        guard let url = URLComponents(string: text), url.scheme == "postgres" || url.scheme == "postgresql",
            let host = url.host, !host.isEmpty, let user = url.user, !user.isEmpty
        else {
            throw ConfigurationError(
                "database.url: '\(Self.redacted(text))' is not a URL like postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            )
        }
        let port = url.port ?? 5432
        let database = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        let password = url.password?.removingPercentEncoding ?? url.password
        let mode = url.queryItems?.first(where: { $0.name == "sslmode" })?.value ?? "prefer"
        let clientTLS: PostgresClient.Configuration.TLS
        let connectionTLS: PostgresConnection.Configuration.TLS
        switch mode {
        case "disable":
            (clientTLS, connectionTLS) = (.disable, .disable)
        case "prefer", "allow":
            let tls = try NIOSSLContext(configuration: .makeClientConfiguration())
            (clientTLS, connectionTLS) = (.prefer(.makeClientConfiguration()), .prefer(tls))
        case "require", "verify-full":
            let tls = try NIOSSLContext(configuration: .makeClientConfiguration())
            (clientTLS, connectionTLS) = (.require(.makeClientConfiguration()), .require(tls))
        default:
            throw ConfigurationError("database.url: sslmode '\(mode)' is not one of disable, prefer, require")
        }
        client = .init(
            host: host,
            port: port,
            username: user,
            password: password,
            database: database.isEmpty ? nil : database,
            tls: clientTLS
        )
        connection = .init(
            host: host,
            port: port,
            username: user,
            password: password,
            database: database.isEmpty ? nil : database,
            tls: connectionTLS
        )
    }

    /// The URL without its password, for messages and logs.
    static func redacted(_ text: String) -> String {
        guard var url = URLComponents(string: text), url.password != nil else { return text }
        url.password = "***"
        return url.string ?? "postgres://…"
    }
}
