import FarrierCore
import FarrierStore
import Foundation
import Testing
import WireSupport

@testable import DHCPServer

/// Group commit as the socket thread uses it: what a batch writes, and that no reply waiting on
/// it runs before the write (or runs as a success when the write failed).
@Suite struct LeaseBatchTests {
    let a = MACAddress("52:54:00:00:00:0a")!
    let b = MACAddress("52:54:00:00:00:0b")!
    let expires = Date(timeIntervalSince1970: 2_000_000_000)

    func lease(_ mac: MACAddress, _ ip: String) -> Lease {
        Lease(mac: mac, address: IPv4Address(ip)!, expires: expires)
    }

    @Test func oneCommitWritesTheLatestLeasePerMACAndThenReleasesEveryReply() throws {
        let store = try SQLiteStore()
        var batch = LeaseBatch()
        #expect(batch.isEmpty)
        var seen: [String] = []
        batch.add(commit: lease(a, "198.18.0.100"), forget: nil) { r in
            // Runs only after the write: the row is already there.
            seen.append("a:\((try? r.get()) != nil):\((try? store.leases().count) ?? -1)")
        }
        batch.add(commit: lease(b, "198.18.0.101"), forget: nil) { _ in seen.append("b") }
        batch.add(commit: lease(a, "198.18.0.102"), forget: nil) { _ in seen.append("a2") }
        #expect(!batch.isEmpty)
        #expect(try store.leases().isEmpty)  // nothing written before commit
        batch.commit(to: store)
        #expect(seen == ["a:true:2", "b", "a2"])
        let rows = try store.leases().sorted { $0.mac.description < $1.mac.description }
        #expect(rows.map(\.address.description) == ["198.18.0.102", "198.18.0.101"])
        #expect(batch.isEmpty)
        batch.commit(to: store)  // empty: nothing runs again
        #expect(seen.count == 3)
    }

    @Test func aForgetAfterACommitDeletesAndACommitAfterAForgetWins() throws {
        let store = try SQLiteStore()
        try store.commit([lease(a, "198.18.0.100"), lease(b, "198.18.0.101")])
        var batch = LeaseBatch()
        batch.add(commit: lease(a, "198.18.0.110"), forget: nil) { _ in }
        batch.add(commit: nil, forget: a) { _ in }  // a: released after the new lease
        batch.add(commit: nil, forget: b) { _ in }
        batch.add(commit: lease(b, "198.18.0.111"), forget: nil) { _ in }  // b: bound again after release
        batch.commit(to: store)
        let rows = try store.leases()
        #expect(rows.map(\.mac) == [b])
        #expect(rows.first?.address.description == "198.18.0.111")
    }

    struct FailingStore: LeaseStore {
        struct Down: Error {}
        func leases() throws -> [Lease] { [] }
        func currentLeases() async throws -> [Lease] { [] }
        func commit(_ leases: [Lease]) throws { throw Down() }
        func deleteLease(mac: MACAddress) throws { throw Down() }
    }

    @Test func aFailedWriteReachesEveryWaitingReplyAsAFailure() {
        var batch = LeaseBatch()
        var outcomes: [Bool] = []
        batch.add(commit: lease(a, "198.18.0.100"), forget: nil) { outcomes.append((try? $0.get()) != nil) }
        batch.add(commit: lease(b, "198.18.0.101"), forget: nil) { outcomes.append((try? $0.get()) != nil) }
        batch.commit(to: FailingStore())
        #expect(outcomes == [false, false])
        #expect(batch.isEmpty)
    }
}
