import FarrierAgent
import FarrierCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import SystemSupport
import WireSupport

/// What `farrier sim` simulates, and how its machines behave.
public struct SimConfiguration: Sendable {
    /// How many machines.
    public var machines = 100
    /// Where the simulated Redfish service listens (one service, a ComputerSystem per machine).
    public var redfishHost = "127.0.0.1"
    public var redfishPort = 0
    public var user = "admin"
    public var password = "sim-password"
    /// Where the machines' "iPXE" fetches its script: Farrier's boot HTTP (http://HOST:PORT).
    public var bootHost = "127.0.0.1"
    public var bootPort = 8080
    /// Sites the machines are spread over, round-robin (machine i at `sites[i % count]`), each
    /// with its boot HTTP; empty: all boot from `bootHost:bootPort`, at no site.
    public var sites: [SimSite] = []
    /// The first machine's source address; machine i uses the i-th after it. On Linux every
    /// 127.0.0.0/8 address is the loopback, so N machines need no set-up.
    public var firstAddress = IPv4Address(127, 16, 0, 1)
    /// Machine names are PREFIX-00001…
    public var namePrefix = "sim"
    /// Every BMC answer waits this long.
    public var bmcLatency: Duration = .milliseconds(2)
    /// Share of BMC requests answered 500 (a BMC in trouble).
    public var bmcErrorRate = 0.0
    /// Share of BMC requests never answered (the connection is closed after `bmcHang`).
    public var bmcTimeoutRate = 0.0
    public var bmcHang: Duration = .seconds(15)
    /// Every Nth machine's BMC refuses the enrolled password (0: none).
    public var wrongPasswordEvery = 0
    /// From power on to the script fetch (firmware, DHCP, iPXE), seconds; ±20 %.
    public var bootSeconds = 2.0
    /// How long the agent's work takes besides its downloads (inventory, writing, wiping), seconds; ±20 %.
    public var agentSeconds = 2.0
    /// Share of agent tasks that report failure.
    public var agentFailRate = 0.0
    /// From a disk boot of a deployed OS to its report (cloud-init, SSH up), seconds; ±20 %.
    public var osSeconds = 2.0
    /// Share of an image's bytes a deploy downloads (1: all of it).
    public var imageShare = 1.0
    /// Longest wait between script fetches while Farrier holds a machine in its wait loop.
    public var pollSeconds = 5.0

    public init() {}
}

/// A site of the simulated fleet: its name (as `farrier site add` made it) and its boot HTTP.
public struct SimSite: Sendable, Hashable {
    public var name: String
    public var bootHost: String
    public var bootPort: Int

    public init(name: String, bootHost: String, bootPort: Int) {
        self.name = name
        self.bootHost = bootHost
        self.bootPort = bootPort
    }
}

/// Counters of everything the simulated fleet did, for the bench and for tests.
public struct SimStats: Codable, Sendable, Equatable {
    public var machines = 0
    public var redfishRequests = 0
    public var redfishFaults = 0
    public var resets = 0
    public var powerOns = 0
    public var boots = 0
    public var scriptFetches = 0
    public var diskBoots = 0
    /// Reports of a deployed OS that Farrier took (200).
    public var osReports = 0
    public var hellos = 0
    public var helloRefusals = 0
    public var tasks: [String: Int] = [:]
    public var dones = 0
    public var failuresInjected = 0
    public var imageBytes: Int64 = 0
    public var agentErrors = 0
    public var poweredOn = 0
    public var deployed = 0
    /// The last agent errors (at most 20), for whoever wonders why.
    public var lastErrors: [String] = []
    /// API latencies the probe measured (`farrier sim --probe`), by call.
    public var probes: [String: Latency] = [:]

    public struct Latency: Codable, Sendable, Equatable {
        public var count = 0
        public var failures = 0
        public var p50Ms = 0.0
        public var p99Ms = 0.0
        public var maxMs = 0.0
    }
}

/// N simulated machines behind one simulated Redfish service: power and boot override change as
/// a real BMC's do; a machine powered on boots from its override or its disk, fetches its iPXE
/// script from Farrier over HTTP from its own address, and when the script boots the Farrier
/// ramdisk, a simulated agent speaks Farrier's agent protocol over the pinned HTTPS channel:
/// hello, progress, the image download, done.
public actor SimFleet {
    struct Machine {
        var name: String
        var mac: MACAddress
        var address: IPv4Address
        var on = false
        /// BootSourceOverrideTarget / Enabled / Mode.
        var overrideTarget = "None"
        var overrideEnabled = "Disabled"
        var overrideMode = "Legacy"
        /// Incremented by every power on and reset: a boot in progress ends when it changes.
        var epoch = 0
        /// The image on the disk (its SHA-256), nil when blank.
        var disk: String?
        /// The deployed OS's token for reporting in, and the channel it reports to (the deploy's
        /// agent channel), as its vendor-data would hold them.
        var os: (token: String, channel: AgentConfiguration)?
        var wrongPassword = false
    }

    public let configuration: SimConfiguration
    var machines: [Machine] = []
    var index: [String: Int] = [:]
    var stats = SimStats()
    let logger: Logger
    var server: SimHTTPServer?

    public init(_ configuration: SimConfiguration, logger: Logger = Logger(label: "farrier.sim")) {
        self.configuration = configuration
        self.logger = logger
        for i in 0..<configuration.machines {
            let n = UInt32(i + 1)
            let mac = MACAddress([
                0x02, 0xfa, UInt8(truncatingIfNeeded: n >> 24), UInt8(truncatingIfNeeded: n >> 16),
                UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n),
            ])
            var m = Machine(
                name: "\(configuration.namePrefix)-\(String(format: "%05d", i + 1))",
                mac: mac,
                address: IPv4Address(configuration.firstAddress.value &+ UInt32(i))
            )
            m.wrongPassword = configuration.wrongPasswordEvery > 0 && (i + 1) % configuration.wrongPasswordEvery == 0
            index[m.name] = i
            machines.append(m)
        }
        stats.machines = configuration.machines
    }

    /// One machine as enrolled: its name, MAC, address, BMC URL (password apart) and site.
    public struct Entry: Sendable {
        public var name: String
        public var mac: MACAddress
        public var address: IPv4Address
        public var bmcURL: String
        public var site: String?
    }

    /// Machine i's site, if the fleet is spread over sites.
    func site(_ i: Int) -> SimSite? {
        configuration.sites.isEmpty ? nil : configuration.sites[i % configuration.sites.count]
    }

    public func entries(port: Int) -> [Entry] {
        machines.indices.map { i in
            let m = machines[i]
            return Entry(
                name: m.name,
                mac: m.mac,
                address: m.address,
                bmcURL: "redfish+http://\(configuration.user)@\(configuration.redfishHost):\(port)/\(m.name)",
                site: site(i)?.name
            )
        }
    }

    /// Starts the Redfish service; returns its port.
    public func start() async throws -> Int {
        let s = try await SimHTTPServer(host: configuration.redfishHost, port: configuration.redfishPort)
        server = s
        return s.port
    }

    /// Serves until cancelled.
    public func run() async throws {
        guard let server else { throw SimHTTPError("start the fleet first") }
        try await server.run { [self] request in await self.handle(request) }
    }

    public func snapshot() -> SimStats {
        var s = stats
        s.poweredOn = machines.count { $0.on }
        s.deployed = machines.count { $0.disk != nil }
        for (call, samples) in probeSamples {
            let sorted = samples.sorted()
            func at(_ q: Double) -> Double {
                sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int((Double(sorted.count) * q).rounded(.up)) - 1)]
            }
            s.probes[call] = .init(
                count: sorted.count,
                failures: probeFailures[call] ?? 0,
                p50Ms: at(0.5),
                p99Ms: at(0.99),
                maxMs: sorted.last ?? 0
            )
        }
        return s
    }

    var probeSamples: [String: [Double]] = [:]
    var probeFailures: [String: Int] = [:]

    /// One API call the probe timed (milliseconds), or its failure (nil).
    public func recordProbe(_ call: String, milliseconds: Double?) {
        if let milliseconds {
            probeSamples[call, default: []].append(milliseconds)
        } else {
            probeFailures[call, default: 0] += 1
        }
    }

    /// The machines' names (for the probe's `show` calls).
    public func names() -> [String] { machines.map(\.name) }

    // MARK: Redfish

    static let systems = "/redfish/v1/Systems"

    func handle(_ r: SimRequest) async -> SimResponse {
        stats.redfishRequests += 1
        if r.path == "/sim/v1/stats" {
            let data = (try? JSONEncoder().encode(snapshot())) ?? Data()
            return SimResponse(
                status: .ok,
                headers: [("Content-Type", "application/json")],
                body: String(decoding: data, as: UTF8.self)
            )
        }
        if configuration.bmcLatency > .zero { try? await Task.sleep(for: configuration.bmcLatency) }
        var rng = SystemRandomNumberGenerator()
        if configuration.bmcTimeoutRate > 0, Double.random(in: 0..<1, using: &rng) < configuration.bmcTimeoutRate {
            stats.redfishFaults += 1
            try? await Task.sleep(for: configuration.bmcHang)
            return SimResponse(status: .ok, dropConnection: true)
        }
        if configuration.bmcErrorRate > 0, Double.random(in: 0..<1, using: &rng) < configuration.bmcErrorRate {
            stats.redfishFaults += 1
            return .json(
                ["error": ["code": "Base.1.8.InternalError", "message": "simulated BMC fault"]],
                status: .internalServerError
            )
        }
        if r.path == "/redfish/v1" || r.path == "/redfish/v1/" {
            return .json([
                "@odata.id": "/redfish/v1/", "Id": "RootService", "Name": "Farrier fleet simulator",
                "RedfishVersion": "1.6.0",
                "Systems": ["@odata.id": Self.systems],
            ])
        }
        guard authorized(r.headers) else {
            return .json(["error": ["message": "bad credentials"]], status: .unauthorized)
        }
        if r.path == Self.systems, r.method == .GET {
            return .json([
                "@odata.id": Self.systems, "Name": "Systems", "Members@odata.count": machines.count,
                "Members": machines.map { ["@odata.id": "\(Self.systems)/\($0.name)"] },
            ])
        }
        guard r.path.hasPrefix(Self.systems + "/") else {
            return .json(["error": ["message": "no such resource"]], status: .notFound)
        }
        let rest = r.path.dropFirst(Self.systems.count + 1)
        let id = String(rest.prefix { $0 != "/" })
        guard let i = index[id] else { return .json(["error": ["message": "no system \(id)"]], status: .notFound) }
        if machines[i].wrongPassword { return .json(["error": ["message": "bad credentials"]], status: .unauthorized) }
        let action = rest.dropFirst(id.count)
        switch (r.method, String(action)) {
        case (.GET, ""):
            return .json(system(i))
        case (.PATCH, ""):
            guard let body = try? JSONSerialization.jsonObject(with: Data(r.body.readableBytesView)) as? [String: Any],
                let boot = body["Boot"] as? [String: Any]
            else { return .json(["error": ["message": "expected a JSON object with Boot"]], status: .badRequest) }
            if let t = boot["BootSourceOverrideTarget"] as? String {
                guard ["None", "Pxe", "Hdd"].contains(t) else {
                    return .json(["error": ["message": "target \(t) not allowed"]], status: .badRequest)
                }
                machines[i].overrideTarget = t
            }
            if let e = boot["BootSourceOverrideEnabled"] as? String { machines[i].overrideEnabled = e }
            if let m = boot["BootSourceOverrideMode"] as? String { machines[i].overrideMode = m }
            return SimResponse(status: .noContent)
        case (.POST, "/Actions/ComputerSystem.Reset"):
            guard let body = try? JSONSerialization.jsonObject(with: Data(r.body.readableBytesView)) as? [String: Any],
                let type = body["ResetType"] as? String
            else { return .json(["error": ["message": "expected ResetType"]], status: .badRequest) }
            stats.resets += 1
            switch type {
            case "On", "ForceOn":
                if !machines[i].on { powerOn(i) }
            case "ForceOff", "GracefulShutdown":
                machines[i].on = false
                machines[i].epoch += 1
            case "ForceRestart", "GracefulRestart", "PowerCycle":
                powerOn(i)
            default:
                return .json(["error": ["message": "ResetType \(type) not allowed"]], status: .badRequest)
            }
            return SimResponse(status: .noContent)
        default:
            return .json(["error": ["message": "\(r.method) \(r.path) not supported"]], status: .methodNotAllowed)
        }
    }

    func authorized(_ headers: HTTPHeaders) -> Bool {
        guard let value = headers.first(name: "Authorization"), value.hasPrefix("Basic "),
            let decoded = Data(base64Encoded: String(value.dropFirst(6)))
        else { return false }
        return String(decoding: decoded, as: UTF8.self) == "\(configuration.user):\(configuration.password)"
    }

    func system(_ i: Int) -> [String: Any] {
        let m = machines[i]
        return [
            "@odata.id": "\(Self.systems)/\(m.name)", "Id": m.name, "Name": m.name,
            "UUID":
                "00000000-0000-4000-8000-\(m.mac.formatted(separator: "-").replacingOccurrences(of: "-", with: ""))",
            "Manufacturer": "Farrier", "Model": "Simulated", "BiosVersion": "sim-1", "PowerState": m.on ? "On" : "Off",
            "Boot": [
                "BootSourceOverrideTarget": m.overrideTarget, "BootSourceOverrideEnabled": m.overrideEnabled,
                "BootSourceOverrideMode": m.overrideMode,
                "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd"],
            ],
            "Actions": [
                "#ComputerSystem.Reset": [
                    "target": "\(Self.systems)/\(m.name)/Actions/ComputerSystem.Reset",
                    "ResetType@Redfish.AllowableValues": [
                        "On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart", "PowerCycle",
                    ],
                ]
            ],
        ]
    }

    // MARK: Boot

    func powerOn(_ i: Int) {
        machines[i].on = true
        machines[i].epoch += 1
        stats.powerOns += 1
        let epoch = machines[i].epoch
        Task { await self.boot(i, epoch: epoch) }
    }

    func current(_ i: Int, _ epoch: Int) -> Bool { machines[i].on && machines[i].epoch == epoch }

    /// The device this boot uses: a one-time override (then cleared), a continuous one, or the
    /// disk when it holds an OS, else the network.
    func bootDevice(_ i: Int) -> String {
        let m = machines[i]
        if m.overrideEnabled != "Disabled", m.overrideTarget != "None" {
            if m.overrideEnabled == "Once" { machines[i].overrideEnabled = "Disabled" }
            return m.overrideTarget
        }
        return m.disk != nil ? "Hdd" : "Pxe"
    }

    /// How many times a simulated agent sends a report or asks for the image while the answer
    /// is 5xx (the real agent's `attempts`).
    static let attempts = 60
    static let retryDelay = Duration.seconds(2)

    nonisolated static func jittered(_ seconds: Double) -> Duration {
        var rng = SystemRandomNumberGenerator()
        return .milliseconds(Int(max(0, seconds * Double.random(in: 0.8...1.2, using: &rng)) * 1000))
    }

    func note(_ error: String) {
        stats.agentErrors += 1
        stats.lastErrors.append(error)
        if stats.lastErrors.count > 20 { stats.lastErrors.removeFirst() }
    }

    func count(_ key: WritableKeyPath<SimStats, Int>) { stats[keyPath: key] += 1 }

    func boot(_ i: Int, epoch: Int) async {
        try? await Task.sleep(for: Self.jittered(configuration.bootSeconds))
        guard current(i, epoch) else { return }
        stats.boots += 1
        var device = bootDevice(i)
        if device == "Hdd" {
            if machines[i].disk != nil {
                stats.diskBoots += 1
                await reportOS(i, epoch: epoch)
                return
            }
            device = "Pxe"  // a blank disk: the firmware falls through to the network
        }
        let m = machines[i]
        let client = SimHTTPClient(
            host: site(i)?.bootHost ?? configuration.bootHost,
            port: site(i)?.bootPort ?? configuration.bootPort,
            source: m.address.description,
            pin: nil
        )
        let path = "/boot/\(m.mac.formatted(separator: "-")).ipxe?platform=pcbios&buildarch=x86_64"
        // iPXE's loop: fetch the script; wait and fetch again while Farrier holds the machine.
        // Bounded by the boot: a power change ends it.
        for _ in 0..<100_000 {
            guard current(i, epoch) else { return }
            stats.scriptFetches += 1
            let script: String
            do {
                script = try await client.session { send in try await send(.GET, path, [], nil, 1 << 16) }.text
            } catch {
                note("\(m.name): script fetch: \(error)")
                try? await Task.sleep(for: .seconds(2))
                continue
            }
            // The ramdisk's kernel line, read as the real agent reads /proc/cmdline.
            if let agent = AgentConfiguration.fromKernelCommandLine(script) {
                await runAgent(i, epoch: epoch, channel: agent)
                return
            }
            if script.contains("sanboot") || script.contains("\nexit") {
                stats.diskBoots += 1
                await reportOS(i, epoch: epoch)
                return
            }
            let wait = Self.sleepSeconds(script).map { min($0, configuration.pollSeconds) } ?? configuration.pollSeconds
            try? await Task.sleep(for: Self.jittered(wait))
        }
    }

    static func sleepSeconds(_ script: String) -> Double? {
        for line in script.split(separator: "\n") {
            let words = line.split(separator: " ")
            if words.count == 2, words[0] == "sleep", let n = Double(words[1]) { return n }
        }
        return nil
    }

    // MARK: Agent

    func machine(_ i: Int) -> Machine { machines[i] }

    /// The agent of one boot. Nonisolated: it runs beside the fleet and asks it (await) only
    /// for the machine's power and to record what it did.
    nonisolated func runAgent(_ i: Int, epoch: Int, channel: AgentConfiguration) async {
        let m = await machine(i)
        let client: SimHTTPClient
        do {
            let (host, port) = try channel.channelAddress()
            client = SimHTTPClient(
                host: host,
                port: port,
                source: m.address.description,
                pin: try CertificatePin.normalized(channel.certificateSHA256)
            )
        } catch {
            await note("\(m.name): \(error)")
            return
        }
        let nonce = SecureRandom.bytes(32).hexString
        let inventory = Self.inventory(i, m)
        let started = ContinuousClock.now
        do {
            try await client.session { send in
                func post<B: Encodable>(_ path: String, _ body: B, token: String) async throws -> SimReply {
                    var headers = [("Content-Type", "application/json")]
                    if !token.isEmpty { headers.append(("Authorization", "Bearer \(token)")) }
                    return try await send(.POST, path, headers, Array(try JSONEncoder().encode(body)), 1 << 20)
                }
                /// The done report, tried again while the answer is 5xx (a site whose region is
                /// away, a replica killed), as the real agent does: at most 60 times, 2 s apart.
                func report<B: Encodable>(_ path: String, _ body: B, token: String) async throws -> SimReply {
                    var r = try await post(path, body, token: token)
                    for _ in 1..<Self.attempts where r.status >= 500 {
                        guard await self.current(i, epoch) else { break }
                        try await Task.sleep(for: Self.retryDelay)
                        r = try await post(path, body, token: token)
                    }
                    return r
                }
                // Hello, until Farrier has moved the machine to its agent phase (503 until then).
                var task: AgentTask?
                for _ in 0..<60 {
                    guard await self.current(i, epoch) else { return }
                    let r = try await post(
                        AgentAPI.hello,
                        AgentHello(agentVersion: "sim-1", inventory: inventory, nonce: nonce),
                        token: ""
                    )
                    if r.status == 200 {
                        task = try JSONDecoder().decode(AgentTask.self, from: Data(r.body))
                        break
                    }
                    if r.status < 500 {
                        await self.count(\.helloRefusals)
                        await self.note("\(m.name): hello refused: \(r.status) \(r.text.prefix(200))")
                        return
                    }
                    try await Task.sleep(for: .seconds(1))
                }
                guard let task else { throw SimHTTPError("no task after 60 hellos") }
                await self.tookTask(task.kind.rawValue)
                // (Progress is sent once, as the real agent sends it: best effort.)
                _ = try await post(
                    AgentAPI.progress,
                    AgentProgress(stage: "started", bytesDone: 0, bytesTotal: 0),
                    token: task.token
                )
                var ok = true
                var error: String?
                if task.kind == .deploy, let image = task.image {
                    let bytes = try await self.download(client, image, token: task.token)
                    _ = try await post(
                        AgentAPI.progress,
                        AgentProgress(stage: "write", bytesDone: bytes, bytesTotal: image.size),
                        token: task.token
                    )
                }
                try await Task.sleep(for: Self.jittered(self.configuration.agentSeconds))
                if self.configuration.agentFailRate > 0, Double.random(in: 0..<1) < self.configuration.agentFailRate {
                    ok = false
                    error = "simulated failure"
                    await self.count(\.failuresInjected)
                }
                guard await self.current(i, epoch) else { return }
                if ok { await self.finished(i, task, channel: channel) }
                let seconds = (ContinuousClock.now - started) / .seconds(1)
                var result = AgentResult(
                    ok: ok,
                    error: error,
                    inventory: task.kind == .commission ? inventory : nil,
                    seconds: seconds
                )
                // As the real agent: it put the OS token into the vendor-data.
                result.osReporter = task.kind == .deploy && task.osToken != nil ? true : nil
                result.networkConfig = task.kind == .deploy && task.seed?.networkConfig != nil ? true : nil
                // Every test passes at once (per-disk ones on the one simulated disk).
                result.tests = task.tests.map { specs in
                    specs.map { s in
                        let perDisk = TestPlan.builtin(s.name)?.perDisk == true
                        return TestResult(
                            name: s.name,
                            version: s.version,
                            target: perDisk ? "sda" : nil,
                            status: .passed,
                            start: 0,
                            end: 0,
                            exitCode: 0,
                            summary: "simulated"
                        )
                    }
                }
                let r = try await report(AgentAPI.done, result, token: task.token)
                guard r.status == 200 else { throw SimHTTPError("done answered \(r.status): \(r.text.prefix(200))") }
                await self.count(\.dones)
            }
        } catch {
            await note("\(m.name): agent: \(error)")
        }
    }

    func tookTask(_ kind: String) {
        stats.hellos += 1
        stats.tasks[kind, default: 0] += 1
    }

    /// The disk as the task left it.
    func finished(_ i: Int, _ task: AgentTask, channel: AgentConfiguration) {
        switch task.kind {
        case .deploy:
            machines[i].disk = task.image?.sha256
            machines[i].os = task.osToken.map { ($0, channel) }
        case .wipe:
            machines[i].disk = nil
            machines[i].os = nil
        default: break
        }
    }

    /// The deployed OS of this boot reports in once it is up (`osSeconds`), as its vendor-data's
    /// reporter does: the boot ID, with the deployment's OS token, over the pinned channel from
    /// the machine's address; tried again while the answer is 5xx, and while it is 409 (the
    /// reconciler has not yet moved the step to its OS phase).
    func reportOS(_ i: Int, epoch: Int) async {
        guard let os = machines[i].os else { return }
        let m = machines[i]
        try? await Task.sleep(for: Self.jittered(configuration.osSeconds))
        guard current(i, epoch) else { return }
        do {
            let (host, port) = try os.channel.channelAddress()
            let client = SimHTTPClient(
                host: host,
                port: port,
                source: m.address.description,
                pin: try CertificatePin.normalized(os.channel.certificateSHA256)
            )
            let body = Array(try JSONEncoder().encode(OSReady(bootID: "sim-\(i)-\(epoch)")))
            var status = 0
            for attempt in 1...Self.attempts {
                guard current(i, epoch) else { return }
                let reply = try await client.session { send in
                    try await send(
                        .POST,
                        AgentAPI.osReady,
                        [("Content-Type", "application/json"), ("Authorization", "Bearer \(os.token)")],
                        body,
                        1 << 16
                    )
                }
                status = reply.status
                guard status >= 500 || status == 409, attempt < Self.attempts else { break }
                try await Task.sleep(for: Self.retryDelay)
            }
            if status == 200 { stats.osReports += 1 } else { note("\(m.name): OS report answered \(status)") }
        } catch {
            note("\(m.name): OS report: \(error)")
        }
    }

    nonisolated func download(_ client: SimHTTPClient, _ image: AgentTask.Image, token: String) async throws -> Int64 {
        let share = max(0, min(1, configuration.imageShare))
        guard share > 0 else { return 0 }
        let want = Int(Double(image.size) * share)
        // A share below all of it stops reading there (the connection is dropped).
        let limit = share >= 1 ? 0 : -max(1, want)
        // Tried again while the answer is 5xx (the image's access check needs the region), as
        // the real agent's first request is.
        var reply = SimReply(status: 0, body: [])
        for attempt in 1...Self.attempts {
            reply = try await client.session { send in
                try await send(.GET, image.path, [("Authorization", "Bearer \(token)")], nil, limit)
            }
            guard reply.status >= 500, attempt < Self.attempts else { break }
            try await Task.sleep(for: Self.retryDelay)
        }
        guard reply.status == 200 else { throw SimHTTPError("image download answered \(reply.status)") }
        let got = Int64(share >= 1 ? image.size : Int64(want))
        await addBytes(got)
        return got
    }

    func addBytes(_ n: Int64) { stats.imageBytes += n }

    static func inventory(_ i: Int, _ m: Machine) -> Inventory {
        let cores = [8, 16, 32][i % 3]
        return Inventory(
            cpuModel: "Simulated CPU",
            cores: cores,
            memoryBytes: Int64(cores) * 4 << 30,
            disks: [
                .init(
                    name: "sda",
                    sizeBytes: 480_000_000_000,
                    model: "SimDisk",
                    serial: "SIM\(i + 1)",
                    rotational: false
                )
            ],
            nics: [.init(name: "eth0", mac: m.mac.description, driver: "sim", link: true)],
            vendor: "Farrier",
            product: "Simulated",
            serial: "SIM\(i + 1)",
            firmware: .bios
        )
    }
}
