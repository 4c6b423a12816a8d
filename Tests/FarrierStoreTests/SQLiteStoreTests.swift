import FarrierCore
import FarrierStore
import Foundation
import Testing

@Suite struct SQLiteStoreTests {
    let mac = MACAddress("52:54:00:12:34:56")!

    @Test func migrationsAreVersioned() async throws {
        let s = try SQLiteStore()
        #expect(try s.appliedMigrations() == ["v1", "v2-bmc", "v3-lifecycle", "v4-disk-dirty", "v5-agent-boot", "v6-seen-address"])
    }

    /// Proxy mode's seen addresses: one per MAC (the newest wins), apart from leases, and pruned
    /// by age when read.
    @Test func seenAddressesAreOnePerMACAndPruned() async throws {
        let s = try SQLiteStore()
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

    @Test func sightingCreatesADiscoveredMachineOnceAndFillsUnknowns() async throws {
        let s = try SQLiteStore()
        let t = Date(timeIntervalSince1970: 1_800_000_000)
        let a = try #require(try await s.recordSighting(mac: mac, platform: .init(architecture: .unknown, firmware: .unknown), at: t, create: 100))
        #expect(a.state == .discovered && a.name == "m-525400123456")
        let b = try #require(try await s.recordSighting(mac: mac, platform: .init(architecture: .x86_64, firmware: .uefi), at: t.addingTimeInterval(5), create: 100))
        #expect(b.id == a.id)
        #expect(b.firmware == .uefi && b.architecture == .x86_64)
        #expect(b.firstSeen == t && b.lastSeen == t.addingTimeInterval(5))
        #expect(try await s.machines().count == 1)
        #expect(try await s.machine(nameOrMAC: "52-54-00-12-34-56")?.id == a.id)
        #expect(try await s.machine(nameOrMAC: "m-525400123456")?.id == a.id)
        #expect(try await s.machine(nameOrMAC: "nope") == nil)
    }

    @Test func enrollNamesADiscoveredMachineOrMakesOne() async throws {
        let s = try SQLiteStore()
        let t = Date(timeIntervalSince1970: 1_800_000_000)
        let seen = try #require(try await s.recordSighting(mac: mac, platform: .init(architecture: .x86_64, firmware: .bios), at: t, create: 100))
        let bmc = try BMCReference(url: "ipmi://admin@198.18.0.11")
        let enrolled = try await s.enroll(name: "rack1-node1", mac: mac, bmc: bmc, sealedPassword: [1, 2, 3], at: t)
        #expect(enrolled.id == seen.id && enrolled.name == "rack1-node1" && enrolled.state == .enrolled)
        #expect(try await s.machine(name: "rack1-node1")?.bmc == bmc)
        #expect(try await s.sealedBMCPassword(machineID: seen.id) == [1, 2, 3])
        // A sighting later keeps the BMC and its secret (the record never carries the secret).
        _ = try #require(try await s.recordSighting(mac: mac, platform: .init(architecture: .x86_64, firmware: .bios), at: t.addingTimeInterval(9), create: 100))
        #expect(try await s.sealedBMCPassword(machineID: seen.id) == [1, 2, 3])
        #expect(try await s.machine(mac: mac)?.bmc == bmc)
        #expect(try await s.machine(mac: mac)?.state == .enrolled)
        // A new MAC makes an enrolled machine; booting fills in its platform and keeps it enrolled.
        let other = MACAddress("52:54:00:00:00:02")!
        let fresh = try await s.enroll(name: "rack1-node2", mac: other, bmc: bmc, sealedPassword: [9], at: t)
        #expect(fresh.state == .enrolled && fresh.firmware == .unknown)
        let booted = try #require(try await s.recordSighting(mac: other, platform: .init(architecture: .x86_64, firmware: .uefi), at: t, create: 100))
        #expect(booted.state == .enrolled && booted.firmware == .uefi)
        // A name held by another MAC is a conflict the user can fix.
        let taken = await #expect(throws: StoreError.self) {
            try await s.enroll(name: "rack1-node1", mac: other, bmc: bmc, sealedPassword: [9], at: t)
        }
        #expect(taken?.code == .alreadyExists)
    }

    /// New MACs become discovered machines only while fewer than the cap are; an unknown MAC
    /// with no creation allowed writes nothing; old unenrolled ones are pruned with their timeline.
    @Test func discoveryIsCappedAndPruned() async throws {
        let s = try SQLiteStore()
        let t = Date(timeIntervalSince1970: 1_800_000_000)
        let p = ClientPlatform(architecture: .x86_64, firmware: .bios)
        for i in 1...3 {
            #expect(try await s.recordSighting(mac: MACAddress("52:54:00:00:01:0\(i)")!, platform: p, at: t, create: 3) != nil)
        }
        #expect(try await s.recordSighting(mac: MACAddress("52:54:00:00:01:09")!, platform: p, at: t, create: 3) == nil)
        #expect(try await s.recordSighting(mac: MACAddress("52:54:00:00:01:0a")!, platform: p, at: t, create: nil) == nil)
        #expect(try await s.machines().count == 3)
        // A known machine is still seen at the cap.
        #expect(try await s.recordSighting(mac: MACAddress("52:54:00:00:01:01")!, platform: p, at: t.addingTimeInterval(100), create: 3) != nil)
        // Enrolled machines do not count against the cap and are never pruned.
        _ = try await s.enroll(name: "kept", mac: MACAddress("52:54:00:00:01:02")!, bmc: try BMCReference(url: "ipmi://a@198.18.0.9"), sealedPassword: [1], at: t)
        #expect(try await s.recordSighting(mac: MACAddress("52:54:00:00:01:09")!, platform: p, at: t, create: 3) != nil)
        try await s.appendTimeline([TimelineEvent(mac: MACAddress("52:54:00:00:01:03")!, time: t, stage: .dhcp, event: "DISCOVER", detail: "")])
        // Unseen since t+50: 01:03 and 01:09 (seen at t) go, 01:01 (seen at t+100) and the enrolled one stay.
        #expect(try await s.pruneDiscovered(lastSeenBefore: t.addingTimeInterval(50)).map(\.description).sorted() == ["52:54:00:00:01:03", "52:54:00:00:01:09"])
        #expect(try await s.machines().map(\.mac.description).sorted() == ["52:54:00:00:01:01", "52:54:00:00:01:02"])
        #expect(try await s.timeline(mac: MACAddress("52:54:00:00:01:03")!, limit: 10).isEmpty)
    }

    @Test func timelineIsOrderedAndPruned() async throws {
        let s = try SQLiteStore(timelineLimit: 5)
        let t = Date(timeIntervalSince1970: 1_800_000_000)
        try await s.appendTimeline((0..<8).map { TimelineEvent(mac: mac, time: t.addingTimeInterval(Double($0)), stage: .dhcp, event: "E\($0)") })
        let events = try await s.timeline(mac: mac, limit: 100)
        #expect(events.map(\.event) == ["E3", "E4", "E5", "E6", "E7"])
        #expect(try await s.timeline(mac: mac, limit: 2).map(\.event) == ["E6", "E7"])
    }

    @Test func leasesSurviveReopeningAndAddressesStayUnique() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-store-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("db.sqlite").path
        let exp = Date(timeIntervalSince1970: 1_800_000_600)
        do {
            let s = try SQLiteStore(path: path)
            try s.commit([Lease(mac: mac, address: IPv4Address("198.18.0.100")!, expires: exp, hostname: "n1")])
        }
        let s = try SQLiteStore(path: path)
        #expect(try s.leases() == [Lease(mac: mac, address: IPv4Address("198.18.0.100")!, expires: exp, hostname: "n1")])
        // The address moves to another MAC: the old row goes.
        let other = MACAddress("52:54:00:00:00:02")!
        try s.commit([Lease(mac: other, address: IPv4Address("198.18.0.100")!, expires: exp)])
        #expect(try s.leases().map(\.mac) == [other])
        try s.deleteLease(mac: other)
        #expect(try s.leases().isEmpty)
    }

    /// A renewal updates the row; a MAC that moves to a new address keeps one row; in one batch,
    /// an address released by one MAC and given to another ends with the new holder only.
    @Test func leaseCommitsKeepOneRowPerMACAndPerAddress() async throws {
        let s = try SQLiteStore()
        let a = MACAddress("52:54:00:00:00:0a")!, b = MACAddress("52:54:00:00:00:0b")!
        let ip1 = IPv4Address("198.18.0.101")!, ip2 = IPv4Address("198.18.0.102")!
        let t1 = Date(timeIntervalSince1970: 1_800_000_000), t2 = Date(timeIntervalSince1970: 1_800_000_900)
        try s.commit([Lease(mac: a, address: ip1, expires: t1), Lease(mac: b, address: ip2, expires: t1)])
        try s.commit([Lease(mac: a, address: ip1, expires: t2, hostname: "renewed")])
        #expect(Set(try s.leases()) == [Lease(mac: a, address: ip1, expires: t2, hostname: "renewed"), Lease(mac: b, address: ip2, expires: t1)])
        // a moves to ip2, which b no longer holds: one row each for a; b's stale row goes.
        try s.commit([Lease(mac: a, address: ip2, expires: t2)])
        #expect(try s.leases() == [Lease(mac: a, address: ip2, expires: t2)])
        try s.commit([Lease(mac: b, address: ip1, expires: t1), Lease(mac: a, address: ip2, expires: t1)])
        #expect(Set(try s.leases()) == [Lease(mac: b, address: ip1, expires: t1), Lease(mac: a, address: ip2, expires: t1)])
    }
}
