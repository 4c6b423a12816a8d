import Foundation

/// Power state as a BMC reports it.
public enum PowerState: String, Sendable, Codable, Hashable {
    case on, off, unknown
}

/// Power actions every driver maps onto its protocol.
public enum PowerAction: String, Sendable, Codable, Hashable, CaseIterable {
    case on, off, cycle, reset
    /// ACPI soft off (graceful shutdown).
    case softOff = "soft-off"
}

public enum BootDevice: String, Sendable, Codable, Hashable, CaseIterable {
    case pxe, disk
}

/// A boot device override.
public struct BootOverride: Sendable, Hashable, Codable {
    public var device: BootDevice
    /// Applies to every boot, not just the next one.
    public var persistent: Bool
    /// UEFI boot rather than legacy BIOS.
    public var efi: Bool

    public init(device: BootDevice, persistent: Bool = false, efi: Bool = false) {
        self.device = device
        self.persistent = persistent
        self.efi = efi
    }
}

/// What a BMC says about itself.
public struct BMCInfo: Sendable, Hashable, Codable {
    public var driver: String
    public var address: String
    public var manufacturer: String
    public var model: String
    public var firmware: String
    public var details: [String: String]

    public init(
        driver: String,
        address: String,
        manufacturer: String,
        model: String,
        firmware: String,
        details: [String: String] = [:]
    ) {
        self.driver = driver
        self.address = address
        self.manufacturer = manufacturer
        self.model = model
        self.firmware = firmware
        self.details = details
    }
}

/// A BMC error a user can act on. The message never contains a password.
public struct BMCError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        case authenticationFailed
        case timeout
        case unsupported
        case protocolError
        case rejected
        case unreachable
    }

    public var kind: Kind
    public var address: String
    public var message: String

    public init(_ kind: Kind, address: String, _ message: String) {
        self.kind = kind
        self.address = address
        self.message = message
    }

    public static func authenticationFailed(_ address: String) -> BMCError {
        BMCError(.authenticationFailed, address: address, "authentication failed for BMC \(address)")
    }

    public static func timeout(_ address: String, after: Duration, doing what: String) -> BMCError {
        BMCError(.timeout, address: address, "BMC \(address) did not answer \(what) within \(after.formattedSeconds)")
    }

    public static func unsupported(_ address: String, operation: String, detail: String = "") -> BMCError {
        BMCError(
            .unsupported,
            address: address,
            "BMC \(address) does not support \(operation)\(detail.isEmpty ? "" : ": \(detail)")"
        )
    }

    public var description: String { message }
}

extension Duration {
    var formattedSeconds: String {
        let s = Double(components.seconds) + Double(components.attoseconds) / 1e18
        return s == s.rounded() ? "\(Int(s)) s" : String(format: "%.1f s", s)
    }
}

/// A serial console session: bytes from the machine, and a way to type into it.
public protocol ConsoleSession: Sendable {
    /// Output from the machine's serial port, until the session ends.
    var output: AsyncStream<[UInt8]> { get }
    /// Sends input; returns once the BMC has accepted it.
    func write(_ bytes: [UInt8]) async throws
    /// Ends the session (deactivates SOL) and releases the BMC session.
    func close() async
}

/// One interface over IPMI and Redfish.
public protocol BMC: Sendable {
    /// `host:port` (IPMI) or the base URL (Redfish): what errors name.
    var address: String { get }
    func info() async throws -> BMCInfo
    func powerState() async throws -> PowerState
    func power(_ action: PowerAction) async throws
    func setBootOverride(_ override: BootOverride) async throws
    /// The current override, where the BMC reports one.
    func bootOverride() async throws -> BootOverride?
    func openConsole() async throws -> any ConsoleSession
    /// Logs out and releases sessions.
    func close() async
}

/// Timeouts and retries for a BMC connection.
public struct BMCTimeouts: Sendable, Hashable {
    /// How long to wait for one answer before sending again. A BMC on a LAN answers in
    /// milliseconds; half a second leaves room for a busy one.
    public var attempt: Duration = .milliseconds(500)
    /// Retransmissions per request (IPMI) or retries with backoff (Redfish). Seven keep a
    /// session setup (about eight exchanges) reliable on a link losing 20 % each way.
    public var retries: Int = 7
    /// Upper bound for a whole operation, session setup included.
    public var operation: Duration = .seconds(20)

    public init(attempt: Duration = .milliseconds(500), retries: Int = 7, operation: Duration = .seconds(20)) {
        self.attempt = attempt
        self.retries = retries
        self.operation = operation
    }
}
