/// RMCP+ authentication algorithms (IPMI v2.0 §13.28).
public enum IPMIAuthAlgorithm: UInt8, Sendable, Hashable {
    case none = 0x00
    case hmacSHA1 = 0x01
    case hmacSHA256 = 0x03
}

/// RMCP+ integrity algorithms (IPMI v2.0 §13.28.4).
public enum IPMIIntegrityAlgorithm: UInt8, Sendable, Hashable {
    case none = 0x00
    case hmacSHA1_96 = 0x01
    case hmacSHA256_128 = 0x04

    /// Bytes of the truncated HMAC in each packet's trailer.
    public var authCodeLength: Int {
        switch self {
        case .none: 0
        case .hmacSHA1_96: 12
        case .hmacSHA256_128: 16
        }
    }
}

/// RMCP+ confidentiality algorithms (IPMI v2.0 §13.28.5).
public enum IPMIConfidentialityAlgorithm: UInt8, Sendable, Hashable {
    case none = 0x00
    case aesCBC128 = 0x01
}

/// A cipher suite: the three algorithms a session uses. Farrier speaks 3 and 17 (and 0, no
/// security, only when asked for explicitly, never by preference).
public struct IPMICipherSuite: Sendable, Hashable, CustomStringConvertible {
    public var id: UInt8
    public var authentication: IPMIAuthAlgorithm
    public var integrity: IPMIIntegrityAlgorithm
    public var confidentiality: IPMIConfidentialityAlgorithm

    public init(
        id: UInt8,
        authentication: IPMIAuthAlgorithm,
        integrity: IPMIIntegrityAlgorithm,
        confidentiality: IPMIConfidentialityAlgorithm
    ) {
        self.id = id
        self.authentication = authentication
        self.integrity = integrity
        self.confidentiality = confidentiality
    }

    /// RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128.
    public static let suite3 = IPMICipherSuite(
        id: 3,
        authentication: .hmacSHA1,
        integrity: .hmacSHA1_96,
        confidentiality: .aesCBC128
    )
    /// RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128.
    public static let suite17 = IPMICipherSuite(
        id: 17,
        authentication: .hmacSHA256,
        integrity: .hmacSHA256_128,
        confidentiality: .aesCBC128
    )

    public static func supported(id: UInt8) -> IPMICipherSuite? {
        switch id {
        case 3: .suite3
        case 17: .suite17
        default: nil
        }
    }

    /// The suite to use among those a BMC lists: 17 if offered, else 3.
    public static func preferred(among offered: [UInt8]) -> IPMICipherSuite? {
        if offered.contains(17) { return .suite17 }
        if offered.contains(3) { return .suite3 }
        return nil
    }

    public var description: String { "cipher suite \(id)" }
}

/// One record from Get Channel Cipher Suites.
public struct IPMICipherSuiteRecord: Sendable, Hashable {
    public var id: UInt8
    public var authentication: UInt8
    public var integrity: UInt8
    public var confidentiality: UInt8

    /// Parses the concatenated record data (IPMI v2.0 §22.15.2): `C0 id auth integ conf` for a
    /// standard suite, `C1 id IANA(3) auth integ conf` for an OEM one. Unknown bytes end parsing.
    public static func parse(_ data: [UInt8]) -> [IPMICipherSuiteRecord] {
        var out: [IPMICipherSuiteRecord] = []
        var i = 0
        while i < data.count {
            let start = data[i]
            let headerLength: Int
            switch start {
            case 0xC0: headerLength = 2
            case 0xC1: headerLength = 5
            default: return out
            }
            guard i + headerLength <= data.count else { return out }
            let id = data[i + 1]
            var j = i + headerLength
            var algorithms: [UInt8] = [0, 0, 0]
            // Algorithm bytes: tag 00 auth, 01 integrity, 10 confidentiality (b7:6), alg b5:0.
            while j < data.count, data[j] & 0xC0 != 0xC0 {
                let tag = Int(data[j] >> 6)
                if tag < 3, algorithms[tag] == 0 { algorithms[tag] = data[j] & 0x3F }
                j += 1
            }
            out.append(
                IPMICipherSuiteRecord(
                    id: id,
                    authentication: algorithms[0],
                    integrity: algorithms[1],
                    confidentiality: algorithms[2]
                )
            )
            i = j
        }
        return out
    }
}
