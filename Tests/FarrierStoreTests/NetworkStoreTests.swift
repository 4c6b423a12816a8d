import FarrierCore
import Foundation
import Testing

/// Networks and the static addresses machines hold on them (issue 18 point 4), in both stores:
/// addresses are taken and given back only inside machine writes, never twice, and a network
/// in use stays.
@Suite struct NetworkStoreTests {
    static let t = Date(timeIntervalSince1970: 1_800_000_000)

    /// A network with an 8-address IPv4 pool, and IPv6 if asked.
    static func network(_ name: String, vlan: Int = 100, ipv6: Bool = true, site: String? = nil) throws -> Network {
        try Network.make(
            name: name,
            cidrs: ["198.18.\(vlan).0/24"] + (ipv6 ? ["fd98:18:\(vlan)::/64"] : []),
            gateways: ["198.18.\(vlan).1"],
            pools: ["198.18.\(vlan).10-198.18.\(vlan).17"] + (ipv6 ? ["fd98:18:\(vlan)::10-fd98:18:\(vlan)::ff"] : []),
            vlan: vlan,
            site: site,
            created: t
        ).get()
    }

    /// Enrolls machine `i` with one NIC in its inventory, ready.
    static func machine(_ s: any StateStore, _ i: Int) async throws -> Machine {
        let mac = MACAddress("52:54:00:00:0a:\(String(format: "%02x", i))")!
        let bmc = try BMCReference(url: "ipmi://admin@198.18.0.9")
        let m = try await s.enroll(name: "n\(i)", mac: mac, bmc: bmc, sealedPassword: [1], at: t)
        return try await s.update(machineID: m.id) { x in
            x.state = .ready
            x.inventory = Inventory(
                cpuModel: "QEMU",
                cores: 1,
                memoryBytes: 1 << 30,
                disks: [],
                nics: [.init(name: "eth0", mac: mac.description, driver: "e1000", link: true)],
                vendor: "QEMU",
                product: "pc",
                serial: "",
                firmware: .bios
            )
            return []
        }
    }

    /// Deploys `m` with `networks` attached (`asking` fixed addresses), as a deploy's write does.
    static func deploy(
        _ s: any StateStore,
        _ m: Machine,
        _ networks: [Network],
        on names: [String],
        asking: [String] = []
    ) async throws -> Machine {
        let request = try NetworkRequest.parse(
            bonds: [],
            networks: names.enumerated().map { i, n in
                n + (i == 0 ? asking.map { ",address=\($0)" }.joined() : "") + (i > 0 ? ",on=eth0" : "")
            },
            mtus: []
        ).get()
        let plan = try DeployedNetworking.resolve(
            request,
            machine: m,
            networks: Dictionary(uniqueKeysWithValues: networks.map { ($0.name, $0) }),
            project: nil
        ).get()
        return try await s.update(machineID: m.id) { x in
            x.state = .deploying
            var d = Deployment(
                image: "img",
                imageSHA256: "00",
                sshKeys: [],
                userData: "",
                hostname: x.name,
                requestedBy: "admin"
            )
            d.networking = plan
            x.deployment = d
            return [MachineEvent(x, kind: .transition, message: "deploying")]
        }
    }

    static func addresses(_ m: Machine) -> [String] {
        (m.deployment?.networking?.attachments ?? []).flatMap { ($0.addresses ?? []).map(\.description) }
    }

    @Test(arguments: StoreKind.allCases) func networksAreDefinedOnceAndStayWhileInUse(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let lab = try Self.network("lab-vlan")
            try await s.createNetwork(lab)
            #expect(try await s.network(name: "lab-vlan") == lab)
            let dup = await #expect(throws: StoreError.self) { try await s.createNetwork(lab) }
            #expect(dup?.code == .alreadyExists && dup?.message == "network 'lab-vlan' already exists")
            let away = await #expect(throws: StoreError.self) {
                try await s.createNetwork(Self.network("far", site: "nowhere"))
            }
            #expect(away?.code == .notFound && away?.message == "no site named 'nowhere'")
            try await s.createSite(Site(name: "a", created: Self.t, joinTokenSHA256: "aa"))
            try await s.createNetwork(Self.network("at-a", vlan: 200, site: "a"))
            #expect(try await s.networks().map(\.name) == ["at-a", "lab-vlan"])
            // A site with a network stays.
            let kept = await #expect(throws: StoreError.self) { try await s.deleteSite(name: "a") }
            #expect(kept?.code == .inUse, "\(String(describing: kept))")
            #expect(try await s.site(name: "a") != nil)

            let m = try await Self.deploy(s, Self.machine(s, 1), [lab], on: ["lab-vlan"])
            #expect(Self.addresses(m) == ["198.18.100.10", "fd98:18:100::10"])
            let held = try await s.networkAddresses(network: "lab-vlan")
            #expect(held.map(\.address.description) == ["198.18.100.10", "fd98:18:100::10"])
            #expect(held.allSatisfy { $0.machine == "n1" && $0.machineID == m.id && $0.mac == m.mac })
            let events = try await s.events(after: 0, machineID: m.id, limit: 100).map(\.message)
            #expect(
                events.suffix(3) == [
                    "deploying", "address 198.18.100.10 (lab-vlan) allocated",
                    "address fd98:18:100::10 (lab-vlan) allocated",
                ]
            )
            // A machine holding addresses does not move to another site.
            let moved = await #expect(throws: StoreError.self) {
                try await s.update(machineID: m.id) { x in
                    x.site = "a"
                    return []
                }
            }
            #expect(
                moved?.code == .inUse
                    && moved?.message
                        == "machine n1 holds address 198.18.100.10 on network lab-vlan; release it before moving it to another site"
            )
            // The store refuses a pool that overlaps another network's on the same site and VLAN.
            let overlap = await #expect(throws: StoreError.self) { try await s.createNetwork(Self.network("again")) }
            #expect(
                overlap?.code == .alreadyExists
                    && overlap?.message
                        == "pool: 198.18.100.10-198.18.100.17 overlaps network lab-vlan's pool 198.18.100.10-198.18.100.17 (same site and VLAN)"
            )
            let inUse = await #expect(throws: StoreError.self) { try await s.deleteNetwork(name: "lab-vlan") }
            #expect(
                inUse?.code == .inUse
                    && inUse?.message == "network 'lab-vlan' has addresses held by n1; release them first"
            )
            let none = await #expect(throws: StoreError.self) { try await s.deleteNetwork(name: "nope") }
            #expect(none?.code == .notFound)

            // Released (the deployment goes at the end of the wipe): the addresses go with it.
            _ = try await s.update(machineID: m.id) { x in
                x.state = .ready
                x.deployment = nil
                return [MachineEvent(x, kind: .transition, message: "ready")]
            }
            #expect(try await s.networkAddresses(network: "lab-vlan").isEmpty)
            #expect(
                try await s.events(after: 0, machineID: m.id, limit: 100).map(\.message).suffix(2)
                    == ["address 198.18.100.10 (lab-vlan) released", "address fd98:18:100::10 (lab-vlan) released"]
            )
            try await s.deleteNetwork(name: "lab-vlan")
            #expect(try await s.network(name: "lab-vlan") == nil)
        }
    }

    @Test(arguments: StoreKind.allCases) func addressesAreTakenLowestFirstNeverTwiceAndFreedWithTheMachine(
        _ kind: StoreKind
    ) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let lab = try Self.network("lab-vlan")
            let storage = try Self.network("storage", vlan: 7, ipv6: false)
            try await s.createNetwork(lab)
            try await s.createNetwork(storage)
            var machines: [Machine] = []
            for i in 1...10 { machines.append(try await Self.machine(s, i)) }
            // A fixed address, then the lowest free around it.
            let m1 = try await Self.deploy(s, machines[0], [lab], on: ["lab-vlan"], asking: ["198.18.100.11"])
            #expect(Self.addresses(m1) == ["198.18.100.11", "fd98:18:100::10"])
            let m2 = try await Self.deploy(s, machines[1], [lab, storage], on: ["lab-vlan", "storage"])
            #expect(Self.addresses(m2) == ["198.18.100.10", "fd98:18:100::11", "198.18.7.10"])
            // A fixed address already taken: refused, and nothing of the write is kept.
            let taken = await #expect(throws: StoreError.self) {
                try await Self.deploy(s, machines[2], [lab], on: ["lab-vlan"], asking: ["198.18.100.10"])
            }
            #expect(
                taken?.code == .alreadyExists
                    && taken?.message == "address 198.18.100.10 on network lab-vlan is already taken"
            )
            let m3 = try #require(try await s.machine(id: machines[2].id))
            #expect(m3.state == .ready && m3.deployment == nil)
            // The pool's 8 IPv4 addresses: 6 more, then none.
            for i in 2..<8 { _ = try await Self.deploy(s, machines[i], [lab], on: ["lab-vlan"]) }
            let full = await #expect(throws: StoreError.self) {
                try await Self.deploy(s, machines[8], [lab], on: ["lab-vlan"])
            }
            #expect(full?.code == .exhausted && full?.message == "network lab-vlan: no free IPv4 address in its pool")
            let held = try await s.networkAddresses(network: "lab-vlan").filter(\.address.isIPv4)
            #expect(held.map(\.address.description) == (10...17).map { "198.18.100.\($0)" })
            #expect(Set(held.map(\.machineID)).count == 8)
            // A machine deleted gives its addresses back; the next deploy gets the lowest.
            try await s.deleteMachine(id: machines[0].id)
            let m9 = try await Self.deploy(s, machines[8], [lab], on: ["lab-vlan"])
            #expect(Self.addresses(m9).first == "198.18.100.11")
            // A write that does not touch the plan keeps the addresses as they are.
            let same = try await s.update(machineID: m9.id) { x in
                x.labels["k"] = "v"
                return []
            }
            #expect(Self.addresses(same) == Self.addresses(m9))
            #expect(try await s.networkAddresses(network: "lab-vlan").filter { $0.machineID == m9.id }.count == 2)
        }
    }

    /// Two stores on one database deploying at once: each address goes to one machine, a full
    /// pool refuses the rest, and deploys onto two networks in opposite orders both commit.
    @Test(arguments: StoreKind.allCases) func concurrentDeploysNeverShareAnAddress(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let a = under.store
            let b = try await under.reopen()
            let lab = try Self.network("lab-vlan", ipv6: false)
            let other = try Self.network("other", vlan: 101, ipv6: false)
            try await a.createNetwork(lab)
            try await a.createNetwork(other)
            var machines: [Machine] = []
            for i in 1...12 { machines.append(try await Self.machine(a, i)) }
            let outcomes = try await withThrowingTaskGroup(of: String.self) { group in
                for (i, m) in machines.enumerated() {
                    let s = i % 2 == 0 ? a : b
                    group.addTask {
                        do {
                            return Self.addresses(try await Self.deploy(s, m, [lab], on: ["lab-vlan"])).joined()
                        } catch let e as StoreError {
                            return "error: \(e.code)"
                        }
                    }
                }
                var out: [String] = []
                for try await r in group { out.append(r) }
                return out
            }
            let got = outcomes.filter { !$0.hasPrefix("error") }
            #expect(got.count == 8 && Set(got).count == 8, "\(outcomes)")
            #expect(outcomes.filter { $0 == "error: exhausted" }.count == 4, "\(outcomes)")
            #expect(try await b.networkAddresses(network: "lab-vlan").count == 8)
            // Release them all, then two deploys onto {lab, other} and {other, lab} at once, a
            // few times: no deadlock, both commit.
            for m in machines {
                _ = try await a.update(machineID: m.id) { x in
                    x.state = .ready
                    x.deployment = nil
                    return []
                }
            }
            for round in 0..<4 {
                let x = machines[2 * round]
                let y = machines[2 * round + 1]
                async let one = Self.deploy(a, x, [lab, other], on: ["lab-vlan", "other"])
                async let two = Self.deploy(b, y, [lab, other], on: ["other", "lab-vlan"])
                let (p, q) = try await (one, two)
                #expect(Self.addresses(p).count == 2 && Self.addresses(q).count == 2)
                #expect(Set(Self.addresses(p)).isDisjoint(with: Self.addresses(q)))
            }
        }
    }
}
