import WireSupport

/// TFTP opcodes (RFC 1350 §5, RFC 2347 OACK).
public struct TFTPOpcode: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let readRequest = TFTPOpcode(rawValue: 1)
    public static let writeRequest = TFTPOpcode(rawValue: 2)
    public static let data = TFTPOpcode(rawValue: 3)
    public static let ack = TFTPOpcode(rawValue: 4)
    public static let error = TFTPOpcode(rawValue: 5)
    public static let optionAck = TFTPOpcode(rawValue: 6)
}

/// TFTP error codes (RFC 1350 appendix, RFC 2347 code 8).
public struct TFTPErrorCode: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let undefined = TFTPErrorCode(rawValue: 0)
    public static let fileNotFound = TFTPErrorCode(rawValue: 1)
    public static let accessViolation = TFTPErrorCode(rawValue: 2)
    public static let diskFull = TFTPErrorCode(rawValue: 3)
    public static let illegalOperation = TFTPErrorCode(rawValue: 4)
    public static let unknownTransferID = TFTPErrorCode(rawValue: 5)
    public static let fileExists = TFTPErrorCode(rawValue: 6)
    public static let noSuchUser = TFTPErrorCode(rawValue: 7)
    public static let optionNegotiationRefused = TFTPErrorCode(rawValue: 8)
}

/// A request (RRQ or WRQ): file name, transfer mode and RFC 2347 options.
public struct TFTPRequest: Hashable, Sendable {
    public var filename: String
    /// Lower-cased ("octet", "netascii", "mail").
    public var mode: String
    /// Option names lower-cased, in the order received; values as sent.
    public var options: [TFTPOption]

    public init(filename: String, mode: String = "octet", options: [TFTPOption] = []) {
        self.filename = filename
        self.mode = mode
        self.options = options
    }

    public func option(_ name: String) -> String? { options.first(where: { $0.name == name })?.value }
}

public struct TFTPOption: Hashable, Sendable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// A TFTP packet (RFC 1350 §5, RFC 2347). A pure value: decoding and encoding do no I/O.
public enum TFTPPacket: Hashable, Sendable {
    case readRequest(TFTPRequest)
    case writeRequest(TFTPRequest)
    case data(block: UInt16, payload: ArraySlice<UInt8>)
    case ack(block: UInt16)
    case error(code: TFTPErrorCode, message: String)
    case optionAck([TFTPOption])
}

/// Why a TFTP packet could not be decoded (`.truncated` is WireSupport's).
extension WireError.Code {
    public static let unknownOpcode = Self("unknown opcode")
    public static let unterminatedString = Self("unterminated string")
    public static let badOptionList = Self("option without value")
    public static let badText = Self("non-ASCII text")
    public static let trailingBytes = Self("trailing bytes")
    public static let requestTooLong = Self("request longer than 512 bytes")
}

extension TFTPPacket {
    public init(decoding bytes: [UInt8]) throws(WireError) {
        var r = ByteReader(bytes)
        guard let raw = r.readUInt16() else { throw WireError(.truncated, "packet") }
        switch TFTPOpcode(rawValue: raw) {
        case .readRequest, .writeRequest:
            // RFC 1350 + RFC 2347 §2: the whole request must fit in a 512-byte packet.
            guard bytes.count <= 512 else { throw WireError(.requestTooLong) }
            let filename = try Self.readText(&r)
            let mode = try Self.readText(&r).lowercased()
            let options = try Self.readOptions(&r)
            let request = TFTPRequest(filename: filename, mode: mode, options: options)
            self = raw == 1 ? .readRequest(request) : .writeRequest(request)
        case .data:
            guard let block = r.readUInt16() else { throw WireError(.truncated, "packet") }
            self = .data(block: block, payload: bytes[r.offset...])
        case .ack:
            guard let block = r.readUInt16() else { throw WireError(.truncated, "packet") }
            // Some clients pad; RFC 1350 ACKs are exactly 4 bytes, extra bytes are ignored.
            self = .ack(block: block)
        case .error:
            guard let code = r.readUInt16() else { throw WireError(.truncated, "packet") }
            // A missing terminating NUL is common from embedded clients; accept the rest as text.
            let message: String
            if let text = r.readCString() {
                message = String(decoding: text, as: UTF8.self)
            } else {
                message = String(decoding: bytes[r.offset...], as: UTF8.self)
            }
            self = .error(code: TFTPErrorCode(rawValue: code), message: message)
        case .optionAck:
            self = .optionAck(try Self.readOptions(&r))
        default:
            throw WireError(.unknownOpcode, "\(raw)")
        }
    }

    static func readText(_ r: inout ByteReader) throws(WireError) -> String {
        guard let raw = r.readCString() else { throw WireError(.unterminatedString) }
        guard raw.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { throw WireError(.badText) }
        return String(decoding: raw, as: UTF8.self)
    }

    static func readOptions(_ r: inout ByteReader) throws(WireError) -> [TFTPOption] {
        var options: [TFTPOption] = []
        while !r.isAtEnd {
            // Some clients pad requests with trailing NULs; an empty name ends the list.
            if r.bytes[r.offset] == 0 {
                guard r.bytes[r.offset...].allSatisfy({ $0 == 0 }) else { throw WireError(.trailingBytes) }
                break
            }
            let name = try readText(&r).lowercased()
            guard !r.isAtEnd else { throw WireError(.badOptionList, name) }
            let value = try readText(&r)
            options.append(TFTPOption(name, value))
        }
        return options
    }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        switch self {
        case .readRequest(let req), .writeRequest(let req):
            if case .readRequest = self { out.appendUInt16(1) } else { out.appendUInt16(2) }
            out.append(contentsOf: req.filename.utf8)
            out.append(0)
            out.append(contentsOf: req.mode.utf8)
            out.append(0)
            Self.write(req.options, into: &out)
        case .data(let block, let payload):
            out.reserveCapacity(4 + payload.count)
            out.appendUInt16(3)
            out.appendUInt16(block)
            out.append(contentsOf: payload)
        case .ack(let block):
            out.appendUInt16(4)
            out.appendUInt16(block)
        case .error(let code, let message):
            out.appendUInt16(5)
            out.appendUInt16(code.rawValue)
            out.append(contentsOf: message.utf8)
            out.append(0)
        case .optionAck(let options):
            out.appendUInt16(6)
            Self.write(options, into: &out)
        }
        return out
    }

    static func write(_ options: [TFTPOption], into out: inout [UInt8]) {
        for o in options {
            out.append(contentsOf: o.name.utf8)
            out.append(0)
            out.append(contentsOf: o.value.utf8)
            out.append(0)
        }
    }
}
