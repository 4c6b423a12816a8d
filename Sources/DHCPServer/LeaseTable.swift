import FarrierCore
import Foundation

/// The in-memory lease table: the single authority on which address belongs to which MAC.
///
/// Invariant: an address maps to at most one MAC (`owner`), and a MAC to at most one address.
/// An address moves to another MAC only after its previous holder's lease (or offer hold) has
/// expired. Bound leases are made durable by the caller before the ACK leaves.
public struct LeaseTable: Sendable {
    public enum Status: Sendable, Hashable {
        case offered
        case bound
    }

    public struct Entry: Sendable, Hashable {
        public var mac: MACAddress
        public var address: IPv4Address
        public var expires: Date
        public var status: Status
        public var hostname: String?
    }

    struct Pool: Sendable {
        var subnet: DHCPConfiguration.Subnet
        var ranges: [ClosedRange<UInt32>]
        var size: Int
        /// Next offset to try when looking for a never-used address.
        var cursor = 0
    }

    public private(set) var byMAC: [MACAddress: Entry] = [:]
    public private(set) var owner: [IPv4Address: MACAddress] = [:]
    var declined: [IPv4Address: Date] = [:]
    var reservationsByMAC: [MACAddress: DHCPConfiguration.Reservation] = [:]
    var reservedAddresses: Set<IPv4Address> = []
    var pools: [Pool]
    let offerHold: TimeInterval
    let declineQuarantine: TimeInterval

    public init(configuration: DHCPConfiguration) {
        pools = configuration.subnets.map { s in
            let ranges = s.pools.map { $0.lowerBound.value...$0.upperBound.value }
            return Pool(subnet: s, ranges: ranges, size: ranges.reduce(0) { $0 + $1.count })
        }
        for r in configuration.reservations {
            reservationsByMAC[r.mac] = r
            reservedAddresses.insert(r.address)
        }
        offerHold = configuration.offerHold
        declineQuarantine = configuration.declineQuarantine
    }

    /// Restores durable leases (at startup). A lease whose address is now claimed by a
    /// reservation for another MAC is skipped.
    public mutating func load(_ leases: [Lease]) {
        for l in leases {
            if reservedAddresses.contains(l.address), reservationsByMAC[l.mac]?.address != l.address { continue }
            if let other = owner[l.address], other != l.mac { continue }
            assign(l.address, to: l.mac, expires: l.expires, status: .bound, hostname: l.hostname)
        }
    }

    public func subnet(containing ip: IPv4Address) -> DHCPConfiguration.Subnet? {
        pools.first(where: { $0.subnet.network.contains(ip) })?.subnet
    }

    public func reservation(for mac: MACAddress) -> DHCPConfiguration.Reservation? { reservationsByMAC[mac] }

    func inPool(_ ip: IPv4Address, _ pool: Pool) -> Bool { pool.ranges.contains { $0.contains(ip.value) } }

    /// Each subnet's pool: its size, and how many of its addresses an unexpired lease holds.
    public func poolUsage(now: Date) -> [(network: IPv4Network, size: Int, leased: Int)] {
        var leased = Array(repeating: 0, count: pools.count)
        for entry in byMAC.values where entry.expires > now {
            if let i = pools.firstIndex(where: { inPool(entry.address, $0) }) { leased[i] += 1 }
        }
        return pools.indices.map { (pools[$0].subnet.network, pools[$0].size, leased[$0]) }
    }

    /// Whether `mac` may be given `ip` now.
    public func isAvailable(_ ip: IPv4Address, for mac: MACAddress, now: Date) -> Bool {
        if let r = reservationsByMAC[mac], r.address == ip { return ownerAllows(ip, mac, now) }
        if reservedAddresses.contains(ip) { return false }
        if let until = declined[ip], until > now { return false }
        return ownerAllows(ip, mac, now)
    }

    func ownerAllows(_ ip: IPv4Address, _ mac: MACAddress, _ now: Date) -> Bool {
        guard let holder = owner[ip], holder != mac else { return true }
        guard let e = byMAC[holder] else { return true }
        return e.expires < now
    }

    /// Chooses an address for `mac` on `subnet` and holds it for the offer period.
    public mutating func offer(
        mac: MACAddress,
        subnet network: IPv4Network,
        requested: IPv4Address?,
        now: Date
    ) -> IPv4Address? {
        guard let p = pools.firstIndex(where: { $0.subnet.network == network }) else { return nil }
        guard let ip = choose(mac: mac, pool: p, requested: requested, now: now) else { return nil }
        if let e = byMAC[mac], e.address == ip, e.status == .bound, e.expires > now {
            return ip  // already bound: the offer repeats the lease
        }
        assign(
            ip,
            to: mac,
            expires: now.addingTimeInterval(offerHold),
            status: .offered,
            hostname: reservationsByMAC[mac]?.hostname
        )
        return ip
    }

    mutating func choose(mac: MACAddress, pool p: Int, requested: IPv4Address?, now: Date) -> IPv4Address? {
        let pool = pools[p]
        if let r = reservationsByMAC[mac], pool.subnet.network.contains(r.address) {
            return ownerAllows(r.address, mac, now) ? r.address : nil
        }
        if let e = byMAC[mac], pool.subnet.network.contains(e.address), inPool(e.address, pool),
            isAvailable(e.address, for: mac, now: now)
        {
            return e.address
        }
        if let req = requested, inPool(req, pool), isAvailable(req, for: mac, now: now) {
            return req
        }
        // A never-used address, scanning from the cursor.
        var offset = pool.cursor
        for _ in 0..<pool.size {
            let ip = address(at: offset, in: pool)
            offset = (offset + 1) % pool.size
            if owner[ip] == nil, isAvailable(ip, for: mac, now: now) {
                pools[p].cursor = offset
                return ip
            }
        }
        // All used: reclaim the address whose holder expired longest ago.
        var best: (IPv4Address, Date)?
        for range in pool.ranges {
            for v in range {
                let ip = IPv4Address(v)
                guard isAvailable(ip, for: mac, now: now) else { continue }
                let since = owner[ip].flatMap { byMAC[$0]?.expires } ?? .distantPast
                if best == nil || since < best!.1 { best = (ip, since) }
            }
        }
        return best?.0
    }

    func address(at offset: Int, in pool: Pool) -> IPv4Address {
        var o = offset
        for r in pool.ranges {
            if o < r.count { return IPv4Address(r.lowerBound + UInt32(o)) }
            o -= r.count
        }
        return IPv4Address(pool.ranges[0].lowerBound)
    }

    /// Binds `ip` to `mac` for `leaseTime` seconds. Nil if the address is not `mac`'s to take, or
    /// is outside every pool and not reserved for it.
    public mutating func bind(mac: MACAddress, address ip: IPv4Address, leaseTime: Int, now: Date) -> Lease? {
        let reserved = reservationsByMAC[mac]?.address == ip
        guard reserved || pools.contains(where: { inPool(ip, $0) }) else { return nil }
        guard isAvailable(ip, for: mac, now: now) else { return nil }
        let hostname = reservationsByMAC[mac]?.hostname
        let expires = now.addingTimeInterval(TimeInterval(leaseTime))
        assign(ip, to: mac, expires: expires, status: .bound, hostname: hostname)
        return Lease(mac: mac, address: ip, expires: expires, hostname: hostname)
    }

    /// The client gave its address back (DHCPRELEASE). It stays associated with the MAC, so the
    /// MAC gets it again if nobody else took it meanwhile.
    public mutating func release(mac: MACAddress, address: IPv4Address, now: Date) -> Bool {
        guard var e = byMAC[mac], e.address == address else { return false }
        e.expires = now
        e.status = .offered
        byMAC[mac] = e
        return true
    }

    /// The client found the address in use (DHCPDECLINE): keep it out of the pool for a while.
    public mutating func decline(mac: MACAddress, address: IPv4Address, now: Date) -> Bool {
        guard let e = byMAC[mac], e.address == address else { return false }
        byMAC[mac] = nil
        owner[address] = nil
        declined[address] = now.addingTimeInterval(declineQuarantine)
        return true
    }

    /// The client selected another server: drop our offer hold.
    public mutating func withdrawOffer(mac: MACAddress) {
        guard let e = byMAC[mac], e.status == .offered else { return }
        byMAC[mac] = nil
        owner[e.address] = nil
    }

    mutating func assign(_ ip: IPv4Address, to mac: MACAddress, expires: Date, status: Status, hostname: String?) {
        if let old = byMAC[mac], old.address != ip, owner[old.address] == mac { owner[old.address] = nil }
        if let previous = owner[ip], previous != mac { byMAC[previous] = nil }
        owner[ip] = mac
        byMAC[mac] = Entry(mac: mac, address: ip, expires: expires, status: status, hostname: hostname)
    }

    public func lease(for mac: MACAddress) -> Entry? { byMAC[mac] }
}
