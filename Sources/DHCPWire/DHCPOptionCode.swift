/// A DHCP option code (RFC 2132 §3–9, RFC 4578, RFC 3046). An open struct, so unknown and
/// vendor codes decode and re-encode unchanged.
public struct DHCPOptionCode: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public init(_ rawValue: UInt8) { self.rawValue = rawValue }

    public static let pad = DHCPOptionCode(0)
    public static let subnetMask = DHCPOptionCode(1)
    public static let router = DHCPOptionCode(3)
    public static let domainNameServer = DHCPOptionCode(6)
    public static let hostName = DHCPOptionCode(12)
    public static let domainName = DHCPOptionCode(15)
    public static let broadcastAddress = DHCPOptionCode(28)
    public static let ntpServers = DHCPOptionCode(42)
    public static let vendorSpecific = DHCPOptionCode(43)
    public static let requestedIPAddress = DHCPOptionCode(50)
    public static let leaseTime = DHCPOptionCode(51)
    /// Option overload (RFC 2132 §9.3): `file` and/or `sname` carry options. Decoded, never emitted.
    public static let overload = DHCPOptionCode(52)
    public static let messageType = DHCPOptionCode(53)
    public static let serverIdentifier = DHCPOptionCode(54)
    public static let parameterRequestList = DHCPOptionCode(55)
    public static let message = DHCPOptionCode(56)
    public static let maximumMessageSize = DHCPOptionCode(57)
    public static let renewalTime = DHCPOptionCode(58)
    public static let rebindingTime = DHCPOptionCode(59)
    public static let vendorClassIdentifier = DHCPOptionCode(60)
    public static let clientIdentifier = DHCPOptionCode(61)
    public static let tftpServerName = DHCPOptionCode(66)
    public static let bootfileName = DHCPOptionCode(67)
    public static let userClass = DHCPOptionCode(77)
    public static let relayAgentInformation = DHCPOptionCode(82)
    public static let clientSystemArchitecture = DHCPOptionCode(93)
    public static let clientNetworkInterfaceIdentifier = DHCPOptionCode(94)
    public static let clientMachineIdentifier = DHCPOptionCode(97)
    public static let ipxeEncapsulated = DHCPOptionCode(175)
    public static let end = DHCPOptionCode(255)

    public var description: String { String(rawValue) }
    public static func < (a: DHCPOptionCode, b: DHCPOptionCode) -> Bool { a.rawValue < b.rawValue }
}

/// DHCP message type, option 53 (RFC 2132 §9.6).
public struct DHCPMessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let discover = DHCPMessageType(rawValue: 1)
    public static let offer = DHCPMessageType(rawValue: 2)
    public static let request = DHCPMessageType(rawValue: 3)
    public static let decline = DHCPMessageType(rawValue: 4)
    public static let ack = DHCPMessageType(rawValue: 5)
    public static let nak = DHCPMessageType(rawValue: 6)
    public static let release = DHCPMessageType(rawValue: 7)
    public static let inform = DHCPMessageType(rawValue: 8)

    public var description: String {
        switch rawValue {
        case 1: "DISCOVER"
        case 2: "OFFER"
        case 3: "REQUEST"
        case 4: "DECLINE"
        case 5: "ACK"
        case 6: "NAK"
        case 7: "RELEASE"
        case 8: "INFORM"
        default: "TYPE\(rawValue)"
        }
    }
}

/// BOOTP op field (RFC 2131 §2).
public struct DHCPOp: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let bootRequest = DHCPOp(rawValue: 1)
    public static let bootReply = DHCPOp(rawValue: 2)
}
