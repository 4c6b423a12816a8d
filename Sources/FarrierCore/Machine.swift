import Foundation
@_exported import WireSupport

/// Firmware a machine boots with, as learned from DHCP option 93 or iPXE's `${platform}`.
public enum Firmware: String, Codable, Sendable, CaseIterable {
    case bios
    case uefi
    case unknown
}

/// CPU architecture, as iPXE names it (`${buildarch}`), learned from DHCP option 93.
public enum Architecture: String, Codable, Sendable, CaseIterable {
    case x86_64
    case i386
    case arm64
    case arm32
    case unknown
}

/// A lifecycle state (ARCHITECTURE.md: discovered ─enroll─▶ enrolled ─commission─▶ …). Later
/// issues add the rest; a MAC first seen by network boot is `discovered`, and a machine an
/// operator gave its BMC is `enrolled`, whether or not it has booted yet.
public enum MachineState: String, Codable, Sendable, CaseIterable {
    case discovered
    case enrolled
    case commissioning
    case ready
    case deploying
    case deployed
    case releasing
    case rescuing
    case rescue
    case exitingRescue = "exiting-rescue"
    case failed
}

/// A physical (or lab) machine known to Farrier.
public struct Machine: Codable, Sendable, Hashable {
    public var id: String
    public var name: String
    public var mac: MACAddress
    public var architecture: Architecture
    public var firmware: Firmware
    public var state: MachineState
    public var firstSeen: Date
    public var lastSeen: Date
    /// The BMC, once enrolled (its password lives apart, encrypted).
    public var bmc: BMCReference?

    public init(
        id: String = UUID().uuidString.lowercased(), name: String, mac: MACAddress, architecture: Architecture,
        firmware: Firmware, state: MachineState = .discovered, firstSeen: Date, lastSeen: Date, bmc: BMCReference? = nil
    ) {
        self.bmc = bmc
        self.id = id
        self.name = name
        self.mac = mac
        self.architecture = architecture
        self.firmware = firmware
        self.state = state
        self.firstSeen = firstSeen
        self.lastSeen = lastSeen
    }

    /// Names are DNS labels: lower-case letters, digits and '-', 1–63 characters, not starting or
    /// ending with '-'. Returns why a name is not valid, or nil.
    public static func nameProblem(_ name: String) -> String? {
        if name.isEmpty { return "a machine name is required" }
        if name.count > 63 { return "machine name '\(name)' is longer than 63 characters" }
        if name.hasPrefix("-") || name.hasSuffix("-") { return "machine name '\(name)' must not start or end with '-'" }
        if !name.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }) {
            return "machine name '\(name)' may only contain lower-case letters, digits and '-'"
        }
        return nil
    }

    /// The name a discovered machine gets until an operator names it: `m-` and the MAC's hex digits.
    public static func defaultName(for mac: MACAddress) -> String {
        "m-" + mac.formatted(separator: "-").replacingOccurrences(of: "-", with: "")
    }
}

extension MACAddress: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let mac = MACAddress(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad MAC \(text)"))
        }
        self = mac
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// What the machine's firmware told us at DHCP time: its architecture and firmware type.
public struct ClientPlatform: Hashable, Sendable {
    public var architecture: Architecture
    public var firmware: Firmware

    public init(architecture: Architecture, firmware: Firmware) {
        self.architecture = architecture
        self.firmware = firmware
    }

    /// Maps an RFC 4578 / IANA processor architecture type (DHCP option 93).
    public init(optionArchitecture value: UInt16) {
        switch value {
        case 0: self.init(architecture: .x86_64, firmware: .bios)  // x86 BIOS; iPXE's undionly runs 32-bit but the CPU is not known
        case 6, 15: self.init(architecture: .i386, firmware: .uefi)
        case 7, 9, 16: self.init(architecture: .x86_64, firmware: .uefi)
        case 10, 18: self.init(architecture: .arm32, firmware: .uefi)
        case 11, 19: self.init(architecture: .arm64, firmware: .uefi)
        default: self.init(architecture: .unknown, firmware: .unknown)
        }
    }

    /// Maps iPXE's `${platform}` and `${buildarch}`.
    public init(ipxePlatform: String?, buildArch: String?) {
        let firmware: Firmware =
            switch ipxePlatform { case "pcbios": .bios
            case "efi": .uefi
            default: .unknown }
        let arch: Architecture =
            switch buildArch { case "x86_64": .x86_64
            case "i386": .i386
            case "arm64": .arm64
            case "arm32": .arm32
            default: .unknown }
        self.init(architecture: arch, firmware: firmware)
    }
}
