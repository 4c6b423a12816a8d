import Foundation

/// A project: the unit of tenancy. Members of a project see and use only its machines.
public struct Project: Codable, Sendable, Hashable {
    public var name: String
    public var description: String
    /// Tag keys every deploy in this project must carry (say `department`, `environment`).
    public var requiredTags: [String]
    public var created: Date
    /// How its machines are wiped at release: `full` (the default) erases and verifies the
    /// whole disk; `quick` leaves most of the tenant's bytes for the next one, so it is only
    /// for a project whose machines never go to another tenant.
    public var wipePolicy: WipeMode

    public init(
        name: String,
        description: String = "",
        requiredTags: [String] = [],
        created: Date,
        wipePolicy: WipeMode = .full
    ) {
        self.name = name
        self.description = description
        self.requiredTags = requiredTags
        self.created = created
        self.wipePolicy = wipePolicy
    }
}

public enum Role: String, Codable, Sendable, CaseIterable {
    /// The whole fleet: every machine, projects, tokens, images.
    case admin
    /// One project's machines.
    case member
}

/// An API token as stored: only the SHA-256 of the secret is kept.
public struct APIToken: Codable, Sendable, Hashable {
    public var id: String
    public var name: String
    public var role: Role
    /// For members: their project. Admin tokens have none.
    public var project: String?
    public var secretSHA256: String
    public var created: Date

    public init(id: String, name: String, role: Role, project: String?, secretSHA256: String, created: Date) {
        self.id = id
        self.name = name
        self.role = role
        self.project = project
        self.secretSHA256 = secretSHA256
        self.created = created
    }
}

/// Who is calling, once their token is verified.
public struct Principal: Sendable, Hashable {
    public var tokenID: String
    public var tokenName: String
    public var role: Role
    public var project: String?

    public init(tokenID: String, tokenName: String, role: Role, project: String?) {
        self.tokenID = tokenID
        self.tokenName = tokenName
        self.role = role
        self.project = project
    }

    public var isAdmin: Bool { role == .admin }

    /// Whether the caller may see and act on this machine: admins all, members only their
    /// project's allocated machines.
    public func canSee(_ m: Machine) -> Bool { isAdmin || (project != nil && m.project == project) }
}

/// Checks on user-supplied names, tags and fields. Each returns why a value is bad, or nil.
public enum Validation {
    /// Project and image names follow machine names: DNS labels.
    public static func nameProblem(_ name: String, kind: String) -> String? {
        if name.isEmpty { return "a \(kind) name is required" }
        if name.count > 63 { return "\(kind) name '\(name.prefix(70))' is longer than 63 characters" }
        if name.hasPrefix("-") || name.hasSuffix("-") { return "\(kind) name '\(name)' must not start or end with '-'" }
        if !name.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "." }) {
            return "\(kind) name '\(name)' may only contain lower-case letters, digits, '-' and '.'"
        }
        return nil
    }

    /// Tag keys: 1–63 of [A-Za-z0-9._/-]; values: at most 255 printable characters.
    public static func tagProblem(key: String, value: String) -> String? {
        if key.isEmpty { return "a tag key must not be empty" }
        if key.count > 63 { return "tag key '\(key.prefix(70))…' is longer than 63 characters" }
        let keyChars = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-")
        if key.unicodeScalars.contains(where: { !keyChars.contains($0) }) {
            return "tag key '\(key)' may only contain letters, digits, '.', '_', '/' and '-'"
        }
        if value.count > 255 { return "the value of tag '\(key)' is longer than 255 characters" }
        if value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            return "the value of tag '\(key)' contains control characters"
        }
        return nil
    }

    /// Parses `key=value` tags, rejecting duplicates.
    public static func parseTags(_ items: [String]) -> Result<[String: String], InputProblem> {
        var tags: [String: String] = [:]
        for item in items {
            guard let eq = item.firstIndex(of: "=") else {
                return .failure(InputProblem("tag '\(item)' is not key=value"))
            }
            let key = String(item[..<eq])
            let value = String(item[item.index(after: eq)...])
            if let p = tagProblem(key: key, value: value) { return .failure(InputProblem(p)) }
            if tags[key] != nil { return .failure(InputProblem("tag '\(key)' is given twice")) }
            tags[key] = value
        }
        return .success(tags)
    }

    public static let maxTags = 64
    public static let maxFieldLength = 255
    public static let maxUserData = 64 * 1024
    public static let maxSSHKeys = 32
}

public struct InputProblem: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What a deploy asks of a machine when it names none: all must hold.
public struct Placement: Sendable, Hashable {
    public var architecture: Architecture?
    public var firmware: Firmware?
    public var minCores: Int
    public var minMemoryBytes: Int64
    public var minDiskBytes: Int64
    public var tags: [String: String]
    public var zone: String?
    /// At least this many hardware threads (logical CPUs).
    public var minThreads: Int = 0
    /// At least this many GPUs (`Inventory.PCIDevice.isGPU`).
    public var minGPUs: Int = 0

    public init(
        architecture: Architecture? = nil,
        firmware: Firmware? = nil,
        minCores: Int = 0,
        minMemoryBytes: Int64 = 0,
        minDiskBytes: Int64 = 0,
        tags: [String: String] = [:],
        zone: String? = nil
    ) {
        self.architecture = architecture
        self.firmware = firmware
        self.minCores = minCores
        self.minMemoryBytes = minMemoryBytes
        self.minDiskBytes = minDiskBytes
        self.tags = tags
        self.zone = zone
    }

    /// Whether a ready, unallocated machine satisfies the constraints.
    public func matches(_ m: Machine) -> Bool {
        guard m.state == .ready, m.project == nil else { return false }
        if let architecture, m.architecture != architecture { return false }
        if let firmware, m.firmware != firmware { return false }
        if let zone, m.zone != zone { return false }
        for (k, v) in tags where m.tags[k] != v { return false }
        if minCores > 0 || minMemoryBytes > 0 || minDiskBytes > 0 || minThreads > 0 || minGPUs > 0 {
            guard let inv = m.inventory else { return false }
            if inv.cores < minCores || inv.memoryBytes < minMemoryBytes { return false }
            // An inventory from before threads were counted apart counted them as cores.
            if (inv.threads ?? inv.cores) < minThreads || inv.gpus.count < minGPUs { return false }
            if minDiskBytes > 0, !inv.disks.contains(where: { $0.sizeBytes >= minDiskBytes }) { return false }
        }
        return true
    }
}

/// An OS image in the store, content-addressed by the SHA-256 of the stored file.
public struct ImageInfo: Codable, Sendable, Hashable {
    public enum Format: String, Codable, Sendable, CaseIterable {
        case raw
        case rawGzip = "raw.gz"
        case rawZstd = "raw.zst"
    }
    public var name: String
    /// SHA-256 (hex) of the stored bytes (compressed as stored).
    public var sha256: String
    /// Size of the stored file.
    public var size: Int64
    public var format: Format
    public var os: String
    public var architecture: Architecture
    /// bios, uefi, or unknown when it boots either way.
    public var firmware: Firmware
    public var created: Date

    public init(
        name: String,
        sha256: String,
        size: Int64,
        format: Format,
        os: String,
        architecture: Architecture,
        firmware: Firmware,
        created: Date
    ) {
        self.name = name
        self.sha256 = sha256
        self.size = size
        self.format = format
        self.os = os
        self.architecture = architecture
        self.firmware = firmware
        self.created = created
    }
}

/// One entry of a machine's history: a transition or a progress report.
public struct MachineEvent: Codable, Sendable, Hashable {
    public enum Kind: String, Codable, Sendable {
        case transition, progress, action
    }
    public var id: Int64
    public var machineID: String
    public var machine: String
    public var project: String?
    public var time: Date
    public var kind: Kind
    public var state: MachineState
    public var phase: StepPhase
    public var message: String
    public var progress: StepProgress?

    public init(
        id: Int64 = 0,
        machineID: String,
        machine: String,
        project: String?,
        time: Date,
        kind: Kind,
        state: MachineState,
        phase: StepPhase,
        message: String,
        progress: StepProgress? = nil
    ) {
        self.id = id
        self.machineID = machineID
        self.machine = machine
        self.project = project
        self.time = time
        self.kind = kind
        self.state = state
        self.phase = phase
        self.message = message
        self.progress = progress
    }

    public init(_ m: Machine, kind: Kind, message: String, time: Date = Date()) {
        self.init(
            machineID: m.id,
            machine: m.name,
            project: m.project,
            time: time,
            kind: kind,
            state: m.state,
            phase: m.phase,
            message: message,
            progress: kind == .progress ? m.progress : nil
        )
    }
}

/// Comparisons of secrets: every byte is looked at whatever the first difference, so the time
/// taken says nothing about how much of a guess was right.
public enum ConstantTime {
    public static func equal(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        var diff = UInt8(truncatingIfNeeded: x.count ^ y.count) | (x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) {
            diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
        }
        return diff == 0
    }
}
