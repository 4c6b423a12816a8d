import Synchronization

/// Which MAC holds which IPv4 address, as learned by DHCP, so TFTP and HTTP requests (which
/// carry only a source address) can be put on the right machine's timeline.
public final class AddressBook: Sendable {
    let table = Mutex<[IPv4Address: MACAddress]>([:])

    public init() {}

    public func record(_ ip: IPv4Address, _ mac: MACAddress) {
        guard ip != .any else { return }
        table.withLock { $0[ip] = mac }
    }

    public func mac(for ip: IPv4Address) -> MACAddress? { table.withLock { $0[ip] } }
}
