import FarrierCore
import FarrierPostgres
import FarrierStore
import Foundation
import Synchronization
import TestSupport
import Testing

@Suite struct SQLiteStoreTests {
    let mac = MACAddress("52:54:00:12:34:56")!

    @Test func migrationsAreVersioned() async throws {
        let s = try SQLiteStore()
        #expect(
            try s.appliedMigrations() == [
                "v1", "v2-bmc", "v3-lifecycle", "v4-disk-dirty", "v5-agent-boot", "v6-seen-address", "v7-work-claim",
                "v8-machine-state-index", "v9-released-from", "v10-running-index", "v11-site", "v12-site-link",
                "v13-machine-site", "v14-site-events", "v15-site-lease", "v16-site-bmc-channels",
                "v17-site-join-again", "v18-maintenance-power", "v19-bulk-enroll",
                "v20-root-device", "v21-step-trace", "v22-networks", "v23-burn-in",
            ]
        )
    }
}

/// The store contract: every test runs against SQLite and against a real PostgreSQL 15.
@Suite struct StoreContractTests {
    let mac = MACAddress("52:54:00:12:34:56")!

    /// A step's trace context is kept with the machine, in both stores, and read back whole.
    @Test(arguments: StoreKind.allCases) func aStepsTraceIsStored(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let bmc = try BMCReference(url: "ipmi://admin@127.0.0.1:623")
            let m = try await s.enroll(name: "n1", mac: mac, bmc: bmc, sealedPassword: [1], at: Date())
            #expect(m.trace == nil)
            let trace = StepTrace(
                carrier: [
                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "x=1",
                ],
                phaseSince: Date(timeIntervalSince1970: 1_800_000_000.5)
            )
            _ = try await s.update(machineID: m.id) { x in
                x.trace = trace
                return []
            }
            let read = try #require(try await s.machine(id: m.id))
            #expect(read.trace == trace)
            #expect(try await s.machine(mac: mac)?.trace?.traceID == "4bf92f3577b34da6a3ce929d0e0e4736")
        }
    }

    /// Proxy mode's seen addresses: one per MAC (the newest wins), apart from leases, and pruned
    /// by age when read.
    @Test(arguments: StoreKind.allCases) func seenAddressesAreOnePerMACAndPruned(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let other = MACAddress("52:54:00:12:34:57")!
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            try s.recordSeenAddress(mac: mac, address: IPv4Address("198.18.0.10")!, at: t)
            try s.recordSeenAddress(mac: other, address: IPv4Address("198.18.0.11")!, at: t.addingTimeInterval(10))
            try s.recordSeenAddress(mac: mac, address: IPv4Address("198.18.0.12")!, at: t.addingTimeInterval(20))
            let all = try s.seenAddresses(since: t)
            #expect(all.map { "\($0.mac) \($0.address)" } == ["\(other) 198.18.0.11", "\(mac) 198.18.0.12"])
            #expect(try s.leases().isEmpty)
            #expect(try s.seenAddresses(since: t.addingTimeInterval(15)).map(\.mac) == [mac])
            #expect(try s.seenAddresses(since: t).map(\.mac) == [mac])  // the older one was deleted
        }
    }

    @Test(arguments: StoreKind.allCases) func sightingCreatesADiscoveredMachineOnceAndFillsUnknowns(
        _ kind: StoreKind
    ) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let a = try #require(
                try await s.recordSighting(
                    mac: mac,
                    platform: .init(architecture: .unknown, firmware: .unknown),
                    at: t,
                    create: 100
                )
            )
            #expect(a.state == .discovered && a.name == "m-525400123456")
            let b = try #require(
                try await s.recordSighting(
                    mac: mac,
                    platform: .init(architecture: .x86_64, firmware: .uefi),
                    at: t.addingTimeInterval(5),
                    create: 100
                )
            )
            #expect(b.id == a.id)
            #expect(b.firmware == .uefi && b.architecture == .x86_64)
            #expect(b.firstSeen == t && b.lastSeen == t.addingTimeInterval(5))
            #expect(try await s.machines().count == 1)
            #expect(try await s.machine(nameOrMAC: "52-54-00-12-34-56")?.id == a.id)
            #expect(try await s.machine(nameOrMAC: "m-525400123456")?.id == a.id)
            #expect(try await s.machine(nameOrMAC: "nope") == nil)
        }
    }

    @Test(arguments: StoreKind.allCases) func batchEnrollmentIsAllOrNoneAndCredentialsAreShared(
        _ kind: StoreKind
    ) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let bmc = try BMCReference(url: "ipmi://ops@198.18.0.11")
            let cred = BMCCredential(name: "rack-ops", user: "ops", sealedPassword: [7], created: t)
            try await s.addBMCCredential(cred)
            await #expect(throws: StoreError.self) { try await s.addBMCCredential(cred) }
            let taken = try await s.enroll(
                name: "taken",
                mac: MACAddress("52:54:00:00:00:09")!,
                bmc: bmc,
                sealedPassword: [1],
                at: t
            )
            func entry(_ n: Int, name: String? = nil) -> Enrollment {
                Enrollment(
                    id: "id-\(n)",
                    name: name ?? "node-\(n)",
                    mac: MACAddress("52:54:00:00:01:0\(n)")!,
                    otherMACs: ["52:54:00:00:02:0\(n)"],
                    bmc: bmc,
                    sealedPassword: [UInt8(n)],
                    credential: "rack-ops",
                    credentialSecret: [7],
                    zone: "z1",
                    rack: "r\(n)",
                    tags: ["gpu": "a100"]
                )
            }
            // The third entry takes a name another MAC holds: none of the three is written.
            let refused = await #expect(throws: StoreError.self) {
                try await s.enroll([entry(1), entry(2), entry(3, name: "taken")], at: t)
            }
            #expect(refused?.code == .alreadyExists)
            #expect(try await s.machines().map(\.name) == ["taken"])
            // All three: made with the entries' IDs, fields and sealed passwords.
            let made = try await s.enroll([entry(1), entry(2), entry(3)], at: t)
            #expect(made.map(\.id) == ["id-1", "id-2", "id-3"])
            let one = try #require(try await s.machine(name: "node-1"))
            #expect(one.id == "id-1" && one.state == .enrolled && one.rack == "r1" && one.zone == "z1")
            #expect(
                one.tags == ["gpu": "a100"] && one.otherMACs == ["52:54:00:00:02:01"] && one.bmcCredential == "rack-ops"
            )
            #expect(try await s.sealedBMCPassword(machineID: "id-2") == [2])
            // An entry whose MAC's machine has another ID (made meanwhile) refuses the batch.
            var stale = entry(1)
            stale.id = "id-other"
            await #expect(throws: StoreError.self) { try await s.enroll([stale], at: t) }
            // The credential: counted, its users listed; replacing it re-seals every machine's copy
            // and sets their BMC user, or refuses when the machines are not exactly those given.
            #expect(try await s.bmcCredentials().map(\.machines) == [3])
            #expect(try await s.machines(usingCredential: "rack-ops") == ["id-1", "id-2", "id-3"])
            let rotated = BMCCredential(name: "rack-ops", user: "ops2", sealedPassword: [8], created: t)
            await #expect(throws: StoreError.self) {
                try await s.replaceBMCCredential(rotated, machineSecrets: ["id-1": [11], "id-2": [12]])
            }
            try await s.replaceBMCCredential(rotated, machineSecrets: ["id-1": [11], "id-2": [12], "id-3": [13]])
            #expect(try await s.sealedBMCPassword(machineID: "id-3") == [13])
            #expect(try await s.machine(id: "id-1")?.bmc?.user == "ops2")
            #expect(try await s.bmcCredential(name: "rack-ops")?.sealedPassword == [8])
            #expect(try await s.sealedBMCPassword(machineID: taken.id) == [1])
            // A batch whose copies were made from the credential's old password is refused.
            let staleSecret = await #expect(throws: StoreError.self) { try await s.enroll([entry(1)], at: t) }
            #expect(staleSecret?.code == .inUse)
            #expect(try await s.sealedBMCPassword(machineID: "id-1") == [11])
            // In use: not removed. A machine enrolled again with its own password leaves it.
            let inUse = await #expect(throws: StoreError.self) { try await s.removeBMCCredential(name: "rack-ops") }
            #expect(inUse?.code == .inUse)
            for n in 1...3 {
                _ = try await s.enroll(
                    name: "node-\(n)",
                    mac: MACAddress("52:54:00:00:01:0\(n)")!,
                    bmc: bmc,
                    sealedPassword: [1],
                    at: t
                )
            }
            #expect(try await s.machine(id: "id-1")?.bmcCredential == nil)
            #expect(try await s.removeBMCCredential(name: "rack-ops"))
            #expect(try await s.removeBMCCredential(name: "rack-ops") == false)
        }
    }

    @Test(arguments: StoreKind.allCases) func enrollNamesADiscoveredMachineOrMakesOne(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let seen = try #require(
                try await s.recordSighting(
                    mac: mac,
                    platform: .init(architecture: .x86_64, firmware: .bios),
                    at: t,
                    create: 100
                )
            )
            let bmc = try BMCReference(url: "ipmi://admin@198.18.0.11")
            let enrolled = try await s.enroll(
                name: "rack1-node1",
                mac: mac,
                bmc: bmc,
                sealedPassword: [1, 2, 3],
                at: t
            )
            #expect(enrolled.id == seen.id && enrolled.name == "rack1-node1" && enrolled.state == .enrolled)
            #expect(try await s.machine(name: "rack1-node1")?.bmc == bmc)
            #expect(try await s.sealedBMCPassword(machineID: seen.id) == [1, 2, 3])
            // A sighting later keeps the BMC and its secret (the record never carries the secret).
            _ = try #require(
                try await s.recordSighting(
                    mac: mac,
                    platform: .init(architecture: .x86_64, firmware: .bios),
                    at: t.addingTimeInterval(9),
                    create: 100
                )
            )
            #expect(try await s.sealedBMCPassword(machineID: seen.id) == [1, 2, 3])
            #expect(try await s.machine(mac: mac)?.bmc == bmc)
            #expect(try await s.machine(mac: mac)?.state == .enrolled)
            // A new MAC makes an enrolled machine; booting fills in its platform and keeps it enrolled.
            let other = MACAddress("52:54:00:00:00:02")!
            let fresh = try await s.enroll(name: "rack1-node2", mac: other, bmc: bmc, sealedPassword: [9], at: t)
            #expect(fresh.state == .enrolled && fresh.firmware == .unknown)
            let booted = try #require(
                try await s.recordSighting(
                    mac: other,
                    platform: .init(architecture: .x86_64, firmware: .uefi),
                    at: t,
                    create: 100
                )
            )
            #expect(booted.state == .enrolled && booted.firmware == .uefi)
            // A name held by another MAC is a conflict the user can fix.
            let taken = await #expect(throws: StoreError.self) {
                try await s.enroll(name: "rack1-node1", mac: other, bmc: bmc, sealedPassword: [9], at: t)
            }
            #expect(taken?.code == .alreadyExists)
        }
    }

    /// Pages and filters come from the database, in bytewise name order whatever the
    /// database's locale ('-' sorts before digits and letters); allocation takes the smallest
    /// pool machine that fits, read a batch at a time, past machines `accept` refuses.
    @Test(arguments: StoreKind.allCases) func queriesPageInNameOrderAndAllocationTakesTheSmallestThatFits(
        _ kind: StoreKind
    ) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let bmc = try BMCReference(url: "ipmi://admin@198.18.0.11")
            for site in ["site-1", "site-2"] { try await s.createSite(Site(name: site, created: t)) }
            // 150 machines (120 ready): names with '-' and digits; every third in zone b; cores 64 down to 1.
            var names: [String] = []
            for i in 0..<150 {
                let name = i % 2 == 0 ? "n-\(i)" : "n\(i)"
                names.append(name)
                let m = try await s.enroll(
                    name: name,
                    mac: MACAddress([0x52, 0x54, 0, 9, UInt8(i >> 8), UInt8(i & 0xff)]),
                    bmc: bmc,
                    sealedPassword: [1],
                    at: t
                )
                _ = try await s.update(machineID: m.id, fence: nil) { x in
                    x.state = i < 120 ? .ready : .deploying
                    x.zone = i % 3 == 0 ? "b" : "a"
                    x.site = i % 5 == 0 ? "site-1" : (i % 5 == 1 ? "site-2" : nil)
                    x.inventory = Inventory(
                        cpuModel: "c",
                        cores: 64 - (i % 64),
                        memoryBytes: Int64(i) << 30,
                        disks: [],
                        nics: [],
                        vendor: "",
                        product: "",
                        serial: "",
                        firmware: .bios
                    )
                    return []
                }
            }
            let sorted = names.sorted()
            var paged: [String] = []
            var after: String?
            for _ in 0..<100 {
                let page = try await s.machines(MachineQuery(after: after, limit: 7))
                paged += page.map(\.name)
                guard page.count == 7 else { break }
                after = page.last?.name
            }
            #expect(paged == sorted)
            let zoneB = try await s.machines(MachineQuery(states: [.ready], zone: "b"))
            #expect(zoneB.map(\.name) == sorted.filter { n in zoneB.contains { $0.name == n } })
            #expect(
                zoneB.count == (0..<120).filter { $0 % 3 == 0 }.count
                    && zoneB.allSatisfy { $0.zone == "b" && $0.state == .ready }
            )
            #expect(try await s.machines(MachineQuery(states: [.deploying, .releasing])).count == 30)
            // By site: each machine in one site, or in none.
            let site1 = try await s.machines(MachineQuery(site: "site-1"))
            #expect(
                site1.count == names.indices.filter { $0 % 5 == 0 }.count && site1.allSatisfy { $0.site == "site-1" }
            )
            #expect(
                try await s.machines(MachineQuery(states: [.ready], site: "site-2")).allSatisfy { $0.site == "site-2" }
            )
            #expect(try await s.machines(MachineQuery(site: "site-9")).isEmpty)
            #expect(try await s.machines(MachineQuery(project: "nobody")).isEmpty)
            // A machine joins only a project that exists.
            let noProject = await #expect(throws: StoreError.self) {
                try await s.allocate({ _ in true }) { x in
                    x.project = "p"
                    return []
                }
            }
            #expect(noProject?.code == .notFound)
            try await s.createProject(Project(name: "p", created: t))
            // The smallest that fits: fewest cores (1: i = 63; 127 is not ready), then least memory.
            let first = try #require(
                try await s.allocate({ _ in true }) { x in
                    x.project = "p"
                    return []
                }
            )
            #expect(first.name == names[63] && first.project == "p")
            // Refusing everything with few cores reads past the first batches (100 a batch):
            // the smallest with at least 60 cores is i = 4 (60 cores; i = 68 has more memory).
            let big = try #require(
                try await s.allocate({ ($0.inventory?.cores ?? 0) >= 60 }) { x in
                    x.project = "p"
                    return []
                }
            )
            #expect(big.name == names[4])
            #expect(try await s.allocate({ _ in false }) { _ in [] } == nil)
        }
    }

    /// New MACs become discovered machines only while fewer than the cap are; an unknown MAC
    /// with no creation allowed writes nothing; old unenrolled ones are pruned with their timeline.
    @Test(arguments: StoreKind.allCases) func discoveryIsCappedAndPruned(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let p = ClientPlatform(architecture: .x86_64, firmware: .bios)
            for i in 1...3 {
                #expect(
                    try await s.recordSighting(mac: MACAddress("52:54:00:00:01:0\(i)")!, platform: p, at: t, create: 3)
                        != nil
                )
            }
            #expect(
                try await s.recordSighting(mac: MACAddress("52:54:00:00:01:09")!, platform: p, at: t, create: 3) == nil
            )
            #expect(
                try await s.recordSighting(mac: MACAddress("52:54:00:00:01:0a")!, platform: p, at: t, create: nil)
                    == nil
            )
            #expect(try await s.machines().count == 3)
            // A known machine is still seen at the cap.
            #expect(
                try await s.recordSighting(
                    mac: MACAddress("52:54:00:00:01:01")!,
                    platform: p,
                    at: t.addingTimeInterval(100),
                    create: 3
                ) != nil
            )
            // Enrolled machines do not count against the cap and are never pruned.
            _ = try await s.enroll(
                name: "kept",
                mac: MACAddress("52:54:00:00:01:02")!,
                bmc: try BMCReference(url: "ipmi://a@198.18.0.9"),
                sealedPassword: [1],
                at: t
            )
            #expect(
                try await s.recordSighting(mac: MACAddress("52:54:00:00:01:09")!, platform: p, at: t, create: 3) != nil
            )
            try await s.appendTimeline([
                TimelineEvent(
                    mac: MACAddress("52:54:00:00:01:03")!,
                    time: t,
                    stage: .dhcp,
                    event: "DISCOVER",
                    detail: ""
                )
            ])
            // Unseen since t+50: 01:03 and 01:09 (seen at t) go, 01:01 (seen at t+100) and the enrolled one stay.
            #expect(
                try await s.pruneDiscovered(lastSeenBefore: t.addingTimeInterval(50)).map(\.description).sorted() == [
                    "52:54:00:00:01:03", "52:54:00:00:01:09",
                ]
            )
            #expect(
                try await s.machines().map(\.mac.description).sorted() == ["52:54:00:00:01:01", "52:54:00:00:01:02"]
            )
            #expect(try await s.timeline(mac: MACAddress("52:54:00:00:01:03")!, limit: 10).isEmpty)
        }
    }

    @Test(arguments: StoreKind.allCases) func timelineIsOrderedAndPruned(_ kind: StoreKind) async throws {
        try await withStore(kind, timelineLimit: 5) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            try await s.appendTimeline(
                (0..<8).map {
                    TimelineEvent(mac: mac, time: t.addingTimeInterval(Double($0)), stage: .dhcp, event: "E\($0)")
                }
            )
            let events = try await s.timeline(mac: mac, limit: 100)
            #expect(events.map(\.event) == ["E3", "E4", "E5", "E6", "E7"])
            #expect(try await s.timeline(mac: mac, limit: 2).map(\.event) == ["E6", "E7"])
        }
    }

    @Test(arguments: StoreKind.allCases) func leasesSurviveReopeningAndAddressesStayUnique(
        _ kind: StoreKind
    ) async throws {
        try await withStore(kind) { under in
            let exp = Date(timeIntervalSince1970: 1_800_000_600)
            try under.store.commit([
                Lease(mac: mac, address: IPv4Address("198.18.0.100")!, expires: exp, hostname: "n1")
            ])
            let s = try await under.reopen()
            #expect(
                try s.leases() == [Lease(mac: mac, address: IPv4Address("198.18.0.100")!, expires: exp, hostname: "n1")]
            )
            // The address moves to another MAC: the old row goes.
            let other = MACAddress("52:54:00:00:00:02")!
            try s.commit([Lease(mac: other, address: IPv4Address("198.18.0.100")!, expires: exp)])
            #expect(try s.leases().map(\.mac) == [other])
            try s.deleteLease(mac: other)
            #expect(try s.leases().isEmpty)
        }
    }

    /// The API's reads (leases, a page's leases, machines) from many tasks at once finish: none
    /// blocks a thread of the cooperative pool. SQLite's lease read once did (a synchronous
    /// read): with every pool thread blocked waiting for a reader connection while the tasks that
    /// held the readers waited for a pool thread, the 10 000-machine run stopped dead. A pool
    /// that deadlocks cannot run the test's own timeout, so a watchdog thread stops the test's
    /// PostgreSQL, removes its files and ends the process with the reason.
    @Test(arguments: StoreKind.allCases) func manyConcurrentAPIReadsFinish(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let exp = Date(timeIntervalSince1970: 1_800_000_000)
            let leases = (0..<200).map { i in
                Lease(
                    mac: MACAddress("52:54:00:01:\(String(format: "%02x:%02x", i / 256, i % 256))")!,
                    address: IPv4Address("198.18.1.\(i + 1)")!,
                    expires: exp
                )
            }
            try await offPool { try s.commit(leases) }
            let page = Array(leases.prefix(50).map(\.mac))
            #expect(Set(try await s.currentLeases(macs: page).map(\.mac)) == Set(page))
            #expect(try await s.currentLeases(macs: []).isEmpty)
            let done = Mutex(false)
            Thread {
                let deadline = Date().addingTimeInterval(60)
                while !done.withLock({ $0 }) {
                    if Date() > deadline {
                        // The process ends here, so what the test started goes first.
                        under.postgres?.stop()
                        under.harness.cleanup()
                        fatalError(
                            "\(kind): concurrent API reads did not finish in 60 s: the cooperative pool is blocked"
                        )
                    }
                    Thread.sleep(forTimeInterval: 0.1)
                }
            }.start()
            defer { done.withLock { $0 = true } }
            let counts = try await withThrowingTaskGroup(of: Int.self) { group in
                for i in 0..<400 {
                    group.addTask {
                        switch i % 3 {
                        case 0: try await s.currentLeases().count
                        case 1: try await s.currentLeases(macs: page).count
                        default: try await s.machines().count + 200
                        }
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(counts.count == 400)
            #expect(counts.allSatisfy { $0 == 200 || $0 == 50 })
        }
    }

    /// A renewal updates the row; a MAC that moves to a new address keeps one row; in one batch,
    /// an address released by one MAC and given to another ends with the new holder only.
    @Test(arguments: StoreKind.allCases) func leaseCommitsKeepOneRowPerMACAndPerAddress(_ kind: StoreKind) async throws
    {
        try await withStore(kind) { under in
            let s = under.store
            let a = MACAddress("52:54:00:00:00:0a")!
            let b = MACAddress("52:54:00:00:00:0b")!
            let ip1 = IPv4Address("198.18.0.101")!
            let ip2 = IPv4Address("198.18.0.102")!
            let t1 = Date(timeIntervalSince1970: 1_800_000_000)
            let t2 = Date(timeIntervalSince1970: 1_800_000_900)
            try s.commit([Lease(mac: a, address: ip1, expires: t1), Lease(mac: b, address: ip2, expires: t1)])
            try s.commit([Lease(mac: a, address: ip1, expires: t2, hostname: "renewed")])
            #expect(
                Set(try s.leases()) == [
                    Lease(mac: a, address: ip1, expires: t2, hostname: "renewed"),
                    Lease(mac: b, address: ip2, expires: t1),
                ]
            )
            // a moves to ip2, which b no longer holds: one row each for a; b's stale row goes.
            try s.commit([Lease(mac: a, address: ip2, expires: t2)])
            #expect(try s.leases() == [Lease(mac: a, address: ip2, expires: t2)])
            try s.commit([Lease(mac: b, address: ip1, expires: t1), Lease(mac: a, address: ip2, expires: t1)])
            #expect(
                Set(try s.leases()) == [
                    Lease(mac: b, address: ip1, expires: t1), Lease(mac: a, address: ip2, expires: t1),
                ]
            )
            // Row by row in one batch: a takes ip1, then moves to ip2, which b then takes;
            // a is left with nothing.
            try s.commit([
                Lease(mac: a, address: ip1, expires: t2), Lease(mac: a, address: ip2, expires: t2),
                Lease(mac: b, address: ip2, expires: t2),
            ])
            #expect(try s.leases() == [Lease(mac: b, address: ip2, expires: t2)])
        }
    }

    /// Two stores on one database (two replicas): allocations racing from both never hand out a
    /// machine twice, and updates racing on one machine lose none.
    @Test(arguments: StoreKind.allCases) func twoStoresOnOneDatabaseNeitherDoubleAllocateNorLoseUpdates(
        _ kind: StoreKind
    ) async throws {
        try await withStore(kind) { under in
            let a = under.store
            let b = try await under.reopen()
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let bmc = try BMCReference(url: "ipmi://admin@198.18.0.9")
            for i in 0..<10 { try await a.createProject(Project(name: "p\(i)", created: t)) }
            var ids: [String] = []
            for i in 0..<6 {
                let m = try await a.enroll(
                    name: "n\(i)",
                    mac: MACAddress("52:54:00:00:02:0\(i)")!,
                    bmc: bmc,
                    sealedPassword: [1],
                    at: t
                )
                _ = try await a.update(machineID: m.id) { x in
                    x.state = .ready
                    return []
                }
                ids.append(m.id)
            }
            let results = try await withThrowingTaskGroup(of: String?.self) { group in
                for i in 0..<10 {
                    let s = i % 2 == 0 ? a : b
                    group.addTask {
                        try await s.allocate({ $0.state == .ready && $0.project == nil }) { x in
                            x.state = .deploying
                            x.project = "p\(i)"
                            return [MachineEvent(x, kind: .transition, message: "allocated to p\(i)")]
                        }?.id
                    }
                }
                var out: [String?] = []
                for try await r in group { out.append(r) }
                return out
            }
            let got = results.compactMap { $0 }
            #expect(got.count == 6 && Set(got) == Set(ids), "\(results)")
            #expect(try await b.machines().allSatisfy { $0.state == .deploying && $0.project != nil })
            // 2 × 15 increments of one machine's generation from both stores: none lost.
            let target = ids[0]
            let before = try #require(try await a.machine(id: target)).generation
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<30 {
                    let s = i % 2 == 0 ? a : b
                    group.addTask {
                        _ = try await s.update(machineID: target) { x in
                            x.generation += 1
                            return [MachineEvent(x, kind: .action, message: "bump \(x.generation)")]
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await b.machine(id: target)?.generation == before + 30)
            // Its events: one per commit, in commit order, ids increasing, seen alike from both.
            let events = try await a.events(after: 0, machineID: target, limit: 100)
            #expect(events.count == 31)
            #expect(events.map(\.id) == events.map(\.id).sorted() && Set(events.map(\.id)).count == 31)
            #expect(events.suffix(30).map(\.message) == (1...30).map { "bump \(before + $0)" })
            #expect(try await b.events(after: events[9].id, machineID: nil, limit: 1000).count >= 21)
            #expect(
                try await b.lastEventID(machineID: nil)
                    == (try await a.events(after: 0, machineID: nil, limit: 1000).last?.id ?? -1)
            )
            // Of one machine: its own newest event, not the newest of all.
            #expect(try await b.lastEventID(machineID: target) == events.last?.id)
            let other = try await a.events(after: 0, machineID: ids[1], limit: 100).last?.id
            #expect(other != nil && other! < events.last!.id)
            #expect(try await b.lastEventID(machineID: ids[1]) == other)
            #expect(try await b.lastEventID(machineID: "nope") == 0)
            // A machine that does not exist is notFound.
            let missing = await #expect(throws: StoreError.self) { try await b.update(machineID: "nope") { _ in [] } }
            #expect(missing?.code == .notFound)
        }
    }

    /// A deploy on one store and the deletion of its project on another, racing: either the
    /// machine joined and the delete was refused, or the project went and the deploy was
    /// refused; never a machine left in a project that no longer exists.
    @Test(arguments: StoreKind.allCases) func aDeployAndItsProjectsDeleteRacingLeaveNoOrphan(
        _ kind: StoreKind
    ) async throws {
        try await withStore(kind) { under in
            let a = under.store
            let b = try await under.reopen()
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let bmc = try BMCReference(url: "ipmi://admin@198.18.0.9")
            let m = try await a.enroll(
                name: "n",
                mac: MACAddress("52:54:00:00:03:01")!,
                bmc: bmc,
                sealedPassword: [1],
                at: t
            )
            for round in 0..<20 {
                let project = "race\(round)"
                try await a.createProject(Project(name: project, created: t))
                _ = try await a.update(machineID: m.id) { x in
                    x.state = .ready
                    x.project = nil
                    return []
                }
                async let deploy: Bool = {
                    do {
                        return try await a.allocate({ $0.project == nil }) { x in
                            x.state = .deploying
                            x.project = project
                            return []
                        } != nil
                    } catch let e as StoreError where e.code == .notFound { return false }
                }()
                async let delete: Bool = {
                    do { return try await b.deleteProject(name: project) } catch let e as StoreError
                        where e.code == .inUse
                    { return false }
                }()
                let (d, g) = try await (deploy, delete)
                let now = try #require(try await b.machine(id: m.id))
                let exists = try await b.project(name: project) != nil
                #expect(d != g, "round \(round): deploy \(d), delete \(g)")
                #expect(
                    d == (now.project == project) && g == !exists,
                    "round \(round): machine in \(now.project ?? "none"), project exists \(exists)"
                )
            }
        }
    }

    /// Sites: unique names; a join token is found by its hash and spent once, even by joins
    /// racing with it; a removed site is gone with its token.
    @Test(arguments: StoreKind.allCases) func sitesJoinOnce(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let site = Site(name: "site-1", created: t, joinTokenSHA256: "aa", joinExpires: t.addingTimeInterval(3600))
            try await s.createSite(site)
            #expect(
                await #expect(throws: StoreError.self) {
                    try await s.createSite(Site(name: "site-1", created: t, joinTokenSHA256: "bb"))
                }?.code == .alreadyExists
            )
            try await s.createSite(Site(name: "site-0", created: t, joinTokenSHA256: "cc"))
            #expect(try await s.sites().map(\.name) == ["site-0", "site-1"])
            #expect(try await s.site(name: "site-1") == site)
            #expect(try await s.site(joinTokenSHA256: "aa") == site)
            #expect(try await s.site(joinTokenSHA256: "zz") == nil)
            // Eight joins race with one token: one wins.
            let wins = try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<8 {
                    group.addTask {
                        try await s.completeJoin(
                            name: "site-1",
                            joinTokenSHA256: "aa",
                            certificateSerial: "0\(i)",
                            certificateNotAfter: t.addingTimeInterval(86400),
                            certificatePEM: "pem-0\(i)",
                            at: t.addingTimeInterval(60)
                        )
                    }
                }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(wins == 1)
            let joined = try #require(try await s.site(name: "site-1"))
            #expect(joined.joinTokenSHA256 == nil && joined.joinExpires == site.joinExpires)
            #expect(joined.certificateSerial?.hasPrefix("0") == true && joined.joined == t.addingTimeInterval(60))
            #expect(joined.certificateNotAfter == t.addingTimeInterval(86400))
            // The spent token still finds the site, with the certificate it got (for a join sent
            // again), and cannot be spent again.
            #expect(
                joined.spentTokenSHA256 == "aa" && joined.certificatePEM == "pem-" + (joined.certificateSerial ?? "")
            )
            #expect(try await s.site(joinTokenSHA256: "aa") == joined)
            #expect(
                try await !s.completeJoin(
                    name: "site-1",
                    joinTokenSHA256: "aa",
                    certificateSerial: "0z",
                    certificateNotAfter: t,
                    certificatePEM: "pem-z",
                    at: t
                )
            )
            // The wrong token for a site spends nothing.
            #expect(
                try await !s.completeJoin(
                    name: "site-0",
                    joinTokenSHA256: "aa",
                    certificateSerial: "ff",
                    certificateNotAfter: t,
                    certificatePEM: "pem-ff",
                    at: t
                )
            )
            #expect(try await s.site(name: "site-0")?.joinTokenSHA256 == "cc")
            #expect(try await s.deleteSite(name: "site-0"))
            #expect(try await !s.deleteSite(name: "site-0"))
            #expect(try await s.site(joinTokenSHA256: "cc") == nil)
            // Kept across a reopen.
            #expect(try await under.reopen().site(name: "site-1") == joined)
        }
    }

    /// A machine's site is a foreign key: a site with machines cannot be deleted, and a machine
    /// cannot name a site that does not exist, whatever the API checked before.
    @Test(arguments: StoreKind.allCases) func aSiteWithMachinesStays(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            try await s.createSite(Site(name: "site-1", created: t, joinTokenSHA256: "aa"))
            let m = try await s.enroll(
                name: "m1",
                mac: MACAddress([0x52, 0x54, 0, 8, 0, 1]),
                bmc: try BMCReference(url: "ipmi://admin@198.18.0.11"),
                sealedPassword: [1],
                at: t
            )
            _ = try await s.update(machineID: m.id, fence: nil) { x in
                x.site = "site-1"
                return []
            }
            let kept = await #expect(throws: StoreError.self) { try await s.deleteSite(name: "site-1") }
            #expect(kept?.code == .inUse, "\(String(describing: kept))")
            #expect(try await s.site(name: "site-1") != nil)
            let moved = await #expect(throws: StoreError.self) {
                try await s.update(machineID: m.id, fence: nil) { x in
                    x.site = "site-9"
                    return []
                }
            }
            #expect(moved?.code == .inUse)
            #expect(try await s.machine(id: m.id)?.site == "site-1")
            _ = try await s.update(machineID: m.id, fence: nil) { x in
                x.site = nil
                return []
            }
            #expect(try await s.deleteSite(name: "site-1"))
        }
    }

    /// A heartbeat over a site's link is recorded only for the certificate the site holds now:
    /// not for another serial, not for a site still waiting to join, not for a removed one.
    @Test(arguments: StoreKind.allCases) func siteLinkOnlyForTheCurrentCertificate(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            try await s.createSite(Site(name: "site-1", created: t, joinTokenSHA256: "aa"))
            let link = SiteLink(
                lastSeen: t.addingTimeInterval(5),
                address: "ipv4:127.0.0.1:40000",
                queueDepth: 3,
                cachedFiles: 2,
                cachedBytes: 1 << 33,
                version: "test",
                bmcChannels: 2
            )
            #expect(try await !s.recordSiteLink(name: "site-1", certificateSerial: "", link: link))
            #expect(
                try await s.completeJoin(
                    name: "site-1",
                    joinTokenSHA256: "aa",
                    certificateSerial: "0a",
                    certificateNotAfter: t.addingTimeInterval(86400),
                    certificatePEM: "pem-0a",
                    at: t
                )
            )
            #expect(try await s.site(name: "site-1")?.link == nil)
            #expect(try await !s.recordSiteLink(name: "site-1", certificateSerial: "0b", link: link))
            #expect(try await !s.recordSiteLink(name: "site-2", certificateSerial: "0a", link: link))
            #expect(try await s.site(name: "site-1")?.link == nil)
            #expect(try await s.recordSiteLink(name: "site-1", certificateSerial: "0a", link: link))
            #expect(try await s.site(name: "site-1")?.link == link)
            #expect(try await s.sites().first?.link == link)
            #expect(link.state(at: t.addingTimeInterval(30)) == "up")
            #expect(link.state(at: t.addingTimeInterval(36)) == "down")
            #expect(try await under.reopen().site(name: "site-1")?.link == link)
            #expect(try await s.deleteSite(name: "site-1"))
            #expect(try await !s.recordSiteLink(name: "site-1", certificateSerial: "0a", link: link))
        }
    }

    /// A site's events are appended once and in order, only for its own machines, only under
    /// its current certificate, and only after the mark the site believes the region has.
    /// Two sites, site-1 joined (certificate serial 0a) and site-2 not, and three machines: one
    /// at site-1, one at no site, one at site-2.
    static func siteFixture(
        _ s: any StateStore,
        at t: Date
    ) async throws -> (mine: MACAddress, none: MACAddress, theirs: MACAddress) {
        for (site, token) in [("site-1", "aa"), ("site-2", "bb")] {
            try await s.createSite(Site(name: site, created: t, joinTokenSHA256: token))
        }
        #expect(
            try await s.completeJoin(
                name: "site-1",
                joinTokenSHA256: "aa",
                certificateSerial: "0a",
                certificateNotAfter: t.addingTimeInterval(86400),
                certificatePEM: "pem-0a",
                at: t
            )
        )
        let mine = MACAddress([0x52, 0x54, 0, 8, 1, 1])
        let none = MACAddress([0x52, 0x54, 0, 8, 1, 2])
        let theirs = MACAddress([0x52, 0x54, 0, 8, 1, 3])
        for (name, mac, site) in [("m1", mine, "site-1"), ("m2", none, nil), ("m3", theirs, "site-2")] {
            let m = try await s.enroll(
                name: name,
                mac: mac,
                bmc: try BMCReference(url: "ipmi://admin@198.18.0.11"),
                sealedPassword: [1],
                at: t
            )
            _ = try await s.update(machineID: m.id, fence: nil) { x in
                x.site = site
                return []
            }
        }
        return (mine, none, theirs)
    }

    @Test(arguments: StoreKind.allCases) func siteEventsOnceInOrder(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let (mine, none, theirs) = try await Self.siteFixture(s, at: t)
            func event(_ id: Int64, _ mac: MACAddress) -> SiteEvent {
                SiteEvent(
                    id: id,
                    event: TimelineEvent(
                        mac: mac,
                        time: t.addingTimeInterval(Double(id)),
                        stage: .dhcp,
                        event: "ACK \(id)"
                    )
                )
            }
            func append(
                _ events: [SiteEvent],
                after: Int64,
                serial: String = "0a",
                site: String = "site-1"
            )
                async throws -> Int64?
            {
                try await s.appendSiteEvents(
                    name: site,
                    certificateSerial: serial,
                    after: after,
                    events: events,
                    through: events.map(\.id).max() ?? 0
                )
            }
            let first = [event(1, mine), event(2, none), event(3, mine), event(4, theirs)]
            #expect(try await append(first, after: 0, serial: "0b") == nil)
            #expect(try await append(first, after: 0, site: "site-9") == nil)
            #expect(try await s.timeline(mac: mine, limit: 10).isEmpty)
            #expect(try await append([], after: 0) == 0)
            // Sent as following a mark the region does not have: nothing is written.
            #expect(try await append(first, after: 2) == 0)
            #expect(try await s.timeline(mac: mine, limit: 10).isEmpty)
            #expect(try await append(first, after: 0) == 4)
            // Sent again (a lost answer) with one more: the mark is 4, not 0; nothing is written.
            #expect(try await append(first + [event(5, mine)], after: 0) == 4)
            #expect(try await append(first + [event(5, mine)], after: 4) == 5)
            // Numbers the caller could not read still move the mark (`through`).
            #expect(
                try await s.appendSiteEvents(
                    name: "site-1",
                    certificateSerial: "0a",
                    after: 5,
                    events: [event(6, mine)],
                    through: 8
                ) == 8
            )
            let got = try await s.timeline(mac: mine, limit: 10)
            #expect(got.map(\.event) == ["ACK 1", "ACK 3", "ACK 5", "ACK 6"], "\(got)")
            // No site's machine, and another site's, get nothing from this site.
            #expect(try await s.timeline(mac: none, limit: 10).isEmpty)
            #expect(try await s.timeline(mac: theirs, limit: 10).isEmpty)
            #expect(
                try await under.reopen().appendSiteEvents(
                    name: "site-1",
                    certificateSerial: "0a",
                    after: 0,
                    events: [],
                    through: 0
                ) == 8
            )
        }
    }

    /// A site's report of its leases replaces its last one, keeps only its own machines', and
    /// is refused with another certificate; the leases go with the site, or with a machine
    /// that moves to another site.
    @Test(arguments: StoreKind.allCases) func siteLeasesAreTheSitesLastWord(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            let (mine, none, theirs) = try await Self.siteFixture(s, at: t)
            let all = [mine, none, theirs]
            func lease(_ mac: MACAddress, _ last: UInt8, host: String? = nil) -> Lease {
                Lease(
                    mac: mac,
                    address: IPv4Address(10, 9, 0, last),
                    expires: t.addingTimeInterval(600),
                    hostname: host
                )
            }
            let report = [lease(mine, 10, host: "m1"), lease(none, 11), lease(theirs, 12)]
            #expect(try await s.recordSiteLeases(name: "site-1", certificateSerial: "0b", leases: report) == nil)
            #expect(try await s.recordSiteLeases(name: "site-2", certificateSerial: "0a", leases: report) == nil)
            #expect(try await s.siteLeases(macs: all).isEmpty)
            #expect(try await s.recordSiteLeases(name: "site-1", certificateSerial: "0a", leases: report) == 1)
            #expect(try await s.siteLeases(macs: all) == [lease(mine, 10, host: "m1")])
            #expect(try await s.siteLeases(macs: [none, theirs]).isEmpty)
            // The region's own lease table is not the sites'.
            #expect(try await s.currentLeases(macs: all).isEmpty)
            // The next report replaces the last: a new address, then none.
            #expect(
                try await s.recordSiteLeases(name: "site-1", certificateSerial: "0a", leases: [lease(mine, 20)]) == 1
            )
            #expect(try await under.reopen().siteLeases(macs: all) == [lease(mine, 20)])
            #expect(try await s.recordSiteLeases(name: "site-1", certificateSerial: "0a", leases: []) == 0)
            #expect(try await s.siteLeases(macs: all).isEmpty)
            // A machine moved to another site no longer shows the old site's lease.
            #expect(
                try await s.recordSiteLeases(name: "site-1", certificateSerial: "0a", leases: [lease(mine, 30)]) == 1
            )
            let m = try #require(try await s.machine(mac: mine))
            _ = try await s.update(machineID: m.id, fence: nil) { x in
                x.site = "site-2"
                return []
            }
            #expect(try await s.siteLeases(macs: all).isEmpty)
            _ = try await s.update(machineID: m.id, fence: nil) { x in
                x.site = "site-1"
                return []
            }
            #expect(try await s.siteLeases(macs: all) == [lease(mine, 30)])
            // Gone with the machine's site.
            _ = try await s.update(machineID: m.id, fence: nil) { x in
                x.site = nil
                return []
            }
            #expect(try await s.deleteSite(name: "site-1"))
            #expect(try await s.siteLeases(macs: all).isEmpty)
        }
    }

    /// Projects, tokens and images: names are unique, and what is in use cannot be removed; the
    /// errors carry codes.
    @Test(arguments: StoreKind.allCases) func tenancyAndImagesKeepTheirRules(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let t = Date(timeIntervalSince1970: 1_800_000_000)
            try await s.createProject(
                Project(name: "team", description: "d", requiredTags: ["env"], created: t, wipePolicy: .quick)
            )
            #expect(
                try await s.project(name: "team")
                    == Project(name: "team", description: "d", requiredTags: ["env"], created: t, wipePolicy: .quick)
            )
            #expect(
                await #expect(throws: StoreError.self) { try await s.createProject(Project(name: "team", created: t)) }?
                    .code == .alreadyExists
            )
            let orphan = APIToken(id: "1", name: "x", role: .member, project: "none", secretSHA256: "aa", created: t)
            #expect(await #expect(throws: StoreError.self) { try await s.createToken(orphan) }?.code == .notFound)
            let token = APIToken(id: "2", name: "m", role: .member, project: "team", secretSHA256: "bb", created: t)
            try await s.createToken(token)
            #expect(try await s.token(secretSHA256: "bb") == token)
            #expect(try await s.tokens() == [token])
            #expect(
                await #expect(throws: StoreError.self) { _ = try await s.deleteProject(name: "team") }?.code == .inUse
            )
            #expect(try await s.revokeToken(id: "2"))
            #expect(try await !s.revokeToken(id: "2"))
            #expect(try await s.deleteProject(name: "team"))
            #expect(try await !s.deleteProject(name: "team"))

            let image = ImageInfo(
                name: "deb",
                sha256: String(repeating: "ab", count: 32),
                size: 42,
                format: .raw,
                os: "debian",
                architecture: .x86_64,
                firmware: .uefi,
                created: t
            )
            try await s.addImage(image)
            #expect(try await s.image(name: "deb") == image)
            #expect(try await s.images() == [image])
            #expect(await #expect(throws: StoreError.self) { try await s.addImage(image) }?.code == .alreadyExists)
            let m = try await s.enroll(
                name: "n1",
                mac: mac,
                bmc: try BMCReference(url: "ipmi://a@198.18.0.9"),
                sealedPassword: [1],
                at: t
            )
            _ = try await s.update(machineID: m.id) { x in
                x.deployment = Deployment(
                    image: "deb",
                    imageSHA256: image.sha256,
                    sshKeys: [],
                    userData: "",
                    hostname: "h",
                    requestedBy: "t"
                )
                return []
            }
            #expect(await #expect(throws: StoreError.self) { _ = try await s.deleteImage(name: "deb") }?.code == .inUse)
            _ = try await s.update(machineID: m.id) { x in
                x.deployment = nil
                return []
            }
            #expect(try await s.imageReferenced(sha256: image.sha256))
            #expect(try await s.deleteImage(name: "deb"))
            #expect(try await !s.imageReferenced(sha256: image.sha256))
            // A machine's rename onto a taken name is refused; delete removes it with its events.
            let other = try await s.enroll(
                name: "n2",
                mac: MACAddress("52:54:00:00:00:09")!,
                bmc: try BMCReference(url: "ipmi://a@198.18.0.9"),
                sealedPassword: [2],
                at: t
            )
            #expect(
                await #expect(throws: StoreError.self) {
                    _ = try await s.update(machineID: other.id) { x in
                        x.name = "n1"
                        return []
                    }
                }?.code == .alreadyExists
            )
            try await s.deleteMachine(id: other.id)
            #expect(try await s.machine(id: other.id) == nil)
            #expect(try await s.sealedBMCPassword(machineID: other.id) == nil)
        }
    }

    /// A refusal the caller's closure throws inside an update comes back as that same error
    /// (not as the store being unavailable), on every kind of update, and writes nothing.
    @Test(arguments: StoreKind.allCases) func aCallersRefusalPassesThroughAndWritesNothing(
        _ kind: StoreKind
    ) async throws {
        struct Refusal: Error, Equatable { let why: String }
        try await withStore(kind) { under in
            let s = under.store
            let m = try await s.enroll(
                name: "r1",
                mac: mac,
                bmc: try BMCReference(url: "ipmi://a@198.18.0.9"),
                sealedPassword: [1],
                at: Date()
            )
            _ = try await s.update(machineID: m.id, fence: nil) { x in
                x.state = .ready
                return []
            }
            let plain = await #expect(throws: Refusal.self) {
                _ = try await s.update(machineID: m.id, fence: nil) { x in
                    x.labels["by"] = "refused"
                    throw Refusal(why: "no disk")
                }
            }
            #expect(plain == Refusal(why: "no disk"))
            let counting = await #expect(throws: Refusal.self) {
                _ = try await s.updateCounting(machineID: m.id, fence: nil) { x, _ in
                    x.labels["by"] = "refused"
                    throw Refusal(why: "over the cap")
                }
            }
            #expect(counting == Refusal(why: "over the cap"))
            let allocating = await #expect(throws: Refusal.self) {
                _ = try await s.allocate({ _ in true }) { x in
                    x.labels["by"] = "refused"
                    throw Refusal(why: "not now")
                }
            }
            #expect(allocating == Refusal(why: "not now"))
            #expect(try await s.machine(id: m.id)?.labels["by"] == nil)
            #expect(try await s.events(after: 0, machineID: m.id, limit: 10).isEmpty)
        }
    }

    /// Work claims: one live holder; renewal keeps the token, a takeover after the lapse bumps
    /// it; a commit fenced with a lost claim writes nothing.
    @Test(arguments: StoreKind.allCases) func workClaimsHaveOneHolderAndFenceCommits(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let a = under.store
            let b = try await under.reopen()
            let m = try await a.enroll(
                name: "n1",
                mac: mac,
                bmc: try BMCReference(url: "ipmi://a@198.18.0.9"),
                sealedPassword: [1],
                at: Date()
            )
            // Live for a minute while it is checked (the suite shares two cores: a short TTL
            // lapsed under load before the checks were done).
            let first = try #require(try await a.claimWork(machineID: m.id, owner: "A", ttl: .seconds(60)))
            #expect(try await b.claimWork(machineID: m.id, owner: "B", ttl: .seconds(30)) == nil)
            // Renewal: the same token.
            #expect(try await a.claimWork(machineID: m.id, owner: "A", ttl: .seconds(60)) == first)
            #expect(try await a.renewWork(first, ttl: .seconds(60)))
            _ = try await a.update(machineID: m.id, fence: first) { x in
                x.labels["by"] = "A"
                return []
            }
            // A's last renewal is short, then it stops; once the claim lapses B takes it over
            // with a higher token.
            #expect(try await a.renewWork(first, ttl: .seconds(1)))
            var taken: WorkClaim?
            let deadline = Date().addingTimeInterval(30)
            while taken == nil, Date() < deadline {
                taken = try await b.claimWork(machineID: m.id, owner: "B", ttl: .seconds(30))
                if taken == nil { try await Task.sleep(for: .milliseconds(100)) }
            }
            let second = try #require(taken)
            #expect(second.token > first.token)
            #expect(try await !a.renewWork(first, ttl: .seconds(30)))
            let fenced = await #expect(throws: StoreError.self) {
                _ = try await a.update(machineID: m.id, fence: first) { x in
                    x.labels["by"] = "stale A"
                    return [MachineEvent(x, kind: .action, message: "must not be written")]
                }
            }
            #expect(fenced?.code == .fenced)
            #expect(try await b.machine(id: m.id)?.labels["by"] == "A")
            #expect(try await b.events(after: 0, machineID: m.id, limit: 10).isEmpty)
            _ = try await b.update(machineID: m.id, fence: second) { x in
                x.labels["by"] = "B"
                return []
            }
            // Released: anyone may claim at once, with a higher token again.
            try await b.releaseWork(second)
            let third = try #require(try await a.claimWork(machineID: m.id, owner: "A", ttl: .seconds(30)))
            #expect(third.token > second.token)
        }
    }

    /// Admissions from two stores at once respect one cap: the count is taken in the admitting
    /// transaction, under a lock every admission takes.
    @Test(arguments: StoreKind.allCases) func countingUpdatesHoldACapAcrossStores(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let a = under.store
            let b = try await under.reopen()
            var ids: [String] = []
            for i in 0..<8 {
                let m = try await a.enroll(
                    name: "q\(i)",
                    mac: MACAddress("52:54:00:00:03:0\(i)")!,
                    bmc: try BMCReference(url: "ipmi://a@198.18.0.9"),
                    sealedPassword: [1],
                    at: Date()
                )
                _ = try await a.update(machineID: m.id) { x in
                    x.state = .deploying
                    x.phase = .queued
                    return []
                }
                ids.append(m.id)
            }
            let cap = 3
            let admitted = try await withThrowingTaskGroup(of: Bool.self) { group in
                for (i, id) in ids.enumerated() {
                    let s = i % 2 == 0 ? a : b
                    group.addTask {
                        try await s.updateCounting(machineID: id, fence: nil) { x, running in
                            guard running[.deploying, default: 0] < cap else { return [] }
                            x.phase = .boot
                            return [MachineEvent(x, kind: .action, message: "admitted")]
                        }.phase == .boot
                    }
                }
                var n = 0
                for try await ok in group where ok { n += 1 }
                return n
            }
            #expect(admitted == cap)
            #expect(try await b.machines().filter { $0.phase == .boot }.count == cap)
            // A deploy waiting for its OS (phase os) holds no slot: with one of the three moved
            // there, one more is admitted, and no other.
            let booted = try await b.machines().filter { $0.phase == .boot }
            _ = try await a.update(machineID: booted[0].id) { x in
                x.phase = .os
                return []
            }
            var more = 0
            for id in ids {
                let m = try await b.updateCounting(machineID: id, fence: nil) { x, running in
                    guard x.phase == .queued, running[.deploying, default: 0] < cap else { return [] }
                    x.phase = .boot
                    return [MachineEvent(x, kind: .action, message: "admitted")]
                }
                if m.phase == .boot, !booted.contains(where: { $0.id == id }) { more += 1 }
            }
            #expect(more == 1)
        }
    }

    /// The reconciler's scan reads machines in steps as the whole machine would show them,
    /// and no machine outside a step; several events of one commit keep their order and ids.
    @Test(arguments: StoreKind.allCases) func stepsReadAsTheMachinesShowThem(_ kind: StoreKind) async throws {
        try await withStore(kind) { under in
            let s = under.store
            let states: [MachineState] = [.ready, .commissioning, .deploying, .releasing, .deployed, .rescuing]
            let started = Date(timeIntervalSince1970: 1_800_000_123.25)
            for (i, state) in states.enumerated() {
                let m = try await s.enroll(
                    name: "st\(i)",
                    mac: MACAddress("52:54:00:00:04:0\(i)")!,
                    bmc: try BMCReference(url: "ipmi://a@198.18.0.9"),
                    sealedPassword: [1],
                    at: Date()
                )
                _ = try await s.update(machineID: m.id, fence: nil) { x in
                    x.state = state
                    x.phase = Lifecycle.steps.contains(state) ? (i % 2 == 0 ? .agent : .queued) : .none
                    x.generation = 10 + i
                    x.stepStarted = Lifecycle.steps.contains(state) ? started.addingTimeInterval(Double(i)) : nil
                    x.progress =
                        i == 2 ? StepProgress(stage: "write", bytesDone: 7, bytesTotal: 9, updated: started) : nil
                    x.inventory = Inventory(
                        cpuModel: "c",
                        cores: 4,
                        memoryBytes: 1 << 30,
                        disks: [],
                        nics: [],
                        vendor: "",
                        product: "",
                        serial: "",
                        firmware: .uefi
                    )
                    return (0..<3).map { MachineEvent(x, kind: .action, message: "e\($0)") }
                }
            }
            let steps = try await s.machineSteps().sorted { $0.name < $1.name }
            let whole = try await s.machines(MachineQuery(states: Lifecycle.steps))
            #expect(steps.map(\.name) == ["st1", "st2", "st3", "st5"])
            #expect(steps == whole.map(MachineStep.init))
            #expect(steps.first { $0.name == "st2" }?.progress?.bytesDone == 7)
            #expect(steps.first { $0.name == "st1" }?.stepStarted == started.addingTimeInterval(1))
            let events = try await s.events(after: 0, machineID: nil, limit: 100).filter { $0.kind == .action }
            #expect(events.map(\.message) == Array(repeating: ["e0", "e1", "e2"], count: states.count).flatMap { $0 })
            #expect(events.map(\.id) == events.map(\.id).sorted() && Set(events.map(\.id)).count == events.count)
        }
    }
}

/// What only the PostgreSQL store has.
@Suite struct PostgresStoreTests {
    /// Replicas starting together on an empty database migrate it once.
    @Test func replicasStartingTogetherMigrateOnce() async throws {
        try await withStore(.postgres) { under in
            let opened = try await withThrowingTaskGroup(of: (any StateStore).self) { group in
                for _ in 0..<3 { group.addTask { try await under.reopen() } }
                var n = 0
                for try await _ in group { n += 1 }
                return n
            }
            #expect(opened == 3)
            let store = try #require(under.store as? PostgresStore)
            #expect(
                try await store.appliedMigrations() == [
                    "v1", "v2-work-claim", "v3-pages-and-pool", "v4-running-index", "v5-site", "v6-machine-site",
                    "v7-site-events", "v8-site-lease", "v9-bulk-enroll", "v10-networks", "v11-burn-in",
                ]
            )
            #expect(try under.postgres?.psql("farrier", "SELECT count(*) FROM farrier_migration") == "11\n")
        }
    }

    /// Two replicas recording new MACs at once create no more discovered machines than the cap
    /// between them.
    @Test func theDiscoveryCapHoldsAcrossReplicas() async throws {
        try await withStore(.postgres) { under in
            let stores = [under.store, try await under.reopen()]
            let cap = 5
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<40 {
                    let store = stores[i % 2]
                    group.addTask {
                        let mac = try #require(MACAddress(String(format: "52:54:00:dc:00:%02x", i)))
                        _ = try await store.recordSighting(
                            mac: mac,
                            platform: ClientPlatform(architecture: .unknown, firmware: .unknown),
                            at: Date(),
                            create: cap
                        )
                    }
                }
                try await group.waitForAll()
            }
            #expect(try under.postgres?.psql("farrier", "SELECT count(*) FROM machine") == "\(cap)\n")
        }
    }

    /// The DHCP fence: one holder per key, all keys or none, and a holder whose connection the
    /// database ends holds nothing (and learns it from `check()`).
    @Test func theDHCPFenceGivesEachKeyToOneHolder() async throws {
        try await withStore(.postgres) { under in
            let store = try #require(under.store as? PostgresStore)
            let a = store.dhcpFence()
            let b = store.dhcpFence()
            #expect(try await a.acquire(["dhcp 198.18.10.0/24", "dhcp 198.18.11.0/24"]))
            try await a.check()
            #expect(try await !b.acquire(["dhcp 198.18.11.0/24"]))
            // Not half of it: B's try at both leaves B holding neither.
            #expect(try await !b.acquire(["dhcp 198.18.12.0/24", "dhcp 198.18.10.0/24"]))
            let locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            #expect(try under.postgres?.psql("farrier", locks) == "2\n")
            /// The advisory locks' count once it is `n`, or the last one seen after 20 s. A session's
            /// locks go when its backend exits, which is just after its client sees the session end
            /// (the server's FATAL message, or the client's own close): on a busy machine, the next
            /// statement could come first.
            func advisoryLocks(become n: Int) async throws -> String? {
                var seen: String?
                for _ in 0..<200 {
                    seen = try under.postgres?.psql("farrier", locks)
                    if seen == "\(n)\n" { break }
                    try await Task.sleep(for: .milliseconds(100))
                }
                return seen
            }
            #expect(try await b.acquire(["dhcp 198.18.12.0/24"]))
            // The database ends A's session (as when A dies): its keys are free, and A knows.
            _ = try under.postgres?.psql(
                "farrier",
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext('dhcp 198.18.10.0/24')::oid"
            )
            await #expect(throws: StoreError.self) { try await a.check() }
            // B's one key is all that is left.
            #expect(try await advisoryLocks(become: 1) == "1\n")
            #expect(try await b.acquire(["dhcp 198.18.10.0/24", "dhcp 198.18.11.0/24"]))
            await b.release()
            #expect(try await advisoryLocks(become: 0) == "0\n")
            #expect(try await a.acquire(["dhcp 198.18.11.0/24"]))
            await a.release()
            #expect(try await advisoryLocks(become: 0) == "0\n")
        }
    }

    /// A URL that is not one, or names an unknown sslmode, is a clear error; the password is
    /// never in it.
    @Test func badURLsAreClearErrors() async throws {
        for (url, message) in [
            ("mysql://u@h/db", "is not a URL like postgres://"),
            ("postgres://u:secret@h/db?sslmode=maybe", "sslmode 'maybe' is not one of"),
            ("postgres:///db", "is not a URL like postgres://"),
        ] {
            let error = await #expect(throws: (any Error).self) { _ = try await PostgresStore(url: url) }
            #expect("\(error.map { "\($0)" } ?? "")".contains(message), "\(url): \(String(describing: error))")
            #expect(!"\(error.map { "\($0)" } ?? "")".contains("secret"))
        }
        // Nothing listens: unavailable, promptly.
        let down = await #expect(throws: StoreError.self) {
            _ = try await PostgresStore(url: "postgres://farrier@127.0.0.1:1/x?sslmode=disable", timeout: .seconds(2))
        }
        #expect(down?.code == .unavailable)
    }
}
