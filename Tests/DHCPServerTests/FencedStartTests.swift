import DHCPServer
import FarrierCore
import FarrierStore
import Foundation
import Logging
import ServiceLifecycle
import Testing
import WireSupport

/// On PostgreSQL, DHCP answers only once this replica holds the fence (seconds after its start,
/// or never while another holds it). The address book, which the boot path and the agent
/// channel check every peer against, must not wait for that: a server restarted in the middle
/// of a step would refuse its agent ("no machine holds this address"), and the agent takes a
/// refusal as final. Found by the kill -9 lab run on PostgreSQL, at the agent's hello.
@Suite struct FencedStartTests {
    /// A fence someone else holds (the real one, PostgreSQL's advisory locks, is tested in
    /// FarrierStoreTests).
    struct HeldElsewhere: DHCPFence {
        func acquire(_ keys: [String]) async throws -> Bool { false }
        func check() async throws {}
        func release() async {}
    }

    /// A DHCP service on `store` whose fence another replica holds.
    func service(_ config: DHCPConfiguration, _ store: SQLiteStore, _ book: AddressBook) throws -> DHCPService {
        try DHCPService(
            configuration: config,
            httpPort: 8080,
            store: store,
            recorder: TimelineRecorder(store: store, known: []),
            addressBook: book,
            fence: HeldElsewhere(),
            logger: Logger(label: "test")
        )
    }

    @Test func theAddressBookKnowsEveryLeaseBeforeTheFenceIsHeld() throws {
        let store = try SQLiteStore()
        let mac = MACAddress("52:54:00:00:07:01")!
        let address = IPv4Address("198.18.0.150")!
        try store.commit([Lease(mac: mac, address: address, expires: Date().addingTimeInterval(3600))])
        let book = AddressBook()
        _ = try service(makeConfig(), store, book)
        #expect(book.mac(for: address) == mac)
    }

    /// Standing by (another replica holds the fence), the address book follows the leases the
    /// holder writes: an address given to another MAC is paired with that MAC within a retry.
    @Test func aReplicaStandingByFollowsTheHoldersLeases() async throws {
        let store = try SQLiteStore()
        let (a, b) = (MACAddress("52:54:00:00:07:0a")!, MACAddress("52:54:00:00:07:0b")!)
        let address = IPv4Address("198.18.0.151")!
        try store.commit([Lease(mac: a, address: address, expires: Date().addingTimeInterval(3600))])
        var config = makeConfig()
        config.interfaces = ["lo"]  // the fence's key names the interface's network; nothing is sent
        let book = AddressBook()
        let standingBy = try service(config, store, book)
        #expect(book.mac(for: address) == a)
        let group = ServiceGroup(services: [standingBy], logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        // The holder gives the address to B (A's lease expired and went).
        try store.deleteLease(mac: a)
        try store.commit([Lease(mac: b, address: address, expires: Date().addingTimeInterval(3600))])
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, book.mac(for: address) != b { try await Task.sleep(for: .milliseconds(50)) }
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(book.mac(for: address) == b)
    }
}
