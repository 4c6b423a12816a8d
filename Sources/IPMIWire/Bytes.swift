import WireSupport

/// IPMI is little-endian on the wire (session IDs, sequence numbers, lengths), except for the
/// RMCP/ASF header, which is big-endian.
extension Array where Element == UInt8 {
    @inlinable mutating func appendLE16(_ v: UInt16) {
        append(UInt8(truncatingIfNeeded: v))
        append(UInt8(v >> 8))
    }

    @inlinable mutating func appendLE32(_ v: UInt32) {
        append(UInt8(truncatingIfNeeded: v))
        append(UInt8(truncatingIfNeeded: v >> 8))
        append(UInt8(truncatingIfNeeded: v >> 16))
        append(UInt8(v >> 24))
    }
}

extension ByteReader {
    mutating func readLE16() -> UInt16? { readUInt16().map { $0.byteSwapped } }
    mutating func readLE32() -> UInt32? { readUInt32().map { $0.byteSwapped } }
}

func le32(_ v: UInt32) -> [UInt8] {
    var out: [UInt8] = []
    out.appendLE32(v)
    return out
}

/// IPMI's own codes; structures too short or fields out of range are WireSupport's
/// `.truncated` and `.invalid`.
extension WireError.Code {
    /// The AuthCode did not match: a wrong key, or a forged or corrupted packet.
    public static let integrityCheckFailed = Self("integrity check failed (AuthCode mismatch)")
    public static let decryptionFailed = Self("payload could not be decrypted")
}
