import Crypto
import Foundation
import WireSupport
import _CryptoExtras

/// Seals and opens RMCP+ session packets: sequence numbers, AES-CBC-128 confidentiality and the
/// HMAC integrity trailer. A pure value; the caller supplies each IV.
public struct IPMISessionCrypto: Sendable {
    public let keys: IPMISessionKeys
    /// The BMC's session ID, which every packet we send carries.
    public let bmcSessionID: UInt32
    /// Our session ID, which every packet from the BMC must carry.
    public let consoleSessionID: UInt32
    /// The next outbound sequence number (authenticated packets); never 0.
    public private(set) var nextSequence: UInt32 = 1
    /// Highest inbound sequence number accepted so far (0: none yet).
    public private(set) var highestInbound: UInt32 = 0
    var recentInbound: Set<UInt32> = []

    public init(keys: IPMISessionKeys, bmcSessionID: UInt32, consoleSessionID: UInt32) {
        self.keys = keys
        self.bmcSessionID = bmcSessionID
        self.consoleSessionID = consoleSessionID
    }

    var encrypting: Bool { keys.suite.confidentiality != .none }
    var authenticating: Bool { keys.suite.integrity != .none }

    /// Builds one datagram carrying `payload`. `iv` must be 16 fresh random bytes when the
    /// suite encrypts.
    public mutating func seal(_ type: IPMIPayloadType, payload: [UInt8], iv: [UInt8]) -> [UInt8] {
        var body = payload
        if encrypting {
            precondition(iv.count == 16, "AES-CBC IV is 16 bytes")
            // Confidentiality pad 01 02 … N, then N, so the length is a multiple of 16.
            let n = (16 - (payload.count + 1) % 16) % 16
            var plain = payload
            for i in 0..<n { plain.append(UInt8(i + 1)) }
            plain.append(UInt8(n))
            // Cannot fail: the key is 16 bytes, the IV 16, and the input a multiple of 16.
            let cipher = try! AES._CBC.encrypt(
                plain,
                using: SymmetricKey(data: keys.aesKey),
                iv: AES._CBC.IV(ivBytes: iv),
                noPadding: true
            )
            body = iv + Array(cipher)
        }
        let seq = nextSequence
        nextSequence = nextSequence == UInt32.max ? 1 : nextSequence + 1
        var out: [UInt8] = []
        RMCPHeader(messageClass: .ipmi).encode(into: &out)
        let start = out.count
        out.append(0x06)
        out.append(type.rawValue | (encrypting ? 0x80 : 0) | (authenticating ? 0x40 : 0))
        out.appendLE32(bmcSessionID)
        out.appendLE32(seq)
        out.appendLE16(UInt16(body.count))
        out += body
        if authenticating {
            // Pad so that auth type … next header is a multiple of 4.
            let pad = (4 - (out.count - start + 2) % 4) % 4
            out += [UInt8](repeating: 0xFF, count: pad)
            out.append(UInt8(pad))
            out.append(0x07)
            out += keys.suite.integrityCode(k1: keys.k1, Array(out[start...]))
        }
        return out
    }

    /// Checks and decrypts a packet from the BMC. Rejects a wrong session ID, a bad AuthCode,
    /// a replayed or far-out sequence number, and undecryptable payloads.
    public mutating func open(_ envelope: RMCPPlusEnvelope) throws(WireError) -> [UInt8] {
        guard envelope.sessionID == consoleSessionID else { throw .invalid("session ID \(envelope.sessionID)") }
        if authenticating {
            guard envelope.authenticated else { throw .invalid("unauthenticated packet in an authenticated session") }
            let expected = keys.suite.integrityCode(k1: keys.k1, envelope.covered)
            guard expected.count == envelope.authCode.count,
                zip(expected, envelope.authCode).reduce(UInt8(0), { $0 | ($1.0 ^ $1.1) }) == 0
            else { throw WireError(.integrityCheckFailed) }
        }
        // Sliding window (IPMI v2.0 §6.12.13): accept up to 16 behind the highest seen and up to
        // 15 ahead; never the same number twice.
        let seq = envelope.sequence
        if highestInbound != 0 {
            let ahead = Int64(seq) - Int64(highestInbound)
            guard ahead >= -16, ahead <= 15, !recentInbound.contains(seq) else {
                throw .invalid("sequence number \(seq) outside the window")
            }
        }
        var payload = envelope.payload
        if encrypting {
            guard envelope.encrypted else { throw .invalid("unencrypted packet in an encrypted session") }
            guard payload.count >= 32, (payload.count - 16) % 16 == 0 else { throw WireError(.decryptionFailed) }
            let plain: [UInt8]
            do {
                let iv = try AES._CBC.IV(ivBytes: payload[0..<16])
                plain = Array(
                    try AES._CBC.decrypt(
                        payload[16...],
                        using: SymmetricKey(data: keys.aesKey),
                        iv: iv,
                        noPadding: true
                    )
                )
            } catch {
                throw WireError(.decryptionFailed)
            }
            let n = Int(plain[plain.count - 1])
            guard n < 16, n + 1 <= plain.count else { throw WireError(.decryptionFailed) }
            payload = Array(plain[0..<(plain.count - 1 - n)])
        }
        if seq > highestInbound || highestInbound == 0 { highestInbound = seq }
        recentInbound.insert(seq)
        recentInbound = recentInbound.filter { Int64($0) >= Int64(highestInbound) - 16 }
        return payload
    }
}

/// Builds an unauthenticated RMCP+ packet outside a session (session ID 0, sequence 0): Open
/// Session, RAKP 1 and 3, and pre-session IPMI commands.
public func rmcpPlusPresession(_ type: IPMIPayloadType, payload: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    RMCPHeader(messageClass: .ipmi).encode(into: &out)
    out.append(0x06)
    out.append(type.rawValue)
    out.appendLE32(0)
    out.appendLE32(0)
    out.appendLE16(UInt16(payload.count))
    out += payload
    return out
}
