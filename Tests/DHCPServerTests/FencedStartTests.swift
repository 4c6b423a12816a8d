import DHCPServer
import FarrierCore
import FarrierStore
import Foundation
import Logging
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

    @Test func theAddressBookKnowsEveryLeaseBeforeTheFenceIsHeld() throws {
        let store = try SQLiteStore()
        let mac = MACAddress("52:54:00:00:07:01")!
        let address = IPv4Address("198.18.0.150")!
        try store.commit([Lease(mac: mac, address: address, expires: Date().addingTimeInterval(3600))])
        let book = AddressBook()
        _ = try DHCPService(
            configuration: makeConfig(),
            httpPort: 8080,
            store: store,
            recorder: TimelineRecorder(store: store, known: []),
            addressBook: book,
            fence: HeldElsewhere(),
            logger: Logger(label: "test")
        )
        #expect(book.mac(for: address) == mac)
    }
}
