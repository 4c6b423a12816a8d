import WireSupport

/// Privilege levels (IPMI v2.0 §6.8).
public enum IPMIPrivilege: UInt8, Sendable, Hashable, CaseIterable {
    case callback = 1
    case user = 2
    case `operator` = 3
    case administrator = 4
}

/// RMCP+ Open Session Request (IPMI v2.0 §13.17).
public struct OpenSessionRequest: Sendable, Hashable {
    public var tag: UInt8
    /// 0 asks for the highest privilege the cipher suite allows.
    public var maximumPrivilege: UInt8
    /// The console's session ID (SIDm): the BMC puts it in every packet it sends us. Never 0.
    public var consoleSessionID: UInt32
    public var suite: IPMICipherSuite

    public init(tag: UInt8, maximumPrivilege: UInt8 = 0, consoleSessionID: UInt32, suite: IPMICipherSuite) {
        self.tag = tag
        self.maximumPrivilege = maximumPrivilege
        self.consoleSessionID = consoleSessionID
        self.suite = suite
    }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = [tag, maximumPrivilege, 0, 0]
        out.appendLE32(consoleSessionID)
        out += [0x00, 0, 0, 0x08, suite.authentication.rawValue, 0, 0, 0]
        out += [0x01, 0, 0, 0x08, suite.integrity.rawValue, 0, 0, 0]
        out += [0x02, 0, 0, 0x08, suite.confidentiality.rawValue, 0, 0, 0]
        return out
    }
}

/// RMCP+ status codes (IPMI v2.0 §13.24).
public struct RAKPStatus: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let ok = RAKPStatus(rawValue: 0x00)
    public static let insufficientResources = RAKPStatus(rawValue: 0x01)
    public static let invalidSessionID = RAKPStatus(rawValue: 0x02)
    public static let unauthorizedRole = RAKPStatus(rawValue: 0x09)
    public static let unauthorizedName = RAKPStatus(rawValue: 0x0D)
    public static let invalidIntegrityCheckValue = RAKPStatus(rawValue: 0x0F)
    public static let noMatchingCipherSuite = RAKPStatus(rawValue: 0x11)

    /// The statuses that mean the credentials (user name or password) are wrong.
    public var isAuthenticationFailure: Bool {
        self == .unauthorizedName || self == .invalidIntegrityCheckValue || self == .unauthorizedRole
    }

    public var description: String {
        switch rawValue {
        case 0x00: "ok"
        case 0x01: "insufficient resources to create a session"
        case 0x02: "invalid session ID"
        case 0x03: "invalid payload type"
        case 0x04: "invalid authentication algorithm"
        case 0x05: "invalid integrity algorithm"
        case 0x06: "no matching authentication payload"
        case 0x07: "no matching integrity payload"
        case 0x08: "inactive session ID"
        case 0x09: "invalid role"
        case 0x0A: "unauthorized role or privilege level requested"
        case 0x0B: "insufficient resources to create a session at the requested role"
        case 0x0C: "invalid name length"
        case 0x0D: "unauthorized name"
        case 0x0E: "unauthorized GUID"
        case 0x0F: "invalid integrity check value"
        case 0x10: "invalid confidentiality algorithm"
        case 0x11: "no cipher suite match with proposed security algorithms"
        case 0x12: "illegal or unrecognized parameter"
        default: "RMCP+ status 0x\(String(rawValue, radix: 16))"
        }
    }
}

/// RMCP+ Open Session Response.
public struct OpenSessionResponse: Sendable, Hashable {
    public var tag: UInt8
    public var status: RAKPStatus
    public var maximumPrivilege: UInt8
    public var consoleSessionID: UInt32
    /// The BMC's session ID (SIDc): we put it in every packet we send.
    public var bmcSessionID: UInt32
    public var authentication: UInt8
    public var integrity: UInt8
    public var confidentiality: UInt8

    public init(decoding payload: [UInt8]) throws(WireError) {
        var r = ByteReader(payload)
        guard let tag = r.readUInt8(), let status = r.readUInt8() else { throw .truncated("Open Session Response") }
        self.tag = tag
        self.status = RAKPStatus(rawValue: status)
        guard status == 0 else {
            maximumPrivilege = 0
            consoleSessionID = 0
            bmcSessionID = 0
            authentication = 0
            integrity = 0
            confidentiality = 0
            return
        }
        guard payload.count >= 36, let priv = r.readUInt8(), r.readUInt8() != nil, let sidm = r.readLE32(),
            let sidc = r.readLE32()
        else { throw .truncated("Open Session Response") }
        maximumPrivilege = priv
        consoleSessionID = sidm
        bmcSessionID = sidc
        authentication = payload[16]
        integrity = payload[24]
        confidentiality = payload[32]
    }
}

/// RAKP Message 2 from the BMC.
public struct RAKPMessage2: Sendable, Hashable {
    public var tag: UInt8
    public var status: RAKPStatus
    public var consoleSessionID: UInt32
    public var bmcRandom: [UInt8]
    public var bmcGUID: [UInt8]
    public var keyExchangeCode: [UInt8]

    public init(decoding payload: [UInt8]) throws(WireError) {
        var r = ByteReader(payload)
        guard let tag = r.readUInt8(), let status = r.readUInt8() else { throw .truncated("RAKP 2") }
        self.tag = tag
        self.status = RAKPStatus(rawValue: status)
        guard status == 0 else {
            consoleSessionID = 0
            bmcRandom = []
            bmcGUID = []
            keyExchangeCode = []
            return
        }
        guard r.readBytes(2) != nil, let sid = r.readLE32(), let rc = r.readBytes(16), let guid = r.readBytes(16) else {
            throw .truncated("RAKP 2")
        }
        consoleSessionID = sid
        bmcRandom = Array(rc)
        bmcGUID = Array(guid)
        keyExchangeCode = Array(r.bytes[r.offset...])
    }
}

/// RAKP Message 4 from the BMC.
public struct RAKPMessage4: Sendable, Hashable {
    public var tag: UInt8
    public var status: RAKPStatus
    public var consoleSessionID: UInt32
    public var integrityCheckValue: [UInt8]

    public init(decoding payload: [UInt8]) throws(WireError) {
        var r = ByteReader(payload)
        guard let tag = r.readUInt8(), let status = r.readUInt8() else { throw .truncated("RAKP 4") }
        self.tag = tag
        self.status = RAKPStatus(rawValue: status)
        guard status == 0 else {
            consoleSessionID = 0
            integrityCheckValue = []
            return
        }
        guard r.readBytes(2) != nil, let sid = r.readLE32() else { throw .truncated("RAKP 4") }
        consoleSessionID = sid
        integrityCheckValue = Array(r.bytes[r.offset...])
    }
}
