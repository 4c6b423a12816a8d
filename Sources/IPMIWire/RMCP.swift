import WireSupport

/// RMCP message classes (DMTF ASF 2.0 §3.2.2.1).
public enum RMCPClass: UInt8, Sendable {
    case asf = 0x06
    case ipmi = 0x07
}

/// The 4-byte RMCP header: version 6, reserved, sequence (0xFF: no RMCP ACK), class.
public struct RMCPHeader: Sendable, Hashable {
    public var messageClass: RMCPClass
    public var sequence: UInt8

    public init(messageClass: RMCPClass, sequence: UInt8 = 0xFF) {
        self.messageClass = messageClass
        self.sequence = sequence
    }

    public static let size = 4

    public func encode(into out: inout [UInt8]) {
        out += [0x06, 0x00, sequence, messageClass.rawValue]
    }

    public init(decoding reader: inout ByteReader) throws(WireError) {
        guard let version = reader.readUInt8(), reader.readUInt8() != nil, let seq = reader.readUInt8(),
            let cls = reader.readUInt8()
        else { throw .truncated("RMCP header") }
        guard version == 0x06 else { throw .invalid("RMCP version \(version)") }
        // b7 of the class byte marks an RMCP ACK; those carry no message for us.
        guard cls & 0x80 == 0, let messageClass = RMCPClass(rawValue: cls) else {
            throw .invalid("RMCP class 0x\(String(cls, radix: 16))")
        }
        self.messageClass = messageClass
        self.sequence = seq
    }
}

/// ASF Presence Ping (ASF 2.0 §3.2.4.1): is there an RMCP responder at this address?
public struct ASFPresencePing: Sendable, Hashable {
    public var tag: UInt8
    public init(tag: UInt8) { self.tag = tag }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        RMCPHeader(messageClass: .asf).encode(into: &out)
        out.appendUInt32(0x0000_11BE)  // ASF IANA enterprise number, big-endian
        out += [0x80, tag, 0x00, 0x00]  // type Presence Ping, tag, reserved, data length 0
        return out
    }
}

/// ASF Presence Pong: the responder's IANA, OEM value, and whether it supports IPMI.
public struct ASFPresencePong: Sendable, Hashable {
    public var tag: UInt8
    public var enterprise: UInt32
    public var oemDefined: UInt32
    public var supportedEntities: UInt8
    public var supportedInteractions: UInt8

    /// b7 of the supported entities: IPMI is supported.
    public var supportsIPMI: Bool { supportedEntities & 0x80 != 0 }

    public init(decoding bytes: [UInt8]) throws(WireError) {
        var r = ByteReader(bytes)
        let header = try RMCPHeader(decoding: &r)
        guard header.messageClass == .asf else { throw .invalid("not an ASF message") }
        guard let iana = r.readUInt32(), let type = r.readUInt8(), let tag = r.readUInt8(), r.readUInt8() != nil,
            let length = r.readUInt8()
        else { throw .truncated("ASF header") }
        guard iana == 0x0000_11BE else { throw .invalid("ASF IANA \(iana)") }
        guard type == 0x40 else { throw .invalid("ASF message type 0x\(String(type, radix: 16))") }
        guard length >= 10, let enterprise = r.readUInt32(), let oem = r.readUInt32(), let entities = r.readUInt8(),
            let interactions = r.readUInt8()
        else { throw .truncated("ASF Presence Pong") }
        self.tag = tag
        self.enterprise = enterprise
        self.oemDefined = oem
        self.supportedEntities = entities
        self.supportedInteractions = interactions
    }
}

/// RMCP+ payload types (IPMI v2.0 §13.27.3).
public enum IPMIPayloadType: UInt8, Sendable, Hashable {
    case ipmi = 0x00
    case sol = 0x01
    case openSessionRequest = 0x10
    case openSessionResponse = 0x11
    case rakp1 = 0x12
    case rakp2 = 0x13
    case rakp3 = 0x14
    case rakp4 = 0x15
}

/// An IPMI v1.5 session packet with authentication type NONE and session 0: only used here
/// for the pre-session Get Channel Authentication Capabilities, which every BMC answers.
public struct IPMIv15Packet: Sendable, Hashable {
    public var message: [UInt8]

    public init(message: [UInt8]) { self.message = message }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        RMCPHeader(messageClass: .ipmi).encode(into: &out)
        out.append(0x00)  // auth type NONE
        out.appendLE32(0)  // session sequence
        out.appendLE32(0)  // session ID
        out.append(UInt8(message.count))
        out += message
        return out
    }
}

/// What an IPMI datagram turned out to be, before any key is applied.
public enum IPMIDatagram: Sendable, Hashable {
    case asfPong(ASFPresencePong)
    /// A v1.5 packet: its IPMI message (only session-less ones are accepted).
    case v15(message: [UInt8])
    case v2(RMCPPlusEnvelope)

    public init(decoding bytes: [UInt8]) throws(WireError) {
        var r = ByteReader(bytes)
        let header = try RMCPHeader(decoding: &r)
        switch header.messageClass {
        case .asf:
            self = .asfPong(try ASFPresencePong(decoding: bytes))
        case .ipmi:
            guard let authType = r.readUInt8() else { throw .truncated("session header") }
            if authType == 0x06 {
                self = .v2(try RMCPPlusEnvelope(decoding: bytes))
                return
            }
            guard authType == 0x00 else { throw .invalid("v1.5 auth type \(authType)") }
            guard r.readLE32() != nil, let sid = r.readLE32(), let length = r.readUInt8() else {
                throw .truncated("v1.5 session header")
            }
            guard sid == 0 else { throw .invalid("v1.5 packet in a session") }
            guard let message = r.readBytes(Int(length)) else { throw .truncated("v1.5 message") }
            self = .v15(message: Array(message))
        }
    }
}

/// An IPMI v2.0/RMCP+ session packet as it came off the wire: the header fields, the raw
/// (possibly encrypted) payload and the integrity trailer. `IPMISessionCrypto.open` checks and
/// decrypts it.
public struct RMCPPlusEnvelope: Sendable, Hashable {
    public var payloadType: IPMIPayloadType
    public var encrypted: Bool
    public var authenticated: Bool
    public var sessionID: UInt32
    public var sequence: UInt32
    public var payload: [UInt8]
    /// Bytes from the auth type through the next-header byte: what the AuthCode covers.
    public var covered: [UInt8]
    public var authCode: [UInt8]

    public init(decoding bytes: [UInt8]) throws(WireError) {
        var r = ByteReader(bytes)
        _ = try RMCPHeader(decoding: &r)
        let start = r.offset
        guard r.readUInt8() == 0x06 else { throw .invalid("RMCP+ auth type") }
        guard let typeByte = r.readUInt8() else { throw .truncated("payload type") }
        guard let type = IPMIPayloadType(rawValue: typeByte & 0x3F) else {
            throw .invalid("payload type 0x\(String(typeByte & 0x3F, radix: 16))")
        }
        guard let sid = r.readLE32(), let seq = r.readLE32(), let length = r.readLE16() else {
            throw .truncated("RMCP+ session header")
        }
        guard let payload = r.readBytes(Int(length)) else { throw .truncated("RMCP+ payload") }
        payloadType = type
        encrypted = typeByte & 0x80 != 0
        authenticated = typeByte & 0x40 != 0
        sessionID = sid
        sequence = seq
        self.payload = Array(payload)
        if authenticated && sid != 0 {
            // Integrity pad (0xFF), pad length, next header 0x07, then the AuthCode.
            var padLength = 0
            while r.remaining > 0, r.bytes[r.offset] == 0xFF, padLength < 3 {
                _ = r.readUInt8()
                padLength += 1
            }
            guard let declared = r.readUInt8(), let next = r.readUInt8() else { throw .truncated("integrity trailer") }
            guard Int(declared) == padLength, next == 0x07 else { throw .invalid("integrity trailer") }
            covered = Array(bytes[start..<r.offset])
            authCode = Array(r.bytes[r.offset...])
        } else {
            covered = []
            authCode = []
        }
    }
}
