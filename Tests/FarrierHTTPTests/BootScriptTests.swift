import Crypto
import FarrierBMC
import FarrierControl
import FarrierCore
import FarrierStore
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

@testable import FarrierHTTP

/// The plain-HTTP router on a loopback socket (Hummingbird's live test server), so requests
/// come from 127.0.0.1 and the address book decides whose lease that is: which iPXE script each
/// state and phase gets, what an address without the lease learns, and that nothing on this
/// path writes a machine.
@Suite struct BootScriptTests {
    let store: SQLiteStore
    let controller: Controller
    let book = AddressBook()
    let mac = MACAddress("52:54:00:00:07:01")!
    static let fingerprint = String(repeating: "ab", count: 32)

    init() throws {
        store = try SQLiteStore()
        controller = Controller(
            store: store,
            pool: BMCPool(vault: CredentialVault(key: SymmetricKey(size: .bits256))),
            agentKey: SymmetricKey(size: .bits256)
        )
    }

    func withServer(
        bootRoot: String = NSTemporaryDirectory(),
        _ test: @escaping @Sendable (any TestClientProtocol) async throws -> Void
    ) async throws {
        var deps = HTTPDependencies(
            store: store,
            recorder: TimelineRecorder(store: store, known: []),
            addressBook: book,
            bootRoot: BootRoot(path: bootRoot),
            controller: controller
        )
        deps.agentTLS = AgentTLS(certificateChainPEM: "", privateKeyPEM: "", fingerprint: Self.fingerprint, port: 8443)
        let router = buildRouter(configuration: HTTPConfiguration(), dependencies: deps, logger: Logger(label: "test"))
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in try await test(client) }
    }

    /// A machine named "m1" in `state` and `phase`, its MAC leased 127.0.0.1 (the test's client).
    func machine(_ state: MachineState, _ phase: StepPhase, leased: Bool = true) async throws {
        let m = try await store.enroll(
            name: "m1",
            mac: mac,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1:9623"),
            sealedPassword: [1],
            at: Date()
        )
        _ = try await store.update(machineID: m.id) { x in
            x.state = state
            x.phase = phase
            return []
        }
        if leased { book.record(IPv4Address("127.0.0.1")!, mac) }
    }

    func script(
        _ client: any TestClientProtocol,
        platform: String? = "pcbios",
        mac: MACAddress? = nil
    ) async throws -> String {
        let name = (mac ?? self.mac).formatted(separator: "-")
        let query = platform.map { "?platform=\($0)&buildarch=x86_64" } ?? ""
        return try await client.execute(uri: "/boot/\(name).ipxe\(query)", method: .get) { response in
            #expect(response.status == .ok)
            return String(buffer: response.body)
        }
    }

    /// At a site: scripts come from the region's last word on each machine (`siteBoot`), never
    /// from the store, and only to the MAC's leased address.
    @Test(arguments: [
        (Lifecycle.NextBoot.disk, "boots its local disk"), (.wait, "m1 (deployed); waiting"),
        (.ramdisk, "serves no agent channel"),
        (.rescue, "serves no agent channel"),
    ])
    func aSiteScriptFollowsTheRegionsLastWord(_ next: Lifecycle.NextBoot, _ expected: String) async throws {
        book.record(IPv4Address("127.0.0.1")!, mac)
        let entry = SiteBootEntry(name: "m1", state: "deployed", nextBoot: next, firmware: .bios)
        var deps = HTTPDependencies(
            store: store,
            recorder: TimelineRecorder(store: store, known: []),
            addressBook: book,
            bootRoot: BootRoot(path: NSTemporaryDirectory())
        )
        deps.siteBoot = { [mac] in $0 == mac ? entry : nil }
        let router = buildRouter(configuration: HTTPConfiguration(), dependencies: deps, logger: Logger(label: "test"))
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let text = try await script(client)
            #expect(text.contains(expected), "\(text)")
            #expect(!text.contains("farrier.mode="), "\(text)")
            // Another MAC from this address: the unknown wait loop.
            let other = try await script(client, mac: MACAddress("52:54:00:00:07:02")!)
            #expect(other.contains("not known to Farrier") && !other.contains("m1"), "\(other)")
        }
        #expect(try await store.machines().isEmpty)
    }

    @Test func theFirstFetchAsksIPXEForItsPlatform() async throws {
        try await machine(.deployed, .none)
        try await withServer { client in
            let text = try await script(client, platform: nil)
            #expect(text.contains("chain --replace --autofree"))
            #expect(text.contains("platform=${platform}&buildarch=${buildarch}"))
            #expect(!text.contains("m1"))
        }
    }

    enum Expected: Sendable {
        case ramdisk(mode: String)
        case disk, wait
    }

    @Test(
        arguments: [
            (MachineState.commissioning, StepPhase.queued, Expected.wait),  // no slot yet: nothing to boot
            (.commissioning, .boot, .ramdisk(mode: "agent")),
            (.commissioning, .agent, .ramdisk(mode: "agent")),
            (.commissioning, .finish, .wait),
            (.deploying, .queued, .wait),
            (.deploying, .boot, .ramdisk(mode: "agent")),
            (.deploying, .finish, .disk),  // written: the next boot is the new OS
            (.releasing, .agent, .ramdisk(mode: "agent")),
            (.rescuing, .boot, .ramdisk(mode: "rescue")),
            (.rescue, .none, .ramdisk(mode: "rescue")),
            (.deployed, .none, .disk),
            (.exitingRescue, .boot, .disk),
            (.ready, .none, .wait),
            (.failed, .none, .wait),
            (.enrolled, .none, .wait),
        ] as [(MachineState, StepPhase, Expected)]
    )
    func theScriptFollowsTheStateAndPhase(_ state: MachineState, _ phase: StepPhase, _ expected: Expected) async throws
    {
        try await machine(state, phase)
        let before = try #require(try await store.machine(mac: mac))
        try await withServer { client in
            let text = try await script(client)
            switch expected {
            case .ramdisk(let mode):
                #expect(text.contains("/tftp/ramdisk/vmlinuz initrd=initrd.img farrier.url=https://"), "\(text)")
                #expect(text.contains(":8443 farrier.cert=sha256:\(Self.fingerprint) farrier.mode=\(mode) "))
                #expect(text.contains("initrd --name initrd.img"))
            case .disk:
                #expect(text.contains("sanboot --no-describe --drive 0x80"), "\(text)")
                #expect(!text.contains("kernel"))
            case .wait:
                #expect(text.contains("sleep 30"), "\(text)")
                #expect(!text.contains("kernel") && !text.contains("sanboot"))
            }
        }
        // A script changes nothing of the lifecycle: state, phase, generation, project.
        let after = try #require(try await store.machine(mac: mac))
        #expect(after.state == state && after.phase == phase && after.generation == before.generation)
        #expect(after.project == before.project && after.deployment == before.deployment)
    }

    /// The tests' tools (`burnin.img`) are loaded after the initrd only by a commissioning
    /// boot whose open run needs them, and only when the boot root has them.
    @Test func theTestsToolsGoOnlyToACommissioningThatRunsThem() async throws {
        try await machine(.commissioning, .boot)
        let root = NSTemporaryDirectory() + "farrier-boot-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: root + "/ramdisk", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        func run(_ tests: [String], finished: Bool = false) async throws {
            let specs = try TestPlan.resolve(TestPlan.parse(tests: tests, parameters: []).get(), scripts: [:]).get()
            _ = try await store.update(machineID: try #require(try await store.machine(mac: mac)).id) { x in
                x.burnIn = BurnIn(
                    tests: specs,
                    requestedBy: "admin",
                    requested: Date(),
                    finished: finished ? Date() : nil
                )
                return []
            }
        }
        let loaded = "initrd --name burnin.img http://localhost/tftp/ramdisk/burnin.img || goto fail"
        try await run(["cpu"])
        try await withServer(bootRoot: root) { client in
            // Not in the boot root: the boot goes on without it (those tests end as errors).
            let text = try await script(client)
            #expect(!text.contains("burnin.img"), "\(text)")
        }
        #expect(FileManager.default.createFile(atPath: root + "/ramdisk/burnin.img", contents: Data([0x1f, 0x8b])))
        try await withServer(bootRoot: root) { client in
            let text = try await script(client)
            #expect(text.contains("/tftp/ramdisk/vmlinuz initrd=initrd.img initrd=burnin.img farrier.url="), "\(text)")
            #expect(text.contains("initrd --name initrd.img") && text.contains(loaded), "\(text)")
            #expect(text.contains("/tftp/ramdisk/burnin.img || goto fail"), "\(text)")
        }
        // disk-read is the agent's own code; a finished run needs nothing.
        for (tests, finished) in [(["disk-read"], false), (["cpu"], true)] {
            try await run(tests, finished: finished)
            try await withServer(bootRoot: root) { client in
                let text = try await script(client)
                #expect(!text.contains("burnin.img"), "\(tests) \(finished): \(text)")
            }
        }
    }

    /// From an address that does not hold the MAC's lease, a script names no machine and no
    /// state, carries no agent channel, and writes nothing; an unknown MAC is the same.
    @Test func anAddressWithoutTheLeaseLearnsNothing() async throws {
        try await machine(.deploying, .boot, leased: false)
        let before = try await store.machines().count
        try await withServer { client in
            let text = try await script(client)
            #expect(text.contains("not known to Farrier"))
            #expect(
                !text.contains("m1") && !text.contains("deploying") && !text.contains("farrier.url")
                    && !text.contains(Self.fingerprint)
            )
            let stranger = try await script(client, mac: MACAddress("52:54:00:00:07:99")!)
            #expect(stranger.contains("not known to Farrier"))
        }
        #expect(try await store.machines().count == before)
        #expect(try await store.machine(mac: MACAddress("52:54:00:00:07:99")!) == nil)
    }

    /// A deployed machine boots its disk the way its firmware does: INT 13h on BIOS, handing
    /// back to the firmware (its next boot entry) on UEFI.
    @Test(arguments: [("pcbios", "sanboot --no-describe --drive 0x80"), ("efi", "boots its local disk.\nexit")])
    func theLocalDiskBootFollowsThePlatform(_ platform: String, _ expected: String) async throws {
        try await machine(.deployed, .none)
        try await withServer { client in
            let text = try await script(client, platform: platform)
            #expect(text.contains(expected), "\(text)")
            #expect(platform == "efi" ? !text.contains("sanboot") : true)
        }
    }

    /// The agent channel's router (HTTPS in the server; here without TLS and without a peer
    /// address, as a request from nowhere): agent calls and images are refused without a lease
    /// and a token, before anything is read or written.
    @Test func theAgentChannelRefusesCallsWithoutALeaseOrAToken() async throws {
        try await machine(.deploying, .agent)
        let before = try #require(try await store.machine(mac: mac))
        var deps = HTTPDependencies(
            store: store,
            recorder: TimelineRecorder(store: store, known: []),
            addressBook: book,
            bootRoot: BootRoot(path: NSTemporaryDirectory()),
            controller: controller,
            imageDirectory: NSTemporaryDirectory()
        )
        deps.agentTLS = AgentTLS(certificateChainPEM: "", privateKeyPEM: "", fingerprint: Self.fingerprint, port: 8443)
        let router = buildRouter(
            configuration: HTTPConfiguration(),
            dependencies: deps,
            logger: Logger(label: "test"),
            agentChannel: true
        )
        let app = Application(router: router)
        let hello = #"{"agentVersion":"0.1.0","nonce":"0123456789abcdef0123456789abcdef","inventory":null}"#
        try await app.test(.router) { client in
            try await client.execute(uri: AgentAPI.hello, method: .post, body: ByteBuffer(string: hello)) { r in
                #expect(r.status == .forbidden, "\(r.status)")
            }
            try await client.execute(uri: AgentAPI.done, method: .post, body: ByteBuffer(string: #"{"ok":true}"#)) {
                r in
                #expect(r.status == .unauthorized)
            }
            try await client.execute(
                uri: AgentAPI.done,
                method: .post,
                headers: [.authorization: "Bearer forged"],
                body: ByteBuffer(string: #"{"ok":true}"#)
            ) { r in
                #expect(r.status == .forbidden, "\(r.status)")
            }
            let image = "/images/" + String(repeating: "ab", count: 32)
            try await client.execute(uri: image, method: .get) { r in #expect(r.status == .unauthorized) }
            try await client.execute(uri: image, method: .get, headers: [.authorization: "Bearer forged"]) { r in
                #expect(r.status == .forbidden)
            }
        }
        let after = try #require(try await store.machine(mac: mac))
        #expect(after.state == before.state && after.phase == before.phase && after.generation == before.generation)
        #expect(after.agentNonce == nil)
    }

    @Test func aPathThatIsNotAScriptIsNotFound() async throws {
        try await withServer { client in
            try await client.execute(uri: "/boot/nonsense.txt", method: .get) { response in
                #expect(response.status == .notFound)
                // Hummingbird's error body: {"error":{"message":…}}.
                let body =
                    try JSONSerialization.jsonObject(with: Data(String(buffer: response.body).utf8))
                    as? [String: [String: String]]
                #expect(
                    body?["error"]?["message"]?.hasPrefix("expected /boot/<mac>.ipxe") == true,
                    "\(String(describing: body))"
                )
            }
        }
    }

    /// The agent's calls are on the HTTPS router only; on this one they do not exist.
    @Test func thePlainRouterHasNoAgentRoutes() async throws {
        try await machine(.deploying, .boot)
        try await withServer { client in
            try await client.execute(uri: AgentAPI.hello, method: .post, body: ByteBuffer(string: "{}")) { response in
                #expect(response.status == .notFound)
            }
        }
    }
}
