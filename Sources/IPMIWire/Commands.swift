import WireSupport

/// The commands Farrier sends, with their request encodings and response decodings.
public enum IPMICommand {
    // MARK: Session

    /// Get Channel Authentication Capabilities (App 0x38), asking for v2.0 data, for the
    /// current channel at `privilege`.
    public static func getChannelAuthCapabilities(
        privilege: IPMIPrivilege = .administrator,
        sequence: UInt8 = 0
    ) -> IPMIRequest {
        IPMIRequest(netFn: .app, command: 0x38, data: [0x8E, privilege.rawValue], sequence: sequence)
    }

    /// Get Channel Cipher Suites (App 0x54), list by cipher suite, for the current channel.
    public static func getChannelCipherSuites(index: UInt8, sequence: UInt8 = 0) -> IPMIRequest {
        IPMIRequest(netFn: .app, command: 0x54, data: [0x0E, 0x00, 0x80 | (index & 0x3F)], sequence: sequence)
    }

    public static func setSessionPrivilege(_ privilege: IPMIPrivilege, sequence: UInt8) -> IPMIRequest {
        IPMIRequest(netFn: .app, command: 0x3B, data: [privilege.rawValue], sequence: sequence)
    }

    public static func closeSession(bmcSessionID: UInt32, sequence: UInt8) -> IPMIRequest {
        var data: [UInt8] = []
        data.appendLE32(bmcSessionID)
        return IPMIRequest(netFn: .app, command: 0x3C, data: data, sequence: sequence)
    }

    // MARK: Device and chassis

    public static func getDeviceID(sequence: UInt8) -> IPMIRequest {
        IPMIRequest(netFn: .app, command: 0x01, sequence: sequence)
    }

    public static func getChassisStatus(sequence: UInt8) -> IPMIRequest {
        IPMIRequest(netFn: .chassis, command: 0x01, sequence: sequence)
    }

    public static func chassisControl(_ action: ChassisControl, sequence: UInt8) -> IPMIRequest {
        IPMIRequest(netFn: .chassis, command: 0x02, data: [action.rawValue], sequence: sequence)
    }

    /// Set System Boot Options (Chassis 0x08) with a parameter selector and its data.
    public static func setSystemBootOptions(parameter: UInt8, data: [UInt8], sequence: UInt8) -> IPMIRequest {
        IPMIRequest(netFn: .chassis, command: 0x08, data: [parameter & 0x7F] + data, sequence: sequence)
    }

    public static func getSystemBootOptions(parameter: UInt8, sequence: UInt8) -> IPMIRequest {
        IPMIRequest(netFn: .chassis, command: 0x09, data: [parameter & 0x7F, 0, 0], sequence: sequence)
    }

    // MARK: Serial over LAN

    /// Activate Payload (App 0x48) for SOL instance 1, encrypted and authenticated, serial
    /// alerts deferred, handshake lines not asserted (what ipmitool sends).
    public static func activateSOL(encrypted: Bool, authenticated: Bool, sequence: UInt8) -> IPMIRequest {
        let aux: UInt8 = (encrypted ? 0x80 : 0) | (authenticated ? 0x40 : 0) | 0x04 | 0x02
        return IPMIRequest(netFn: .app, command: 0x48, data: [0x01, 0x01, aux, 0, 0, 0], sequence: sequence)
    }

    public static func deactivateSOL(sequence: UInt8) -> IPMIRequest {
        IPMIRequest(netFn: .app, command: 0x49, data: [0x01, 0x01, 0, 0, 0, 0], sequence: sequence)
    }
}

/// Chassis Control actions (IPMI v2.0 §28.3).
public enum ChassisControl: UInt8, Sendable, Hashable, CaseIterable {
    case powerDown = 0x00
    case powerUp = 0x01
    case powerCycle = 0x02
    case hardReset = 0x03
    case diagnosticInterrupt = 0x04
    case softShutdown = 0x05
}

/// Get Channel Authentication Capabilities response.
public struct ChannelAuthCapabilities: Sendable, Hashable {
    public var channel: UInt8
    /// The BMC supports IPMI v2.0 / RMCP+ connections.
    public var supportsIPMIv2: Bool
    /// KG is set to something other than the default (all zero).
    public var nonDefaultKG: Bool
    public var anonymousLogin: Bool

    public init(decoding data: [UInt8]) throws(WireError) {
        guard data.count >= 8 else { throw .truncated("Get Channel Authentication Capabilities response") }
        channel = data[0]
        let extended = data[1] & 0x80 != 0
        nonDefaultKG = data[2] & 0x20 != 0
        anonymousLogin = data[2] & 0x01 != 0
        supportsIPMIv2 = extended && data[3] & 0x02 != 0
    }
}

/// Get Device ID response (IPMI v2.0 §20.1).
public struct DeviceID: Sendable, Hashable {
    public var deviceID: UInt8
    public var deviceRevision: UInt8
    public var firmwareMajor: UInt8
    public var firmwareMinor: UInt8
    /// BCD, e.g. 0x02 = 2.0, 0x51 = 1.5.
    public var ipmiVersion: UInt8
    public var manufacturerID: UInt32
    public var productID: UInt16

    public var ipmiVersionString: String { "\(ipmiVersion & 0x0F).\(ipmiVersion >> 4)" }
    public var firmwareString: String {
        let minor = String(firmwareMinor >> 4) + String(firmwareMinor & 0x0F)
        return "\(firmwareMajor & 0x7F).\(minor)"
    }

    public init(decoding data: [UInt8]) throws(WireError) {
        guard data.count >= 11 else { throw .truncated("Get Device ID response") }
        deviceID = data[0]
        deviceRevision = data[1] & 0x0F
        firmwareMajor = data[2] & 0x7F
        firmwareMinor = data[3]
        ipmiVersion = data[4]
        manufacturerID = UInt32(data[6]) | UInt32(data[7]) << 8 | UInt32(data[8] & 0x0F) << 16
        productID = UInt16(data[9]) | UInt16(data[10]) << 8
    }
}

/// Get Chassis Status response (IPMI v2.0 §28.2).
public struct ChassisStatus: Sendable, Hashable {
    public var powerOn: Bool
    public var powerOverload: Bool
    public var interlock: Bool
    public var powerFault: Bool
    public var controlFault: Bool
    /// 0 stays off, 1 restores previous state, 2 powers up, 3 unknown.
    public var restorePolicy: UInt8

    public init(decoding data: [UInt8]) throws(WireError) {
        guard data.count >= 3 else { throw .truncated("Get Chassis Status response") }
        powerOn = data[0] & 0x01 != 0
        powerOverload = data[0] & 0x02 != 0
        interlock = data[0] & 0x04 != 0
        powerFault = data[0] & 0x08 != 0
        controlFault = data[0] & 0x10 != 0
        restorePolicy = (data[0] >> 5) & 0x03
    }
}

/// Boot device selectors of boot flags byte 2, b5:2 (IPMI v2.0 Table 28-14).
public enum IPMIBootDevice: UInt8, Sendable, Hashable {
    case noOverride = 0x0
    case pxe = 0x1
    case disk = 0x2
    case diskSafeMode = 0x3
    case diagnostic = 0x4
    case cdrom = 0x5
    case biosSetup = 0x6
    case remoteFloppy = 0x7
    case remoteCDROM = 0x8
    case remoteMedia = 0x9
    case remoteDisk = 0xB
    case floppy = 0xF
}

/// Boot flags (boot option parameter 5).
public struct IPMIBootFlags: Sendable, Hashable {
    public var valid: Bool
    public var persistent: Bool
    public var efi: Bool
    public var device: IPMIBootDevice?
    public var rawDevice: UInt8

    public init(device: IPMIBootDevice, persistent: Bool, efi: Bool) {
        valid = true
        self.persistent = persistent
        self.efi = efi
        self.device = device
        rawDevice = device.rawValue
    }

    /// The 5 data bytes of parameter 5.
    public func encoded() -> [UInt8] {
        let b1: UInt8 = (valid ? 0x80 : 0) | (persistent ? 0x40 : 0) | (efi ? 0x20 : 0)
        return [b1, rawDevice << 2, 0, 0, 0]
    }

    /// Decodes a Get System Boot Options response for parameter 5: version, parameter, data.
    public init(decodingResponse data: [UInt8]) throws(WireError) {
        guard data.count >= 4 else { throw .truncated("boot flags") }
        guard data[1] & 0x7F == 5 else { throw .invalid("boot options parameter \(data[1] & 0x7F)") }
        let b1 = data[2]
        let b2 = data[3]
        valid = b1 & 0x80 != 0
        persistent = b1 & 0x40 != 0
        efi = b1 & 0x20 != 0
        rawDevice = (b2 >> 2) & 0x0F
        device = IPMIBootDevice(rawValue: rawDevice)
    }
}

/// Activate Payload response for SOL.
public struct SOLActivation: Sendable, Hashable {
    public var inboundPayloadSize: UInt16
    public var outboundPayloadSize: UInt16
    public var port: UInt16

    public init(decoding data: [UInt8], requestPort: UInt16 = 623) throws(WireError) {
        guard data.count >= 10 else { throw .truncated("Activate Payload response") }
        inboundPayloadSize = UInt16(data[4]) | UInt16(data[5]) << 8
        outboundPayloadSize = UInt16(data[6]) | UInt16(data[7]) << 8
        let le = UInt16(data[8]) | UInt16(data[9]) << 8
        // Some BMCs send the port big-endian: take the byte order that matches our port.
        port = le == requestPort.byteSwapped ? requestPort : le
    }
}

/// A SOL payload (IPMI v2.0 §15.9).
public struct SOLPacket: Sendable, Hashable {
    /// 1–15; 0 = this packet carries only an ACK/NACK.
    public var sequence: UInt8
    /// The sequence being ACKed or NACKed; 0 = none.
    public var ackSequence: UInt8
    public var acceptedCount: UInt8
    /// Operation (console→BMC) or status (BMC→console) bits.
    public var control: UInt8
    public var data: [UInt8]

    public init(sequence: UInt8, ackSequence: UInt8, acceptedCount: UInt8, control: UInt8 = 0, data: [UInt8] = []) {
        self.sequence = sequence
        self.ackSequence = ackSequence
        self.acceptedCount = acceptedCount
        self.control = control
        self.data = data
    }

    public static let nack: UInt8 = 0x40
    /// BMC status: SOL is being deactivated.
    public static let deactivating: UInt8 = 0x10
    /// BMC status: character transfer unavailable.
    public static let transferUnavailable: UInt8 = 0x20

    public func encoded() -> [UInt8] { [sequence, ackSequence, acceptedCount, control] + data }

    public init(decoding payload: [UInt8]) throws(WireError) {
        guard payload.count >= 4 else { throw .truncated("SOL packet") }
        sequence = payload[0] & 0x0F
        ackSequence = payload[1] & 0x0F
        acceptedCount = payload[2]
        control = payload[3]
        data = Array(payload[4...])
    }
}
