import DHCPServer
import FarrierAPI
import FarrierCore
import FarrierHTTP
import FarrierSite
import FarrierStore
import FarrierTelemetry
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import HTTPTypes
import Hummingbird
import Logging
import ServiceLifecycle
import SwiftProtobuf
import Synchronization
import SystemSupport
import TFTPServer
import UnixSignals

/// A site's boot services: DHCP (or ProxyDHCP), TFTP and HTTP boot for the machines at the
/// site, decided at the site so they go on while the region is away.
///
/// Leases are decided here and committed to the site's own SQLite database (DATA-DIR/site.sqlite)
/// before the ACK leaves, as at the region. Scripts come from what the region last said each
/// machine boots next (`machine`), so a deployed machine that renews its lease and reboots
/// during an outage gets its lease and boots its disk. Boot-root files (iPXE) are served from
/// DATA-DIR/boot, over TFTP and under /tftp over HTTP.
public struct SiteBoot: Sendable {
    public let dhcp: DHCPService
    public let tftp: TFTPService
    public let services: [any Service]
    /// The site's leases and timeline (events wait here for the region).
    public let store: SQLiteStore
    /// Records the boot timeline; the site's machines are marked known as their list comes.
    public let recorder: TimelineRecorder
    /// Where the boot files are (iPXE, the ramdisk), served over TFTP and under /tftp.
    public let bootRoot: String

    /// `c` supplies the boot settings (dhcp.*, tftp.*, http.listen, ipxe.source); its data
    /// directory is the site's.
    ///
    /// With `agent`, the site also serves the agent channel (HTTPS on agent.listen, with a
    /// certificate made at first start in the data directory, which its ramdisk scripts pin):
    /// the agents' calls go to `agent` (the region, over the link) and images come from
    /// `images` (the site's cache) to those `agent` says may have them. `regionBootFiles` are
    /// the boot root's files the region's own builds of which are installed there
    /// (`BootFileSync.installed`): the local iPXE is not copied over them.
    public init(
        configuration c: ServerConfiguration,
        machine: @escaping @Sendable (MACAddress) async -> SiteBootEntry?,
        agent: (any AgentBackend)? = nil,
        images: (any ImageSource)? = nil,
        regionBootFiles: Set<String> = [],
        logger: Logger
    ) async throws {
        Telemetry.bootstrap()
        try FileManager.default.createDirectory(atPath: c.dataDir, withIntermediateDirectories: true)
        // Events wait here until the region has them: keep many, not the region's 500 a machine.
        store = try SQLiteStore(path: c.dataDir + "/site.sqlite", timelineLimit: 100_000)
        bootRoot = c.tftpRoot
        // The region's builds installed here stay: a restart while the region is away does not
        // put the local iPXE back in their place.
        try prepareBootRoot(c.tftpRoot, ipxeSource: c.ipxeSource, keep: regionBootFiles, logger: logger)
        if agent != nil { reportRamdisk(c.tftpRoot + "/ramdisk", logger: logger) }
        recorder = TimelineRecorder(
            store: store,
            // Machines DHCP saw network-booting here: the region's list is not the site's
            // table, and a timeline needs a row to hang on.
            known: try await store.machines().map(\.mac),
            maxDiscovered: c.discoveryMaxMachines,
            onError: { [logger] error in logger.error("timeline write failed", metadata: ["error": "\(error)"]) }
        )
        let addressBook: AddressBook
        (addressBook, dhcp, tftp) = try makeBootPath(c, store: store, recorder: recorder, logger: logger)
        let collectors = ScrapeCollectors(boot: BootPathMetrics(dhcp: dhcp, tftp: tftp.metrics, recorder: recorder))
        var deps = HTTPDependencies(
            store: store,
            recorder: recorder,
            addressBook: addressBook,
            bootRoot: BootRoot(path: c.tftpRoot)
        )
        deps.siteBoot = machine
        var services: [any Service] = []
        if let agent {
            let tls = try AgentCertificate.load(
                certificate: c.agentTLSCert,
                key: c.agentTLSKey,
                dataDir: c.dataDir,
                port: try splitHostPort(c.http.agentListen).1
            )
            deps.agentTLS = tls
            deps.agentBackend = agent
            deps.imageSource = images
            services.append(
                try makeAgentApplication(configuration: c.http, dependencies: deps, tls: tls, logger: logger)
            )
            logger.info(
                "agent channel",
                metadata: ["agent.listen": "\(c.http.agentListen)", "agent.tls-sha256": "\(tls.fingerprint)"]
            )
        }
        let http = try makeHTTPApplication(configuration: c.http, dependencies: deps, logger: logger)
        self.services =
            [http] + services + [tftp, dhcp] + (try makeMetricsListener(c, collectors: collectors, logger: logger))
        logger.info(
            "boot services",
            metadata: [
                "http.listen": "\(c.http.listen)", "tftp.listen": "\(c.tftp.listen)", "dhcp.mode": "\(c.dhcp.mode)",
                "dhcp.interfaces": "\(c.dhcp.interfaces.joined(separator: ","))",
            ]
        )
    }
}

/// The agent channel's calls at a site, relayed to the region over the site link with the MAC
/// the site leased the caller's address to. The region's refusals keep their meaning (403, 409,
/// 400); a region that cannot be reached is 503, which agents retry.
public struct LinkAgentBackend: AgentBackend {
    let link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>
    /// Where progress and done reports wait while the region is away; nil: they get 503.
    let queue: AgentReportQueue?
    let logger: Logger

    public init(
        link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>,
        queue: AgentReportQueue? = nil,
        logger: Logger
    ) {
        self.link = link
        self.queue = queue
        self.logger = logger
    }

    func call(_ name: String, peer: MACAddress?, token: String = "", body: Data) async throws -> Data {
        guard let peer else {
            throw HTTPError(.forbidden, message: "agent calls come only from an address this site leased\n")
        }
        do {
            return try await Self.relay(link, call: name, mac: peer.description, token: token, body: body)
        } catch let e as RPCError {
            throw Self.httpError(e)
        }
    }

    /// One agent call over the link, as the site received it.
    static func relay(
        _ link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>,
        call: String,
        mac: String,
        token: String,
        body: Data
    ) async throws -> Data {
        var request = Farrier_V1_AgentCallRequest()
        request.call = call
        request.mac = mac
        request.token = token
        request.body = body
        var options = CallOptions.defaults
        options.timeout = .seconds(30)
        return try await link.agentCall(request, options: options).body
    }

    /// Whether an error of the link means the region could not be reached (or could not
    /// answer), rather than that it refused.
    static func unreachable(_ e: RPCError) -> Bool {
        [.unavailable, .deadlineExceeded, .unknown, .internalError, .cancelled].contains(e.code)
    }

    /// A progress or done report: relayed, or, while the region is away (or reports of the
    /// machine already wait), kept in the queue if the site can vouch for it.
    func report(_ name: String, peer: MACAddress?, token: String, body: Data) async throws {
        guard let peer else {
            throw HTTPError(.forbidden, message: "agent calls come only from an address this site leased\n")
        }
        if let queue, queue.waiting(mac: peer) {
            try keep(queue, name, peer: peer, token: token, body: body)
            return
        }
        do {
            _ = try await Self.relay(link, call: name, mac: peer.description, token: token, body: body)
        } catch let e as RPCError {
            guard let queue, Self.unreachable(e) else { throw Self.httpError(e) }
            try keep(queue, name, peer: peer, token: token, body: body)
        }
    }

    func keep(_ queue: AgentReportQueue, _ name: String, peer: MACAddress, token: String, body: Data) throws {
        guard queue.vouches(mac: peer, token: token) else {
            throw HTTPError(.serviceUnavailable, message: "the region cannot be reached; try again\n")
        }
        do { try queue.enqueue(mac: peer, call: name, token: token, body: body) } catch {
            logger.warning("agent report not kept", metadata: ["mac": "\(peer)", "error": "\(error)"])
            throw HTTPError(.serviceUnavailable, message: "the region cannot be reached; try again\n")
        }
        logger.info("agent report kept for the region", metadata: ["mac": "\(peer)", "call": "\(name)"])
    }

    static func httpError(_ e: RPCError) -> HTTPError {
        let status: HTTPResponse.Status =
            switch e.code {
            case .permissionDenied, .unauthenticated: .forbidden
            case .invalidArgument: .badRequest
            case .notFound: .notFound
            case .failedPrecondition, .aborted, .alreadyExists: .conflict
            default: .serviceUnavailable
            }
        return HTTPError(status, message: "\(e.message)\n")
    }

    public func agentHello(peer: MACAddress?, hello: AgentHello) async throws -> AgentTask {
        // Reports of an earlier boot go first: the region hears them in the order they came.
        if let peer, let queue, queue.waiting(mac: peer) {
            throw HTTPError(.serviceUnavailable, message: "reports of this machine wait for the region; try again\n")
        }
        let data = try await call("hello", peer: peer, body: try JSONEncoder().encode(hello))
        let task: AgentTask
        do { task = try JSONDecoder().decode(AgentTask.self, from: data) } catch {
            throw HTTPError(.badGateway, message: "the region's answer was not a task: \(error)\n")
        }
        if let peer, let queue, !task.token.isEmpty {
            do { try queue.remember(mac: peer, token: task.token) } catch {
                logger.warning("the agent's token was not kept", metadata: ["mac": "\(peer)", "error": "\(error)"])
            }
        }
        return task
    }

    public func agentProgress(token: String, peer: MACAddress?, report: AgentProgress) async throws {
        try await self.report("progress", peer: peer, token: token, body: try JSONEncoder().encode(report))
    }

    public func agentDone(token: String, peer: MACAddress?, result: AgentResult) async throws {
        try await self.report("done", peer: peer, token: token, body: try JSONEncoder().encode(result))
    }

    /// Relayed, never queued: the site cannot vouch for an OS token (the region made it and
    /// the site never saw it), so while the region is away the OS is told 503 and tries again.
    public func osReady(token: String, peer: MACAddress?, report: OSReady) async throws {
        _ = try await call("os-ready", peer: peer, token: token, body: try JSONEncoder().encode(report))
    }

    public func imageAccess(sha256: String, bearer: String?, peer: MACAddress?) async throws -> Bool {
        guard let bearer, let peer else { return false }
        var request = Farrier_V1_ImageAccessRequest()
        request.sha256 = sha256
        request.mac = peer.description
        request.token = bearer
        var options = CallOptions.defaults
        options.timeout = .seconds(30)
        do { return try await link.imageAccess(request, options: options).allowed } catch let e as RPCError
            where e.code == .permissionDenied || e.code == .invalidArgument
        {
            return false
        } catch {
            // The region away: a 503 the agent retries, not a refusal it takes as final.
            logger.warning("image access: the region did not answer", metadata: ["error": "\(error)"])
            throw HTTPError(.serviceUnavailable, message: "the region cannot be reached; try again\n")
        }
    }
}

/// What a site boots a machine with: the region's answer now while the link is up (a list
/// refreshed every few seconds can be older than the power cycle the region just made for a
/// step, and a machine told to boot its disk then would never reach its agent), the region's
/// last list while it is away or slow to answer.
public final class SiteBootLookup: Sendable {
    let link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>
    let cached: @Sendable (MACAddress) -> SiteBootEntry?
    let note: @Sendable (MACAddress, SiteBootEntry?) -> Void
    /// Whether the last call to the region was answered: while not, the list answers at once.
    let regionUp = Atomic<Bool>(false)
    /// How long a script request waits for the region before the list answers.
    let patience: Duration

    public init(
        link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>,
        patience: Duration = .seconds(2),
        cached: @escaping @Sendable (MACAddress) -> SiteBootEntry?,
        note: @escaping @Sendable (MACAddress, SiteBootEntry?) -> Void
    ) {
        self.link = link
        self.patience = patience
        self.cached = cached
        self.note = note
    }

    public func region(up: Bool) { regionUp.store(up, ordering: .relaxed) }

    public func entry(_ mac: MACAddress) async -> SiteBootEntry? {
        // Only the site's own machines (as last listed) are asked about: a host polling for
        // MACs the site does not know costs the region nothing.
        guard let last = cached(mac) else { return nil }
        guard regionUp.load(ordering: .relaxed) else { return last }
        var options = CallOptions.defaults
        options.timeout = patience
        do {
            let m = try await link.siteMachineBoot(
                Farrier_V1_SiteMachineBootRequest.with { $0.mac = mac.description },
                options: options
            )
            let entry = SiteBootEntry(name: m.name, state: m.state, nextBoot: m.nextBoot, firmware: m.firmware)
            note(mac, entry)
            return entry
        } catch let e as RPCError where e.code == .notFound {
            // Not (or no longer) one of this site's machines, says the region.
            note(mac, nil)
            return nil
        } catch let e as RPCError where e.code == .unavailable {
            // The region went away (its next heartbeat will say so): the list, as in an outage.
            return last
        } catch {
            // Up but slow to answer: the list may be older than a power cycle the region just
            // made for a step, so it never sends the machine to its disk now; the machine
            // waits and asks again.
            var waiting = last
            if waiting.nextBoot == .disk { waiting.nextBoot = .wait }
            return waiting
        }
    }
}

/// Delivers the site's boot timeline (DHCP, TFTP, HTTP events in `site.sqlite`) to the region
/// over the link, oldest first, each once: the region keeps the highest number it has and
/// skips what it has, so what a lost answer makes the site send again is not doubled. Events
/// wait in the site's database while the region is away.
public final class SiteEventCourier: Sendable {
    let store: SQLiteStore
    let link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>
    /// The region's mark as last answered, kept in `markFile` across restarts; nil before any.
    let mark: Mutex<Int64?>
    let markFile: String
    static let batch = 500
    /// Batches in one delivery at most (100 000 events); the rest go at the next call.
    static let maxBatches = 200

    struct Mark: Codable { var mark: Int64 }

    public init(
        store: SQLiteStore,
        link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>,
        markFile: String
    ) {
        self.store = store
        self.link = link
        self.markFile = markFile
        let saved: Mark? = readStateFile(markFile)
        mark = Mutex(saved?.mark)
    }

    /// Sends `events` (oldest first) as following `after`; returns the region's mark.
    func send(_ events: [SiteEvent], after: Int64, options: CallOptions) async throws -> Int64 {
        var request = Farrier_V1_ReportEventsRequest()
        request.after = after
        request.events = events.map { e in
            var v = Farrier_V1_SiteTimelineEvent()
            v.id = e.id
            v.mac = e.event.mac.description
            v.time = Google_Protobuf_Timestamp(date: e.event.time)
            v.stage = e.event.stage.rawValue
            v.event = String(e.event.event.prefix(SiteEvent.maxEvent))
            v.detail = String(e.event.detail.prefix(SiteEvent.maxDetail))
            return v
        }
        let mark = try await link.reportEvents(request, options: options).mark
        let changed = self.mark.withLock { old -> Bool in
            defer { old = mark }
            return old != mark
        }
        if changed { try? writeStateFile(markFile, Mark(mark: mark)) }
        return mark
    }

    /// Sends what the region does not have yet, in batches, each as following the region's
    /// mark: when the region's mark is not the one the site believed (its answer was lost, or
    /// the region went back to an older backup), the region appends nothing and the site goes
    /// on from the region's mark. Returns how many events wait after.
    public func deliver(options: CallOptions) async throws -> Int64 {
        var current: Int64
        if let known = mark.withLock({ $0 }) {
            current = known
        } else {
            current = try await send([], after: 0, options: options)
        }
        for _ in 0..<Self.maxBatches {
            let events = try await store.timelineEvents(after: current, limit: Self.batch)
            guard let last = events.last else { break }
            let answered = try await send(events, after: current, options: options)
            // Appended: go on after them. Not: the region's mark was another; go on from it.
            let moved = answered != current
            current = answered
            if moved && answered == last.id && events.count < Self.batch { break }
            if !moved { break }  // nothing appended and the same mark: it will not change now
        }
        return try await store.timelineCount(after: current)
    }

    /// Events waiting for the region, as far as the site knows (all of them before its first
    /// answer ever).
    public func depth() async -> Int64 { (try? await store.timelineCount(after: mark.withLock { $0 } ?? 0)) ?? 0 }
}

/// Reports the leases the site holds for its machines to the region, which keeps them to show
/// and reach the machines (`machine show`, `machine ssh`). Each report is the whole set, sent
/// when it changed since the region last took it, or after `refresh` in any case (a region
/// restored from a backup learns it again); while the region is away the site's own table is
/// what counts.
public final class SiteLeaseCourier: Sendable {
    let store: SQLiteStore
    let link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>
    let refresh: Duration
    /// What the region last took, and when.
    let last: Mutex<(leases: Set<Lease>, at: ContinuousClock.Instant)?> = Mutex(nil)

    public init(
        store: SQLiteStore,
        link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>,
        refresh: Duration = .seconds(300)
    ) {
        self.store = store
        self.link = link
        self.refresh = refresh
    }

    /// Sends the current leases of `macs` if the region's copy may differ; returns how many the
    /// region kept, or nil when nothing was sent.
    @discardableResult
    public func deliver(macs: Set<MACAddress>, options: CallOptions) async throws -> Int64? {
        let now = Date()
        let current = Set(try await store.currentLeases().filter { macs.contains($0.mac) && $0.expires > now })
        let clock = ContinuousClock()
        if let last = last.withLock({ $0 }), last.leases == current, clock.now - last.at < refresh { return nil }
        var request = Farrier_V1_ReportLeasesRequest()
        request.leases = current.sorted { $0.mac.description < $1.mac.description }.map { l in
            var v = Farrier_V1_SiteLease()
            v.mac = l.mac.description
            v.address = l.address.description
            v.expires = Google_Protobuf_Timestamp(date: l.expires)
            v.hostname = l.hostname ?? ""
            return v
        }
        let kept = try await link.reportLeases(request, options: options).kept
        last.withLock { $0 = (current, clock.now) }
        return kept
    }
}

/// Delivers the agent reports a site kept while its region was away, oldest first; stops at
/// the first the region cannot take now (it is away again), and drops one it refuses. A report
/// the region keeps failing on (an internal error, ten times) is dropped too, so it cannot hold
/// the others back for good; and a round ends after a few seconds, so a long queue does not
/// hold the site's calls (heartbeats, events, leases) back.
public final class AgentReportCourier: Sendable {
    let queue: AgentReportQueue
    let link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>
    let logger: Logger
    /// Failed deliveries of each report (by number), this run.
    let failures: Mutex<[Int64: Int]> = Mutex([:])
    static let maxFailures = 10
    static let round: Duration = .seconds(5)

    public init(
        queue: AgentReportQueue,
        link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>,
        logger: Logger
    ) {
        self.queue = queue
        self.link = link
        self.logger = logger
    }

    /// Returns how many were delivered (refused ones included).
    @discardableResult
    public func deliver() async throws -> Int {
        var done = 0
        let end = ContinuousClock.now + Self.round
        for r in queue.pending() {
            guard ContinuousClock.now < end else { break }
            do {
                _ = try await LinkAgentBackend.relay(link, call: r.call, mac: r.mac, token: r.token, body: r.body)
                logger.info("agent report delivered", metadata: ["mac": "\(r.mac)", "call": "\(r.call)"])
            } catch let e as RPCError {
                // The site's own certificate refused: no report is at fault; the run ends.
                if e.isSiteRefusal { throw e }
                if [.internalError, .unknown].contains(e.code) {
                    let n = failures.withLock { f -> Int in
                        f[r.seq, default: 0] += 1
                        return f[r.seq]!
                    }
                    guard n >= Self.maxFailures else { throw e }
                    logger.warning(
                        "agent report failed at the region \(n) times; dropped",
                        metadata: ["mac": "\(r.mac)", "call": "\(r.call)", "error": "\(e.message)"]
                    )
                } else if LinkAgentBackend.unreachable(e) {
                    throw e  // the region is away: the rest wait, in order
                } else {
                    // The region refused it (the step ended meanwhile): it will not take it later.
                    logger.warning(
                        "agent report refused by the region; dropped",
                        metadata: ["mac": "\(r.mac)", "call": "\(r.call)", "error": "\(e.message)"]
                    )
                }
            }
            failures.withLock { _ = $0.removeValue(forKey: r.seq) }
            queue.remove(r)
            done += 1
        }
        return done
    }
}

/// What a site with boot services exchanges with the region at each answered call: its
/// timeline, its leases and the agent reports it kept go up; the region's boot files come down.
public struct SiteDeliveries: Sendable {
    public let events: SiteEventCourier
    public let leases: SiteLeaseCourier
    public let reports: AgentReportCourier
    public let bootFiles: BootFileSync
    public let recorder: TimelineRecorder
    /// Told whether the region answers, so that script requests do not wait for one away.
    public let lookup: SiteBootLookup

    public init(
        events: SiteEventCourier,
        leases: SiteLeaseCourier,
        reports: AgentReportCourier,
        bootFiles: BootFileSync,
        recorder: TimelineRecorder,
        lookup: SiteBootLookup
    ) {
        self.lookup = lookup
        self.events = events
        self.leases = leases
        self.reports = reports
        self.bootFiles = bootFiles
        self.recorder = recorder
    }

    /// Events and agent reports waiting for the region.
    public func depth() async -> Int64 { await events.depth() + Int64(reports.queue.depth) }
}

/// Runs `work` beside `services` until `work` returns (the services are then shut down
/// gracefully, and this returns), fails (the services are cancelled, and its error thrown), or
/// SIGTERM or SIGINT comes (`work` is stopped, the services shut down gracefully; this returns).
public func runServices(
    _ services: [any Service],
    alongside work: @escaping @Sendable () async throws -> Void,
    logger: Logger
) async throws {
    let group = ServiceGroup(
        configuration: .init(
            services: services.map { .init(service: $0) } + [
                .init(service: Work(body: work), successTerminationBehavior: .gracefullyShutdownGroup)
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        )
    )
    try await group.run()
}

/// A closure as a service that ends with it, and at a graceful shutdown (which cancels it: its
/// cancellation then is the end asked for, not a failure).
private struct Work: Service {
    let body: @Sendable () async throws -> Void
    func run() async throws {
        do { try await cancelWhenGracefulShutdown { try await body() } } catch {
            if Task.isShuttingDownGracefully { return }
            throw error
        }
    }
}
