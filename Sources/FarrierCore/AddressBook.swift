import Synchronization

/// Which MAC holds which IPv4 address, so TFTP and HTTP requests (which carry only a source
/// address) can be put on the right machine: what DHCP leased, and the static addresses
/// deployed machines hold on the boot network (`assign`, issue 18 point 4).
public final class AddressBook: Sendable {
    let table = Mutex<[IPv4Address: MACAddress]>([:])
    let assigned = Mutex<[IPv4Address: MACAddress]>([:])

    public init() {}

    public func record(_ ip: IPv4Address, _ mac: MACAddress) {
        guard ip != .any else { return }
        table.withLock { $0[ip] = mac }
    }

    /// Replaces the static addresses whole: those deployed machines now hold on the boot
    /// network, to their boot MACs. DHCP never leases them (`network create` keeps a pool on
    /// the boot network clear of DHCP's), so the two layers cannot disagree; a static address
    /// is read first, since a lease of it could only be stale.
    public func assign(_ addresses: [IPv4Address: MACAddress]) {
        assigned.withLock { $0 = addresses }
    }

    public func mac(for ip: IPv4Address) -> MACAddress? {
        assigned.withLock { $0[ip] } ?? table.withLock { $0[ip] }
    }
}
