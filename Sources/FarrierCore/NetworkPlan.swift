import Foundation
import WireSupport

public enum BondMode: String, Codable, Sendable, CaseIterable {
    case activeBackup = "active-backup"
    case lacp = "802.3ad"
}

/// What a deploy asks of a machine's network (issue 18 point 4), before it meets a machine:
/// the CLI's `--bond`, `--network` and `--mtu`, or the API's request.
public struct NetworkRequest: Sendable, Hashable {
    /// Which NICs: by name or MAC, or `count` of them matching a filter.
    public enum NICs: Sendable, Hashable {
        case named([String])
        case matching(count: Int, filter: NICFilter)
    }
    public enum NICFilter: Sendable, Hashable, CustomStringConvertible {
        case any
        case link
        case minSpeed(Int)
        case driver(String)

        func admits(_ nic: Inventory.NIC) -> Bool {
            switch self {
            case .any: true
            case .link: nic.link
            case .minSpeed(let mbps): (nic.speedMbps ?? 0) >= mbps
            case .driver(let name): nic.driver == name
            }
        }

        public var description: String {
            switch self {
            case .any: "any"
            case .link: "link"
            case .minSpeed(let mbps): "speed>=\(mbps)"
            case .driver(let name): "driver=\(name)"
            }
        }
    }
    public struct Bond: Sendable, Hashable {
        public var name: String
        public var mode: BondMode
        public var nics: NICs
        public var primary: String?
        public var mtu: Int?
        public init(name: String, mode: BondMode, nics: NICs, primary: String? = nil, mtu: Int? = nil) {
            self.name = name
            self.mode = mode
            self.nics = nics
            self.primary = primary
            self.mtu = mtu
        }
    }
    public struct Attachment: Sendable, Hashable {
        public var network: String
        /// The NIC or bond it goes on; nil: the boot NIC (or the bond it is in).
        public var on: String?
        /// Fixed addresses, at most one per family; the rest come from the network's pools.
        public var addresses: [IPAddress]
        public var defaultRoute: Bool
        public var mtu: Int?

        public init(
            network: String,
            on: String? = nil,
            addresses: [IPAddress] = [],
            defaultRoute: Bool = false,
            mtu: Int? = nil
        ) {
            self.network = network
            self.on = on
            self.addresses = addresses
            self.defaultRoute = defaultRoute
            self.mtu = mtu
        }
    }

    public var bonds: [Bond]
    public var attachments: [Attachment]
    /// MTUs of NICs (by name or MAC) outside any bond.
    public var mtus: [String: Int]

    public init(bonds: [Bond] = [], attachments: [Attachment] = [], mtus: [String: Int] = [:]) {
        self.bonds = bonds
        self.attachments = attachments
        self.mtus = mtus
    }

    public var isEmpty: Bool { bonds.isEmpty && attachments.isEmpty && mtus.isEmpty }

    /// Parses the CLI's flags: `--bond NAME,mode=MODE,nics=eth0+eth1[,primary=eth0][,mtu=N]`
    /// (or `nics=2@speed>=25000`, `2@link`, `2@driver=ice`, `2@any`),
    /// `--network NAME[,on=IFACE][,address=IP]…[,default-route][,mtu=N]` and `--mtu IFACE=N`.
    /// Commas separate fields and `+` joins NICs, since MACs and IPv6 addresses hold colons.
    /// Each error names the flag and its value.
    public static func parse(
        bonds: [String],
        networks: [String],
        mtus: [String]
    ) -> Result<NetworkRequest, InputProblem> {
        var request = NetworkRequest()
        for text in bonds {
            switch parseBond(text) {
            case .success(let b): request.bonds.append(b)
            case .failure(let p): return .failure(InputProblem("--bond \(text): \(p)"))
            }
        }
        for text in networks {
            switch parseAttachment(text) {
            case .success(let a): request.attachments.append(a)
            case .failure(let p): return .failure(InputProblem("--network \(text): \(p)"))
            }
        }
        for text in mtus {
            let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let mtu = Int(parts[1]) else {
                return .failure(InputProblem("--mtu \(text): expected INTERFACE=MTU, like eth2=9000"))
            }
            if request.mtus[parts[0]] != nil {
                return .failure(InputProblem("--mtu \(text): \(parts[0]) is given twice"))
            }
            request.mtus[parts[0]] = mtu
        }
        return .success(request)
    }

    /// `KEY=VALUE` fields after the first (the name), and bare flags.
    private static func fields(_ text: String) -> (name: String, fields: [(String, String?)]) {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let fields = parts.dropFirst().map { part -> (String, String?) in
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            return (kv[0], kv.count == 2 ? kv[1] : nil)
        }
        return (parts[0], fields)
    }

    static func parseBond(_ text: String) -> Result<Bond, InputProblem> {
        let (name, fields) = Self.fields(text)
        if name.isEmpty {
            return .failure(InputProblem("a bond name comes first, like bond0,mode=active-backup,nics=eth0+eth1"))
        }
        var mode: BondMode?
        var nics: NICs?
        var primary: String?
        var mtu: Int?
        let valid = "mode, nics, primary, mtu"
        for (key, value) in fields {
            guard let value, !value.isEmpty else {
                return .failure(InputProblem("'\(key)' needs a value (valid keys: \(valid))"))
            }
            switch key {
            case "mode":
                guard let m = BondMode(rawValue: value) else {
                    return .failure(InputProblem("mode '\(value)' is not one of active-backup, 802.3ad"))
                }
                mode = m
            case "nics":
                if let at = value.firstIndex(of: "@") {
                    guard let count = Int(value[..<at]), count >= 1 else {
                        return .failure(InputProblem("nics=\(value): expected COUNT@FILTER, like 2@speed>=25000"))
                    }
                    let f = String(value[value.index(after: at)...])
                    let filter: NICFilter
                    if f == "any" {
                        filter = .any
                    } else if f == "link" {
                        filter = .link
                    } else if f.hasPrefix("speed>="), let mbps = Int(f.dropFirst(7)), mbps > 0 {
                        filter = .minSpeed(mbps)
                    } else if f.hasPrefix("driver="), f.count > 7 {
                        filter = .driver(String(f.dropFirst(7)))
                    } else {
                        return .failure(
                            InputProblem("nics=\(value): filter '\(f)' is not any, link, speed>=MBPS or driver=NAME")
                        )
                    }
                    nics = .matching(count: count, filter: filter)
                } else {
                    let names = value.split(separator: "+", omittingEmptySubsequences: false).map(String.init)
                    if names.contains(where: \.isEmpty) {
                        return .failure(InputProblem("nics=\(value): an empty NIC name (join NICs with '+')"))
                    }
                    nics = .named(names)
                }
            case "primary": primary = value
            case "mtu":
                guard let n = Int(value) else { return .failure(InputProblem("mtu '\(value)' is not a number")) }
                mtu = n
            default:
                return .failure(InputProblem("unknown key '\(key)' (valid: \(valid))"))
            }
        }
        guard let mode else { return .failure(InputProblem("mode is required (active-backup or 802.3ad)")) }
        guard let nics else { return .failure(InputProblem("nics is required, like nics=eth0+eth1 or nics=2@link")) }
        return .success(Bond(name: name, mode: mode, nics: nics, primary: primary, mtu: mtu))
    }

    static func parseAttachment(_ text: String) -> Result<Attachment, InputProblem> {
        let (name, fields) = Self.fields(text)
        if name.isEmpty { return .failure(InputProblem("a network name comes first, like lab-vlan,on=bond0")) }
        var a = Attachment(network: name)
        let valid = "on, address, default-route, mtu"
        for (key, value) in fields {
            if key == "default-route" {
                guard value == nil else { return .failure(InputProblem("default-route takes no value")) }
                a.defaultRoute = true
                continue
            }
            guard let value, !value.isEmpty else {
                return .failure(InputProblem("'\(key)' needs a value (valid keys: \(valid))"))
            }
            switch key {
            case "on": a.on = value
            case "address":
                guard let ip = IPAddress(value) else {
                    return .failure(InputProblem("address '\(value)' is not an IP address"))
                }
                a.addresses.append(ip)
            case "mtu":
                guard let n = Int(value) else { return .failure(InputProblem("mtu '\(value)' is not a number")) }
                a.mtu = n
            default:
                return .failure(InputProblem("unknown key '\(key)' (valid: \(valid))"))
            }
        }
        return .success(a)
    }
}

/// A deploy's network plan for one machine, its NICs resolved to MACs (kept in its
/// `Deployment`): what the installed OS's cloud-init `network-config` says.
public struct DeployedNetworking: Codable, Sendable, Hashable {
    public struct NIC: Codable, Sendable, Hashable {
        /// As the inventory names it.
        public var name: String
        public var mac: MACAddress
        public var mtu: Int?
        public init(name: String, mac: MACAddress, mtu: Int? = nil) {
            self.name = name
            self.mac = mac
            self.mtu = mtu
        }
    }
    public struct Bond: Codable, Sendable, Hashable {
        public var name: String
        public var mode: BondMode
        public var members: [String]
        public var primary: String?
        public var mtu: Int?
        /// The MAC it takes: the boot NIC's if that is a member, else its first member's.
        public var mac: MACAddress
        public init(name: String, mode: BondMode, members: [String], primary: String?, mtu: Int?, mac: MACAddress) {
            self.name = name
            self.mode = mode
            self.members = members
            self.primary = primary
            self.mtu = mtu
            self.mac = mac
        }
    }
    public struct Attachment: Codable, Sendable, Hashable {
        public var network: String
        /// The interface that holds its addresses: a NIC, a bond, or a VLAN on either.
        public var interface: String
        /// The NIC or bond under it (the interface itself when untagged).
        public var parent: String
        public var vlan: Int
        /// The network's subnets, gateways, DNS servers and search domains when it was deployed.
        public var subnets: [IPNetwork]
        public var gateways: [IPAddress]
        public var dns: [IPAddress]
        public var searchDomains: [String]
        /// Fixed addresses asked for; the store gives the rest.
        public var requested: [IPAddress]
        /// One per subnet, once the store has allocated them (nil before).
        public var addresses: [IPAddress]?
        public var defaultRoute: Bool
        public var mtu: Int?

        /// Its addresses (allocated, else asked) with their subnets' prefixes: `198.18.100.10/24`.
        public var cidrs: [String] {
            (addresses ?? requested).compactMap { ip in
                subnets.first { $0.family == ip.family }.map { "\(ip)/\($0.prefixLength)" }
            }
        }

        public init(
            network: String,
            interface: String,
            parent: String,
            vlan: Int,
            subnets: [IPNetwork],
            gateways: [IPAddress],
            dns: [IPAddress],
            searchDomains: [String],
            requested: [IPAddress],
            addresses: [IPAddress]?,
            defaultRoute: Bool,
            mtu: Int?
        ) {
            self.network = network
            self.interface = interface
            self.parent = parent
            self.vlan = vlan
            self.subnets = subnets
            self.gateways = gateways
            self.dns = dns
            self.searchDomains = searchDomains
            self.requested = requested
            self.addresses = addresses
            self.defaultRoute = defaultRoute
            self.mtu = mtu
        }
    }

    public var nics: [NIC]
    public var bonds: [Bond]
    public var attachments: [Attachment]
    /// The boot NIC's name, and whether it (or its bond) keeps DHCPv4.
    public var bootNIC: String
    public var bootDHCP: Bool

    public init(nics: [NIC], bonds: [Bond], attachments: [Attachment], bootNIC: String, bootDHCP: Bool) {
        self.nics = nics
        self.bonds = bonds
        self.attachments = attachments
        self.bootNIC = bootNIC
        self.bootDHCP = bootDHCP
    }

    /// The boot NIC, or the bond it is in: the interface that keeps DHCPv4.
    public var bootInterface: String { bonds.first { $0.members.contains(bootNIC) }?.name ?? bootNIC }

    /// The NICs the plan touches, in inventory order: the boot NIC, bond members, NICs that
    /// carry a network or are given an MTU. network-config lists these; the others stay down.
    public var configuredNICs: [NIC] {
        let members = Set(bonds.flatMap(\.members))
        let parents = Set(attachments.map(\.parent))
        return nics.filter { n in
            n.name == bootNIC || members.contains(n.name) || parents.contains(n.name) || n.mtu != nil
        }
    }

    /// The MACs of the boot NIC's bond's other members: the bond, which keeps DHCP, may take
    /// one of their MACs and speak from its lease. Empty when the boot NIC is in no bond.
    public var memberMACs: Set<MACAddress> {
        let byName = Dictionary(nics.map { ($0.name, $0.mac) }, uniquingKeysWith: { a, _ in a })
        let bootBond = bonds.first { $0.members.contains(bootNIC) }?.members ?? []
        return Set(bootBond.filter { $0 != bootNIC }.compactMap { byName[$0] })
    }

    /// Resolves `request` on `machine` (its inventory's NICs), with `networks` by name as a
    /// member of `project` (nil: an admin deploying into no project) sees them. Every problem
    /// names the request's field (`bonds[0].nics`, `networks[1].address`); a network closed to
    /// the project is answered as one that does not exist.
    public static func resolve(
        _ request: NetworkRequest,
        machine: Machine,
        networks: [String: Network],
        project: String?
    ) -> Result<DeployedNetworking, InputProblem> {
        func fail(_ s: String) -> Result<DeployedNetworking, InputProblem> { .failure(InputProblem(s)) }
        guard let inventory = machine.inventory, !inventory.nics.isEmpty else {
            return fail(
                "\(machine.name) has no inventory of its NICs: commission it before asking for bonds or networks"
            )
        }
        var nics: [NIC] = []
        for n in inventory.nics {
            // A name the kernel would not give (the inventory is the agent's word) is not used.
            guard let mac = MACAddress(n.mac), n.name.count <= 15,
                n.name.allSatisfy({ $0.isASCII && !$0.isWhitespace }),
                n.name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F && $0 != "/" })
            else { continue }
            nics.append(NIC(name: n.name, mac: mac, mtu: nil))
        }
        guard let boot = nics.first(where: { $0.mac == machine.mac }) else {
            return fail("\(machine.name)'s inventory has no NIC with its boot MAC \(machine.mac): commission it again")
        }
        let inventoryByName = Dictionary(inventory.nics.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        func nic(_ ref: String) -> NIC? {
            let mac = MACAddress(ref)
            return nics.first { $0.name == ref || (mac != nil && $0.mac == mac) }
        }
        let known = "NICs: " + nics.map(\.name).joined(separator: ", ")

        // Bonds.
        var bonds: [Bond] = []
        var bondOf: [String: String] = [:]
        for (i, b) in request.bonds.enumerated() {
            let field = "bonds[\(i)]"
            if let p = interfaceNameProblem(b.name) { return fail("\(field).name: \(p)") }
            if nic(b.name) != nil || bonds.contains(where: { $0.name == b.name }) {
                return fail("\(field).name: \(b.name) is already the name of a NIC or bond")
            }
            var members: [String] = []
            switch b.nics {
            case .named(let refs):
                for ref in refs {
                    guard let n = nic(ref) else { return fail("\(field).nics: no NIC \(ref) (\(known))") }
                    if let other = bondOf[n.name] { return fail("\(field).nics: \(n.name) is already in \(other)") }
                    if members.contains(n.name) { return fail("\(field).nics: \(n.name) is named twice") }
                    members.append(n.name)
                }
            case .matching(let count, let filter):
                // In inventory order, the boot NIC first.
                let ordered = [boot] + nics.filter { $0.name != boot.name }
                let found = ordered.filter { n in
                    bondOf[n.name] == nil && inventoryByName[n.name].map(filter.admits) == true
                }
                if found.count < count {
                    let list = found.isEmpty ? "none" : found.map(\.name).joined(separator: ", ")
                    return fail("\(field).nics: \(count)@\(filter) matches \(found.count) free NIC(s) (\(list))")
                }
                members = found.prefix(count).map(\.name)
            }
            if members.isEmpty { return fail("\(field).nics: a bond needs at least one NIC") }
            var primary: String?
            if let p = b.primary {
                guard b.mode == .activeBackup else {
                    return fail("\(field).primary: applies to active-backup bonds only")
                }
                guard let n = nic(p), members.contains(n.name) else {
                    return fail("\(field).primary: \(p) is not one of its NICs (\(members.joined(separator: ", ")))")
                }
                primary = n.name
            } else if b.mode == .activeBackup {
                primary = members.contains(boot.name) ? boot.name : members[0]
            }
            if let mtu = b.mtu, let p = mtuProblem(mtu) { return fail("\(field).mtu: \(p)") }
            let mac = members.contains(boot.name) ? boot.mac : nic(members[0])!.mac
            for m in members { bondOf[m] = b.name }
            bonds.append(Bond(name: b.name, mode: b.mode, members: members, primary: primary, mtu: b.mtu, mac: mac))
        }

        // MTUs of NICs outside bonds.
        for (ref, mtu) in request.mtus.sorted(by: { $0.key < $1.key }) {
            let field = "mtus[\(ref)]"
            if bonds.contains(where: { $0.name == ref }) {
                return fail("\(field): \(ref) is a bond: give its MTU in the bond (mtu=…)")
            }
            guard let n = nic(ref), let i = nics.firstIndex(of: n) else {
                return fail("\(field): no NIC \(ref) (\(known))")
            }
            if let bond = bondOf[n.name] {
                return fail("\(field): \(n.name) is in \(bond): give the bond's MTU instead")
            }
            if let p = mtuProblem(mtu) { return fail("\(field): \(p)") }
            nics[i].mtu = mtu
        }
        func mtu(of interface: String) -> Int {
            bonds.first { $0.name == interface }.map { $0.mtu ?? 1500 } ?? nics.first { $0.name == interface }?.mtu
                ?? 1500
        }

        // Attachments.
        let bootInterface = bondOf[boot.name] ?? boot.name
        var attachments: [Attachment] = []
        var defaultRoutes: Set<IPFamily> = []
        var staticBoot = false
        for (i, a) in request.attachments.enumerated() {
            let field = "networks[\(i)]"
            guard let network = networks[a.network], network.isOpen(to: project) else {
                return fail("\(field).network: no network named '\(a.network)'")
            }
            if network.site != machine.site {
                let here = machine.site.map { "site \($0)" } ?? "the region's own boot network"
                let there = network.site.map { "site \($0)" } ?? "the region's own boot network"
                return fail("\(field).network: \(network.name) is at \(there); \(machine.name) is at \(here)")
            }
            var parent = bootInterface
            if let on = a.on {
                if bonds.contains(where: { $0.name == on }) {
                    parent = on
                } else if let n = nic(on) {
                    if let bond = bondOf[n.name] {
                        return fail("\(field).on: \(n.name) is in \(bond): attach to \(bond)")
                    }
                    parent = n.name
                } else {
                    let names = (nics.map(\.name) + bonds.map(\.name)).joined(separator: ", ")
                    return fail("\(field).on: no NIC or bond \(on) (\(names))")
                }
            }
            // An untagged IPv4 network on the boot interface gives it a static address instead
            // of DHCPv4. The installed OS reports in from it: every replica's address book
            // learns the boot network's static addresses (NetworkSync); a site's does not yet.
            if network.vlan == 0, parent == bootInterface, network.subnet(.v4) != nil {
                if let site = machine.site {
                    return fail(
                        "\(field): network \(network.name) is untagged IPv4 on the boot interface \(bootInterface), and at site \(site) that interface keeps DHCP (the site relays the installed OS's report from its lease only); put it on another NIC or bond (on=…)"
                    )
                }
                staticBoot = true
            }
            var interface = parent
            if network.vlan > 0 {
                let dotted = "\(parent).\(network.vlan)"
                interface = dotted.count <= 15 ? dotted : "vlan\(network.vlan)"
            }
            if let other = attachments.first(where: { $0.interface == interface }) {
                return fail(
                    other.parent != parent
                        ? "\(field): its VLAN interface would be named \(interface), as \(other.network)'s on \(other.parent) is; give \(parent) a shorter name"
                        : network.vlan > 0
                            ? "\(field): \(interface) already carries network \(other.network) (VLAN \(network.vlan))"
                            : "\(field): \(parent) already carries network \(other.network) untagged"
                )
            }
            if network.vlan > 0, nic(interface) != nil || bonds.contains(where: { $0.name == interface }) {
                return fail("\(field): its VLAN interface would be named \(interface), which a NIC or bond already is")
            }
            var requested: [IPAddress] = []
            for ip in a.addresses {
                guard let subnet = network.subnet(ip.family) else {
                    return fail(
                        "\(field).address: \(ip) is \(ip.family.rawValue); network \(network.name) has no \(ip.family.rawValue) subnet"
                    )
                }
                if requested.contains(where: { $0.family == ip.family }) {
                    return fail("\(field).address: two \(ip.family.rawValue) addresses; give at most one per family")
                }
                guard subnet.pool.contains(where: { $0.contains(ip) }), ip != subnet.gateway else {
                    let pools = subnet.pool.map(\.description).joined(separator: ", ")
                    return fail("\(field).address: \(ip) is outside network \(network.name)'s pool \(pools)")
                }
                requested.append(ip)
            }
            if a.defaultRoute {
                // Only the families it has a gateway for: those are the routes it carries.
                let families = network.subnets.filter { $0.gateway != nil }.map(\.cidr.family)
                if families.isEmpty { return fail("\(field).default-route: network \(network.name) has no gateway") }
                for family in families {
                    if defaultRoutes.contains(family) {
                        return fail(
                            "\(field).default-route: another network already has the \(family.rawValue) default route"
                        )
                    }
                    defaultRoutes.insert(family)
                }
            }
            let attachmentMTU = a.mtu ?? network.mtu
            if let m = attachmentMTU {
                if let p = mtuProblem(m) { return fail("\(field).mtu: \(p)") }
                if m < 1280, network.subnet(.v6) != nil {
                    return fail("\(field).mtu: \(m) is below IPv6's minimum of 1280")
                }
                if network.vlan > 0, m > mtu(of: parent) {
                    return fail("\(field).mtu: \(m) is above \(parent)'s \(mtu(of: parent))")
                }
            }
            // Untagged, its MTU is its interface's.
            if network.vlan == 0, let m = attachmentMTU {
                if let b = bonds.firstIndex(where: { $0.name == parent }) {
                    if let set = bonds[b].mtu, set != m {
                        return fail("\(field).mtu: \(m), but \(parent) is given \(set)")
                    }
                    bonds[b].mtu = m
                } else if let n = nics.firstIndex(where: { $0.name == parent }) {
                    if let set = nics[n].mtu, set != m {
                        return fail("\(field).mtu: \(m), but \(parent) is given \(set)")
                    }
                    nics[n].mtu = m
                }
            }
            attachments.append(
                Attachment(
                    network: network.name,
                    interface: interface,
                    parent: parent,
                    vlan: network.vlan,
                    subnets: network.subnets.map(\.cidr),
                    gateways: network.subnets.compactMap(\.gateway),
                    dns: network.dns,
                    searchDomains: network.searchDomains,
                    requested: requested,
                    addresses: nil,
                    defaultRoute: a.defaultRoute,
                    mtu: network.vlan > 0 ? attachmentMTU : nil
                )
            )
        }
        // A VLAN's MTU is never above its parent's, whichever was given first.
        for a in attachments where a.vlan > 0 {
            if let m = a.mtu, m > mtu(of: a.parent) {
                return fail("networks: \(a.interface)'s mtu \(m) is above \(a.parent)'s \(mtu(of: a.parent))")
            }
        }
        return .success(
            DeployedNetworking(
                nics: nics,
                bonds: bonds,
                attachments: attachments,
                bootNIC: boot.name,
                bootDHCP: !staticBoot
            )
        )
    }

    /// Linux's rules for an interface name Farrier makes (a bond): 1-15 characters, letters,
    /// digits, '-' and '_', starting with a letter.
    static func interfaceNameProblem(_ name: String) -> String? {
        if name.isEmpty || name.count > 15 { return "'\(name)' is not 1-15 characters long" }
        guard let first = name.first, first.isASCII, first.isLetter,
            name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") })
        else {
            return "'\(name)' must start with a letter and hold only letters, digits, '-' and '_'"
        }
        return nil
    }

    static func mtuProblem(_ mtu: Int) -> String? { (68...9216).contains(mtu) ? nil : "\(mtu) is not 68-9216" }
}

/// The static addresses a machine write takes and gives back: both stores run it inside every
/// machine write (after the write's own change, before its row is written), so the addresses
/// a machine holds are always those of its deployment's plan, committed with it.
public enum AddressAllocation {
    /// The addresses the plan of `m`'s deployment holds, by network.
    public static func held(_ m: Machine) -> Set<NetworkAddressKey> {
        Set(
            (m.deployment?.networking?.attachments ?? []).flatMap { a in
                (a.addresses ?? []).map { NetworkAddressKey(network: a.network, address: $0) }
            }
        )
    }

    /// The networks whose attachments still wait for addresses, in name order (the order
    /// stores lock them in, so two writes never wait on each other's locks).
    public static func pending(_ m: Machine) -> [String] {
        Set((m.deployment?.networking?.attachments ?? []).filter { $0.addresses == nil }.map(\.network)).sorted()
    }

    /// Gives each waiting attachment of `m` one address per subnet: the one asked for, or the
    /// lowest free of the subnet's pools. `used` holds, by network, the addresses other
    /// machines hold. Returns one event per address taken. Throws `notFound` for a network
    /// gone since the deploy was checked, `alreadyExists` for an address asked for that is
    /// taken, and `exhausted` for a full pool; the caller's write then commits nothing.
    public static func allocate(
        _ m: inout Machine,
        networks: [String: Network],
        used: [String: Set<IPAddress>],
        time: Date = Date()
    ) throws -> [MachineEvent] {
        guard var plan = m.deployment?.networking else { return [] }
        var taken = used
        var fresh: [NetworkAddressKey] = []
        for i in plan.attachments.indices where plan.attachments[i].addresses == nil {
            let a = plan.attachments[i]
            guard let network = networks[a.network] else {
                throw StoreError(.notFound, "no network named '\(a.network)'")
            }
            var addresses: [IPAddress] = []
            for subnet in network.subnets {
                let address: IPAddress
                if let asked = a.requested.first(where: { $0.family == subnet.cidr.family }) {
                    // The network as the store has it now (it may have been made again since the
                    // deploy was checked).
                    guard subnet.pool.contains(where: { $0.contains(asked) }), asked != subnet.gateway else {
                        throw StoreError(.notFound, "address \(asked) is not in network \(a.network)'s pools")
                    }
                    if taken[a.network, default: []].contains(asked) {
                        throw StoreError(.alreadyExists, "address \(asked) on network \(a.network) is already taken")
                    }
                    address = asked
                } else {
                    guard let free = Network.firstFree(subnet, used: taken[a.network, default: []]) else {
                        throw StoreError(
                            .exhausted,
                            "network \(a.network): no free \(subnet.cidr.family.rawValue) address in its pool"
                        )
                    }
                    address = free
                }
                taken[a.network, default: []].insert(address)
                addresses.append(address)
                fresh.append(NetworkAddressKey(network: a.network, address: address))
            }
            plan.attachments[i].addresses = addresses
            plan.attachments[i].subnets = network.subnets.map(\.cidr)
        }
        m.deployment?.networking = plan
        let machine = m
        return fresh.map {
            MachineEvent(machine, kind: .action, message: "address \($0.address) (\($0.network)) allocated", time: time)
        }
    }

    /// A write that moves a machine holding addresses to another site: refused, since its
    /// addresses are on the old site's networks.
    public static func siteChangeProblem(from old: Machine, to m: Machine) -> StoreError? {
        guard old.site != m.site, let key = held(m).sorted().first else { return nil }
        return StoreError(
            .inUse,
            "machine \(m.name) holds address \(key.address) on network \(key.network); release it before moving it to another site"
        )
    }

    /// The events for addresses a write gave back.
    public static func released(_ keys: Set<NetworkAddressKey>, by m: Machine, time: Date = Date()) -> [MachineEvent] {
        keys.sorted().map {
            MachineEvent(m, kind: .action, message: "address \($0.address) (\($0.network)) released", time: time)
        }
    }
}

extension DeployedNetworking {
    /// The boot interface's static IPv4 address, when the plan gives it one instead of DHCPv4
    /// (nil before the store allocates it).
    public var bootAddress: IPv4Address? {
        guard !bootDHCP else { return nil }
        for a in attachments where a.interface == bootInterface && a.vlan == 0 {
            for case .v4(let ip) in a.addresses ?? [] { return ip }
        }
        return nil
    }
}

extension Machine {
    /// The static address its installed OS answers on, while that OS runs (deployed, or
    /// waiting for it to report in): in the ramdisk (rescue, a wipe) it has a DHCP lease.
    public var staticBootAddress: IPv4Address? {
        guard state == .deployed || phase == .os else { return nil }
        return deployment?.networking?.bootAddress
    }

    /// Whether the installed OS may report in from an address leased to `mac`: the boot NIC's,
    /// or a NIC its deployment bonds with it (a bond can take a member's MAC, and its lease).
    public func osMayReport(from mac: MACAddress) -> Bool {
        mac == self.mac || deployment?.networking?.memberMACs.contains(mac) == true
    }
}

/// An address on a network: the key of the stores' address table (no two machines hold one).
public struct NetworkAddressKey: Hashable, Sendable, Comparable {
    public var network: String
    public var address: IPAddress
    public init(network: String, address: IPAddress) {
        self.network = network
        self.address = address
    }
    public static func < (a: Self, b: Self) -> Bool { (a.network, a.address) < (b.network, b.address) }
}

/// One interface of a deployed machine's network plan, as `machine show` lists it.
public struct DeployedInterface: Sendable, Hashable {
    public enum Kind: String, Sendable { case nic, bond, vlan }
    public var name: String
    public var kind: Kind
    public var mac: MACAddress?
    public var members: [String] = []
    public var mode: BondMode?
    public var parent: String?
    public var vlan: Int = 0
    public var mtu: Int?
    /// CIDR form.
    public var addresses: [String] = []
    public var network: String?
    public var dhcp4: Bool = false
}

extension DeployedNetworking {
    /// Its interfaces in the order network-config lists them: the NICs it touches, bonds, VLANs.
    public var interfaces: [DeployedInterface] {
        let bootInterface = bootInterface
        let members = Set(bonds.flatMap(\.members))
        func layer3(_ i: inout DeployedInterface) {
            for a in attachments where a.interface == i.name {
                i.network = a.network
                i.addresses += a.cidrs
            }
            i.dhcp4 = i.name == bootInterface && bootDHCP
        }
        var out: [DeployedInterface] = []
        for n in configuredNICs {
            var i = DeployedInterface(name: n.name, kind: .nic, mac: n.mac, mtu: n.mtu)
            if !members.contains(n.name) { layer3(&i) }
            out.append(i)
        }
        for b in bonds {
            var i = DeployedInterface(
                name: b.name,
                kind: .bond,
                mac: b.mac,
                members: b.members,
                mode: b.mode,
                mtu: b.mtu
            )
            layer3(&i)
            out.append(i)
        }
        for a in attachments where a.vlan > 0 {
            var i = DeployedInterface(name: a.interface, kind: .vlan, parent: a.parent, vlan: a.vlan, mtu: a.mtu)
            layer3(&i)
            out.append(i)
        }
        return out
    }
}
