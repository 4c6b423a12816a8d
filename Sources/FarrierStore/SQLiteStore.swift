import FarrierCore
import Foundation
import GRDB

/// Farrier's embedded state: machines, boot timelines and DHCP leases in one SQLite database.
///
/// The database runs in WAL mode with `synchronous = FULL`, so a transaction is on disk (the
/// WAL fsynced) when `write` returns: a lease committed here survives `kill -9` and power loss.
public final class SQLiteStore: StateStore {
    let db: any DatabaseWriter
    /// Timeline rows kept per machine; older rows are pruned as new ones arrive.
    public let timelineLimit: Int

    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    public init(path: String, timelineLimit: Int = 500) throws {
        var config = Configuration()
        config.busyMode = .timeout(10)
        let pool = try DatabasePool(path: path, configuration: config)
        // After the pool exists: GRDB turns WAL on for the writer with `synchronous = NORMAL`
        // (after any prepareDatabase hook), which syncs the WAL only at checkpoints, so a commit
        // could be lost to a power cut. The pool keeps one writer connection, so this sticks.
        try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = FULL") }
        db = pool
        self.timelineLimit = timelineLimit
        try Self.migrator.migrate(db)
        // One server uses a SQLite file: claims left by a server that died (kill -9) are its
        // own, and must not hold this one back for their lifetime.
        try db.write { try $0.execute(sql: "DELETE FROM work_claim") }
    }

    /// An in-memory database, for tests.
    public init(inMemory: Void = (), timelineLimit: Int = 500) throws {
        db = try DatabaseQueue()
        self.timelineLimit = timelineLimit
        try Self.migrator.migrate(db)
    }

    /// Versioned migrations. A migration is never edited once shipped; add a new one.
    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.create(table: "machine") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("mac", .text).notNull().unique()
                t.column("architecture", .text).notNull()
                t.column("firmware", .text).notNull()
                t.column("state", .text).notNull()
                t.column("firstSeen", .datetime).notNull()
                t.column("lastSeen", .datetime).notNull()
            }
            try db.create(table: "timelineEvent") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("mac", .text).notNull().indexed()
                t.column("time", .datetime).notNull()
                t.column("stage", .text).notNull()
                t.column("event", .text).notNull()
                t.column("detail", .text).notNull()
            }
            try db.create(table: "lease") { t in
                t.primaryKey("mac", .text)
                t.column("address", .text).notNull().unique()
                t.column("expires", .datetime).notNull()
                t.column("hostname", .text)
            }
        }
        m.registerMigration("v2-bmc") { db in
            // The BMC reference as JSON (no secret in it), and the password sealed apart.
            try db.alter(table: "machine") { t in
                t.add(column: "bmc", .text)
                t.add(column: "bmcSecret", .blob)
            }
        }
        m.registerMigration("v3-lifecycle") { db in
            try db.alter(table: "machine") { t in
                t.add(column: "failedStep", .text)
                t.add(column: "reason", .text).notNull().defaults(to: "")
                t.add(column: "project", .text).indexed()
                t.add(column: "tags", .text).notNull().defaults(to: "{}")
                t.add(column: "labels", .text).notNull().defaults(to: "{}")
                t.add(column: "zone", .text).notNull().defaults(to: "")
                t.add(column: "rack", .text).notNull().defaults(to: "")
                t.add(column: "inventory", .text)
                t.add(column: "deployment", .text)
                t.add(column: "phase", .text).notNull().defaults(to: "none")
                t.add(column: "generation", .integer).notNull().defaults(to: 0)
                t.add(column: "stepStarted", .datetime)
                t.add(column: "progress", .text)
            }
            try db.create(table: "project") { t in
                t.primaryKey("name", .text)
                t.column("description", .text).notNull()
                t.column("requiredTags", .text).notNull()
                t.column("created", .datetime).notNull()
            }
            try db.create(table: "apiToken") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull()
                t.column("role", .text).notNull()
                t.column("project", .text).references("project", onDelete: .restrict)
                t.column("secretSHA256", .text).notNull().unique()
                t.column("created", .datetime).notNull()
            }
            try db.create(table: "image") { t in
                t.primaryKey("name", .text)
                t.column("sha256", .text).notNull().indexed()
                t.column("size", .integer).notNull()
                t.column("format", .text).notNull()
                t.column("os", .text).notNull()
                t.column("architecture", .text).notNull()
                t.column("firmware", .text).notNull()
                t.column("created", .datetime).notNull()
            }
            try db.create(table: "machineEvent") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("machineID", .text).notNull().indexed()
                t.column("body", .text).notNull()
            }
        }
        m.registerMigration("v4-disk-dirty") { db in
            try db.alter(table: "machine") { t in
                t.add(column: "diskDirty", .boolean).notNull().defaults(to: false)
                t.add(column: "dirtyFor", .text)
            }
            // A machine that was ever deployed may hold a tenant's data: until now a release
            // wiped only the first and last MiB by default, and an aborted deploy or wipe went
            // back through commissioning unwiped. Its events say whether a deploy ever began.
            try db.execute(
                sql: """
                    UPDATE machine SET diskDirty = 1
                    WHERE state IN ('deploying', 'deployed', 'releasing', 'rescuing', 'rescue', 'exiting-rescue')
                       OR (state = 'failed' AND failedStep IN ('deploying', 'releasing', 'rescuing', 'exiting-rescue'))
                       OR deployment IS NOT NULL
                       OR EXISTS (SELECT 1 FROM machineEvent e WHERE e.machineID = machine.id AND e.body LIKE '%"state":"deploying"%')
                    """
            )
            // Such a machine in the pool goes back to enrolled: commissioning it wipes it (fully)
            // before it is ready again.
            try db.execute(
                sql: """
                    UPDATE machine SET state = 'enrolled', phase = 'none', project = NULL,
                        reason = 'held back from the pool: it may hold a previous tenant''s data; commission it to wipe it'
                    WHERE state = 'ready' AND diskDirty = 1
                    """
            )
            // Each project's release wipe: full unless an admin chose quick for it.
            try db.alter(table: "project") { t in
                t.add(column: "wipePolicy", .text).notNull().defaults(to: "full")
            }
            // A step's clock starts when it is entered: a step without one starts it now.
            try db.execute(
                sql: """
                    UPDATE machine SET stepStarted = strftime('%Y-%m-%d %H:%M:%f', 'now')
                    WHERE stepStarted IS NULL
                      AND state IN ('commissioning', 'deploying', 'releasing', 'rescuing', 'exiting-rescue')
                    """
            )
        }
        m.registerMigration("v5-agent-boot") { db in
            // The agent's token is issued at its first hello, once per boot (see Controller).
            try db.alter(table: "machine") { t in
                t.add(column: "agentBoot", .integer).notNull().defaults(to: 0)
                t.add(column: "agentNonce", .text)
            }
        }
        m.registerMigration("v6-seen-address") { db in
            // Proxy mode's record of the address each MAC's own DHCP traffic showed (see
            // LeaseStore.recordSeenAddress): apart from `lease`, which holds what Farrier leased.
            try db.create(table: "seen_address") { t in
                t.primaryKey("mac", .text)
                t.column("address", .text).notNull()
                t.column("seen", .double).notNull()
            }
        }
        m.registerMigration("v7-work-claim") { db in
            // Claims on machines' work (WorkClaimStore). One server uses a SQLite file (its
            // claims are cleared when it opens the file); the table keeps the contract, and the
            // fencing, the same as PostgreSQL's.
            try db.create(table: "work_claim") { t in
                t.primaryKey("machineID", .text)
                t.column("owner", .text).notNull()
                t.column("token", .integer).notNull()
                t.column("until", .double).notNull()
            }
        }
        m.registerMigration("v8-machine-state-index") { db in
            // The reconciler's scan and the API's filtered pages select by state.
            try db.create(index: "machine_state", on: "machine", columns: ["state"])
        }
        m.registerMigration("v9-released-from") { db in
            // The project a completed release took a machine from (Machine.releasedFrom).
            try db.alter(table: "machine") { t in t.add(column: "releasedFrom", .text) }
        }
        m.registerMigration("v10-running-index") { db in
            // Admission's count of the machines past `queued` (updateCounting) reads only those.
            try db.execute(
                sql: "CREATE INDEX machine_running ON machine (state) WHERE phase NOT IN ('queued', 'none')"
            )
        }
        m.registerMigration("v11-site") { db in
            // Sites (issue 16): the pending join token's hash, then the joined certificate's serial.
            try db.create(table: "site") { t in
                t.primaryKey("name", .text)
                t.column("created", .datetime).notNull()
                t.column("joinTokenSHA256", .text).unique()
                t.column("joinExpires", .datetime)
                t.column("certificateSerial", .text)
                t.column("certificateNotAfter", .datetime)
                t.column("joined", .datetime)
            }
        }
        m.registerMigration("v12-site-link") { db in
            // The last heartbeat over the site's link, and what it reported.
            try db.alter(table: "site") { t in
                t.add(column: "linkSeen", .datetime)
                t.add(column: "linkAddress", .text)
                t.add(column: "linkQueueDepth", .integer)
                t.add(column: "linkCachedFiles", .integer)
                t.add(column: "linkCachedBytes", .integer)
                t.add(column: "linkVersion", .text)
            }
        }
        m.registerMigration("v13-machine-site") { db in
            // Which site's boot network a machine is on (NULL: the region's own). A foreign key:
            // a site with machines cannot be deleted, and a machine cannot name a site that is
            // gone, whatever runs at the same time.
            try db.alter(table: "machine") { t in t.add(column: "site", .text).references("site", onDelete: .restrict) }
            try db.create(index: "machine_site", on: "machine", columns: ["site"])
        }
        m.registerMigration("v14-site-events") { db in
            // The highest number of the site's own timeline events appended here (delivery is once).
            try db.alter(table: "site") { t in t.add(column: "eventMark", .integer).notNull().defaults(to: 0) }
        }
        m.registerMigration("v15-site-lease") { db in
            // What each site last said its machines lease (decided and kept at the site; here
            // to show and reach the machines). Gone with the site.
            try db.create(table: "siteLease") { t in
                t.primaryKey("mac", .text)
                t.column("site", .text).notNull().indexed().references("site", onDelete: .cascade)
                t.column("address", .text).notNull()
                t.column("expires", .datetime).notNull()
                t.column("hostname", .text)
            }
        }
        m.registerMigration("v16-site-bmc-channels") { db in
            // The BMC channels the site said it had open at its last heartbeat (NULL: not said).
            try db.alter(table: "site") { t in t.add(column: "linkBMCChannels", .integer) }
        }
        m.registerMigration("v17-site-join-again") { db in
            // The spent join token's hash and the certificate it got: a join whose answer was
            // lost is answered again for the same token and key, until the token's expiry.
            try db.alter(table: "site") { t in
                t.add(column: "spentTokenSHA256", .text)
                t.add(column: "certificatePEM", .text)
            }
        }
        m.registerMigration("v18-maintenance-power") { db in
            // An admin's maintenance hold and the power sync's last reading (JSON; NULL: none).
            try db.alter(table: "machine") { t in
                t.add(column: "maintenance", .text)
                t.add(column: "power", .text)
            }
        }
        m.registerMigration("v19-bulk-enroll") { db in
            // Named BMC credentials (the password sealed under the name), the machines' link to
            // one (a foreign key: a credential in use cannot be removed), and other NICs' MACs.
            try db.create(table: "bmcCredential") { t in
                t.primaryKey("name", .text)
                t.column("user", .text).notNull()
                t.column("secret", .blob).notNull()
                t.column("created", .datetime).notNull()
            }
            try db.alter(table: "machine") { t in
                t.add(column: "bmcCredential", .text).references("bmcCredential", onDelete: .restrict)
                t.add(column: "otherMACs", .text)
            }
            try db.create(index: "machine_bmc_credential", on: "machine", columns: ["bmcCredential"])
        }
        m.registerMigration("v20-root-device") { db in
            // An admin's root device hints for the machine (JSON; NULL: the default choice).
            try db.alter(table: "machine") { t in t.add(column: "rootDevice", .text) }
        }
        m.registerMigration("v21-step-trace") { db in
            // The step's trace context (JSON; NULL: none recorded).
            try db.alter(table: "machine") { t in t.add(column: "trace", .text) }
        }
        m.registerMigration("v22-networks") { db in
            // Networks for deployed machines (the definition as JSON; a site with networks
            // cannot be removed), and the static addresses machines hold on them: one row per
            // address, so no two machines hold one; gone with their machine; a network with
            // any cannot be removed.
            try db.create(table: "network") { t in
                t.primaryKey("name", .text)
                t.column("site", .text).references("site", onDelete: .restrict)
                t.column("body", .text).notNull()
            }
            try db.create(table: "networkAddress") { t in
                t.column("network", .text).notNull().references("network", onDelete: .restrict)
                t.column("address", .text).notNull()
                t.column("machineID", .text).notNull().references("machine", onDelete: .cascade)
                t.primaryKey(["network", "address"])
            }
            try db.create(index: "networkAddress_machine", on: "networkAddress", columns: ["machineID"])
        }
        m.registerMigration("v23-burn-in") { db in
            // A machine's last test run (JSON) and the seconds its tests add to its step's limit; admins'
            // test scripts, every version, their content by hash (shared by versions that
            // have the same); the output of each machine's last run, gone with the machine.
            try db.alter(table: "machine") { t in
                t.add(column: "burnIn", .text)
                t.add(column: "testAllowance", .integer)
            }
            try db.create(table: "testScriptContent") { t in
                t.primaryKey("sha256", .text)
                t.column("content", .blob).notNull()
            }
            try db.create(table: "testScript") { t in
                t.column("name", .text).notNull()
                t.column("version", .integer).notNull()
                t.column("sha256", .text).notNull().references("testScriptContent", onDelete: .restrict)
                t.column("body", .text).notNull()
                t.primaryKey(["name", "version"])
            }
            try db.create(table: "testOutput") { t in
                t.column("machineID", .text).notNull().references("machine", onDelete: .cascade)
                t.column("runID", .text).notNull()
                t.column("name", .text).notNull()
                t.column("target", .text).notNull().defaults(to: "")
                t.column("output", .text).notNull()
                t.primaryKey(["machineID", "runID", "name", "target"])
            }
        }
        return m
    }

    /// The applied migration identifiers, oldest first.
    public func appliedMigrations() throws -> [String] {
        try db.read { try Self.migrator.appliedMigrations($0) }
    }

    // MARK: Errors

    /// A write transaction whose errors are `StoreError`s.
    func writing<T: Sendable>(_ body: @Sendable (Database) throws -> T) async throws -> T {
        do { return try await db.write(body) } catch { throw Self.storeError(error) }
    }

    func reading<T: Sendable>(_ body: @Sendable (Database) throws -> T) async throws -> T {
        do { return try await db.read(body) } catch { throw Self.storeError(error) }
    }

    /// SQLite's errors by result code: a uniqueness violation is `alreadyExists`, a damaged
    /// file `corrupt`, anything else from the database (busy past the timeout, I/O, a full
    /// disk) `unavailable`. Store errors and cancellation pass as they are.
    static func storeError(_ error: any Error) -> any Error {
        guard let e = error as? DatabaseError else { return error }
        switch e.resultCode {
        case .SQLITE_CONSTRAINT
        where e.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE || e.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY:
            return StoreError(.alreadyExists, "already exists: \(e.message ?? "a unique value is taken")")
        // ON DELETE RESTRICT fails with the plain constraint code; its message names the key.
        case .SQLITE_CONSTRAINT
        where e.extendedResultCode == .SQLITE_CONSTRAINT_FOREIGNKEY || (e.message ?? "").contains("FOREIGN KEY"):
            return StoreError(.inUse, "still referred to: \(e.message ?? "a foreign key")")
        case .SQLITE_CORRUPT, .SQLITE_NOTADB:
            return StoreError(.corrupt, "the database is damaged: \(e.message ?? "\(e.resultCode)")")
        default: return StoreError(.unavailable, "SQLite: \(e.message ?? "\(e.resultCode)")")
        }
    }

    // MARK: MachineStore

    public func recordSighting(
        mac: MACAddress,
        platform: ClientPlatform,
        at time: Date,
        create: Int?
    ) async throws -> Machine? {
        try await writing { db in
            if var row = try MachineRecord.filter(Column("mac") == mac.description).fetchOne(db) {
                // A sighting that may not create (an HTTP script fetch, which anyone can make)
                // writes at most once a minute per machine, unless it fills in the platform.
                let fills =
                    (row.architecture == Architecture.unknown.rawValue && platform.architecture != .unknown)
                    || (row.firmware == Firmware.unknown.rawValue && platform.firmware != .unknown)
                if create == nil, !fills, time.timeIntervalSince(row.lastSeen) < 60 { return try row.machine() }
                row.lastSeen = time
                if row.architecture == Architecture.unknown.rawValue, platform.architecture != .unknown {
                    row.architecture = platform.architecture.rawValue
                }
                if row.firmware == Firmware.unknown.rawValue, platform.firmware != .unknown {
                    row.firmware = platform.firmware.rawValue
                }
                try row.update(db)
                return try row.machine()
            }
            guard let create else { return nil }
            let discovered = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM machine WHERE state = 'discovered'") ?? 0
            guard discovered < create else { return nil }
            let machine = Machine(
                name: Machine.defaultName(for: mac),
                mac: mac,
                architecture: platform.architecture,
                firmware: platform.firmware,
                firstSeen: time,
                lastSeen: time
            )
            try MachineRecord(machine).insert(db)
            return machine
        }
    }

    public func pruneDiscovered(lastSeenBefore before: Date) async throws -> [MACAddress] {
        try await writing { db in
            let macs = try String.fetchAll(
                db,
                sql:
                    "SELECT mac FROM machine WHERE state = 'discovered' AND bmc IS NULL AND project IS NULL AND lastSeen < ?",
                arguments: [before]
            )
            for mac in macs {
                try db.execute(sql: "DELETE FROM timelineEvent WHERE mac = ?", arguments: [mac])
                try db.execute(sql: "DELETE FROM machine WHERE mac = ? AND state = 'discovered'", arguments: [mac])
            }
            return macs.compactMap { MACAddress($0) }
        }
    }

    public func machine(mac: MACAddress) async throws -> Machine? {
        try await reading { try MachineRecord.filter(Column("mac") == mac.description).fetchOne($0)?.machine() }
    }

    public func machine(id: String) async throws -> Machine? {
        try await reading { try MachineRecord.fetchOne($0, key: id)?.machine() }
    }

    public func machine(name: String) async throws -> Machine? {
        try await reading { try MachineRecord.filter(Column("name") == name).fetchOne($0)?.machine() }
    }

    public func machines() async throws -> [Machine] {
        try await reading { try MachineRecord.order(Column("name")).fetchAll($0).map { try $0.machine() } }
    }

    public func machines(_ query: MachineQuery) async throws -> [Machine] {
        try await reading { db in
            var request = MachineRecord.order(Column("name"))
            if let states = query.states { request = request.filter(states.map(\.rawValue).contains(Column("state"))) }
            if let project = query.project { request = request.filter(Column("project") == project) }
            if let zone = query.zone { request = request.filter(Column("zone") == zone) }
            if let site = query.site { request = request.filter(Column("site") == site) }
            if let after = query.after { request = request.filter(Column("name") > after) }
            if let limit = query.limit { request = request.limit(max(0, limit)) }
            return try request.fetchAll(db).map { try $0.machine() }
        }
    }

    public func machineCounts() async throws -> [MachineCount] {
        try await reading { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT state, site, zone, project, COUNT(*) AS n FROM machine GROUP BY state, site, zone, project"
            )
            return try rows.map { row in
                let raw: String = row["state"]
                guard let state = MachineState(rawValue: raw) else {
                    throw StoreError(.corrupt, "corrupt row: machine state '\(raw)'")
                }
                return MachineCount(
                    state: state,
                    site: row["site"],
                    zone: row["zone"],
                    project: row["project"],
                    count: row["n"]
                )
            }
        }
    }

    public func machineSteps() async throws -> [MachineStep] {
        let states = Lifecycle.steps.map(\.rawValue).sorted()
        return try await reading { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT id, name, state, phase, generation, stepStarted, progress, testAllowance FROM machine
                    WHERE state IN (\(states.map { _ in "?" }.joined(separator: ", ")))
                    """,
                arguments: StatementArguments(states)
            )
            return try rows.map { row in
                let id: String = row["id"]
                guard let state = MachineState(rawValue: row["state"]), let phase = StepPhase(rawValue: row["phase"])
                else { throw StoreError(.corrupt, "corrupt row: machine \(id): state or phase") }
                return MachineStep(
                    id: id,
                    name: row["name"],
                    state: state,
                    phase: phase,
                    generation: row["generation"],
                    stepStarted: row["stepStarted"],
                    progress: try jsonValue(StepProgress.self, row["progress"]),
                    testAllowance: row["testAllowance"]
                )
            }
        }
    }

    public func enroll(
        name: String,
        mac: MACAddress,
        bmc: BMCReference,
        sealedPassword: [UInt8],
        credential: String?,
        at time: Date
    ) async throws -> Machine {
        let bmcJSON = String(decoding: try JSONEncoder().encode(bmc), as: UTF8.self)
        return try await writing { db in
            let byName = try MachineRecord.filter(Column("name") == name).fetchOne(db)
            if let byName, byName.mac != mac.description {
                throw StoreError(
                    .alreadyExists,
                    "machine name '\(name)' is already used by the machine with MAC \(byName.mac)"
                )
            }
            var row: MachineRecord
            if let existing = try MachineRecord.filter(Column("mac") == mac.description).fetchOne(db) {
                row = existing
                row.name = name
                // discovered ─enroll─▶ enrolled; a machine further along keeps its state.
                if row.state == MachineState.discovered.rawValue { row.state = MachineState.enrolled.rawValue }
            } else {
                row = MachineRecord(
                    Machine(
                        name: name,
                        mac: mac,
                        architecture: .unknown,
                        firmware: .unknown,
                        state: .enrolled,
                        firstSeen: time,
                        lastSeen: time
                    )
                )
            }
            row.bmc = bmcJSON
            row.bmcCredential = credential
            try row.save(db)
            try db.execute(
                sql: "UPDATE machine SET bmcSecret = ? WHERE id = ?",
                arguments: [Data(sealedPassword), row.id]
            )
            return try row.machine()
        }
    }

    public func enroll(_ batch: [Enrollment], at time: Date) async throws -> [Machine] {
        let bmcJSON = try batch.map { String(decoding: try JSONEncoder().encode($0.bmc), as: UTF8.self) }
        return try await writing { db in
            var out: [Machine] = []
            for (e, bmc) in zip(batch, bmcJSON) {
                if let c = e.credential {
                    let now = try Data.fetchOne(
                        db,
                        sql: "SELECT secret FROM bmcCredential WHERE name = ?",
                        arguments: [c]
                    )
                    try e.checkCredential(current: now.map { Array($0) })
                }
                try e.checkName(
                    heldBy: try MachineRecord.filter(Column("name") == e.name).fetchOne(db)?.machine().mac
                )
                let existing = try MachineRecord.filter(Column("mac") == e.mac.description).fetchOne(db)?.machine()
                let m = try e.machine(replacing: existing, at: time)
                var row = MachineRecord(m)
                row.bmc = bmc
                try row.save(db)
                try db.execute(
                    sql: "UPDATE machine SET bmcSecret = ? WHERE id = ?",
                    arguments: [Data(e.sealedPassword), m.id]
                )
                out.append(m)
            }
            return out
        }
    }

    public func sealedBMCPassword(machineID: String) async throws -> [UInt8]? {
        try await reading { db in
            try Data.fetchOne(db, sql: "SELECT bmcSecret FROM machine WHERE id = ?", arguments: [machineID]).map {
                Array($0)
            }
        }
    }

    public func update(
        machineID: String,
        fence: WorkClaim?,
        _ body: @escaping @Sendable (inout Machine) throws -> [MachineEvent]
    ) async throws -> Machine {
        try await writing { db in
            if let fence { try Self.check(fence, db: db) }
            guard let row = try MachineRecord.fetchOne(db, key: machineID) else {
                throw StoreError(.notFound, "no machine with id \(machineID)")
            }
            return try Self.apply(body, to: row.machine(), db: db)
        }
    }

    public func updateCounting(
        machineID: String,
        fence: WorkClaim?,
        _ body: @escaping @Sendable (inout Machine, _ running: [MachineState: Int]) throws -> [MachineEvent]
    ) async throws -> Machine {
        // SQLite runs one write transaction at a time: the count cannot change under it.
        try await writing { db in
            if let fence { try Self.check(fence, db: db) }
            guard let row = try MachineRecord.fetchOne(db, key: machineID) else {
                throw StoreError(.notFound, "no machine with id \(machineID)")
            }
            var running: [MachineState: Int] = [:]
            for r in try Row.fetchAll(
                db,
                sql:
                    "SELECT state, COUNT(*) AS n FROM machine WHERE phase NOT IN ('queued', 'none') AND phase != 'os' GROUP BY state"
            ) {
                if let s = MachineState(rawValue: r["state"]) { running[s] = r["n"] }
            }
            return try Self.apply({ m in try body(&m, running) }, to: row.machine(), db: db)
        }
    }

    /// Throws `fenced` unless the claim is live and still this holder's.
    static func check(_ claim: WorkClaim, db: Database) throws {
        let live = try Row.fetchOne(
            db,
            sql: "SELECT 1 FROM work_claim WHERE machineID = ? AND owner = ? AND token = ? AND until > ?",
            arguments: [claim.machineID, claim.owner, claim.token, Date().timeIntervalSince1970]
        )
        guard live != nil else {
            throw StoreError(.fenced, "the claim \(claim) on machine \(claim.machineID) lapsed or was taken over")
        }
    }

    public func claimWork(machineID: String, owner: String, ttl: Duration) async throws -> WorkClaim? {
        try await writing { db in
            let now = Date().timeIntervalSince1970
            let until = now + Double(ttl.components.seconds)
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: "SELECT owner, token, until FROM work_claim WHERE machineID = ?",
                    arguments: [machineID]
                )
            else {
                try db.execute(
                    sql: "INSERT INTO work_claim (machineID, owner, token, until) VALUES (?, ?, 1, ?)",
                    arguments: [machineID, owner, until]
                )
                return WorkClaim(machineID: machineID, owner: owner, token: 1)
            }
            let (holder, token, held): (String, Int64, Double) = (row["owner"], row["token"], row["until"])
            if held > now, holder != owner { return nil }
            // Renewing a live claim keeps its token; taking a lapsed one (even one's own) bumps it.
            let next = held > now ? token : token + 1
            try db.execute(
                sql: "UPDATE work_claim SET owner = ?, token = ?, until = ? WHERE machineID = ?",
                arguments: [owner, next, until, machineID]
            )
            return WorkClaim(machineID: machineID, owner: owner, token: next)
        }
    }

    public func renewWork(_ claim: WorkClaim, ttl: Duration) async throws -> Bool {
        try await writing { db in
            let now = Date().timeIntervalSince1970
            try db.execute(
                sql: "UPDATE work_claim SET until = ? WHERE machineID = ? AND owner = ? AND token = ? AND until > ?",
                arguments: [now + Double(ttl.components.seconds), claim.machineID, claim.owner, claim.token, now]
            )
            return db.changesCount > 0
        }
    }

    public func releaseWork(_ claim: WorkClaim) async throws {
        try await writing { db in
            try db.execute(
                sql: "UPDATE work_claim SET until = 0 WHERE machineID = ? AND owner = ? AND token = ?",
                arguments: [claim.machineID, claim.owner, claim.token]
            )
        }
    }

    public func allocate(
        _ accept: @escaping @Sendable (Machine) -> Bool,
        _ body: @escaping @Sendable (inout Machine) throws -> [MachineEvent]
    ) async throws -> Machine? {
        try await writing { db in
            // The pool, smallest first (MachineStore.allocate's order), a batch at a time: the write
            // transaction holds the file, so the offsets stay put between batches.
            let batch = 100
            for offset in stride(from: 0, to: Int.max, by: batch) {
                let rows =
                    try MachineRecord
                    .filter(sql: "state = 'ready' AND project IS NULL")
                    .order(
                        sql:
                            "COALESCE(json_extract(inventory, '$.cores'), 0), COALESCE(json_extract(inventory, '$.memoryBytes'), 0), name"
                    )
                    .limit(batch, offset: offset)
                    .fetchAll(db)
                for row in rows {
                    let m = try row.machine()
                    if accept(m) { return try Self.apply(body, to: m, db: db) }
                }
                if rows.count < batch { break }
            }
            return nil
        }
    }

    static func apply(
        _ body: (inout Machine) throws -> [MachineEvent],
        to machine: Machine,
        db: Database
    ) throws -> Machine {
        var m = machine
        let events = try body(&m)
        if m.name != machine.name, try MachineRecord.filter(Column("name") == m.name).fetchCount(db) > 0 {
            throw StoreError(.alreadyExists, "machine name '\(m.name)' is already in use")
        }
        // A machine joins only a project that exists when it commits: a project deleted between
        // a deploy's check and its allocation gets no machine (writes are serialised here).
        if let project = m.project, project != machine.project,
            try Row.fetchOne(db, sql: "SELECT 1 FROM project WHERE name = ?", arguments: [project]) == nil
        {
            throw StoreError(.notFound, "no project named '\(project)'")
        }
        let addressEvents = try syncAddresses(from: machine, to: &m, db: db)
        try MachineRecord(m).update(db)
        let encoder = JSONEncoder()
        for e in events + addressEvents {
            try db.execute(
                sql: "INSERT INTO machineEvent (machineID, body) VALUES (?, ?)",
                arguments: [e.machineID, String(decoding: try encoder.encode(e), as: UTF8.self)]
            )
        }
        return m
    }

    /// Keeps the machine's static addresses those of its deployment's plan, in its write:
    /// allocates the ones its plan waits for (`AddressAllocation`), adds the rows of those it
    /// now holds and removes the rows of those it gave back. No query for a machine that holds
    /// none before or after. Writes are serialised, so what it reads as used stays so.
    static func syncAddresses(from old: Machine, to m: inout Machine, db: Database) throws -> [MachineEvent] {
        if let refusal = AddressAllocation.siteChangeProblem(from: old, to: m) { throw refusal }
        var events: [MachineEvent] = []
        let pending = AddressAllocation.pending(m)
        if !pending.isEmpty {
            var networks: [String: Network] = [:]
            var used: [String: Set<IPAddress>] = [:]
            for name in pending {
                guard
                    let body = try String.fetchOne(
                        db,
                        sql: "SELECT body FROM network WHERE name = ?",
                        arguments: [name]
                    )
                else { throw StoreError(.notFound, "no network named '\(name)'") }
                networks[name] = try JSONDecoder().decode(Network.self, from: Data(body.utf8))
                used[name] = Set(
                    try String.fetchAll(
                        db,
                        sql: "SELECT address FROM networkAddress WHERE network = ? AND machineID != ?",
                        arguments: [name, m.id]
                    ).compactMap { IPAddress($0) }
                )
            }
            events += try AddressAllocation.allocate(&m, networks: networks, used: used)
        }
        let before = AddressAllocation.held(old)
        let after = AddressAllocation.held(m)
        guard before != after else { return events }
        for k in before.subtracting(after) {
            try db.execute(
                sql: "DELETE FROM networkAddress WHERE network = ? AND address = ? AND machineID = ?",
                arguments: [k.network, k.address.description, m.id]
            )
        }
        for k in after.subtracting(before).sorted() {
            guard try Row.fetchOne(db, sql: "SELECT 1 FROM network WHERE name = ?", arguments: [k.network]) != nil
            else {
                throw StoreError(.notFound, "no network named '\(k.network)'")
            }
            if let holder = try String.fetchOne(
                db,
                sql: "SELECT machineID FROM networkAddress WHERE network = ? AND address = ?",
                arguments: [k.network, k.address.description]
            ), holder != m.id {
                throw StoreError(.alreadyExists, "address \(k.address) on network \(k.network) is already taken")
            }
            try db.execute(
                sql: "INSERT OR IGNORE INTO networkAddress (network, address, machineID) VALUES (?, ?, ?)",
                arguments: [k.network, k.address.description, m.id]
            )
        }
        return events + AddressAllocation.released(before.subtracting(after), by: m)
    }

    public func deleteMachine(id: String) async throws {
        try await writing { db in
            guard let row = try MachineRecord.fetchOne(db, key: id) else { return }
            try db.execute(sql: "DELETE FROM timelineEvent WHERE mac = ?", arguments: [row.mac])
            try db.execute(sql: "DELETE FROM machineEvent WHERE machineID = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM lease WHERE mac = ?", arguments: [row.mac])
            try db.execute(sql: "DELETE FROM work_claim WHERE machineID = ?", arguments: [id])
            try MachineRecord.deleteOne(db, key: id)
        }
    }

    public func events(after: Int64, machineID: String?, limit: Int) async throws -> [MachineEvent] {
        try await reading { db in
            let rows: [Row]
            if let machineID {
                rows = try Row.fetchAll(
                    db,
                    sql: "SELECT id, body FROM machineEvent WHERE id > ? AND machineID = ? ORDER BY id LIMIT ?",
                    arguments: [after, machineID, limit]
                )
            } else {
                rows = try Row.fetchAll(
                    db,
                    sql: "SELECT id, body FROM machineEvent WHERE id > ? ORDER BY id LIMIT ?",
                    arguments: [after, limit]
                )
            }
            let decoder = JSONDecoder()
            return try rows.map { row in
                var e = try decoder.decode(MachineEvent.self, from: Data((row["body"] as String).utf8))
                e.id = row["id"]
                return e
            }
        }
    }

    public func lastEventID(machineID: String?) async throws -> Int64 {
        try await reading { db in
            if let machineID {
                return try Int64.fetchOne(
                    db,
                    sql: "SELECT MAX(id) FROM machineEvent WHERE machineID = ?",
                    arguments: [machineID]
                ) ?? 0
            }
            return try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM machineEvent") ?? 0
        }
    }

    public func appendTimeline(_ events: [TimelineEvent]) async throws {
        guard !events.isEmpty else { return }
        try await writing { [timelineLimit] db in try Self.insertTimeline(db, events, limit: timelineLimit) }
    }

    /// Appends events, keeping the newest `limit` of each MAC.
    static func insertTimeline(_ db: Database, _ events: [TimelineEvent], limit: Int) throws {
        for e in events {
            try db.execute(
                sql: "INSERT INTO timelineEvent (mac, time, stage, event, detail) VALUES (?, ?, ?, ?, ?)",
                arguments: [e.mac.description, e.time, e.stage.rawValue, e.event, e.detail]
            )
        }
        for mac in Set(events.map(\.mac)) {
            try db.execute(
                sql: """
                    DELETE FROM timelineEvent WHERE mac = ? AND id <= (
                      SELECT id FROM timelineEvent WHERE mac = ? ORDER BY id DESC LIMIT 1 OFFSET ?)
                    """,
                arguments: [mac.description, mac.description, limit]
            )
        }
    }

    /// The timeline events after number `id`, oldest first, at most `limit`, with their numbers:
    /// a site's queue for the region.
    public func timelineEvents(after id: Int64, limit: Int) async throws -> [SiteEvent] {
        try await reading { db in
            try Row.fetchAll(
                db,
                sql: "SELECT id, mac, time, stage, event, detail FROM timelineEvent WHERE id > ? ORDER BY id LIMIT ?",
                arguments: [id, limit]
            ).compactMap { row in
                guard let mac = MACAddress(row["mac"] as String) else { return nil }
                return SiteEvent(
                    id: row["id"],
                    event: TimelineEvent(
                        mac: mac,
                        time: row["time"],
                        stage: TimelineEvent.Stage(rawValue: row["stage"]) ?? .dhcp,
                        event: row["event"],
                        detail: row["detail"]
                    )
                )
            }
        }
    }

    /// How many timeline events are numbered after `id` (a site's queue depth).
    public func timelineCount(after id: Int64) async throws -> Int64 {
        try await reading {
            try Int64.fetchOne($0, sql: "SELECT COUNT(*) FROM timelineEvent WHERE id > ?", arguments: [id]) ?? 0
        }
    }

    public func timeline(mac: MACAddress, limit: Int) async throws -> [TimelineEvent] {
        try await reading { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT time, stage, event, detail FROM timelineEvent WHERE mac = ? ORDER BY id DESC LIMIT ?",
                arguments: [mac.description, limit]
            )
            return rows.reversed().map { row in
                TimelineEvent(
                    mac: mac,
                    time: row["time"],
                    stage: TimelineEvent.Stage(rawValue: row["stage"]) ?? .dhcp,
                    event: row["event"],
                    detail: row["detail"]
                )
            }
        }
    }

    // MARK: LeaseStore

    public func leases() throws -> [Lease] {
        try db.read { db in try Self.leases(db, sql: "SELECT mac, address, expires, hostname FROM lease") }
    }

    public func currentLeases() async throws -> [Lease] {
        try await reading { db in try Self.leases(db, sql: "SELECT mac, address, expires, hostname FROM lease") }
    }

    public func currentLeases(macs: [MACAddress]) async throws -> [Lease] {
        guard !macs.isEmpty else { return [] }
        let names = macs.map(\.description)
        let sql =
            "SELECT mac, address, expires, hostname FROM lease WHERE mac IN (\(databaseQuestionMarks(count: names.count)))"
        return try await reading { db in try Self.leases(db, sql: sql, arguments: StatementArguments(names)) }
    }

    static func leases(
        _ db: Database,
        sql: String,
        arguments: StatementArguments = StatementArguments()
    ) throws -> [Lease] {
        try Row.fetchAll(db, sql: sql, arguments: arguments).compactMap { row in
            guard let mac = MACAddress(row["mac"] as String), let ip = IPv4Address(row["address"] as String)
            else { return nil }
            return Lease(mac: mac, address: ip, expires: row["expires"], hostname: row["hostname"])
        }
    }

    public func commit(_ leases: [Lease]) throws {
        guard !leases.isEmpty else { return }
        try db.write { db in
            // One statement per lease, prepared once per connection: at thousands of leases a
            // second, parsing the SQL each time would cost more than the inserts. REPLACE removes
            // every row the new one conflicts with, on the MAC (the client's previous lease) and
            // on the address (a stale row for an address the lease table released and gave to a
            // new MAC), so the unique constraints always mirror the table.
            let replace = try db.cachedStatement(
                sql: "INSERT OR REPLACE INTO lease (mac, address, expires, hostname) VALUES (?, ?, ?, ?)"
            )
            for l in leases {
                // Expiry as a Unix timestamp: GRDB reads it back as a Date like the text form,
                // without a DateFormatter per lease.
                try replace.execute(arguments: [
                    l.mac.description, l.address.description, l.expires.timeIntervalSince1970, l.hostname,
                ])
            }
        }
    }

    public func deleteLease(mac: MACAddress) throws {
        try db.write { try $0.execute(sql: "DELETE FROM lease WHERE mac = ?", arguments: [mac.description]) }
    }

    public func recordSeenAddress(mac: MACAddress, address: IPv4Address, at time: Date) throws {
        try db.write {
            try $0.execute(
                sql: "INSERT OR REPLACE INTO seen_address (mac, address, seen) VALUES (?, ?, ?)",
                arguments: [mac.description, address.description, time.timeIntervalSince1970]
            )
        }
    }

    public func seenAddresses(since cutoff: Date) throws -> [(mac: MACAddress, address: IPv4Address)] {
        try db.write { db in
            try db.execute(sql: "DELETE FROM seen_address WHERE seen < ?", arguments: [cutoff.timeIntervalSince1970])
            return try Row.fetchAll(db, sql: "SELECT mac, address FROM seen_address ORDER BY seen").compactMap { row in
                guard let mac = MACAddress(row["mac"] as String), let ip = IPv4Address(row["address"] as String) else {
                    return nil
                }
                return (mac, ip)
            }
        }
    }
}

// MARK: TenancyStore, ImageStore

extension SQLiteStore {
    public func createProject(_ p: Project) async throws {
        try await writing { db in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM project WHERE name = ?", arguments: [p.name]) != nil {
                throw StoreError(.alreadyExists, "project '\(p.name)' already exists")
            }
            try db.execute(
                sql:
                    "INSERT INTO project (name, description, requiredTags, created, wipePolicy) VALUES (?, ?, ?, ?, ?)",
                arguments: [p.name, p.description, try jsonText(p.requiredTags), p.created, p.wipePolicy.rawValue]
            )
        }
    }

    public func projects() async throws -> [Project] {
        try await reading { db in try Row.fetchAll(db, sql: "SELECT * FROM project ORDER BY name").map(Self.project) }
    }

    public func project(name: String) async throws -> Project? {
        try await reading { db in
            try Row.fetchOne(db, sql: "SELECT * FROM project WHERE name = ?", arguments: [name]).map(Self.project)
        }
    }

    static func project(_ row: Row) throws -> Project {
        let policy: String = row["wipePolicy"]
        guard let wipe = WipeMode(rawValue: policy) else {
            throw StoreError(.corrupt, "corrupt row: project \(row["name"] as String): wipe policy \(policy)")
        }
        return Project(
            name: row["name"],
            description: row["description"],
            requiredTags: try JSONDecoder().decode([String].self, from: Data((row["requiredTags"] as String).utf8)),
            created: row["created"],
            wipePolicy: wipe
        )
    }

    public func deleteProject(name: String) async throws -> Bool {
        try await writing { db in
            let machines =
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM machine WHERE project = ?", arguments: [name]) ?? 0
            if machines > 0 {
                throw StoreError(.inUse, "project '\(name)' still has \(machines) machine(s); release them first")
            }
            let tokens =
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM apiToken WHERE project = ?", arguments: [name]) ?? 0
            if tokens > 0 {
                throw StoreError(.inUse, "project '\(name)' still has \(tokens) token(s); revoke them first")
            }
            try db.execute(sql: "DELETE FROM project WHERE name = ?", arguments: [name])
            return db.changesCount > 0
        }
    }

    public func createToken(_ t: APIToken) async throws {
        try await writing { db in
            if let project = t.project,
                try Row.fetchOne(db, sql: "SELECT 1 FROM project WHERE name = ?", arguments: [project]) == nil
            {
                throw StoreError(.notFound, "no project named '\(project)'")
            }
            try db.execute(
                sql: "INSERT INTO apiToken (id, name, role, project, secretSHA256, created) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [t.id, t.name, t.role.rawValue, t.project, t.secretSHA256, t.created]
            )
        }
    }

    public func token(secretSHA256: String) async throws -> APIToken? {
        try await reading { db in
            try Row.fetchOne(db, sql: "SELECT * FROM apiToken WHERE secretSHA256 = ?", arguments: [secretSHA256]).map(
                Self.token
            )
        }
    }

    public func tokens() async throws -> [APIToken] {
        try await reading { db in
            try Row.fetchAll(db, sql: "SELECT * FROM apiToken ORDER BY created, id").map(Self.token)
        }
    }

    static func token(_ row: Row) -> APIToken {
        APIToken(
            id: row["id"],
            name: row["name"],
            role: Role(rawValue: row["role"]) ?? .member,
            project: row["project"],
            secretSHA256: row["secretSHA256"],
            created: row["created"]
        )
    }

    public func revokeToken(id: String) async throws -> Bool {
        try await writing { db in
            try db.execute(sql: "DELETE FROM apiToken WHERE id = ?", arguments: [id])
            return db.changesCount > 0
        }
    }

    // MARK: Sites

    public func createSite(_ site: Site) async throws {
        try await writing { db in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM site WHERE name = ?", arguments: [site.name]) != nil {
                throw StoreError(.alreadyExists, "site '\(site.name)' already exists")
            }
            try db.execute(
                sql: """
                    INSERT INTO site (name, created, joinTokenSHA256, joinExpires, certificateSerial, certificateNotAfter, joined)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    site.name, site.created, site.joinTokenSHA256, site.joinExpires, site.certificateSerial,
                    site.certificateNotAfter, site.joined,
                ]
            )
        }
    }

    public func sites() async throws -> [Site] {
        try await reading { db in try Row.fetchAll(db, sql: "SELECT * FROM site ORDER BY name").map(Self.site) }
    }

    public func site(name: String) async throws -> Site? {
        try await reading { db in
            try Row.fetchOne(db, sql: "SELECT * FROM site WHERE name = ?", arguments: [name]).map(Self.site)
        }
    }

    public func site(joinTokenSHA256: String) async throws -> Site? {
        try await reading { db in
            try Row.fetchOne(
                db,
                sql: "SELECT * FROM site WHERE joinTokenSHA256 = ? OR spentTokenSHA256 = ?",
                arguments: [joinTokenSHA256, joinTokenSHA256]
            ).map(Self.site)
        }
    }

    static func site(_ row: Row) -> Site {
        Site(
            name: row["name"],
            created: row["created"],
            joinTokenSHA256: row["joinTokenSHA256"],
            joinExpires: row["joinExpires"],
            certificateSerial: row["certificateSerial"],
            certificateNotAfter: row["certificateNotAfter"],
            joined: row["joined"],
            link: (row["linkSeen"] as Date?).map {
                SiteLink(
                    lastSeen: $0,
                    address: row["linkAddress"] ?? "",
                    queueDepth: row["linkQueueDepth"] ?? 0,
                    cachedFiles: row["linkCachedFiles"] ?? 0,
                    cachedBytes: row["linkCachedBytes"] ?? 0,
                    version: row["linkVersion"] ?? "",
                    bmcChannels: row["linkBMCChannels"]
                )
            },
            spentTokenSHA256: row["spentTokenSHA256"],
            certificatePEM: row["certificatePEM"]
        )
    }

    public func recordSiteLink(name: String, certificateSerial: String, link: SiteLink) async throws -> Bool {
        try await writing { db in
            try db.execute(
                sql: """
                    UPDATE site SET linkSeen = ?, linkAddress = ?, linkQueueDepth = ?, linkCachedFiles = ?,
                      linkCachedBytes = ?, linkVersion = ?, linkBMCChannels = ?
                    WHERE name = ? AND certificateSerial = ?
                    """,
                arguments: [
                    link.lastSeen, link.address, link.queueDepth, link.cachedFiles, link.cachedBytes, link.version,
                    link.bmcChannels, name, certificateSerial,
                ]
            )
            return db.changesCount == 1
        }
    }

    public func completeJoin(
        name: String,
        joinTokenSHA256: String,
        certificateSerial: String,
        certificateNotAfter: Date,
        certificatePEM: String,
        at: Date
    ) async throws -> Bool {
        try await writing { db in
            try db.execute(
                sql: """
                    UPDATE site SET joinTokenSHA256 = NULL, spentTokenSHA256 = joinTokenSHA256, certificateSerial = ?,
                      certificateNotAfter = ?, certificatePEM = ?, joined = ?
                    WHERE name = ? AND joinTokenSHA256 = ?
                    """,
                arguments: [certificateSerial, certificateNotAfter, certificatePEM, at, name, joinTokenSHA256]
            )
            return db.changesCount == 1
        }
    }

    public func appendSiteEvents(
        name: String,
        certificateSerial: String,
        after: Int64,
        events: [SiteEvent],
        through: Int64
    ) async throws -> Int64? {
        try await writing { [timelineLimit] db in
            guard
                let mark = try Int64.fetchOne(
                    db,
                    sql: "SELECT eventMark FROM site WHERE name = ? AND certificateSerial = ?",
                    arguments: [name, certificateSerial]
                )
            else { return nil }
            guard let (fresh, next) = SiteEvent.delivery(mark: mark, after: after, events: events, through: through)
            else { return mark }
            let macs = Set(try String.fetchAll(db, sql: "SELECT mac FROM machine WHERE site = ?", arguments: [name]))
            try Self.insertTimeline(
                db,
                fresh.map(\.event).filter { macs.contains($0.mac.description) },
                limit: timelineLimit
            )
            try db.execute(sql: "UPDATE site SET eventMark = ? WHERE name = ?", arguments: [next, name])
            return next
        }
    }

    public func recordSiteLeases(name: String, certificateSerial: String, leases: [Lease]) async throws -> Int? {
        try await writing { db in
            guard
                try Row.fetchOne(
                    db,
                    sql: "SELECT 1 FROM site WHERE name = ? AND certificateSerial = ?",
                    arguments: [name, certificateSerial]
                ) != nil
            else { return nil }
            let macs = Set(try String.fetchAll(db, sql: "SELECT mac FROM machine WHERE site = ?", arguments: [name]))
            try db.execute(sql: "DELETE FROM siteLease WHERE site = ?", arguments: [name])
            let kept = leases.filter { macs.contains($0.mac.description) }
            let insert = try db.cachedStatement(
                sql: "INSERT OR REPLACE INTO siteLease (mac, site, address, expires, hostname) VALUES (?, ?, ?, ?, ?)"
            )
            for l in kept {
                try insert.execute(arguments: [
                    l.mac.description, name, l.address.description, l.expires, l.hostname,
                ])
            }
            return kept.count
        }
    }

    public func siteLeases(macs: [MACAddress]) async throws -> [Lease] {
        guard !macs.isEmpty else { return [] }
        let names = macs.map(\.description)
        let sql = """
            SELECT l.mac, l.address, l.expires, l.hostname FROM siteLease l JOIN machine m ON m.mac = l.mac AND m.site = l.site
            WHERE l.mac IN (\(databaseQuestionMarks(count: names.count)))
            """
        return try await reading { db in try Self.leases(db, sql: sql, arguments: StatementArguments(names)) }
    }

    public func deleteSite(name: String) async throws -> Bool {
        try await writing { db in
            try db.execute(sql: "DELETE FROM site WHERE name = ?", arguments: [name])
            return db.changesCount > 0
        }
    }

    // MARK: TestScriptStore

    public func addTestScript(_ script: TestScript, content: [UInt8]) async throws -> TestScript {
        try await writing { db in
            let newest = try String.fetchOne(
                db,
                sql: "SELECT body FROM testScript WHERE name = ? ORDER BY version DESC LIMIT 1",
                arguments: [script.name]
            ).map { try JSONDecoder().decode(TestScript.self, from: Data($0.utf8)) }
            if let newest, newest.sha256 == script.sha256, newest.limitSeconds == script.limitSeconds,
                newest.description == script.description
            {
                return newest
            }
            var stored = script
            stored.version = (newest?.version ?? 0) + 1
            try db.execute(
                sql: "INSERT OR IGNORE INTO testScriptContent (sha256, content) VALUES (?, ?)",
                arguments: [script.sha256, Data(content)]
            )
            try db.execute(
                sql: "INSERT INTO testScript (name, version, sha256, body) VALUES (?, ?, ?, ?)",
                arguments: [stored.name, stored.version, stored.sha256, try jsonText(stored)]
            )
            return stored
        }
    }

    public func testScripts() async throws -> [TestScript] {
        try await reading { db in
            try String.fetchAll(db, sql: "SELECT body FROM testScript ORDER BY name, version").map {
                try JSONDecoder().decode(TestScript.self, from: Data($0.utf8))
            }
        }
    }

    public func testScriptContent(sha256: String) async throws -> [UInt8]? {
        try await reading { db in
            try Data.fetchOne(db, sql: "SELECT content FROM testScriptContent WHERE sha256 = ?", arguments: [sha256])
                .map { Array($0) }
        }
    }

    public func removeTestScript(name: String) async throws -> Int {
        try await writing { db in
            let versions =
                try Int.fetchOne(
                    db,
                    sql: "SELECT count(*) FROM testScript WHERE name = ?",
                    arguments: [name]
                ) ?? 0
            guard versions > 0 else { throw StoreError(.notFound, "no test script named '\(name)'") }
            // A commissioning that resolved the script before this and commits after it finds
            // no content when its task is made: that test ends as an error, not a pass.
            let users = try MachineRecord.filter(sql: "burnIn IS NOT NULL AND state IN ('commissioning', 'failed')")
                .order(Column("name")).fetchAll(db).map { try $0.machine() }.filter { $0.needsTestScript(name) }
            if !users.isEmpty {
                throw StoreError(
                    .inUse,
                    "test script '\(name)' is among the tests of \(users.map(\.name).joined(separator: ", ")) "
                        + "(commissioning, or failed in it); let them finish or abort them first"
                )
            }
            try db.execute(sql: "DELETE FROM testScript WHERE name = ?", arguments: [name])
            try db.execute(
                sql: "DELETE FROM testScriptContent WHERE sha256 NOT IN (SELECT sha256 FROM testScript)"
            )
            return versions
        }
    }

    public func putTestOutputs(machineID: String, runID: String, _ outputs: [TestOutput]) async throws {
        try await writing { db in
            try db.execute(sql: "DELETE FROM testOutput WHERE machineID = ?", arguments: [machineID])
            for o in outputs {
                try db.execute(
                    sql:
                        "INSERT OR REPLACE INTO testOutput (machineID, runID, name, target, output) VALUES (?, ?, ?, ?, ?)",
                    arguments: [machineID, runID, o.name, o.target, o.output]
                )
            }
        }
    }

    public func testOutputs(machineID: String, runID: String) async throws -> [TestOutput] {
        try await reading { db in
            try Row.fetchAll(
                db,
                sql: "SELECT name, target, output FROM testOutput WHERE machineID = ? AND runID = ? ORDER BY rowid",
                arguments: [machineID, runID]
            ).map { TestOutput(name: $0[0], target: $0[1], output: $0[2]) }
        }
    }

    // MARK: NetworkStore

    public func createNetwork(_ network: Network) async throws {
        let body = String(decoding: try JSONEncoder().encode(network), as: UTF8.self)
        try await writing { db in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM network WHERE name = ?", arguments: [network.name]) != nil {
                throw StoreError(.alreadyExists, "network '\(network.name)' already exists")
            }
            if let site = network.site,
                try Row.fetchOne(db, sql: "SELECT 1 FROM site WHERE name = ?", arguments: [site]) == nil
            {
                throw StoreError(.notFound, "no site named '\(site)'")
            }
            // Writes are serialised: no other network can be added between this check and the insert.
            let others = try String.fetchAll(db, sql: "SELECT body FROM network").map {
                try JSONDecoder().decode(Network.self, from: Data($0.utf8))
            }
            if let clash = network.overlap(with: others) { throw StoreError(.alreadyExists, clash) }
            try db.execute(
                sql: "INSERT INTO network (name, site, body) VALUES (?, ?, ?)",
                arguments: [network.name, network.site, body]
            )
        }
    }

    public func networks() async throws -> [Network] {
        try await reading { db in
            try String.fetchAll(db, sql: "SELECT body FROM network ORDER BY name").map {
                try JSONDecoder().decode(Network.self, from: Data($0.utf8))
            }
        }
    }

    public func network(name: String) async throws -> Network? {
        try await reading { db in
            try String.fetchOne(db, sql: "SELECT body FROM network WHERE name = ?", arguments: [name]).map {
                try JSONDecoder().decode(Network.self, from: Data($0.utf8))
            }
        }
    }

    public func deleteNetwork(name: String) async throws {
        try await writing { db in
            guard try Row.fetchOne(db, sql: "SELECT 1 FROM network WHERE name = ?", arguments: [name]) != nil else {
                throw StoreError(.notFound, "no network named '\(name)'")
            }
            let holders = try String.fetchAll(
                db,
                sql: """
                    SELECT DISTINCT m.name FROM networkAddress a JOIN machine m ON m.id = a.machineID
                    WHERE a.network = ? ORDER BY m.name
                    """,
                arguments: [name]
            )
            if !holders.isEmpty {
                throw StoreError(
                    .inUse,
                    "network '\(name)' has addresses held by \(holders.joined(separator: ", ")); release them first"
                )
            }
            try db.execute(sql: "DELETE FROM network WHERE name = ?", arguments: [name])
        }
    }

    public func networkAddresses(network: String) async throws -> [HeldAddress] {
        try await reading { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT a.address, a.machineID, m.name, m.mac FROM networkAddress a JOIN machine m ON m.id = a.machineID
                    WHERE a.network = ?
                    """,
                arguments: [network]
            ).compactMap { row -> HeldAddress? in
                guard let address = IPAddress(row[0] as String), let mac = MACAddress(row[3] as String) else {
                    return nil
                }
                return HeldAddress(network: network, address: address, machineID: row[1], machine: row[2], mac: mac)
            }.sorted { $0.address < $1.address }
        }
    }

    public func addBMCCredential(_ c: BMCCredential) async throws {
        try await writing { db in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM bmcCredential WHERE name = ?", arguments: [c.name]) != nil {
                throw StoreError(
                    .alreadyExists,
                    "BMC credential '\(c.name)' already exists; replace it (--replace) or pick another name"
                )
            }
            try db.execute(
                sql: "INSERT INTO bmcCredential (name, user, secret, created) VALUES (?, ?, ?, ?)",
                arguments: [c.name, c.user, Data(c.sealedPassword), c.created]
            )
        }
    }

    public func replaceBMCCredential(_ c: BMCCredential, machineSecrets: [String: [UInt8]]) async throws {
        try await writing { db in
            guard try Row.fetchOne(db, sql: "SELECT 1 FROM bmcCredential WHERE name = ?", arguments: [c.name]) != nil
            else { throw StoreError(.notFound, "no BMC credential named '\(c.name)'") }
            let users = try MachineRecord.filter(Column("bmcCredential") == c.name).fetchAll(db)
            guard Set(users.map(\.id)) == Set(machineSecrets.keys) else {
                throw StoreError(.inUse, "the machines using BMC credential '\(c.name)' changed meanwhile; try again")
            }
            try db.execute(
                sql: "UPDATE bmcCredential SET user = ?, secret = ? WHERE name = ?",
                arguments: [c.user, Data(c.sealedPassword), c.name]
            )
            for var row in users {
                var m = try row.machine()
                m.bmc?.user = c.user
                row = MachineRecord(m)
                try row.update(db)
                try db.execute(
                    sql: "UPDATE machine SET bmcSecret = ? WHERE id = ?",
                    arguments: [Data(machineSecrets[m.id] ?? []), m.id]
                )
            }
        }
    }

    public func bmcCredential(name: String) async throws -> BMCCredential? {
        try await reading { db in
            try Row.fetchOne(db, sql: "SELECT * FROM bmcCredential WHERE name = ?", arguments: [name]).map {
                BMCCredential(
                    name: $0["name"],
                    user: $0["user"],
                    sealedPassword: Array($0["secret"] as Data),
                    created: $0["created"]
                )
            }
        }
    }

    public func bmcCredentials() async throws -> [BMCCredential] {
        try await reading { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT c.name, c.user, c.created, (SELECT COUNT(*) FROM machine m WHERE m.bmcCredential = c.name) AS n
                    FROM bmcCredential c ORDER BY c.name
                    """
            ).map {
                BMCCredential(
                    name: $0["name"],
                    user: $0["user"],
                    sealedPassword: [],
                    created: $0["created"],
                    machines: $0["n"]
                )
            }
        }
    }

    public func machines(usingCredential name: String) async throws -> [String] {
        try await reading { db in
            try String.fetchAll(
                db,
                sql: "SELECT id FROM machine WHERE bmcCredential = ? ORDER BY id",
                arguments: [name]
            )
        }
    }

    public func removeBMCCredential(name: String) async throws -> Bool {
        try await writing { db in
            let n =
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM machine WHERE bmcCredential = ?", arguments: [name])
                ?? 0
            if n > 0 {
                throw StoreError(
                    .inUse,
                    "BMC credential '\(name)' is used by \(n) machine(s); enroll them with another password or credential first"
                )
            }
            try db.execute(sql: "DELETE FROM bmcCredential WHERE name = ?", arguments: [name])
            return db.changesCount > 0
        }
    }

    public func addImage(_ i: ImageInfo) async throws {
        try await writing { db in
            if try Row.fetchOne(db, sql: "SELECT 1 FROM image WHERE name = ?", arguments: [i.name]) != nil {
                throw StoreError(
                    .alreadyExists,
                    "image '\(i.name)' already exists; remove it first or pick another name"
                )
            }
            try db.execute(
                sql:
                    "INSERT INTO image (name, sha256, size, format, os, architecture, firmware, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                arguments: [
                    i.name, i.sha256, i.size, i.format.rawValue, i.os, i.architecture.rawValue, i.firmware.rawValue,
                    i.created,
                ]
            )
        }
    }

    public func images() async throws -> [ImageInfo] {
        try await reading { db in try Row.fetchAll(db, sql: "SELECT * FROM image ORDER BY name").map(Self.image) }
    }

    public func image(name: String) async throws -> ImageInfo? {
        try await reading { db in
            try Row.fetchOne(db, sql: "SELECT * FROM image WHERE name = ?", arguments: [name]).map(Self.image)
        }
    }

    static func image(_ row: Row) -> ImageInfo {
        ImageInfo(
            name: row["name"],
            sha256: row["sha256"],
            size: row["size"],
            format: ImageInfo.Format(rawValue: row["format"]) ?? .raw,
            os: row["os"],
            architecture: Architecture(rawValue: row["architecture"]) ?? .unknown,
            firmware: Firmware(rawValue: row["firmware"]) ?? .unknown,
            created: row["created"]
        )
    }

    public func deleteImage(name: String) async throws -> Bool {
        try await writing { db in
            let users = try String.fetchAll(
                db,
                sql: "SELECT name FROM machine WHERE json_extract(deployment, '$.image') = ? ORDER BY name",
                arguments: [name]
            )
            if !users.isEmpty {
                throw StoreError(
                    .inUse,
                    "image '\(name)' is in use by \(users.joined(separator: ", ")); release them first"
                )
            }
            try db.execute(sql: "DELETE FROM image WHERE name = ?", arguments: [name])
            return db.changesCount > 0
        }
    }

    public func imageReferenced(sha256: String) async throws -> Bool {
        try await reading { db in
            try Row.fetchOne(db, sql: "SELECT 1 FROM image WHERE sha256 = ?", arguments: [sha256]) != nil
        }
    }
}

func jsonText<T: Encodable>(_ value: T) throws -> String {
    let e = JSONEncoder()
    e.outputFormatting = .sortedKeys
    return String(decoding: try e.encode(value), as: UTF8.self)
}

func jsonValue<T: Decodable>(_ type: T.Type, _ text: String?) throws -> T? {
    guard let text else { return nil }
    return try JSONDecoder().decode(T.self, from: Data(text.utf8))
}

struct MachineRecord: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "machine"
    var id: String
    var name: String
    var mac: String
    var architecture: String
    var firmware: String
    var state: String
    var firstSeen: Date
    var lastSeen: Date
    var bmc: String?
    var failedStep: String?
    var reason: String
    var project: String?
    var tags: String
    var labels: String
    var zone: String
    var rack: String
    var site: String?
    var inventory: String?
    var deployment: String?
    var phase: String
    var generation: Int
    var stepStarted: Date?
    var progress: String?
    var diskDirty: Bool
    var dirtyFor: String?
    var releasedFrom: String?
    var agentBoot: Int
    var agentNonce: String?
    var maintenance: String?
    var power: String?
    var bmcCredential: String?
    var otherMACs: String?
    var rootDevice: String?
    var trace: String?
    var burnIn: String?
    var testAllowance: Int?

    /// bmcSecret is read and written only by its own queries, never with the record.
    static var databaseSelection: [any SQLSelectable] {
        [
            Column("id"), Column("name"), Column("mac"), Column("architecture"), Column("firmware"), Column("state"),
            Column("firstSeen"), Column("lastSeen"), Column("bmc"), Column("failedStep"), Column("reason"),
            Column("project"),
            Column("tags"), Column("labels"), Column("zone"), Column("rack"), Column("site"), Column("inventory"),
            Column("deployment"), Column("phase"), Column("generation"), Column("stepStarted"), Column("progress"),
            Column("diskDirty"),
            Column("dirtyFor"), Column("releasedFrom"),
            Column("agentBoot"), Column("agentNonce"), Column("maintenance"), Column("power"), Column("bmcCredential"),
            Column("otherMACs"), Column("rootDevice"), Column("trace"), Column("burnIn"), Column("testAllowance"),
        ]
    }

    init(_ m: Machine) {
        id = m.id
        name = m.name
        mac = m.mac.description
        architecture = m.architecture.rawValue
        firmware = m.firmware.rawValue
        state = m.state.rawValue
        firstSeen = m.firstSeen
        lastSeen = m.lastSeen
        bmc = try? m.bmc.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
        failedStep = m.failedStep?.rawValue
        reason = m.reason
        project = m.project
        tags = (try? jsonText(m.tags)) ?? "{}"
        labels = (try? jsonText(m.labels)) ?? "{}"
        zone = m.zone
        rack = m.rack
        site = m.site
        inventory = try? m.inventory.map(jsonText)
        deployment = try? m.deployment.map(jsonText)
        phase = m.phase.rawValue
        generation = m.generation
        stepStarted = m.stepStarted
        progress = try? m.progress.map(jsonText)
        diskDirty = m.diskDirty
        dirtyFor = m.dirtyFor
        releasedFrom = m.releasedFrom
        agentBoot = m.agentBoot
        agentNonce = m.agentNonce
        maintenance = try? m.maintenance.map(jsonText)
        power = try? m.power.map(jsonText)
        bmcCredential = m.bmcCredential
        otherMACs = try? m.otherMACs.map(jsonText)
        rootDevice = try? m.rootDevice.map(jsonText)
        trace = try? m.trace.map(jsonText)
        burnIn = try? m.burnIn.map(jsonText)
        testAllowance = m.testAllowance
    }

    func machine() throws -> Machine {
        guard let mac = MACAddress(mac) else {
            throw StoreError(.corrupt, "corrupt row: machine \(id): mac \(self.mac)")
        }
        // An unknown state or phase is a corrupt row, never a guess: a guess could hand a
        // tenant's machine to the next one.
        guard let state = MachineState(rawValue: state) else {
            throw StoreError(.corrupt, "corrupt row: machine \(id): state \(self.state)")
        }
        guard let phase = StepPhase(rawValue: phase) else {
            throw StoreError(.corrupt, "corrupt row: machine \(id): phase \(self.phase)")
        }
        var m = Machine(
            id: id,
            name: name,
            mac: mac,
            architecture: Architecture(rawValue: architecture) ?? .unknown,
            firmware: Firmware(rawValue: firmware) ?? .unknown,
            state: state,
            firstSeen: firstSeen,
            lastSeen: lastSeen,
            bmc: try bmc.map { try JSONDecoder().decode(BMCReference.self, from: Data($0.utf8)) }
        )
        m.failedStep = failedStep.flatMap(MachineState.init(rawValue:))
        m.reason = reason
        m.project = project
        m.tags = try jsonValue([String: String].self, tags) ?? [:]
        m.labels = try jsonValue([String: String].self, labels) ?? [:]
        m.zone = zone
        m.rack = rack
        m.site = site
        m.inventory = try jsonValue(Inventory.self, inventory)
        m.deployment = try jsonValue(Deployment.self, deployment)
        m.phase = phase
        m.generation = generation
        m.stepStarted = stepStarted
        m.progress = try jsonValue(StepProgress.self, progress)
        m.diskDirty = diskDirty
        m.dirtyFor = dirtyFor
        m.releasedFrom = releasedFrom
        m.agentBoot = agentBoot
        m.agentNonce = agentNonce
        m.maintenance = try jsonValue(Maintenance.self, maintenance)
        m.power = try jsonValue(PowerReading.self, power)
        m.bmcCredential = bmcCredential
        m.otherMACs = try jsonValue([String].self, otherMACs)
        m.rootDevice = try jsonValue(RootDeviceHints.self, rootDevice)
        m.trace = try jsonValue(StepTrace.self, trace)
        m.burnIn = try jsonValue(BurnIn.self, burnIn)
        m.testAllowance = testAllowance
        return m
    }
}
