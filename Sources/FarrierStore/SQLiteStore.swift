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
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        config.busyMode = .timeout(10)
        db = try DatabasePool(path: path, configuration: config)
        self.timelineLimit = timelineLimit
        try Self.migrator.migrate(db)
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
        return m
    }

    /// The applied migration identifiers, oldest first.
    public func appliedMigrations() throws -> [String] {
        try db.read { try Self.migrator.appliedMigrations($0) }
    }

    // MARK: MachineStore

    public func recordSighting(mac: MACAddress, platform: ClientPlatform, at time: Date) throws -> Machine {
        try db.write { db in
            if var row = try MachineRecord.filter(Column("mac") == mac.description).fetchOne(db) {
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
            let machine = Machine(
                name: Machine.defaultName(for: mac), mac: mac, architecture: platform.architecture,
                firmware: platform.firmware, firstSeen: time, lastSeen: time)
            try MachineRecord(machine).insert(db)
            return machine
        }
    }

    public func machine(mac: MACAddress) throws -> Machine? {
        try db.read { try MachineRecord.filter(Column("mac") == mac.description).fetchOne($0)?.machine() }
    }

    public func machine(name: String) throws -> Machine? {
        try db.read { try MachineRecord.filter(Column("name") == name).fetchOne($0)?.machine() }
    }

    public func machines() throws -> [Machine] {
        try db.read { try MachineRecord.order(Column("name")).fetchAll($0).map { try $0.machine() } }
    }

    public func enroll(name: String, mac: MACAddress, bmc: BMCReference, sealedPassword: [UInt8], at time: Date) throws -> Machine {
        let bmcJSON = String(decoding: try JSONEncoder().encode(bmc), as: UTF8.self)
        return try db.write { db in
            let byName = try MachineRecord.filter(Column("name") == name).fetchOne(db)
            if let byName, byName.mac != mac.description {
                throw StoreConflict("machine name '\(name)' is already used by the machine with MAC \(byName.mac)")
            }
            var row: MachineRecord
            if let existing = try MachineRecord.filter(Column("mac") == mac.description).fetchOne(db) {
                row = existing
                row.name = name
                // discovered ─enroll─▶ enrolled; a machine further along keeps its state.
                if row.state == MachineState.discovered.rawValue { row.state = MachineState.enrolled.rawValue }
            } else {
                row = MachineRecord(Machine(
                    name: name, mac: mac, architecture: .unknown, firmware: .unknown, state: .enrolled,
                    firstSeen: time, lastSeen: time))
            }
            row.bmc = bmcJSON
            try row.save(db)
            try db.execute(sql: "UPDATE machine SET bmcSecret = ? WHERE id = ?", arguments: [Data(sealedPassword), row.id])
            return try row.machine()
        }
    }

    public func sealedBMCPassword(machineID: String) throws -> [UInt8]? {
        try db.read { db in
            try Data.fetchOne(db, sql: "SELECT bmcSecret FROM machine WHERE id = ?", arguments: [machineID]).map { Array($0) }
        }
    }

    public func appendTimeline(_ events: [TimelineEvent]) throws {
        guard !events.isEmpty else { return }
        try db.write { db in
            for e in events {
                try db.execute(
                    sql: "INSERT INTO timelineEvent (mac, time, stage, event, detail) VALUES (?, ?, ?, ?, ?)",
                    arguments: [e.mac.description, e.time, e.stage.rawValue, e.event, e.detail])
            }
            for mac in Set(events.map(\.mac)) {
                try db.execute(
                    sql: """
                        DELETE FROM timelineEvent WHERE mac = ? AND id <= (
                          SELECT id FROM timelineEvent WHERE mac = ? ORDER BY id DESC LIMIT 1 OFFSET ?)
                        """,
                    arguments: [mac.description, mac.description, timelineLimit])
            }
        }
    }

    public func timeline(mac: MACAddress, limit: Int) throws -> [TimelineEvent] {
        try db.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT time, stage, event, detail FROM timelineEvent WHERE mac = ? ORDER BY id DESC LIMIT ?",
                arguments: [mac.description, limit])
            return rows.reversed().map { row in
                TimelineEvent(
                    mac: mac, time: row["time"], stage: TimelineEvent.Stage(rawValue: row["stage"]) ?? .dhcp,
                    event: row["event"], detail: row["detail"])
            }
        }
    }

    // MARK: LeaseStore

    public func leases() throws -> [Lease] {
        try db.read { db in
            try Row.fetchAll(db, sql: "SELECT mac, address, expires, hostname FROM lease").compactMap { row in
                guard let mac = MACAddress(row["mac"] as String), let ip = IPv4Address(row["address"] as String)
                else { return nil }
                return Lease(mac: mac, address: ip, expires: row["expires"], hostname: row["hostname"])
            }
        }
    }

    public func commit(_ leases: [Lease]) throws {
        guard !leases.isEmpty else { return }
        try db.write { db in
            // Prepared once per connection and reused: at thousands of leases a second, parsing
            // the SQL each time would cost more than the inserts.
            let release = try db.cachedStatement(sql: "DELETE FROM lease WHERE address = ? AND mac <> ?")
            let upsert = try db.cachedStatement(
                sql: """
                    INSERT INTO lease (mac, address, expires, hostname) VALUES (?, ?, ?, ?)
                    ON CONFLICT(mac) DO UPDATE SET address = excluded.address, expires = excluded.expires,
                      hostname = excluded.hostname
                    """)
            for l in leases {
                let mac = l.mac.description, address = l.address.description
                // An address moves to a new MAC only after the lease table released it; drop any
                // stale row that still holds it so the unique constraint reflects the table.
                try release.execute(arguments: [address, mac])
                // Expiry as a Unix timestamp: GRDB reads it back as a Date like the text form,
                // without a DateFormatter per lease.
                try upsert.execute(arguments: [mac, address, l.expires.timeIntervalSince1970, l.hostname])
            }
        }
    }

    public func deleteLease(mac: MACAddress) throws {
        try db.write { try $0.execute(sql: "DELETE FROM lease WHERE mac = ?", arguments: [mac.description]) }
    }
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

    /// bmcSecret is read and written only by its own queries, never with the record.
    static var databaseSelection: [any SQLSelectable] { [
        Column("id"), Column("name"), Column("mac"), Column("architecture"), Column("firmware"), Column("state"),
        Column("firstSeen"), Column("lastSeen"), Column("bmc"),
    ] }

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
    }

    func machine() throws -> Machine {
        guard let mac = MACAddress(mac) else { throw StoreError.corruptRow("machine \(id): mac \(self.mac)") }
        return Machine(
            id: id, name: name, mac: mac, architecture: Architecture(rawValue: architecture) ?? .unknown,
            firmware: Firmware(rawValue: firmware) ?? .unknown, state: MachineState(rawValue: state) ?? .discovered,
            firstSeen: firstSeen, lastSeen: lastSeen,
            bmc: try bmc.map { try JSONDecoder().decode(BMCReference.self, from: Data($0.utf8)) })
    }
}

public enum StoreError: Error, CustomStringConvertible {
    case corruptRow(String)
    public var description: String {
        switch self { case .corruptRow(let s): "corrupt row: \(s)" }
    }
}
