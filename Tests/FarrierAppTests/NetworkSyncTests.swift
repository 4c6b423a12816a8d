import FarrierCore
import FarrierStore
import Foundation
import Logging
import Testing

@testable import FarrierApp

/// The address book learns the static addresses deployed machines hold on the region's boot
/// network (issue 18 point 4), from the store, as every replica reads it: an address a deploy
/// took is its machine's; one on a VLAN or a site's network is not the boot network's; a
/// released one is forgotten.
@Suite struct NetworkSyncTests {
    static let t = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func theBootNetworksStaticAddressesAreTheirMachines() async throws {
        let store = try SQLiteStore()
        let book = AddressBook()
        let sync = NetworkSync(store: store, addressBook: book, interval: .seconds(2), logger: Logger(label: "test"))
        let flat = try Network.make(
            name: "flat",
            cidrs: ["198.18.0.0/24"],
            gateways: ["198.18.0.1"],
            pools: ["198.18.0.200-198.18.0.209"],
            created: Self.t
        ).get()
        let vlan = try Network.make(
            name: "vlan",
            cidrs: ["198.18.100.0/24"],
            pools: ["198.18.100.10-198.18.100.19"],
            vlan: 100,
            created: Self.t
        ).get()
        try await store.createNetwork(flat)
        try await store.createNetwork(vlan)
        let mac = MACAddress("52:54:00:18:00:02")!
        let m = try await store.enroll(
            name: "lab-2",
            mac: mac,
            bmc: try BMCReference(url: "ipmi://admin@198.18.0.12"),
            sealedPassword: [1],
            at: Self.t
        )
        let ready = try await store.update(machineID: m.id) { x in
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
        try await sync.sync()
        #expect(book.mac(for: IPv4Address("198.18.0.200")!) == nil)

        let plan = try DeployedNetworking.resolve(
            try NetworkRequest.parse(bonds: [], networks: ["flat,default-route", "vlan"], mtus: []).get(),
            machine: ready,
            networks: ["flat": flat, "vlan": vlan],
            project: nil
        ).get()
        #expect(!plan.bootDHCP)
        let deployed = try await store.update(machineID: m.id) { x in
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
            return []
        }
        #expect(deployed.deployment?.networking?.bootAddress == IPv4Address("198.18.0.200"))
        try await sync.sync()
        #expect(book.mac(for: IPv4Address("198.18.0.200")!) == mac)
        #expect(book.mac(for: IPv4Address("198.18.100.10")!) == nil)

        // Released: the address is given back, and forgotten.
        _ = try await store.update(machineID: m.id) { x in
            x.state = .ready
            x.deployment = nil
            return []
        }
        try await sync.sync()
        #expect(book.mac(for: IPv4Address("198.18.0.200")!) == nil)
    }
}
