import Crypto
import WireSupport

/// The RAKP exchange (IPMI v2.0 §13.20–13.23) and the session keys it derives. A pure value:
/// the caller supplies the random numbers, so known-answer tests can drive it.
public struct RAKPExchange: Sendable {
    public let suite: IPMICipherSuite
    public let consoleSessionID: UInt32
    public let bmcSessionID: UInt32
    public let consoleRandom: [UInt8]
    public let userName: [UInt8]
    /// The requested role byte as sent in RAKP1 (privilege in b3:0, b4 = name-only lookup).
    public let role: UInt8
    let kuid: [UInt8]
    let kg: [UInt8]

    public typealias Message2 = RAKPMessage2
    public typealias Message4 = RAKPMessage4

    public init(
        suite: IPMICipherSuite,
        consoleSessionID: UInt32,
        bmcSessionID: UInt32,
        consoleRandom: [UInt8],
        userName: String,
        password: [UInt8],
        privilege: IPMIPrivilege,
        bmcKey: [UInt8]? = nil
    ) {
        precondition(consoleRandom.count == 16, "Rm is 16 bytes")
        self.suite = suite
        self.consoleSessionID = consoleSessionID
        self.bmcSessionID = bmcSessionID
        self.consoleRandom = consoleRandom
        self.userName = Array(userName.utf8.prefix(16))
        self.role = 0x10 | privilege.rawValue
        var k = Array(password.prefix(20))
        k += [UInt8](repeating: 0, count: 20 - k.count)
        self.kuid = k
        if let bmcKey {
            var g = Array(bmcKey.prefix(20))
            g += [UInt8](repeating: 0, count: 20 - g.count)
            self.kg = g
        } else {
            self.kg = k
        }
    }

    /// RAKP Message 1.
    public func rakp1(tag: UInt8) -> [UInt8] {
        var out: [UInt8] = [tag, 0, 0, 0]
        out.appendLE32(bmcSessionID)
        out += consoleRandom
        out += [role, 0, 0, UInt8(userName.count)]
        out += userName
        return out
    }

    /// The code the BMC must have put in RAKP2: proof it knows the password.
    public func expectedRAKP2Code(_ m: Message2) -> [UInt8] {
        var data = le32(consoleSessionID) + le32(bmcSessionID) + consoleRandom + m.bmcRandom + m.bmcGUID
        data += [role, UInt8(userName.count)] + userName
        return suite.authHMAC(key: kuid, data)
    }

    /// RAKP Message 3: our proof that we know the password.
    public func rakp3(tag: UInt8, after m: Message2) -> [UInt8] {
        var out: [UInt8] = [tag, 0, 0, 0]
        out.appendLE32(bmcSessionID)
        var data = m.bmcRandom + le32(consoleSessionID)
        data += [role, UInt8(userName.count)] + userName
        out += suite.authHMAC(key: kuid, data)
        return out
    }

    /// The Session Integrity Key.
    public func sik(after m: Message2) -> [UInt8] {
        let data = consoleRandom + m.bmcRandom + [role, UInt8(userName.count)] + userName
        return suite.authHMAC(key: kg, data)
    }

    /// The integrity check value the BMC must have put in RAKP4.
    public func expectedRAKP4ICV(_ m2: Message2) -> [UInt8] {
        let data = consoleRandom + le32(bmcSessionID) + m2.bmcGUID
        return Array(suite.authHMAC(key: sik(after: m2), data).prefix(suite.rakp4ICVLength))
    }

    /// The session keys: K1 for integrity, K2 (first 16 bytes) for AES. The constants are 20
    /// bytes even for SHA-256, as ipmitool, FreeIPMI and OpenIPMI do.
    public func sessionKeys(after m2: Message2) -> IPMISessionKeys {
        let sik = sik(after: m2)
        let k1 = suite.authHMAC(key: sik, [UInt8](repeating: 0x01, count: 20))
        let k2 = suite.authHMAC(key: sik, [UInt8](repeating: 0x02, count: 20))
        return IPMISessionKeys(suite: suite, sik: sik, k1: k1, k2: k2)
    }
}

/// Keys of an established RMCP+ session.
public struct IPMISessionKeys: Sendable, Hashable {
    public let suite: IPMICipherSuite
    public let sik: [UInt8]
    public let k1: [UInt8]
    public let k2: [UInt8]
    public var aesKey: [UInt8] { Array(k2.prefix(16)) }
}

extension IPMICipherSuite {
    /// HMAC with this suite's authentication algorithm (RAKP codes, SIK, K1, K2).
    func authHMAC(key: [UInt8], _ message: [UInt8]) -> [UInt8] {
        switch authentication {
        case .none: []
        case .hmacSHA1: Array(HMAC<Insecure.SHA1>.authenticationCode(for: message, using: SymmetricKey(data: key)))
        case .hmacSHA256: Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
        }
    }

    /// The truncated integrity HMAC of a packet (K1 is the key).
    func integrityCode(k1: [UInt8], _ message: [UInt8]) -> [UInt8] {
        switch integrity {
        case .none: []
        case .hmacSHA1_96:
            Array(HMAC<Insecure.SHA1>.authenticationCode(for: message, using: SymmetricKey(data: k1)).prefix(12))
        case .hmacSHA256_128:
            Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: k1)).prefix(16))
        }
    }

    /// Length of the RAKP4 integrity check value: the auth algorithm's HMAC truncated to 12 (SHA1)
    /// or 16 (SHA256) bytes.
    var rakp4ICVLength: Int {
        switch authentication {
        case .none: 0
        case .hmacSHA1: 12
        case .hmacSHA256: 16
        }
    }
}
