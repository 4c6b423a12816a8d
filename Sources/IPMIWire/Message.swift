import WireSupport

/// Network functions used by Farrier (IPMI v2.0 §5.1). Responses use `rawValue | 1`.
public enum IPMINetFn: UInt8, Sendable, Hashable {
    case chassis = 0x00
    case app = 0x06
    case transport = 0x0C
}

/// An IPMI request as carried over LAN (IPMI v2.0 §13.8): BMC address 0x20, software ID 0x81.
public struct IPMIRequest: Sendable, Hashable {
    public var netFn: IPMINetFn
    public var command: UInt8
    public var data: [UInt8]
    /// 6-bit request sequence, echoed in the response.
    public var sequence: UInt8

    public init(netFn: IPMINetFn, command: UInt8, data: [UInt8] = [], sequence: UInt8 = 0) {
        self.netFn = netFn
        self.command = command
        self.data = data
        self.sequence = sequence & 0x3F
    }

    public static let bmcAddress: UInt8 = 0x20
    public static let consoleAddress: UInt8 = 0x81

    public func encoded() -> [UInt8] {
        var out: [UInt8] = [Self.bmcAddress, netFn.rawValue << 2]
        out.append(checksum(out[...]))
        let second = out.count
        out += [Self.consoleAddress, sequence << 2, command]
        out += data
        out.append(checksum(out[second...]))
        return out
    }
}

/// Two's-complement checksum: the covered bytes plus it sum to 0 mod 256.
func checksum(_ bytes: ArraySlice<UInt8>) -> UInt8 {
    0 &- bytes.reduce(UInt8(0), &+)
}

/// An IPMI completion code (IPMI v2.0 §5.2).
public struct IPMICompletionCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let ok = IPMICompletionCode(rawValue: 0x00)

    public var description: String {
        let text: String
        switch rawValue {
        case 0x00: text = "ok"
        case 0xC0: text = "node busy"
        case 0xC1: text = "invalid command"
        case 0xC3: text = "timeout while processing"
        case 0xC7: text = "request data length invalid"
        case 0xC9: text = "parameter out of range"
        case 0xCC: text = "invalid data field in request"
        case 0xD4: text = "insufficient privilege level"
        case 0xD5: text = "command not supported in present state"
        case 0x80: text = "parameter not supported / payload already active"
        case 0x81: text = "payload type disabled"
        case 0x82: text = "payload activation limit reached"
        case 0x83: text = "cannot activate payload with encryption"
        case 0x84: text = "cannot activate payload without encryption"
        default: text = "error"
        }
        return "completion code 0x\(String(rawValue, radix: 16, uppercase: true)) (\(text))"
    }
}

/// An IPMI response as carried over LAN.
public struct IPMIResponse: Sendable, Hashable {
    public var netFn: UInt8
    public var command: UInt8
    public var sequence: UInt8
    public var completionCode: IPMICompletionCode
    public var data: [UInt8]

    public init(decoding bytes: [UInt8]) throws(WireError) {
        // rqSA netFn|LUN chk1 rsSA rqSeq|LUN cmd cc data chk2
        guard bytes.count >= 8 else { throw .truncated("IPMI response") }
        guard checksum(bytes[0..<2]) == bytes[2] else { throw .invalid("IPMI header checksum") }
        guard checksum(bytes[3..<(bytes.count - 1)]) == bytes[bytes.count - 1] else {
            throw .invalid("IPMI data checksum")
        }
        netFn = bytes[1] >> 2
        sequence = bytes[4] >> 2
        command = bytes[5]
        completionCode = IPMICompletionCode(rawValue: bytes[6])
        data = Array(bytes[7..<(bytes.count - 1)])
    }

    /// Whether this answers `request` (netFn+1, same command and sequence).
    public func answers(_ request: IPMIRequest) -> Bool {
        netFn == request.netFn.rawValue | 1 && command == request.command && sequence == request.sequence
    }
}
