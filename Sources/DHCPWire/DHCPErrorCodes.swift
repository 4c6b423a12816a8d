import WireSupport

/// Why a DHCP datagram could not be decoded.
extension WireError.Code {
    public static let truncatedHeader = Self("truncated header")
    public static let badMagicCookie = Self("bad magic cookie")
    public static let badHardwareAddressLength = Self("bad hardware address length")
    public static let truncatedOption = Self("truncated option")
    public static let missingEndOption = Self("options not terminated")
    public static let badOptionLength = Self("bad option length")
}
