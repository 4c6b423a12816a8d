import Foundation

/// Machine records and their boot timelines. SQLite implements it now; PostgreSQL later.
public protocol MachineStore: Sendable {
    /// Returns the machine with this MAC, creating it as `discovered` if it is new, and updates
    /// `lastSeen` (and the platform, when it was unknown).
    func recordSighting(mac: MACAddress, platform: ClientPlatform, at: Date) throws -> Machine
    func machine(mac: MACAddress) throws -> Machine?
    func machine(name: String) throws -> Machine?
    func machines() throws -> [Machine]
    /// Enrolls a machine with its BMC: the machine with this MAC is renamed, gets the BMC and
    /// goes from `discovered` to `enrolled`; or a new `enrolled` machine is made. `sealedPassword` is stored as given (already encrypted).
    /// Throws `StoreConflict` when the name belongs to a machine with another MAC.
    func enroll(name: String, mac: MACAddress, bmc: BMCReference, sealedPassword: [UInt8], at: Date) throws -> Machine
    /// The encrypted BMC password of a machine, as `enroll` stored it.
    func sealedBMCPassword(machineID: String) throws -> [UInt8]?
    func appendTimeline(_ events: [TimelineEvent]) throws
    /// The most recent `limit` events of a machine, oldest first.
    func timeline(mac: MACAddress, limit: Int) throws -> [TimelineEvent]
}

/// Durable DHCP leases.
public protocol LeaseStore: Sendable {
    func leases() throws -> [Lease]
    /// Writes the leases and makes them durable (fsync) before returning.
    func commit(_ leases: [Lease]) throws
    func deleteLease(mac: MACAddress) throws
}

public typealias StateStore = MachineStore & LeaseStore

extension MachineStore {
    /// Looks a machine up by MAC (any common notation) or by name.
    public func machine(nameOrMAC key: String) throws -> Machine? {
        if let mac = MACAddress(key), let m = try machine(mac: mac) { return m }
        return try machine(name: key)
    }
}

/// A write that would break a uniqueness rule the user can fix (a name already in use).
public struct StoreConflict: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
