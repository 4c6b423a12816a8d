import Foundation
import WireSupport

/// An IPv4 or IPv6 address. Its text (and so its Codable form) is the canonical one: dotted
/// quad, or RFC 5952; IPv4 sorts before IPv6.
public enum IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    case v4(IPv4Address)
    case v6(IPv6Address)

    public init?(_ text: some StringProtocol) {
        if let v4 = IPv4Address(text) {
            self = .v4(v4)
        } else if let v6 = IPv6Address(text) {
            self = .v6(v6)
        } else {
            return nil
        }
    }

    public var isIPv4: Bool { if case .v4 = self { true } else { false } }
    public var family: IPFamily { isIPv4 ? .v4 : .v6 }

    public var description: String {
        switch self {
        case .v4(let a): a.description
        case .v6(let a): a.description
        }
    }

    /// The address `n` after this one, or nil past the family's last.
    public func advanced(by n: UInt64) -> IPAddress? {
        switch self {
        case .v4(let a):
            let (next, overflow) = UInt64(a.value).addingReportingOverflow(n)
            return overflow || next > UInt64(UInt32.max) ? nil : .v4(IPv4Address(UInt32(next)))
        case .v6(let a): return a.advanced(by: n).map { .v6($0) }
        }
    }

    /// How many addresses from `self` to `other`, both counted (saturating; 0 if reversed or
    /// of different families).
    public func count(through other: IPAddress) -> UInt64 {
        switch (self, other) {
        case (.v4(let a), .v4(let b)): return b < a ? 0 : UInt64(b.value - a.value) + 1
        case (.v6(let a), .v6(let b)):
            guard !(b < a) else { return 0 }
            // The difference fits 64 bits when the halves are equal, or one apart with a borrow.
            guard b.high == a.high || (b.high - a.high == 1 && b.low < a.low) else { return .max }
            let difference = b.low &- a.low
            return difference == .max ? .max : difference + 1
        default: return 0
        }
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        switch (lhs, rhs) {
        case (.v4(let a), .v4(let b)): a < b
        case (.v6(let a), .v6(let b)): a < b
        case (.v4, .v6): true
        case (.v6, .v4): false
        }
    }
}

public enum IPFamily: String, Sendable, Codable, CaseIterable {
    case v4 = "IPv4"
    case v6 = "IPv6"
}

extension IPAddress: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let a = IPAddress(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "not an IP address: \(text)")
            )
        }
        self = a
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// An IPv4 or IPv6 network in CIDR form (`198.18.100.0/24`, `fd98:18:100::/64`). Its text must
/// have its host bits clear.
public struct IPNetwork: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var prefixLength: Int

    public init?(_ text: some StringProtocol) {
        if let n = IPv4Network(text) {
            address = .v4(n.address)
            prefixLength = n.prefixLength
        } else if let n = IPv6Network(text) {
            address = .v6(n.address)
            prefixLength = n.prefixLength
        } else {
            return nil
        }
    }

    public var family: IPFamily { address.family }

    public func contains(_ ip: IPAddress) -> Bool {
        switch (address, ip) {
        case (.v4(let n), .v4(let a)): IPv4Network(address: n, prefixLength: prefixLength).contains(a)
        case (.v6(let n), .v6(let a)): IPv6Network(address: n, prefixLength: prefixLength).contains(a)
        default: false
        }
    }

    /// The last address: IPv4's broadcast address, or the last of an IPv6 prefix.
    public var last: IPAddress {
        switch address {
        case .v4(let n): .v4(IPv4Network(address: n, prefixLength: prefixLength).broadcast)
        case .v6(let n): .v6(IPv6Network(address: n, prefixLength: prefixLength).last)
        }
    }

    /// Addresses no host may hold: the network's own (IPv4's network address, IPv6's
    /// subnet-router anycast) and IPv4's broadcast.
    public func isReserved(_ ip: IPAddress) -> Bool {
        ip == address || (family == .v4 && ip == last)
    }

    public var description: String { "\(address)/\(prefixLength)" }
}

extension IPNetwork: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let n = IPNetwork(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "not a network: \(text)")
            )
        }
        self = n
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// A range of addresses of one family, both ends included: `198.18.100.10-198.18.100.19`.
public struct IPRange: Hashable, Sendable, CustomStringConvertible {
    public var first: IPAddress
    public var last: IPAddress

    public init(first: IPAddress, last: IPAddress) {
        self.first = first
        self.last = last
    }

    /// Parses `FIRST-LAST` (or one address, a range of one); nil unless both ends are
    /// addresses of one family, in order.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard let first = IPAddress(parts[0]) else { return nil }
        let last = parts.count == 2 ? IPAddress(parts[1]) : first
        guard let last, first.family == last.family, !(last < first) else { return nil }
        self.init(first: first, last: last)
    }

    public func contains(_ ip: IPAddress) -> Bool { ip.family == first.family && !(ip < first) && !(last < ip) }
    public func overlaps(_ other: IPRange) -> Bool { !(last < other.first) && !(other.last < first) }
    /// How many addresses it holds (saturating).
    public var count: UInt64 { first.count(through: last) }

    public var description: String { first == last ? first.description : "\(first)-\(last)" }
}

extension IPRange: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let r = IPRange(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "not a range: \(text)")
            )
        }
        self = r
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// A network an admin defines for deployed machines (issue 18 point 4): one L2 segment at one
/// site, untagged or on a VLAN, with at most one IPv4 and one IPv6 subnet, each with the pools
/// Farrier gives static addresses from. Members deploy onto the networks open to their project.
public struct Network: Codable, Sendable, Hashable {
    public struct Subnet: Codable, Sendable, Hashable {
        public var cidr: IPNetwork
        public var gateway: IPAddress?
        public var pool: [IPRange]
        public init(cidr: IPNetwork, gateway: IPAddress? = nil, pool: [IPRange]) {
            self.cidr = cidr
            self.gateway = gateway
            self.pool = pool
        }

        /// How many addresses its pools hold (saturating). `Network.make` keeps the gateway and
        /// the reserved addresses out of them.
        public var poolSize: UInt64 {
            pool.reduce(UInt64(0)) { total, r in
                let (sum, overflow) = total.addingReportingOverflow(r.count)
                return overflow ? .max : sum
            }
        }
    }

    public var name: String
    /// The site whose boot network it is on; nil: the region's own.
    public var site: String?
    /// 0: untagged; else the 802.1Q VLAN ID its machines tag it with.
    public var vlan: Int
    public var mtu: Int?
    /// At most one per family.
    public var subnets: [Subnet]
    public var dns: [IPAddress]
    public var searchDomains: [String]
    /// The projects whose members may deploy onto it; empty: every project.
    public var projects: [String]
    public var description: String
    public var createdBy: String
    public var created: Date

    public init(
        name: String,
        site: String? = nil,
        vlan: Int = 0,
        mtu: Int? = nil,
        subnets: [Subnet],
        dns: [IPAddress] = [],
        searchDomains: [String] = [],
        projects: [String] = [],
        description: String = "",
        createdBy: String = "",
        created: Date
    ) {
        self.name = name
        self.site = site
        self.vlan = vlan
        self.mtu = mtu
        self.subnets = subnets
        self.dns = dns
        self.searchDomains = searchDomains
        self.projects = projects
        self.description = description
        self.createdBy = createdBy
        self.created = created
    }

    public func subnet(_ family: IPFamily) -> Subnet? { subnets.first { $0.cidr.family == family } }

    /// Whether a member of `project` may deploy onto it (nil: an admin deploying into no project).
    public func isOpen(to project: String?) -> Bool {
        projects.isEmpty || project.map(projects.contains) ?? true
    }

    /// A network from the text an admin gives (`network create`, the API's request): each
    /// field checked, the first problem named by its field. `cidrs`, `gateways` and `pools`
    /// may mix families; each gateway and pool goes to the subnet of its family.
    public static func make(
        name: String,
        cidrs: [String],
        gateways: [String] = [],
        pools: [String] = [],
        dns: [String] = [],
        searchDomains: [String] = [],
        vlan: Int = 0,
        mtu: Int? = nil,
        site: String? = nil,
        projects: [String] = [],
        description: String = "",
        createdBy: String = "",
        created: Date
    ) -> Result<Network, InputProblem> {
        if let p = Machine.nameProblem(name) {
            return .failure(InputProblem("name: " + p.replacingOccurrences(of: "machine name", with: "network name")))
        }
        var subnets: [Subnet] = []
        if cidrs.isEmpty { return .failure(InputProblem("cidr: at least one (IPv4 or IPv6) is required")) }
        for raw in cidrs {
            let text = raw.trimmingCharacters(in: .whitespaces)
            guard let cidr = IPNetwork(text) else {
                return .failure(InputProblem("cidr: '\(text)' is not an IPv4 or IPv6 network (like 198.18.100.0/24)"))
            }
            let bare = text.split(separator: "/").first.flatMap { IPAddress($0) }
            if let bare, bare != cidr.address {
                return .failure(InputProblem("cidr: '\(text)' has host bits set (the network is \(cidr))"))
            }
            let widest = cidr.family == .v4 ? 30 : 126
            if cidr.prefixLength > widest {
                return .failure(
                    InputProblem(
                        "cidr: \(cidr) leaves no room for hosts (at most /\(widest) for \(cidr.family.rawValue))"
                    )
                )
            }
            if let other = subnets.first(where: { $0.cidr.family == cidr.family }) {
                return .failure(
                    InputProblem(
                        "cidr: \(other.cidr) and \(cidr) are both \(cidr.family.rawValue); a network has at most one of each"
                    )
                )
            }
            subnets.append(Subnet(cidr: cidr, pool: []))
        }
        func index(_ a: IPAddress, _ field: String) -> Result<Int, InputProblem> {
            guard let i = subnets.firstIndex(where: { $0.cidr.family == a.family }) else {
                return .failure(
                    InputProblem("\(field): \(a) is \(a.family.rawValue), and no \(a.family.rawValue) cidr is given")
                )
            }
            return .success(i)
        }
        for text in gateways {
            guard let g = IPAddress(text.trimmingCharacters(in: .whitespaces)) else {
                return .failure(InputProblem("gateway: '\(text)' is not an IP address"))
            }
            let i: Int
            switch index(g, "gateway") {
            case .success(let n): i = n
            case .failure(let p): return .failure(p)
            }
            let cidr = subnets[i].cidr
            if let other = subnets[i].gateway {
                return .failure(InputProblem("gateway: \(other) and \(g) are both for \(cidr); give one per family"))
            }
            if !cidr.contains(g) { return .failure(InputProblem("gateway: \(g) is outside cidr \(cidr)")) }
            if cidr.isReserved(g) {
                return .failure(
                    InputProblem("gateway: \(g) is \(cidr)'s \(g == cidr.address ? "network" : "broadcast") address")
                )
            }
            subnets[i].gateway = g
        }
        for text in pools {
            guard let r = IPRange(text.trimmingCharacters(in: .whitespaces)) else {
                let ends = text.split(separator: "-", maxSplits: 1).map { IPAddress($0) }
                if ends.count == 2, let a = ends[0], let b = ends[1] {
                    return .failure(
                        InputProblem(
                            a.family != b.family
                                ? "pool: \(text) mixes IPv4 and IPv6" : "pool: \(text) ends before it starts"
                        )
                    )
                }
                return .failure(InputProblem("pool: '\(text)' is not a range FIRST-LAST of IP addresses"))
            }
            let i: Int
            switch index(r.first, "pool") {
            case .success(let n): i = n
            case .failure(let p): return .failure(p)
            }
            let s = subnets[i]
            if !s.cidr.contains(r.first) || !s.cidr.contains(r.last) {
                return .failure(InputProblem("pool: \(r) is outside cidr \(s.cidr)"))
            }
            if r.contains(s.cidr.address) {
                return .failure(InputProblem("pool: \(r) includes \(s.cidr.address), \(s.cidr)'s network address"))
            }
            if s.cidr.family == .v4, r.contains(s.cidr.last) {
                return .failure(InputProblem("pool: \(r) includes \(s.cidr.last), \(s.cidr)'s broadcast address"))
            }
            if let other = s.pool.first(where: { $0.overlaps(r) }) {
                return .failure(InputProblem("pool: \(r) overlaps \(other)"))
            }
            subnets[i].pool.append(r)
        }
        // Gateways are checked against the pools once both are known (either may come first).
        for s in subnets {
            if let g = s.gateway, s.pool.contains(where: { $0.contains(g) }) {
                return .failure(InputProblem("pool: includes the gateway \(g)"))
            }
            if s.pool.isEmpty { return .failure(InputProblem("pool: none given for cidr \(s.cidr)")) }
        }
        var servers: [IPAddress] = []
        for text in dns {
            guard let a = IPAddress(text.trimmingCharacters(in: .whitespaces)) else {
                return .failure(InputProblem("dns: '\(text)' is not an IP address"))
            }
            servers.append(a)
        }
        for d in searchDomains where !isDomainName(d) {
            return .failure(InputProblem("search: '\(d)' is not a domain name"))
        }
        if !(0...4094).contains(vlan) { return .failure(InputProblem("vlan: \(vlan) is not 0 (untagged) or 1-4094")) }
        if let mtu {
            if !(68...9216).contains(mtu) { return .failure(InputProblem("mtu: \(mtu) is not 68-9216")) }
            if mtu < 1280, subnets.contains(where: { $0.cidr.family == .v6 }) {
                return .failure(InputProblem("mtu: \(mtu) is below IPv6's minimum of 1280"))
            }
        }
        if let site, site.isEmpty {
            return .failure(InputProblem("site: an empty name; leave it out for the region's own"))
        }
        for p in projects {
            if let problem = Machine.nameProblem(p) {
                return .failure(
                    InputProblem("project: " + problem.replacingOccurrences(of: "machine name", with: "project name"))
                )
            }
        }
        return .success(
            Network(
                name: name,
                site: site,
                vlan: vlan,
                mtu: mtu,
                subnets: subnets,
                dns: servers,
                searchDomains: searchDomains,
                projects: projects,
                description: description,
                createdBy: createdBy,
                created: created
            )
        )
    }

    /// The first pool of this network that overlaps a pool of another on the same segment (the
    /// same site and VLAN), as the refusal names it; nil: none.
    public func overlap(with others: [Network]) -> String? {
        for other in others where other.name != name && other.site == site && other.vlan == vlan {
            for r in subnets.flatMap(\.pool) {
                if let clash = other.subnets.flatMap(\.pool).first(where: { $0.overlaps(r) }) {
                    return "pool: \(r) overlaps network \(other.name)'s pool \(clash) (same site and VLAN)"
                }
            }
        }
        return nil
    }

    /// Where a pool of this network meets what the server's own DHCP hands out: nil when it
    /// does not, or when the network is not the server's untagged boot segment (another site,
    /// or a VLAN: DHCP answers untagged frames on its own interfaces only).
    public func clash(with dhcp: DHCPAddressSpace) -> String? {
        guard site == nil, vlan == 0 else { return nil }
        for r in subnets.flatMap(\.pool) {
            if let p = dhcp.pools.first(where: { $0.overlaps(r) }) {
                return "pool: \(r) overlaps this server's DHCP pool \(p)"
            }
            if let (address, mac) = dhcp.reservations.sorted(by: { $0.key < $1.key }).first(where: {
                r.contains($0.key)
            }) {
                return "pool: \(r) includes \(address), reserved by this server's DHCP for \(mac)"
            }
        }
        return nil
    }

    /// RFC 1123 host-name syntax, dot separated: labels of 1-63 letters, digits and hyphens, not
    /// starting or ending with one; 253 characters at most.
    static func isDomainName(_ s: String) -> Bool {
        let trimmed = s.hasSuffix(".") ? String(s.dropLast()) : s
        guard !trimmed.isEmpty, trimmed.count <= 253 else { return false }
        return trimmed.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            (1...63).contains(label.count) && label.first != "-" && label.last != "-"
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
        }
    }

    /// The lowest address of `subnet`'s pools that is free: not in `used`, not the gateway, and
    /// not the network's own or broadcast address. Nil: the pools are full. Each step past the
    /// first skips an address that is used or reserved, so it takes at most `used.count + 3`
    /// steps per pool, however large the pool.
    public static func firstFree(_ subnet: Subnet, used: Set<IPAddress>) -> IPAddress? {
        for range in subnet.pool {
            var next: IPAddress? = range.first
            while let a = next, range.contains(a) {
                if !used.contains(a), a != subnet.gateway, !subnet.cidr.isReserved(a) { return a }
                next = a.advanced(by: 1)
            }
        }
        return nil
    }
}

/// The addresses a server's DHCP (full mode) hands out on its untagged boot network: its pools,
/// and its reservations (address to the MAC's text). Networks' pools there must stay clear of
/// them, or DHCP could lease an address Farrier has given a deployed machine.
public struct DHCPAddressSpace: Sendable, Hashable {
    public var pools: [IPRange]
    public var reservations: [IPAddress: String]

    public init(pools: [IPRange] = [], reservations: [IPAddress: String] = [:]) {
        self.pools = pools
        self.reservations = reservations
    }
}
