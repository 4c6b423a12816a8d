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

/// The gRPC API as a client sees it, over grpc-swift's in-process transport: the real services
/// and the real token interceptor on an in-memory store, without a socket or a server process.
/// Tenancy (what a member token sees and may do), paging, and the status code of each kind of
/// refusal.
@Suite struct APITests {
    let store: SQLiteStore
    let controller: Controller
    let adminSecret = TokenSecret.generate()

    init() async throws {
        store = try SQLiteStore()
        let vault = CredentialVault(key: SymmetricKey(size: .bits256))
        controller = Controller(store: store, pool: BMCPool(vault: vault), agentKey: SymmetricKey(size: .bits256))
        try await store.createToken(
            APIToken(
                id: "admin",
                name: "root",
                role: .admin,
                project: nil,
                secretSHA256: TokenSecret.hash(adminSecret),
                created: Date()
            )
        )
        // 25 machines, m00…m24; the first five deployed in project blue.
        try await store.createProject(Project(name: "blue", created: Date()))
        for i in 0..<25 {
            let m = try await store.enroll(
                name: String(format: "m%02d", i),
                mac: MACAddress([0x52, 0x54, 0, 0, 0x0A, UInt8(i)]),
                bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9623"),
                sealedPassword: [1],
                at: Date()
            )
            _ = try await store.update(machineID: m.id) { x in
                x.state = i < 5 ? .deployed : .ready
                x.project = i < 5 ? "blue" : nil
                return []
            }
        }
    }

    /// Runs `body` with clients of the three services, calling with `token` (none: nil).
    func withAPI<R: Sendable>(
        token: String?,
        _ body:
            @Sendable (
                Farrier_V1_MachineService.Client<InProcessTransport.Client>,
                Farrier_V1_ProjectService.Client<InProcessTransport.Client>,
                Farrier_V1_TokenService.Client<InProcessTransport.Client>
            ) async throws -> R
    ) async throws -> R {
        let transport = InProcessTransport()
        let server = GRPCServer(
            transport: transport.server,
            services: [
                MachineAPI(controller: controller, vault: CredentialVault(key: SymmetricKey(size: .bits256))),
                ProjectAPI(store: store), TokenAPI(store: store),
            ],
            interceptors: [AuthInterceptor(store: store)]
        )
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.serve() }
            defer { server.beginGracefulShutdown() }
            let interceptors: [any ClientInterceptor] = token.map { [BearerToken(token: $0)] } ?? []
            return try await withGRPCClient(transport: transport.client, interceptors: interceptors) { client in
                try await body(.init(wrapping: client), .init(wrapping: client), .init(wrapping: client))
            }
        }
    }

    /// A member token of project `project`, made through the API by the admin.
    func member(of project: String) async throws -> String {
        try await withAPI(token: adminSecret) { _, _, tokens in
            var r = Farrier_V1_CreateTokenRequest()
            r.name = "member-\(project)"
            r.role = "member"
            r.project = project
            return try await tokens.createToken(r).secret
        }
    }

    /// The call's refusal; nil when it succeeded (or failed with something not an RPCError,
    /// which is recorded as an issue).
    func refusal(_ body: () async throws -> Void) async -> RPCError? {
        do {
            try await body()
            return nil
        } catch let e as RPCError {
            return e
        } catch {
            Issue.record("not an RPCError: \(error)")
            return nil
        }
    }

    func code(_ body: () async throws -> Void) async -> RPCError.Code? { await refusal(body)?.code }

    @Test func callsWithoutAValidTokenAreUnauthenticated() async throws {
        for token in [nil, "fa_not-a-token", "Bearer", ""] as [String?] {
            try await withAPI(token: token) { machines, projects, _ in
                #expect(
                    await code { _ = try await machines.listMachines(.init()) } == .unauthenticated,
                    "\(token ?? "none")"
                )
                #expect(await code { _ = try await projects.listProjects(.init()) } == .unauthenticated)
            }
        }
    }

    @Test func aMemberSeesAndActsOnlyInItsProject() async throws {
        let blue = try await member(of: "blue")
        try await withAPI(token: blue) { machines, projects, tokens in
            let listed = try await machines.listMachines(.init())
            #expect(listed.machines.map(\.name) == ["m00", "m01", "m02", "m03", "m04"])
            #expect(listed.machines.allSatisfy { $0.project == "blue" })
            var get = Farrier_V1_GetMachineRequest()
            get.nameOrMac = "m00"
            #expect(try await machines.getMachine(get).name == "m00")
            // Another project's machine, or one in the pool, does not exist for this token.
            get.nameOrMac = "m10"
            #expect(await code { _ = try await machines.getMachine(get) } == .notFound)
            var ref = Farrier_V1_MachineRef()
            ref.name = "m10"
            #expect(await code { _ = try await machines.restartMachine(ref) } == .notFound)
            var other = Farrier_V1_ListMachinesRequest()
            other.project = "red"
            #expect(await code { _ = try await machines.listMachines(other) } == .permissionDenied)
            // Administration needs an admin token.
            var project = Farrier_V1_CreateProjectRequest()
            project.name = "green"
            #expect(await code { _ = try await projects.createProject(project) } == .permissionDenied)
            #expect(await code { _ = try await tokens.listTokens(.init()) } == .permissionDenied)
            var enroll = Farrier_V1_EnrollMachineRequest()
            enroll.name = "m99"
            enroll.mac = "52:54:00:00:0a:99"
            enroll.bmcURL = "ipmi://admin@127.0.0.1:9623"
            enroll.bmcPassword = "x"
            #expect(await code { _ = try await machines.enrollMachine(enroll) } == .permissionDenied)
        }
        #expect(try await store.project(name: "green") == nil)
        #expect(try await store.machine(mac: MACAddress("52:54:00:00:0a:99")!) == nil)
    }

    @Test func pagesCoverTheFleetOnceInNameOrder() async throws {
        try await withAPI(token: adminSecret) { machines, _, _ in
            var seen: [String] = []
            var request = Farrier_V1_ListMachinesRequest()
            request.pageSize = 7
            for _ in 0..<10 {
                let page = try await machines.listMachines(request)
                #expect(page.machines.count <= 7)
                seen += page.machines.map(\.name)
                guard !page.nextPageToken.isEmpty else { break }
                request.pageToken = page.nextPageToken
            }
            #expect(seen == (0..<25).map { String(format: "m%02d", $0) })
            // A state filter pages the same way.
            var ready = Farrier_V1_ListMachinesRequest()
            ready.state = "ready"
            ready.pageSize = 1000
            #expect(try await machines.listMachines(ready).machines.count == 20)
            var bad = Farrier_V1_ListMachinesRequest()
            bad.pageSize = 1001
            #expect(await code { _ = try await machines.listMachines(bad) } == .invalidArgument)
            bad = .init()
            bad.pageToken = "!!"
            #expect(await code { _ = try await machines.listMachines(bad) } == .invalidArgument)
            bad = .init()
            bad.state = "sleeping"
            #expect(await code { _ = try await machines.listMachines(bad) } == .invalidArgument)
        }
    }

    /// A minimal inventory (one core, 1 GiB) with these disks and NICs.
    static func inventory(disks: [Inventory.Disk] = [], nics: [Inventory.NIC] = []) -> Inventory {
        Inventory(
            cpuModel: "c",
            cores: 1,
            memoryBytes: 1 << 30,
            disks: disks,
            nics: nics,
            vendor: "v",
            product: "p",
            serial: "",
            firmware: .bios
        )
    }

    /// Root device hints (issue 18 point 5): admins set them, checked against the inventory;
    /// bad ones are refused naming the hint and change nothing; deploys carry their own, and
    /// a deploy picking by constraints takes only a machine with a matching disk.
    @Test func rootDeviceHintsAreCheckedAgainstTheInventory() async throws {
        let gib: Int64 = 1 << 30
        @Sendable func disks(_ serial: String) -> [Inventory.Disk] {
            [
                .init(name: "sda", sizeBytes: gib, model: "DOM", serial: "dom-\(serial)", rotational: false),
                .init(name: "sdb", sizeBytes: 100 * gib, model: "SSD", serial: serial, rotational: false),
            ]
        }
        // m10 and m12 ready with inventories (serials S10, S12); m11 ready without one.
        for (name, serial) in [("m10", "S10"), ("m12", "S12")] {
            let m = try #require(try await store.machine(nameOrMAC: name))
            _ = try await store.update(machineID: m.id) { x in
                x.inventory = Self.inventory(disks: disks(serial))
                return []
            }
        }
        try await store.addImage(
            ImageInfo(
                name: "raw-50g",
                sha256: String(repeating: "a", count: 64),
                size: 50 * gib,
                format: .raw,
                os: "linux",
                architecture: .unknown,
                firmware: .unknown,
                created: Date()
            )
        )
        let blue = try await member(of: "blue")
        @Sendable func request(_ name: String, _ hints: [String]) -> Farrier_V1_SetRootDeviceRequest {
            var r = Farrier_V1_SetRootDeviceRequest()
            r.name = name
            r.hints = hints
            return r
        }
        try await withAPI(token: blue) { machines, _, _ in
            #expect(
                await code { _ = try await machines.setRootDevice(request("m00", ["serial=x"])) } == .permissionDenied
            )
        }
        try await withAPI(token: adminSecret) { machines, _, _ in
            let bad = await refusal { _ = try await machines.setRootDevice(request("m10", ["serial>=3"])) }
            #expect(bad?.code == .invalidArgument && bad?.message.contains("root device hint 'serial>=3'") == true)
            let none = await refusal { _ = try await machines.setRootDevice(request("m10", ["serial=S12"])) }
            #expect(none?.code == .failedPrecondition, "\(String(describing: none))")
            #expect(
                none?.message.contains("machine m10: no disk matches the root device hints serial=S12") == true
                    && none?.message.contains("sdb 107374182400 bytes (100 GiB) model=SSD serial=S10") == true,
                "\(String(describing: none))"
            )
            // The 1 GiB disk can be named (below the default's floor), then cleared.
            let set = try await machines.setRootDevice(request("m10", ["serial=DOM-s10"]))
            #expect(set.rootDevice == ["serial=DOM-s10"])
            #expect(try await machines.setRootDevice(request("m10", [])).rootDevice == [])
            // No inventory yet: accepted as given (the agent checks at deploy time).
            #expect(try await machines.setRootDevice(request("m11", ["wwn=0x5000"])).rootDevice == ["wwn=0x5000"])
            #expect(try await store.machine(nameOrMAC: "m11")?.rootDevice == RootDeviceHints(wwn: "0x5000"))
        }
        #expect(try await store.machine(nameOrMAC: "m00")?.rootDevice == nil)
        #expect(try await store.machine(nameOrMAC: "m10")?.rootDevice == nil)

        try await withAPI(token: adminSecret) { machines, _, _ in
            var deploy = Farrier_V1_DeployMachineRequest()
            deploy.project = "blue"
            deploy.image = "raw-50g"
            deploy.name = "m10"
            // Matching, but the 50 GiB raw image does not fit the 1 GiB disk.
            deploy.rootDevice = ["serial=dom-S10"]
            let small = await refusal { _ = try await machines.deployMachine(deploy) }
            #expect(
                small?.code == .failedPrecondition
                    && small?.message.contains("no disk matching serial=dom-S10 holds 53687091200 bytes") == true,
                "\(String(describing: small))"
            )
            deploy.rootDevice = ["size<=0"]
            #expect(await code { _ = try await machines.deployMachine(deploy) } == .failedPrecondition)
            deploy.rootDevice = ["bogus"]
            #expect(await code { _ = try await machines.deployMachine(deploy) } == .invalidArgument)
            #expect(try await store.machine(nameOrMAC: "m10")?.state == .ready)
            // By constraints: only m12 has a disk with serial S12.
            deploy.name = ""
            deploy.rootDevice = ["serial=s12", "size>=50"]
            let picked = try await machines.deployMachine(deploy)
            #expect(picked.name == "m12" && picked.deployment.rootDevice == ["serial=s12", "size>=50"])
            let task = try await controller.task(forTesting: try #require(try await store.machine(nameOrMAC: "m12")))
            #expect(task.rootDevice == RootDeviceHints(serial: "s12", size: .init(.atLeast, gib: 50)))
            deploy.rootDevice = ["serial=S12"]
            #expect(await code { _ = try await machines.deployMachine(deploy) } == .resourceExhausted)
        }
        // A member may deploy a pool machine by name without seeing it: a refusal names no disk.
        try await withAPI(token: blue) { machines, _, _ in
            var deploy = Farrier_V1_DeployMachineRequest()
            deploy.image = "raw-50g"
            deploy.name = "m10"
            deploy.rootDevice = ["size<0"]
            let probe = await refusal { _ = try await machines.deployMachine(deploy) }
            #expect(
                probe?.code == .failedPrecondition
                    && probe?.message == "machine m10 has no disk for this deploy's root device hints",
                "\(String(describing: probe))"
            )
        }
        #expect(try await store.machine(nameOrMAC: "m10")?.state == .ready)
    }

    /// LLDP neighbours (the network's switches, ports, VLANs and addresses) are for admins: a
    /// member sees its machine's NICs without them.
    @Test func lldpNeighboursAreShownToAdminsOnly() async throws {
        let m = try #require(try await store.machine(nameOrMAC: "m00"))
        var nic = Inventory.NIC(name: "eno1", mac: "52:54:00:00:0a:00", driver: "ixgbe", link: true)
        nic.lldp = LLDPNeighbour(chassisID: "0c:42:a1:00:11:22", portID: "Ethernet1/7", systemName: "leaf-12a")
        nic.firmware = "0x800009e0"
        let inventory = Self.inventory(nics: [nic])
        _ = try await store.update(machineID: m.id) { x in
            x.inventory = inventory
            return []
        }
        let blue = try await member(of: "blue")
        var get = Farrier_V1_GetMachineRequest()
        get.nameOrMac = "m00"
        let request = get
        let asMember = try await withAPI(token: blue) { machines, _, _ in try await machines.getMachine(request) }
        #expect(asMember.inventory.nics.count == 1 && !asMember.inventory.nics[0].hasLldp)
        #expect(asMember.inventory.nics[0].firmware == "0x800009e0")
        let asAdmin = try await withAPI(token: adminSecret) { machines, _, _ in try await machines.getMachine(request) }
        #expect(
            asAdmin.inventory.nics[0].lldp.systemName == "leaf-12a"
                && asAdmin.inventory.nics[0].lldp.portID == "Ethernet1/7"
        )
    }

    /// WatchEvents replays a machine's stored events from its very first with after_id -1 (the
    /// web console's machine page: with 1 it skipped event 1), after a given id with that id, and
    /// refuses anything below -1.
    @Test(.timeLimit(.minutes(1))) func watchingReplaysFromTheFirstStoredEvent() async throws {
        let m = try #require(try await store.machine(nameOrMAC: "m03"))
        _ = try await store.update(machineID: m.id) { x in
            [MachineEvent(x, kind: .action, message: "one"), MachineEvent(x, kind: .action, message: "two")]
        }
        let stored = try await store.events(after: 0, machineID: m.id, limit: 100).map(\.id)
        try #require(stored.count >= 2)
        @Sendable func watched(after: Int64, count: Int) async throws -> [Int64] {
            var r = Farrier_V1_WatchEventsRequest()
            r.name = "m03"
            r.afterID = after
            let request = r
            return try await withAPI(token: adminSecret) { machines, _, _ in
                try await machines.watchEvents(request) { response in
                    var ids: [Int64] = []
                    for try await e in response.messages {
                        ids.append(e.id)
                        if ids.count == count { break }
                    }
                    return ids
                }
            }
        }
        #expect(try await watched(after: -1, count: stored.count) == stored)
        #expect(try await watched(after: stored[0], count: stored.count - 1) == Array(stored.dropFirst()))
        let refused = await refusal {
            var r = Farrier_V1_WatchEventsRequest()
            r.afterID = -2
            let request = r
            _ = try await withAPI(token: adminSecret) { machines, _, _ in
                try await machines.watchEvents(request) { response in
                    for try await _ in response.messages {}
                }
            }
        }
        #expect(refused?.code == .invalidArgument, "\(String(describing: refused))")
    }

    /// Each kind of refusal has its code: the CLI and scripts branch on them.
    @Test func refusalsCarryTheirStatusCodes() async throws {
        try await withAPI(token: adminSecret) { machines, projects, tokens in
            var get = Farrier_V1_GetMachineRequest()
            get.nameOrMac = "nothing-here"
            #expect(await code { _ = try await machines.getMachine(get) } == .notFound)
            var project = Farrier_V1_CreateProjectRequest()
            project.name = "blue"
            #expect(await code { _ = try await projects.createProject(project) } == .alreadyExists)
            // A project that still has machines cannot go.
            var delete = Farrier_V1_GetProjectRequest()
            delete.name = "blue"
            #expect(await code { _ = try await projects.deleteProject(delete) } == .failedPrecondition)
            // A transition the lifecycle does not allow: commissioning a deployed machine.
            var ref = Farrier_V1_CommissionMachineRequest()
            ref.name = "m00"
            #expect(await code { _ = try await machines.commissionMachine(ref) } == .failedPrecondition)
            var enroll = Farrier_V1_EnrollMachineRequest()
            enroll.name = "Not A Name"
            enroll.bmcPassword = "x"
            enroll.mac = "52:54:00:00:0a:98"
            enroll.bmcURL = "ipmi://admin@127.0.0.1:9623"
            #expect(await code { _ = try await machines.enrollMachine(enroll) } == .invalidArgument)
            var token = Farrier_V1_CreateTokenRequest()
            token.name = "t"
            token.role = "member"
            token.project = "no-such-project"
            #expect(await code { _ = try await tokens.createToken(token) } == .notFound)
        }
    }

    /// Values the CLI refuses before sending (its arguments are enumerations) are refused by the
    /// server too, naming the valid ones: other clients send any string.
    @Test func unknownEnumeratedValuesAreRefusedWithTheValidOnes() async throws {
        try await withAPI(token: adminSecret) { machines, projects, tokens in
            /// The refusal's message, when it is an invalid argument.
            func invalid(_ body: () async throws -> Void) async -> String? {
                guard let e = await refusal(body) else { return nil }
                return e.code == .invalidArgument ? e.message : "\(e.code): \(e.message)"
            }
            var list = Farrier_V1_ListMachinesRequest()
            list.state = "sleeping"
            let state = await invalid { _ = try await machines.listMachines(list) }
            #expect(state?.contains("unknown state 'sleeping'") == true && state?.contains("exiting-rescue") == true)
            var power = Farrier_V1_PowerRequest()
            power.name = "m05"
            power.action = "explode"
            let action = await invalid { _ = try await machines.power(power) }
            #expect(action?.contains("unknown power action 'explode'") == true, "\(action ?? "accepted")")
            var release = Farrier_V1_ReleaseMachineRequest()
            release.name = "m00"
            release.wipe = "sideways"
            let wipe = await invalid { _ = try await machines.releaseMachine(release) }
            #expect(wipe?.contains("unknown wipe 'sideways'") == true, "\(wipe ?? "accepted")")
            var token = Farrier_V1_CreateTokenRequest()
            token.name = "t"
            token.role = "root"
            let role = await invalid { _ = try await tokens.createToken(token) }
            #expect(role?.contains("unknown role 'root'") == true, "\(role ?? "accepted")")
            var project = Farrier_V1_CreateProjectRequest()
            project.name = "green"
            project.wipePolicy = "sloppy"
            let policy = await invalid { _ = try await projects.createProject(project) }
            #expect(policy?.contains("unknown wipe policy 'sloppy'") == true, "\(policy ?? "accepted")")
        }
        // Nothing was changed by them.
        #expect(try await store.machine(name: "m00")?.state == .deployed)
        #expect(try await store.project(name: "green") == nil)
    }
}
