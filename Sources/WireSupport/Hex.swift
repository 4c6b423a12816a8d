extension Sequence where Element == UInt8 {
    /// Lower-case hexadecimal, two digits a byte: how digests, nonces and serial numbers are
    /// written (without `String(format:)`, which goes through Foundation for every byte).
    public var hexString: String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(underestimatedCount * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
