import Crypto
import FarrierBMC
import FarrierControl
import FarrierCore
import FarrierStore
import Foundation
import GRPCCore
import GRPCInProcessTransport
import Testing

@testable import FarrierAPI

/// Networks over the API (issue 18 point 4): only admins define and remove them, a member sees
/// those open to its project without who holds what, a deploy takes its addresses and its
/// task carries the OS's network-config, and every bad request is refused naming its field.
extension APITests {
    func withNetworks<R: Sendable>(
        token: String,
        _ body:
            @Sendable (
                Farrier_V1_NetworkService.Client<InProcessTransport.Client>,
                Farrier_V1_MachineService.Client<InProcessTransport.Client>
            ) async throws -> R
    ) async throws -> R {
        let transport = InProcessTransport()
        let server = GRPCServer(
            transport: transport.server,
            services: [
                NetworkAPI(store: store),
                MachineAPI(controller: controller, vault: CredentialVault(key: SymmetricKey(size: .bits256))),
            ],
            interceptors: [AuthInterceptor(store: store)]
        )
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.serve() }
            defer { server.beginGracefulShutdown() }
            return try await withGRPCClient(transport: transport.client, interceptors: [BearerToken(token: token)]) {
                try await body(.init(wrapping: $0), .init(wrapping: $0))
            }
        }
    }

    static func create(
        _ name: String,
        vlan: Int32 = 100,
        projects: [String] = [],
        cidrs: [String]? = nil,
        pools: [String]? = nil
    ) -> Farrier_V1_CreateNetworkRequest {
        var r = Farrier_V1_CreateNetworkRequest()
        r.name = name
        r.cidrs = cidrs ?? ["198.18.\(vlan).0/24", "fd98:18:\(vlan)::/64"]
        r.gateways = ["198.18.\(vlan).1"]
        r.pools = pools ?? ["198.18.\(vlan).10-198.18.\(vlan).19", "fd98:18:\(vlan)::10-fd98:18:\(vlan)::1f"]
        r.dns = ["198.18.\(vlan).1"]
        r.vlan = vlan
        r.mtu = 1400
        r.projects = projects
        return r
    }

    @Test func networksAreAdminsToDefineAndMembersSeeOnlyTheirs() async throws {
        try await store.createProject(Project(name: "red", created: Date()))
        let blue = try await member(of: "blue")
        // A member defines and removes nothing.
        try await withNetworks(token: blue) { networks, _ in
            let made = await refusal { _ = try await networks.createNetwork(Self.create("lab-vlan")) }
            #expect(
                made?.code == .permissionDenied
                    && made?.message.hasPrefix("defining a network needs an admin token") == true
            )
            var ref = Farrier_V1_GetNetworkRequest()
            ref.name = "lab-vlan"
            #expect(await code { _ = try await networks.deleteNetwork(ref) } == .permissionDenied)
        }
        #expect(try await store.networks().isEmpty)

        try await withNetworks(token: adminSecret) { networks, _ in
            let n = try await networks.createNetwork(Self.create("lab-vlan"))
            #expect(
                n.subnets.map(\.cidr) == ["198.18.100.0/24", "fd98:18:100::/64"]
                    && n.subnets.map(\.poolSize) == [10, 16]
            )
            #expect(n.createdBy == "root" && n.mtu == 1400 && n.vlan == 100)
            _ = try await networks.createNetwork(Self.create("red-only", vlan: 200, projects: ["red"]))
            // Each field is checked, the first bad one named.
            let bad = await refusal { _ = try await networks.createNetwork(Self.create("x", cidrs: ["10.0.0.0/33"])) }
            #expect(
                bad?.code == .invalidArgument
                    && bad?.message == "cidr: '10.0.0.0/33' is not an IPv4 or IPv6 network (like 198.18.100.0/24)"
            )
            let nobody = await refusal {
                _ = try await networks.createNetwork(Self.create("y", vlan: 30, projects: ["nope"]))
            }
            #expect(nobody?.code == .invalidArgument && nobody?.message == "project: no project named 'nope'")
            let overlap = await refusal {
                _ = try await networks.createNetwork(
                    Self.create("z", pools: ["198.18.100.15-198.18.100.30", "fd98:18:100::100-fd98:18:100::1ff"])
                )
            }
            #expect(
                overlap?.code == .invalidArgument
                    && overlap?.message
                        == "pool: 198.18.100.15-198.18.100.30 overlaps network lab-vlan's pool 198.18.100.10-198.18.100.19 (same site and VLAN)",
                "\(String(describing: overlap))"
            )
            let twice = await refusal { _ = try await networks.createNetwork(Self.create("lab-vlan", vlan: 40)) }
            #expect(twice?.code == .alreadyExists)
        }
        #expect(try await store.networks().map(\.name) == ["lab-vlan", "red-only"])

        // blue's member sees the open network, not red's, and no allocations or creator.
        try await withNetworks(token: blue) { networks, _ in
            let listed = try await networks.listNetworks(.init()).networks
            #expect(listed.map(\.name) == ["lab-vlan"] && listed[0].createdBy.isEmpty && listed[0].allocations.isEmpty)
            #expect(listed[0].projects.isEmpty)
            var ref = Farrier_V1_GetNetworkRequest()
            ref.name = "red-only"
            #expect(await code { _ = try await networks.getNetwork(ref) } == .notFound)
        }
    }

    @Test func aDeployTakesItsAddressesAndItsTaskCarriesTheNetworkConfig() async throws {
        let m10 = try #require(try await store.machine(nameOrMAC: "m10"))
        _ = try await store.update(machineID: m10.id) { x in
            x.inventory = Self.inventory(nics: [
                .init(name: "eth0", mac: m10.mac.description, driver: "e1000", link: true),
                .init(name: "eth1", mac: "52:54:00:28:00:10", driver: "e1000", link: true),
            ])
            return []
        }
        try await store.addImage(
            ImageInfo(
                name: "img",
                sha256: String(repeating: "b", count: 64),
                size: 1 << 20,
                format: .raw,
                os: "linux",
                architecture: .unknown,
                firmware: .unknown,
                created: Date()
            )
        )
        try await store.createProject(Project(name: "red", created: Date()))
        let blue = try await member(of: "blue")
        try await withNetworks(token: adminSecret) { networks, _ in
            _ = try await networks.createNetwork(Self.create("lab-vlan"))
            _ = try await networks.createNetwork(Self.create("red-only", vlan: 200, projects: ["red"]))
        }
        try await withNetworks(token: blue) { _, machines in
            var deploy = Farrier_V1_DeployMachineRequest()
            deploy.image = "img"
            deploy.name = "m10"
            // Refused before anything starts: bad syntax, a network closed to blue, a NIC m10
            // does not have.
            deploy.networks = ["lab-vlan,adress=198.18.100.12"]
            let typo = await refusal { _ = try await machines.deployMachine(deploy) }
            #expect(
                typo?.code == .invalidArgument
                    && typo?.message
                        == "--network lab-vlan,adress=198.18.100.12: unknown key 'adress' (valid: on, address, default-route, mtu)"
            )
            deploy.networks = ["red-only"]
            let closed = await refusal { _ = try await machines.deployMachine(deploy) }
            #expect(
                closed?.code == .invalidArgument
                    && closed?.message == "networks[0].network: no network named 'red-only'"
            )
            deploy.networks = ["lab-vlan"]
            deploy.bonds = ["bond0,mode=active-backup,nics=eth0+eth5"]
            let nic = await refusal { _ = try await machines.deployMachine(deploy) }
            #expect(
                nic?.code == .failedPrecondition && nic?.message == "machine m10's NICs do not fit the network plan"
            )
            #expect(try await store.machine(nameOrMAC: "m10")?.state == .ready)

            deploy.bonds = ["bond0,mode=active-backup,nics=eth0+eth1"]
            deploy.networks = ["lab-vlan,on=bond0,address=198.18.100.12"]
            let m = try await machines.deployMachine(deploy)
            #expect(
                m.deployment.interfaces.map { "\($0.name) \($0.kind) \($0.addresses) \($0.dhcp4)" } == [
                    "eth0 nic [] false", "eth1 nic [] false", "bond0 bond [] true",
                    "bond0.100 vlan [\"198.18.100.12/24\", \"fd98:18:100::10/64\"] false",
                ]
            )
        }
        // The task the agent gets carries the network-config for that plan.
        let deployed = try #require(try await store.machine(nameOrMAC: "m10"))
        let task = try await controller.task(forTesting: deployed)
        let yaml = try #require(task.seed?.networkConfig)
        #expect(yaml.contains("\"bond0.100\":\n    id: 100\n    link: \"bond0\"\n    mtu: 1400\n"), "\(yaml)")
        #expect(yaml.contains("addresses: [\"198.18.100.12/24\", \"fd98:18:100::10/64\"]"), "\(yaml)")
        // Admins see who holds what; the network stays while it is held.
        try await withNetworks(token: adminSecret) { networks, _ in
            var ref = Farrier_V1_GetNetworkRequest()
            ref.name = "lab-vlan"
            let n = try await networks.getNetwork(ref)
            #expect(
                n.allocations.map { "\($0.address) \($0.machine)" } == ["198.18.100.12 m10", "fd98:18:100::10 m10"]
            )
            #expect(n.subnets.map(\.allocated) == [1, 1])
            _ = try await networks.createNetwork(Self.create("shared", vlan: 50, projects: ["red", "blue"]))
            let held = await refusal { _ = try await networks.deleteNetwork(ref) }
            #expect(
                held?.code == .failedPrecondition
                    && held?.message == "network 'lab-vlan' has addresses held by m10; release them first"
            )
        }
        // A member sees how many addresses are held, not by whom, and of a network's projects
        // only its own.
        try await withNetworks(token: blue) { networks, _ in
            var ref = Farrier_V1_GetNetworkRequest()
            ref.name = "lab-vlan"
            let n = try await networks.getNetwork(ref)
            #expect(n.subnets.map(\.allocated) == [1, 1] && n.allocations.isEmpty)
            ref.name = "shared"
            #expect(try await networks.getNetwork(ref).projects == ["blue"])
        }
        // An agent that writes no network-config (a ramdisk from before it) fails the deploy.
        _ = try await store.update(machineID: deployed.id) { x in
            x.phase = .agent
            return []
        }
        let hello = AgentHello(agentVersion: "old", inventory: nil, nonce: String(repeating: "n", count: 32))
        let token = try await controller.agentHello(peer: deployed.mac, hello: hello).token
        try await controller.agentDone(token: token, peer: deployed.mac, result: AgentResult(ok: true))
        let failed = try #require(try await store.machine(id: deployed.id))
        #expect(failed.state == .failed && failed.reason.contains("wrote no network-config"), "\(failed.reason)")
        // A failed deploy keeps its addresses (for a retry).
        #expect(try await store.networkAddresses(network: "lab-vlan").count == 2)
    }
}
