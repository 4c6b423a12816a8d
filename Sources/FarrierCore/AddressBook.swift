import Synchronization

/// Which MAC holds which IPv4 address, as learned by DHCP, so TFTP and HTTP requests (which
/// carry only a source address) can be put on the right machine's timeline.
public final class AddressBook: Sendable {
    let table = Mutex<[IPv4Address: MACAddress]>([:])

    public init() {}

    /// Returns whether this changed what the book held for `ip`.
    @discardableResult
    public func record(_ ip: IPv4Address, _ mac: MACAddress) -> Bool {
        guard ip != .any else { return false }
        return table.withLock { t in
            if t[ip] == mac { return false }
            t[ip] = mac
            return true
        }
    }

    public func mac(for ip: IPv4Address) -> MACAddress? { table.withLock { $0[ip] } }
}
