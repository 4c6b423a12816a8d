import FarrierCore
import Foundation
import Testing

/// Networks for deployed machines (issue 18 point 4), the pure part: IPv6 text, networks as an
/// admin defines them, a deploy's request resolved on a machine, and the network-config v2
/// cloud-init gets.
struct NetworkTests {
    static let epoch = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func ipv6TextFollowsRFC4291InAndRFC5952Out() throws {
        let cases: [(String, String)] = [
            ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
            ("2001:DB8::A", "2001:db8::a"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),  // the first of two equal runs
            ("2001:db8:0:0:0:1:0:0", "2001:db8::1:0:0"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),  // one zero group stays
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"),
            ("fd98:18:100::10", "fd98:18:100::10"),
            ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
            ("::ffff:c000:0201", "::ffff:192.0.2.1"),
            ("64:ff9b::192.0.2.33", "64:ff9b::c000:221"),
        ]
        for (text, canonical) in cases {
            let a = try #require(IPv6Address(text), "\(text)")
            #expect(a.description == canonical, "\(text)")
            #expect(IPv6Address(canonical) == a)
        }
        #expect(IPv4Address("+1.2.3.4") == nil && IPv6Address("::ffff:+1.2.3.4") == nil)
        for bad in [
            "", ":", ":::", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "::g", "1.2.3.4",
            "fe80::1%eth0", "1:2:3:4:5:6:7:8::", ":1::", "1::2:", "::1.2.3", "::1.2.3.4:5", "2001:db8::/64",
        ] {
            #expect(IPv6Address(bad) == nil, "\(bad)")
        }
        let net = try #require(IPv6Network("fd98:18:100::1/64"))
        #expect(net.description == "fd98:18:100::/64" && net.last.description == "fd98:18:100:0:ffff:ffff:ffff:ffff")
        #expect(net.contains(IPv6Address("fd98:18:100::ffff")!) && !net.contains(IPv6Address("fd98:18:101::")!))
        #expect(IPv6Network("::/0")!.contains(IPv6Address("2001:db8::1")!))
        #expect(IPv6Network("fd98::/129") == nil && IPv6Network("fd98::/+64") == nil)
        #expect(IPv6Address("::ffff:ffff:ffff:ffff")!.advanced(by: 1) == IPv6Address("0:0:0:1::"))
        #expect(IPv6Address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")!.advanced(by: 1) == nil)
    }

    @Test func addressesRangesAndCounts() throws {
        let a = try #require(IPAddress("198.18.100.10"))
        let b = try #require(IPAddress("fd98:18:100::10"))
        #expect(a < b && a.isIPv4 && !b.isIPv4)
        #expect(IPRange("198.18.100.10-198.18.100.19")?.count == 10)
        #expect(IPRange("fd98::1-fd98::1")?.count == 1 && IPRange("fd98::5")?.description == "fd98::5")
        #expect(IPRange("fd98::-fd98::ffff:ffff:ffff:ffff")?.count == .max)
        #expect(IPRange("fd98::-fd98:0:0:1::")?.count == .max)
        #expect(IPAddress("fd98:0:0:0:ffff:ffff:ffff:fff0")!.count(through: IPAddress("fd98:0:0:1::f")!) == 32)
        #expect(IPRange("198.18.100.19-198.18.100.10") == nil && IPRange("198.18.100.1-fd98::1") == nil)
        #expect(IPAddress("255.255.255.255")!.advanced(by: 1) == nil)
        // Codable as canonical text.
        let json = try JSONEncoder().encode([IPAddress("2001:DB8::1")!])
        #expect(String(decoding: json, as: UTF8.self) == #"["2001:db8::1"]"#)
        #expect(try JSONDecoder().decode([IPRange].self, from: Data(#"["10.0.0.5-10.0.0.9"]"#.utf8)).first?.count == 5)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([IPAddress].self, from: Data(#"["x"]"#.utf8)) }
    }

    static func labVLAN(projects: [String] = [], site: String? = nil) throws -> Network {
        try Network.make(
            name: "lab-vlan",
            cidrs: ["198.18.100.0/24", "fd98:18:100::/64"],
            gateways: ["198.18.100.1", "fd98:18:100::1"],
            pools: ["198.18.100.10-198.18.100.19", "fd98:18:100::10-fd98:18:100::1f"],
            dns: ["198.18.100.1"],
            searchDomains: ["lab.example"],
            vlan: 100,
            mtu: 1400,
            site: site,
            projects: projects,
            created: Self.epoch
        ).get()
    }

    @Test func aNetworkIsCheckedFieldByField() throws {
        let n = try Self.labVLAN()
        #expect(n.subnets.count == 2 && n.subnet(.v4)?.gateway?.description == "198.18.100.1")
        #expect(n.subnet(.v4)?.poolSize == 10 && n.subnet(.v6)?.poolSize == 16)
        let back = try JSONDecoder().decode(Network.self, from: JSONEncoder().encode(n))
        #expect(back == n)

        func problem(
            cidrs: [String] = ["10.0.0.0/24"],
            gateways: [String] = [],
            pools: [String] = ["10.0.0.100-10.0.0.199"],
            dns: [String] = [],
            search: [String] = [],
            vlan: Int = 0,
            mtu: Int? = nil,
            name: String = "n1"
        ) -> String {
            let r = Network.make(
                name: name,
                cidrs: cidrs,
                gateways: gateways,
                pools: pools,
                dns: dns,
                searchDomains: search,
                vlan: vlan,
                mtu: mtu,
                created: Self.epoch
            )
            switch r {
            case .success: return "ok"
            case .failure(let p): return p.description
            }
        }
        #expect(problem() == "ok")
        #expect(problem(name: "Bad_Name").hasPrefix("name: network name 'Bad_Name'"))
        #expect(problem(cidrs: []) == "cidr: at least one (IPv4 or IPv6) is required")
        #expect(
            problem(cidrs: ["10.0.0.0/33"])
                == "cidr: '10.0.0.0/33' is not an IPv4 or IPv6 network (like 198.18.100.0/24)"
        )
        #expect(problem(cidrs: ["10.0.0.5/24"]) == "cidr: '10.0.0.5/24' has host bits set (the network is 10.0.0.0/24)")
        #expect(problem(cidrs: ["10.0.0.0/31"]) == "cidr: 10.0.0.0/31 leaves no room for hosts (at most /30 for IPv4)")
        #expect(
            problem(cidrs: ["10.0.0.0/24", "10.1.0.0/24"])
                == "cidr: 10.0.0.0/24 and 10.1.0.0/24 are both IPv4; a network has at most one of each"
        )
        #expect(problem(gateways: ["10.1.0.1"]) == "gateway: 10.1.0.1 is outside cidr 10.0.0.0/24")
        #expect(problem(gateways: ["10.0.0.255"]) == "gateway: 10.0.0.255 is 10.0.0.0/24's broadcast address")
        #expect(problem(gateways: ["fd00::1"]) == "gateway: fd00::1 is IPv6, and no IPv6 cidr is given")
        #expect(
            problem(gateways: ["10.0.0.1", "10.0.0.2"])
                == "gateway: 10.0.0.1 and 10.0.0.2 are both for 10.0.0.0/24; give one per family"
        )
        #expect(problem(pools: ["10.0.0.200-10.0.0.100"]) == "pool: 10.0.0.200-10.0.0.100 ends before it starts")
        #expect(problem(pools: ["10.0.0.1-fd00::1"]) == "pool: 10.0.0.1-fd00::1 mixes IPv4 and IPv6")
        #expect(problem(pools: ["ten-eleven"]) == "pool: 'ten-eleven' is not a range FIRST-LAST of IP addresses")
        #expect(problem(pools: ["10.0.1.1-10.0.1.9"]) == "pool: 10.0.1.1-10.0.1.9 is outside cidr 10.0.0.0/24")
        #expect(
            problem(pools: ["10.0.0.0-10.0.0.9"])
                == "pool: 10.0.0.0-10.0.0.9 includes 10.0.0.0, 10.0.0.0/24's network address"
        )
        #expect(
            problem(pools: ["10.0.0.250-10.0.0.255"])
                == "pool: 10.0.0.250-10.0.0.255 includes 10.0.0.255, 10.0.0.0/24's broadcast address"
        )
        #expect(problem(gateways: ["10.0.0.150"]) == "pool: includes the gateway 10.0.0.150")
        #expect(
            problem(pools: ["10.0.0.10-10.0.0.20", "10.0.0.15-10.0.0.30"])
                == "pool: 10.0.0.15-10.0.0.30 overlaps 10.0.0.10-10.0.0.20"
        )
        #expect(problem(cidrs: ["10.0.0.0/24", "fd98:18:100::/64"]) == "pool: none given for cidr fd98:18:100::/64")
        #expect(problem(dns: ["x"]) == "dns: 'x' is not an IP address")
        #expect(problem(search: ["lab example"]) == "search: 'lab example' is not a domain name")
        #expect(problem(search: ["-lab.example"]) == "search: '-lab.example' is not a domain name")
        #expect(problem(vlan: 5000) == "vlan: 5000 is not 0 (untagged) or 1-4094")
        #expect(problem(mtu: 10_000) == "mtu: 10000 is not 68-9216")
        #expect(
            problem(cidrs: ["fd98::/64"], pools: ["fd98::10-fd98::1f"], mtu: 1000)
                == "mtu: 1000 is below IPv6's minimum of 1280"
        )
    }

    /// A network on the server's untagged boot segment keeps clear of its DHCP's pools and
    /// reservations; one on a VLAN or at a site is another segment, and may reuse the numbers.
    @Test func aBootSegmentNetworkKeepsClearOfDHCP() throws {
        let dhcp = DHCPAddressSpace(
            pools: [IPRange("198.18.0.100-198.18.0.199")!],
            reservations: [IPAddress("198.18.0.7")!: "52:54:00:18:00:07"]
        )
        func flat(_ pool: String, vlan: Int = 0, site: String? = nil) throws -> Network {
            try Network.make(
                name: "flat",
                cidrs: ["198.18.0.0/24"],
                gateways: [],
                pools: [pool],
                dns: [],
                searchDomains: [],
                vlan: vlan,
                mtu: nil,
                site: site,
                projects: [],
                created: Self.epoch
            ).get()
        }
        #expect(
            try flat("198.18.0.190-198.18.0.210").clash(with: dhcp)
                == "pool: 198.18.0.190-198.18.0.210 overlaps this server's DHCP pool 198.18.0.100-198.18.0.199"
        )
        #expect(
            try flat("198.18.0.2-198.18.0.20").clash(with: dhcp)
                == "pool: 198.18.0.2-198.18.0.20 includes 198.18.0.7, reserved by this server's DHCP for 52:54:00:18:00:07"
        )
        #expect(try flat("198.18.0.200-198.18.0.210").clash(with: dhcp) == nil)
        #expect(try flat("198.18.0.100-198.18.0.110", vlan: 100).clash(with: dhcp) == nil)
        #expect(try flat("198.18.0.100-198.18.0.110", site: "site-1").clash(with: dhcp) == nil)
        #expect(try flat("198.18.0.100-198.18.0.110").clash(with: DHCPAddressSpace()) == nil)
    }

    @Test func theLowestFreeAddressOfThePools() throws {
        let n = try Self.labVLAN()
        let v4 = try #require(n.subnet(.v4))
        #expect(Network.firstFree(v4, used: []) == IPAddress("198.18.100.10"))
        #expect(
            Network.firstFree(v4, used: [IPAddress("198.18.100.10")!, IPAddress("198.18.100.12")!])
                == IPAddress("198.18.100.11")
        )
        let all = Set((10...19).map { IPAddress("198.18.100.\($0)")! })
        #expect(Network.firstFree(v4, used: all) == nil)
        // A second pool is used once the first is full.
        var two = v4
        two.pool.append(IPRange("198.18.100.200-198.18.100.201")!)
        #expect(Network.firstFree(two, used: all) == IPAddress("198.18.100.200"))
        // A pool of 2^64 addresses: as many steps as used addresses, not as the pool's size.
        let wide = try Network.make(
            name: "wide",
            cidrs: ["fd98:18:200::/64"],
            pools: ["fd98:18:200::1-fd98:18:200:0:ffff:ffff:ffff:ffff"],
            created: Self.epoch
        ).get()
        let used = Set((1...1000).map { IPAddress.v6(IPv6Address(high: 0xfd98_0018_0200_0000, low: UInt64($0))) })
        #expect(Network.firstFree(wide.subnets[0], used: used)?.description == "fd98:18:200::3e9")
        #expect(wide.subnets[0].poolSize == .max)
    }

    // MARK: - A deploy's request on a machine

    static let boot = MACAddress("52:54:00:18:00:01")!

    /// lab-1 with two e1000 NICs, and two 25 Gb/s ones.
    static func machine(site: String? = nil) -> Machine {
        var m = Machine(
            name: "lab-1",
            mac: boot,
            architecture: .x86_64,
            firmware: .bios,
            state: .ready,
            firstSeen: epoch,
            lastSeen: epoch
        )
        m.site = site
        m.inventory = Inventory(
            cpuModel: "QEMU",
            cores: 1,
            memoryBytes: 1 << 30,
            disks: [],
            nics: [
                .init(name: "eth0", mac: "52:54:00:18:00:01", driver: "e1000", link: true, speedMbps: 1000),
                .init(name: "eth1", mac: "52:54:00:28:00:01", driver: "e1000", link: true, speedMbps: 1000),
                .init(name: "eth2", mac: "0c:42:a1:00:00:02", driver: "ice", link: true, speedMbps: 25000),
                .init(name: "eth3", mac: "0c:42:a1:00:00:03", driver: "ice", link: false, speedMbps: nil),
            ],
            vendor: "QEMU",
            product: "Standard PC",
            serial: "",
            firmware: .bios
        )
        return m
    }

    func resolve(
        bonds: [String] = [],
        networks: [String] = [],
        mtus: [String] = [],
        project: String? = "p",
        on machine: Machine = NetworkTests.machine(),
        known: [Network]? = nil
    ) throws -> Result<DeployedNetworking, InputProblem> {
        let request = try NetworkRequest.parse(bonds: bonds, networks: networks, mtus: mtus).get()
        let known = try known ?? [Self.labVLAN()]
        return DeployedNetworking.resolve(
            request,
            machine: machine,
            networks: Dictionary(uniqueKeysWithValues: known.map { ($0.name, $0) }),
            project: project
        )
    }

    func problem(
        bonds: [String] = [],
        networks: [String] = [],
        mtus: [String] = [],
        project: String? = "p",
        on machine: Machine = NetworkTests.machine(),
        known: [Network]? = nil
    ) throws -> String {
        switch try resolve(bonds: bonds, networks: networks, mtus: mtus, project: project, on: machine, known: known) {
        case .success: "ok"
        case .failure(let p): p.description
        }
    }

    @Test func theCLISyntaxAndItsErrors() throws {
        let r = try NetworkRequest.parse(
            bonds: [
                "bond0,mode=active-backup,nics=eth0+eth1,primary=eth1,mtu=9000",
                "bond1,mode=802.3ad,nics=2@speed>=25000",
            ],
            networks: ["lab-vlan,on=bond0,address=198.18.100.12,address=fd98:18:100::12,default-route,mtu=1400"],
            mtus: ["eth2=9000"]
        ).get()
        #expect(
            r.bonds[0]
                == .init(
                    name: "bond0",
                    mode: .activeBackup,
                    nics: .named(["eth0", "eth1"]),
                    primary: "eth1",
                    mtu: 9000
                )
        )
        #expect(r.bonds[1].nics == .matching(count: 2, filter: .minSpeed(25000)))
        #expect(
            r.attachments == [
                .init(
                    network: "lab-vlan",
                    on: "bond0",
                    addresses: [IPAddress("198.18.100.12")!, IPAddress("fd98:18:100::12")!],
                    defaultRoute: true,
                    mtu: 1400
                )
            ]
        )
        #expect(r.mtus == ["eth2": 9000])
        func error(bonds: [String] = [], networks: [String] = [], mtus: [String] = []) -> String {
            switch NetworkRequest.parse(bonds: bonds, networks: networks, mtus: mtus) {
            case .success: "ok"
            case .failure(let p): p.description
            }
        }
        #expect(
            error(networks: ["lab-vlan,adress=198.18.100.12"])
                == "--network lab-vlan,adress=198.18.100.12: unknown key 'adress' (valid: on, address, default-route, mtu)"
        )
        #expect(
            error(networks: ["lab-vlan,address=198.18.100.300"]).hasSuffix(
                "address '198.18.100.300' is not an IP address"
            )
        )
        #expect(error(networks: [",on=eth0"]).hasSuffix("a network name comes first, like lab-vlan,on=bond0"))
        #expect(error(networks: ["n,default-route=yes"]).hasSuffix("default-route takes no value"))
        #expect(
            error(bonds: ["bond0,nics=eth0+eth1"])
                == "--bond bond0,nics=eth0+eth1: mode is required (active-backup or 802.3ad)"
        )
        #expect(
            error(bonds: ["bond0,mode=balance-rr,nics=eth0"]).hasSuffix(
                "mode 'balance-rr' is not one of active-backup, 802.3ad"
            )
        )
        #expect(error(bonds: ["bond0,mode=802.3ad"]).hasSuffix("nics is required, like nics=eth0+eth1 or nics=2@link"))
        #expect(
            error(bonds: ["bond0,mode=802.3ad,nics=eth0++eth1"]).hasSuffix("an empty NIC name (join NICs with '+')")
        )
        #expect(
            error(bonds: ["bond0,mode=802.3ad,nics=2@fast"]).hasSuffix(
                "filter 'fast' is not any, link, speed>=MBPS or driver=NAME"
            )
        )
        #expect(
            error(bonds: ["bond0,mode=802.3ad,nics=0@link"]).hasSuffix("expected COUNT@FILTER, like 2@speed>=25000")
        )
        #expect(error(mtus: ["eth2"]) == "--mtu eth2: expected INTERFACE=MTU, like eth2=9000")
        #expect(error(mtus: ["eth2=9000", "eth2=1500"]) == "--mtu eth2=1500: eth2 is given twice")
    }

    @Test func aBondAndAVLANResolvedOnLab1() throws {
        let plan = try resolve(bonds: ["bond0,mode=active-backup,nics=eth0+eth1"], networks: ["lab-vlan,on=bond0"])
            .get()
        #expect(plan.bootNIC == "eth0" && plan.bootDHCP)
        #expect(
            plan.bonds == [
                .init(
                    name: "bond0",
                    mode: .activeBackup,
                    members: ["eth0", "eth1"],
                    primary: "eth0",
                    mtu: nil,
                    mac: Self.boot
                )
            ]
        )
        let a = try #require(plan.attachments.first)
        #expect(a.interface == "bond0.100" && a.parent == "bond0" && a.vlan == 100 && a.mtu == 1400)
        #expect(a.subnets.map(\.description) == ["198.18.100.0/24", "fd98:18:100::/64"] && a.addresses == nil)
        #expect(plan.memberMACs == [MACAddress("52:54:00:28:00:01")!])
        // The installed OS reports in from its boot MAC's lease, or a bond member's (the bond
        // may take its MAC); never from another NIC's, nor before the deploy has the plan.
        var m = Self.machine()
        #expect(m.osMayReport(from: Self.boot) && !m.osMayReport(from: MACAddress("52:54:00:28:00:01")!))
        m.deployment = Deployment(
            image: "debian-12",
            imageSHA256: "",
            sshKeys: [],
            userData: "",
            hostname: "lab-1",
            requestedBy: "admin",
            tags: [:],
            wipe: .full
        )
        m.deployment?.networking = plan
        #expect(m.osMayReport(from: Self.boot) && m.osMayReport(from: MACAddress("52:54:00:28:00:01")!))
        #expect(!m.osMayReport(from: MACAddress("0c:42:a1:00:00:02")!))
        // Stored in a deployment, it comes back the same.
        #expect(try JSONDecoder().decode(DeployedNetworking.self, from: JSONEncoder().encode(plan)) == plan)

        // Matched NICs: the boot NIC first, then inventory order; NICs in a bond are taken.
        let lacp = try resolve(bonds: ["bond0,mode=802.3ad,nics=2@link"]).get()
        #expect(lacp.bonds[0].members == ["eth0", "eth1"] && lacp.bonds[0].primary == nil)
        let fast = try resolve(bonds: ["b0,mode=active-backup,nics=eth0+eth1", "b1,mode=802.3ad,nics=1@driver=ice"])
            .get()
        #expect(fast.bonds[1].members == ["eth2"] && fast.bonds[1].mac == MACAddress("0c:42:a1:00:00:02"))
        // A NIC named by MAC.
        let byMAC = try resolve(bonds: ["bond0,mode=active-backup,nics=52:54:00:28:00:01+eth2"]).get()
        #expect(byMAC.bonds[0].members == ["eth1", "eth2"] && byMAC.bonds[0].primary == "eth1")
        #expect(byMAC.bonds[0].mac == MACAddress("52:54:00:28:00:01"))
        // A VLAN whose dotted name would pass IFNAMSIZ is named vlanVID.
        let long = try resolve(bonds: ["bond-uplink-a,mode=active-backup,nics=eth0+eth1"], networks: ["lab-vlan"]).get()
        #expect(long.attachments[0].interface == "vlan100")
        // A static IPv4 on another NIC, untagged, and the boot NIC keeps its DHCP.
        let flat = try Network.make(
            name: "flat",
            cidrs: ["198.18.0.0/24"],
            gateways: ["198.18.0.1"],
            pools: ["198.18.0.50-198.18.0.59"],
            created: Self.epoch
        ).get()
        let s = try resolve(networks: ["flat,on=eth1,address=198.18.0.55,default-route"], known: [flat]).get()
        #expect(
            s.bootDHCP && s.attachments[0].interface == "eth1"
                && s.attachments[0].requested == [IPAddress("198.18.0.55")!]
        )
        // On the boot NIC, at the region: a static address instead of DHCPv4 (the OS reports in
        // from it; every replica's address book learns it).
        var onBoot = try resolve(networks: ["flat,default-route"], known: [flat]).get()
        #expect(!onBoot.bootDHCP && onBoot.attachments[0].interface == "eth0" && onBoot.attachments[0].parent == "eth0")
        onBoot.attachments[0].addresses = [IPAddress("198.18.0.50")!]
        let yaml = NetworkConfigV2(onBoot).yaml
        #expect(
            yaml.contains(
                """
                  "eth0":
                    match: {macaddress: "52:54:00:18:00:01"}
                    set-name: "eth0"
                    dhcp4: false
                    dhcp6: false
                    addresses: ["198.18.0.50/24"]
                    routes: [{to: "0.0.0.0/0", via: "198.18.0.1"}]
                """
            ),
            "\(yaml)"
        )
        // Its OS answers on that address while it runs (deployed, or booting into it); in the
        // ramdisk it has a DHCP lease instead.
        var booted = Self.machine()
        booted.deployment = Deployment(
            image: "debian-12",
            imageSHA256: "",
            sshKeys: [],
            userData: "",
            hostname: "lab-1",
            requestedBy: "admin"
        )
        booted.deployment?.networking = onBoot
        booted.state = .deployed
        #expect(
            onBoot.bootAddress == IPv4Address("198.18.0.50") && booted.staticBootAddress == IPv4Address("198.18.0.50")
        )
        booted.state = .rescue
        #expect(booted.staticBootAddress == nil)
        booted.deployment?.networking = s
        booted.state = .deployed
        #expect(s.bootAddress == nil && booted.staticBootAddress == nil)
        // The address book: a static address is the machine's, whatever a stale lease said;
        // replaced whole.
        let book = AddressBook()
        let other = MACAddress("52:54:00:18:00:09")!
        book.record(IPv4Address("198.18.0.50")!, other)
        book.record(IPv4Address("198.18.0.101")!, Self.boot)
        book.assign([IPv4Address("198.18.0.50")!: Self.boot])
        #expect(book.mac(for: IPv4Address("198.18.0.50")!) == Self.boot)
        #expect(book.mac(for: IPv4Address("198.18.0.101")!) == Self.boot)
        book.assign([:])
        #expect(book.mac(for: IPv4Address("198.18.0.50")!) == other)
        // At a site, the site relays reports from the boot MAC's lease only: refused there.
        var siteFlat = flat
        siteFlat.site = "site-1"
        #expect(
            try problem(networks: ["flat"], on: Self.machine(site: "site-1"), known: [siteFlat])
                == "networks[0]: network flat is untagged IPv4 on the boot interface eth0, and at site site-1 that interface keeps DHCP (the site relays the installed OS's report from its lease only); put it on another NIC or bond (on=…)"
        )
    }

    @Test func whatADeployMayNotAsk() throws {
        #expect(
            try problem(bonds: ["bond0,mode=active-backup,nics=eth0+eth9"])
                == "bonds[0].nics: no NIC eth9 (NICs: eth0, eth1, eth2, eth3)"
        )
        #expect(
            try problem(bonds: ["b0,mode=active-backup,nics=eth0+eth1", "b1,mode=active-backup,nics=eth1+eth2"])
                == "bonds[1].nics: eth1 is already in b0"
        )
        #expect(
            try problem(bonds: ["b0,mode=802.3ad,nics=2@speed>=25000"])
                == "bonds[0].nics: 2@speed>=25000 matches 1 free NIC(s) (eth2)"
        )
        #expect(
            try problem(bonds: ["eth1,mode=802.3ad,nics=eth0"])
                == "bonds[0].name: eth1 is already the name of a NIC or bond"
        )
        #expect(
            try problem(bonds: ["bond.0,mode=802.3ad,nics=eth0"])
                == "bonds[0].name: 'bond.0' must start with a letter and hold only letters, digits, '-' and '_'"
        )
        #expect(
            try problem(bonds: ["b0,mode=802.3ad,nics=eth0+eth1,primary=eth0"])
                == "bonds[0].primary: applies to active-backup bonds only"
        )
        #expect(
            try problem(bonds: ["b0,mode=active-backup,nics=eth0+eth1,primary=eth2"])
                == "bonds[0].primary: eth2 is not one of its NICs (eth0, eth1)"
        )
        #expect(
            try problem(bonds: ["b0,mode=active-backup,nics=eth0,mtu=10000"]) == "bonds[0].mtu: 10000 is not 68-9216"
        )
        #expect(
            try problem(bonds: ["b0,mode=active-backup,nics=eth0+eth1"], mtus: ["eth1=9000"])
                == "mtus[eth1]: eth1 is in b0: give the bond's MTU instead"
        )
        #expect(try problem(mtus: ["eth7=9000"]) == "mtus[eth7]: no NIC eth7 (NICs: eth0, eth1, eth2, eth3)")
        #expect(try problem(networks: ["nope"]) == "networks[0].network: no network named 'nope'")
        // Closed to the project: answered as if it did not exist.
        let closed = try Self.labVLAN(projects: ["other"])
        #expect(
            try problem(networks: ["lab-vlan"], known: [closed]) == "networks[0].network: no network named 'lab-vlan'"
        )
        #expect(try problem(networks: ["lab-vlan"], project: "other", known: [closed]) == "ok")
        #expect(
            try problem(networks: ["lab-vlan"], known: [Self.labVLAN(site: "a")])
                == "networks[0].network: lab-vlan is at site a; lab-1 is at the region's own boot network"
        )
        #expect(
            try problem(networks: ["lab-vlan"], on: Self.machine(site: "a"), known: [Self.labVLAN(site: "a")]) == "ok"
        )
        #expect(
            try problem(bonds: ["b0,mode=active-backup,nics=eth0+eth1"], networks: ["lab-vlan,on=eth1"])
                == "networks[0].on: eth1 is in b0: attach to b0"
        )
        #expect(
            try problem(networks: ["lab-vlan,on=eth9"])
                == "networks[0].on: no NIC or bond eth9 (eth0, eth1, eth2, eth3)"
        )
        #expect(
            try problem(networks: ["lab-vlan,address=198.18.100.50"])
                == "networks[0].address: 198.18.100.50 is outside network lab-vlan's pool 198.18.100.10-198.18.100.19"
        )
        #expect(
            try problem(networks: ["lab-vlan,address=198.18.100.11,address=198.18.100.12"])
                == "networks[0].address: two IPv4 addresses; give at most one per family"
        )
        #expect(
            try problem(networks: ["lab-vlan", "lab-vlan"])
                == "networks[1]: eth0.100 already carries network lab-vlan (VLAN 100)"
        )
        #expect(
            try problem(networks: ["lab-vlan,default-route", "lab-vlan,on=eth1,default-route"])
                == "networks[1].default-route: another network already has the IPv4 default route"
        )
        // A default route claims only the families its network has a gateway for: a dual-stack
        // network with an IPv4 gateway and an IPv6-only one with an IPv6 gateway both carry one.
        let v6 = try Network.make(
            name: "v6",
            cidrs: ["fd98:18:500::/64"],
            gateways: ["fd98:18:500::1"],
            pools: ["fd98:18:500::10-fd98:18:500::1f"],
            vlan: 500,
            created: Self.epoch
        ).get()
        let dual = try Network.make(
            name: "dual",
            cidrs: ["198.18.60.0/24", "fd98:18:600::/64"],
            gateways: ["198.18.60.1"],
            pools: ["198.18.60.10-198.18.60.19", "fd98:18:600::10-fd98:18:600::1f"],
            vlan: 600,
            created: Self.epoch
        ).get()
        #expect(try problem(networks: ["dual,default-route", "v6,default-route"], known: [dual, v6]) == "ok")
        // VLAN interface names: a long parent's fallback name is unique or refused.
        #expect(
            try problem(
                bonds: [
                    "bond-uplink-a,mode=active-backup,nics=eth0+eth1",
                    "bond-uplink-b,mode=active-backup,nics=eth2+eth3",
                ],
                networks: ["lab-vlan,on=bond-uplink-a", "lab-vlan,on=bond-uplink-b"]
            )
                == "networks[1]: its VLAN interface would be named vlan100, as lab-vlan's on bond-uplink-a is; give bond-uplink-b a shorter name"
        )
        #expect(
            try problem(
                bonds: ["vlan100,mode=active-backup,nics=eth2", "bond-uplink-a,mode=active-backup,nics=eth0+eth1"],
                networks: ["lab-vlan"]
            )
                == "networks[0]: its VLAN interface would be named vlan100, which a NIC or bond already is"
        )
        // A VLAN's MTU is never above its parent's.
        #expect(try problem(networks: ["lab-vlan,mtu=9000"]) == "networks[0].mtu: 9000 is above eth0's 1500")
        #expect(try problem(networks: ["lab-vlan,mtu=9000"], mtus: ["eth0=9000"]) == "ok")
        // No inventory yet.
        var bare = Self.machine()
        bare.inventory = nil
        #expect(
            try problem(networks: ["lab-vlan"], on: bare)
                == "lab-1 has no inventory of its NICs: commission it before asking for bonds or networks"
        )
    }

    // MARK: - network-config v2

    static let example = """
        version: 2
        ethernets:
          "eth0":
            match: {macaddress: "52:54:00:18:00:01"}
            set-name: "eth0"
            dhcp4: false
            dhcp6: false
          "eth1":
            match: {macaddress: "52:54:00:28:00:01"}
            set-name: "eth1"
            dhcp4: false
            dhcp6: false
        bonds:
          "bond0":
            interfaces: ["eth0", "eth1"]
            macaddress: "52:54:00:18:00:01"
            parameters: {mode: "active-backup", primary: "eth0", mii-monitor-interval: 100}
            dhcp4: true
            dhcp4-overrides: {use-routes: false}
            dhcp6: false
        vlans:
          "bond0.100":
            id: 100
            link: "bond0"
            mtu: 1400
            dhcp4: false
            dhcp6: false
            addresses: ["198.18.100.10/24", "fd98:18:100::10/64"]
            routes: [{to: "0.0.0.0/0", via: "198.18.100.1"}, {to: "::/0", via: "fd98:18:100::1"}]
            nameservers: {addresses: ["198.18.100.1"], search: ["lab.example"]}

        """

    @Test func networkConfigForABondAndAVLAN() throws {
        var plan = try resolve(
            bonds: ["bond0,mode=active-backup,nics=eth0+eth1"],
            networks: ["lab-vlan,on=bond0,default-route"]
        ).get()
        plan.attachments[0].addresses = [IPAddress("198.18.100.10")!, IPAddress("fd98:18:100::10")!]
        let yaml = NetworkConfigV2(plan).yaml
        #expect(yaml == Self.example, "\(yaml)")
        try expectLoads(yaml)
        // Anything outside printable ASCII is escaped, so the file always loads.
        #expect(NetworkConfigV2(plan).quote("a\u{85}b\u{FFFE}\u{1F600}\"") == #""a\u0085b\ufffe\U0001f600\"""#)
    }

    @Test func networkConfigForLACPAnMTUAndAStaticNIC() throws {
        let flat = try Network.make(
            name: "flat",
            cidrs: ["198.18.0.0/24"],
            gateways: ["198.18.0.1"],
            pools: ["198.18.0.50-198.18.0.59"],
            dns: ["198.18.0.1", "2001:db8::53"],
            created: Self.epoch
        ).get()
        let storage = try Network.make(
            name: "storage",
            cidrs: ["fd98:18:300::/64"],
            pools: ["fd98:18:300::100-fd98:18:300::1ff"],
            mtu: 9000,
            created: Self.epoch
        ).get()
        var plan = try resolve(
            bonds: ["data,mode=802.3ad,nics=eth2+eth3,mtu=9000"],
            networks: ["flat,on=eth1,address=198.18.0.55,default-route", "storage,on=data"],
            known: [flat, storage]
        ).get()
        plan.attachments[1].addresses = [IPAddress("fd98:18:300::100")!]
        // The bond (eth2, eth3) is not the boot NIC's: the OS never reports in from its MACs.
        #expect(plan.memberMACs.isEmpty)
        let yaml = NetworkConfigV2(plan).yaml
        let expected = """
            version: 2
            ethernets:
              "eth0":
                match: {macaddress: "52:54:00:18:00:01"}
                set-name: "eth0"
                dhcp4: true
                dhcp4-overrides: {use-routes: false}
                dhcp6: false
              "eth1":
                match: {macaddress: "52:54:00:28:00:01"}
                set-name: "eth1"
                dhcp4: false
                dhcp6: false
                addresses: ["198.18.0.55/24"]
                routes: [{to: "0.0.0.0/0", via: "198.18.0.1"}]
                nameservers: {addresses: ["198.18.0.1", "2001:db8::53"]}
              "eth2":
                match: {macaddress: "0c:42:a1:00:00:02"}
                set-name: "eth2"
                dhcp4: false
                dhcp6: false
              "eth3":
                match: {macaddress: "0c:42:a1:00:00:03"}
                set-name: "eth3"
                dhcp4: false
                dhcp6: false
            bonds:
              "data":
                interfaces: ["eth2", "eth3"]
                macaddress: "0c:42:a1:00:00:02"
                mtu: 9000
                parameters: {mode: "802.3ad", lacp-rate: "fast", transmit-hash-policy: "layer3+4", mii-monitor-interval: 100}
                dhcp4: false
                dhcp6: false
                addresses: ["fd98:18:300::100/64"]

            """
        #expect(yaml == expected, "\(yaml)")
        try expectLoads(yaml)
        // An untagged network's MTU that disagrees with its bond's is refused.
        #expect(
            try problem(
                bonds: ["data,mode=802.3ad,nics=eth2+eth3,mtu=1500"],
                networks: ["storage,on=data"],
                known: [storage]
            )
                == "networks[0].mtu: 9000, but data is given 1500"
        )
    }

    /// The YAML reads back, as cloud-init reads it (PyYAML, YAML 1.1), to the structure meant:
    /// every MAC, address and name a string, and the numbers numbers.
    func expectLoads(_ yaml: String) throws {
        let script = """
            import json, sys, yaml
            print(json.dumps(yaml.safe_load(sys.stdin.read())))
            """
        let p = Process()
        // timeout(1) bounds the run, and so the reads below: a python3 that hung is killed.
        p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        p.arguments = ["30", "python3", "-c", script]
        let input = Pipe()
        let output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        try p.run()
        input.fileHandleForWriting.write(Data(yaml.utf8))
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "python3 could not load the YAML (needs python3-yaml)")
        let loaded = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(loaded["version"] as? Int == 2)
        for kind in ["ethernets", "bonds", "vlans"] {
            for (name, value) in (loaded[kind] as? [String: Any]) ?? [:] {
                let entry = try #require(value as? [String: Any], "\(kind).\(name)")
                if let match = entry["match"] as? [String: Any] {
                    #expect(match["macaddress"] is String, "\(name): \(match)")
                }
                if let mac = entry["macaddress"] { #expect(mac is String, "\(name)") }
                for a in (entry["addresses"] as? [Any]) ?? [] { #expect(a is String, "\(name): \(a)") }
                if let mtu = entry["mtu"] { #expect(mtu is Int, "\(name)") }
                #expect(entry["dhcp4"] is Bool, "\(name)")
            }
        }
    }
}
