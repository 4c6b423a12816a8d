import CoreMetrics
import FarrierControl
import FarrierCore
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL

/// HTTP configuration.
public struct HTTPConfiguration: Sendable, Hashable {
    /// Where to listen, e.g. `0.0.0.0:8080`.
    public var listen = "0.0.0.0:8080"
    /// How often a waiting machine re-fetches its script.
    public var pollSeconds = 30
    /// Where the agent channel (HTTPS) listens, e.g. `0.0.0.0:8443`.
    public var agentListen = "0.0.0.0:8443"
    public init() {}
}

/// The agent channel's TLS identity: what its listener serves, and the fingerprint the boot
/// script hands the agent to pin.
public struct AgentTLS: Sendable {
    public var certificateChainPEM: String
    public var privateKeyPEM: String
    /// SHA-256 of the leaf certificate's DER, lowercase hex.
    public var fingerprint: String
    public var port: Int
    public init(certificateChainPEM: String, privateKeyPEM: String, fingerprint: String, port: Int) {
        self.certificateChainPEM = certificateChainPEM
        self.privateKeyPEM = privateKeyPEM
        self.fingerprint = fingerprint
        self.port = port
    }
}

/// What answers the agent channel's calls and image checks: the controller at the region; at a
/// site, the region over the site link. `peer` is the MAC holding the caller's address.
public protocol AgentBackend: Sendable {
    func agentHello(peer: MACAddress?, hello: AgentHello) async throws -> AgentTask
    func agentProgress(token: String, peer: MACAddress?, report: AgentProgress) async throws
    func agentDone(token: String, peer: MACAddress?, result: AgentResult) async throws
    /// The installed OS reports in, with its deployment's OS token.
    func osReady(token: String, peer: MACAddress?, report: OSReady) async throws
    /// False: refused (403). A thrown error answers with its own status (a site whose region
    /// is away: 503).
    func imageAccess(sha256: String, bearer: String?, peer: MACAddress?) async throws -> Bool
}

extension Controller: AgentBackend {}

/// Per-request context that remembers the peer address, to put static-file fetches on the
/// timeline of the machine that holds that address.
public struct FarrierRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?
    /// The connection's event loop (its writes run there; `PacedBodyWriter`).
    let eventLoop: any EventLoop

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
        eventLoop = source.channel.eventLoop
    }
}

/// Everything the HTTP routes need.
public struct HTTPDependencies: Sendable {
    public var store: any MachineStore
    public var recorder: TimelineRecorder
    public var addressBook: AddressBook
    public var bootRoot: BootRoot
    /// Agent endpoints and next-boot decisions; nil serves only the wait script (tests).
    public var controller: Controller?
    /// Content-addressed image bytes, served under /images/<sha256>.
    public var imageDirectory: String?
    /// The agent channel; nil: no ramdisk boots (tests of the plain listener alone).
    public var agentTLS: AgentTLS?
    /// At a site: what the region last said each of the site's machines boots next (nil: the
    /// MAC is not one of them). Set, it decides `/boot` scripts instead of the store and
    /// controller, so they keep coming while the region is away.
    public var siteBoot: (@Sendable (MACAddress) async -> SiteBootEntry?)?
    /// At a site: the agent channel's calls and image checks, relayed to the region (else the
    /// controller answers them).
    public var agentBackend: (any AgentBackend)?
    /// At a site: images from its cache (else `imageDirectory`).
    public var imageSource: (any ImageSource)?

    var backend: (any AgentBackend)? { agentBackend ?? controller }

    public init(
        store: any MachineStore,
        recorder: TimelineRecorder,
        addressBook: AddressBook,
        bootRoot: BootRoot,
        controller: Controller? = nil,
        imageDirectory: String? = nil
    ) {
        self.controller = controller
        self.imageDirectory = imageDirectory
        self.store = store
        self.recorder = recorder
        self.addressBook = addressBook
        self.bootRoot = bootRoot
    }
}

extension HTTPDependencies {
    /// The MAC that holds this source address (a lease Farrier's DHCP made, or a reservation).
    func peerMAC(_ address: SocketAddress?) -> MACAddress? {
        address?.ipAddress.flatMap { IPv4Address($0) }.flatMap { addressBook.mac(for: $0) }
    }

    /// Whether a request for `/images/<name>` may have it (see `Controller.imageAccess`).
    func imageAllowed(name: String, authorization: String?, remote: SocketAddress?) async throws -> Bool {
        guard let backend, let h = authorization, h.lowercased().hasPrefix("bearer ") else { return false }
        let bearer = String(h.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        return try await backend.imageAccess(sha256: name, bearer: bearer, peer: peerMAC(remote))
    }
}

/// Builds a router. The plain-HTTP one (`agentChannel` false) serves iPXE scripts under
/// `/boot`, boot-root files under `/tftp` and `/healthz`: nothing secret (the metrics have a
/// listener of their own, `makeMetricsApplication`). The HTTPS
/// one (`agentChannel` true) serves the agent's calls and images, to those who may have them.
public func buildRouter(
    configuration: HTTPConfiguration,
    dependencies deps: HTTPDependencies,
    logger: Logger,
    agentChannel: Bool = false
) -> Router<FarrierRequestContext> {
    let router = Router(context: FarrierRequestContext.self)
    if agentChannel {
        // Images are tenants' bytes: only over TLS, and only to an agent deploying one or an admin.
        if let source = deps.imageSource ?? deps.imageDirectory.map({ DirectoryImageSource(directory: $0) }) {
            router.add(middleware: ImageAccessMiddleware(deps: deps))
            addImageRoute(router, source: source)
        }
        if let backend = deps.backend { addAgentRoutes(router, controller: backend, deps: deps) }
        router.get("/healthz") { _, _ in "ok\n" }
        return router
    }
    router.add(middleware: TimelineMiddleware(deps: deps))
    router.add(
        middleware: FileMiddleware(
            fileProvider: BootRootFileProvider(root: deps.bootRoot, logger: logger),
            urlBasePath: "/tftp"
        )
    )

    router.get("/healthz") { _, _ in "ok\n" }

    // The per-machine iPXE script, keyed by MAC: /boot/52-54-00-12-34-56.ipxe
    router.get("/boot/:script") { request, context -> Response in
        let name = try context.parameters.require("script")
        guard name.hasSuffix(".ipxe"), let mac = MACAddress(name.dropLast(5)) else {
            throw HTTPError(.notFound, message: "expected /boot/<mac>.ipxe, e.g. /boot/52-54-00-12-34-56.ipxe\n")
        }
        let host = request.head.authority ?? "localhost"
        let base = "http://\(host)/boot/\(mac.formatted(separator: "-")).ipxe"
        let q = request.uri.queryParameters
        guard let platform = q["platform"].map(String.init) else {
            // First fetch: ask iPXE itself for its firmware platform and build architecture.
            return ipxe("#!ipxe\nchain --replace --autofree \(base)?platform=${platform}&buildarch=${buildarch}\n")
        }
        var client = ClientPlatform(ipxePlatform: platform, buildArch: q["buildarch"].map(String.init))
        if client.firmware == .unknown, let arch = q["arch"].flatMap({ UInt16(String($0)) }) {
            client = ClientPlatform(optionArchitecture: arch)
        }
        // A script is for the address leased to its MAC: anyone else gets the same wait loop as
        // an unknown MAC, which names no machine and no state, and nothing is written.
        // HTTP creates no machine either (only DHCP traffic does, under its cap).
        let unknown = ipxe(
            BootScript.wait(
                scriptURL: "\(base)?platform=\(platform)&buildarch=\(q["buildarch"].map(String.init) ?? "")",
                mac: mac,
                reason: "not known to Farrier",
                pollSeconds: configuration.pollSeconds
            )
        )
        let selfURL = "\(base)?platform=\(platform)&buildarch=\(q["buildarch"].map(String.init) ?? "")"
        if let siteBoot = deps.siteBoot {
            guard deps.peerMAC(context.remoteAddress) == mac, let entry = await siteBoot(mac) else { return unknown }
            deps.recorder.record(
                TimelineEvent(
                    mac: mac,
                    time: Date(),
                    stage: .http,
                    event: "script",
                    detail: "state=\(entry.state) platform=\(platform) at=site"
                )
            )
            let ramdisk = deps.agentTLS.map {
                RamdiskEndpoint(
                    serverURL: "http://\(host)",
                    agentURL: "https://\(hostOnly(host)):\($0.port)",
                    certificateSHA256: $0.fingerprint
                )
            }
            var known = entry
            // The region has not seen the machine boot: the firmware it asks from now says.
            if known.firmware == .unknown { known.firmware = client.firmware }
            return ipxe(
                known.script(selfURL: selfURL, mac: mac, pollSeconds: configuration.pollSeconds, ramdisk: ramdisk)
            )
        }
        guard deps.peerMAC(context.remoteAddress) == mac,
            let machine = try await deps.store.recordSighting(mac: mac, platform: client, at: Date(), create: nil)
        else { return unknown }
        deps.recorder.markKnown(mac)
        deps.recorder.record(
            TimelineEvent(
                mac: mac,
                time: Date(),
                stage: .http,
                event: "script",
                detail: "state=\(machine.state.rawValue) platform=\(platform)"
            )
        )
        if deps.controller != nil {
            switch Lifecycle.nextBoot(machine.state, phase: machine.phase) {
            case .ramdisk, .rescue:
                guard let tls = deps.agentTLS else { break }
                let mode = Lifecycle.nextBoot(machine.state, phase: machine.phase) == .rescue ? "rescue" : "agent"
                // The tests' tools only for a commissioning that runs them, when the boot root
                // has them (without, those tests end as errors and the step fails saying so).
                let toolsWanted = machine.state == .commissioning && machine.burnIn?.needsTools == true
                let overlays =
                    toolsWanted
                        && FileManager.default.fileExists(atPath: deps.bootRoot.path + "/ramdisk/" + BurnIn.overlay)
                    ? [BurnIn.overlay] : []
                return ipxe(
                    BootScript.ramdisk(
                        serverURL: "http://\(host)",
                        scriptURL: selfURL,
                        machine: machine.name,
                        agentURL: "https://\(hostOnly(host)):\(tls.port)",
                        certificateSHA256: tls.fingerprint,
                        mode: mode,
                        overlays: overlays
                    )
                )
            case .disk:
                return ipxe(BootScript.localDisk(machine: machine.name, firmware: machine.firmware))
            case .wait:
                break
            }
        }
        switch machine.state {
        case .discovered:
            return ipxe(
                BootScript.wait(
                    scriptURL: selfURL,
                    mac: mac,
                    reason: "discovered (not enrolled)",
                    pollSeconds: configuration.pollSeconds
                )
            )
        case .enrolled:
            return ipxe(
                BootScript.wait(
                    scriptURL: selfURL,
                    mac: mac,
                    reason: "enrolled as \(machine.name) (nothing to do yet)",
                    pollSeconds: configuration.pollSeconds
                )
            )
        default:
            // ready, failed: nothing to boot until a user asks for something.
            return ipxe(
                BootScript.wait(
                    scriptURL: selfURL,
                    mac: mac,
                    reason: "\(machine.name) is \(machine.state.rawValue)",
                    pollSeconds: configuration.pollSeconds
                )
            )
        }
    }
    return router
}

/// The agent's endpoints (see `AgentAPI`): JSON in, JSON out; from the machine's leased
/// address only; hello binds the boot's token to the agent's nonce, the rest carry the token.
func addAgentRoutes(_ router: Router<FarrierRequestContext>, controller: any AgentBackend, deps: HTTPDependencies) {
    @Sendable func token(_ request: Request) throws -> String {
        guard let h = request.headers[.authorization], h.lowercased().hasPrefix("bearer ") else {
            throw HTTPError(.unauthorized, message: "agent token required\n")
        }
        return String(h.dropFirst(7)).trimmingCharacters(in: .whitespaces)
    }
    @Sendable func body(_ request: Request) async throws -> Data {
        Data(try await request.body.collect(upTo: 1 << 20).readableBytesView)
    }
    @Sendable func run(_ work: () async throws -> any Encodable) async throws -> Response {
        // A ControlError or StoreError answers with its own status (ErrorMapping.swift).
        let data = try JSONEncoder().encode(try await work())
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: data))
        )
    }
    struct Empty: Encodable {}
    router.post(RouterPath(AgentAPI.hello)) { request, context -> Response in
        let hello = try decode(AgentHello.self, try await body(request))
        let peer = deps.peerMAC(context.remoteAddress)
        return try await run { try await controller.agentHello(peer: peer, hello: hello) }
    }
    /// A report with a bearer token and a JSON body, answered with an empty object.
    func report<B: Decodable & Sendable>(
        _ path: String,
        _ call: @escaping @Sendable (_ token: String, _ peer: MACAddress?, _ body: B) async throws -> Void
    ) {
        router.post(RouterPath(path)) { request, context -> Response in
            let t = try token(request)
            let value = try decode(B.self, try await body(request))
            let peer = deps.peerMAC(context.remoteAddress)
            return try await run {
                try await call(t, peer, value)
                return Empty()
            }
        }
    }
    report(AgentAPI.progress) { (t, peer, r: AgentProgress) in
        try await controller.agentProgress(token: t, peer: peer, report: r)
    }
    report(AgentAPI.done) { (t, peer, r: AgentResult) in try await controller.agentDone(token: t, peer: peer, result: r)
    }
    report(AgentAPI.osReady) { (t, peer, r: OSReady) in try await controller.osReady(token: t, peer: peer, report: r) }
}

/// Refuses `/images/...` to a request without the right token (see `Controller.imageAccess`):
/// 401 without one, 403 with one that does not open this image.
struct ImageAccessMiddleware: RouterMiddleware {
    let deps: HTTPDependencies

    func handle(
        _ request: Request,
        context: FarrierRequestContext,
        next: (Request, FarrierRequestContext) async throws -> Response
    ) async throws -> Response {
        // The path as FileMiddleware will see it (percent-decoded): `/%69mages/…` is an image too.
        let path = request.uri.path.removingPercentEncoding ?? request.uri.path
        guard path.hasPrefix("/images") else { return try await next(request, context) }
        let auth = request.headers[.authorization]
        guard auth != nil else {
            throw HTTPError(
                .unauthorized,
                message: "images need a token: the agent token of a machine deploying it, or an admin token\n"
            )
        }
        let name = String(path.dropFirst("/images/".count))
        guard try await deps.imageAllowed(name: name, authorization: auth, remote: context.remoteAddress) else {
            throw HTTPError(.forbidden, message: "this token does not open this image\n")
        }
        return try await next(request, context)
    }
}

/// `host:port` or `[v6]:port` → the host part.
func hostOnly(_ authority: String) -> String {
    if authority.hasPrefix("["), let end = authority.firstIndex(of: "]") { return String(authority[...end]) }
    if let colon = authority.lastIndex(of: ":"), authority.firstIndex(of: ":") == colon {
        return String(authority[..<colon])
    }
    return authority
}

func decode<T: Decodable>(_ type: T.Type, _ data: Data) throws -> T {
    do { return try JSONDecoder().decode(T.self, from: data) } catch {
        throw HTTPError(.badRequest, message: "bad JSON: \(error)\n")
    }
}

func ipxe(_ text: String) -> Response {
    Response(
        status: .ok,
        headers: [.contentType: "text/plain; charset=utf-8"],
        body: .init(byteBuffer: ByteBuffer(string: text))
    )
}

/// Records boot-root fetches on the timeline of the machine holding the client's address.
struct TimelineMiddleware: RouterMiddleware {
    let deps: HTTPDependencies

    func handle(
        _ request: Request,
        context: FarrierRequestContext,
        next: (Request, FarrierRequestContext) async throws -> Response
    ) async throws -> Response {
        let response = try await next(request, context)
        // Boot files (iPXE, the ramdisk's kernel and initrd) answered: their bodies' sizes.
        if request.uri.path.hasPrefix("/tftp/"), request.method == .get,
            response.status == .ok || response.status == .partialContent
        {
            BootFileMetrics.transfers.increment()
            if let length = response.headers[.contentLength].flatMap({ Int($0) }) {
                BootFileMetrics.bytes.increment(by: length)
            }
        }
        if request.uri.path.hasPrefix("/tftp/"), let mac = deps.peerMAC(context.remoteAddress) {
            deps.recorder.record(
                TimelineEvent(
                    mac: mac,
                    time: Date(),
                    stage: .http,
                    event: "GET",
                    detail: "path=\(request.uri.path) status=\(response.status.code)"
                )
            )
        }
        return response
    }
}

/// Boot files answered over HTTP (`/tftp/…`): how many, and their bodies' bytes.
enum BootFileMetrics {
    static let transfers = CoreMetrics.Counter(label: "farrier_http_boot_transfers_total")
    static let bytes = CoreMetrics.Counter(label: "farrier_http_boot_bytes_total")
}

/// The HTTP server as a lifecycle service.
public func makeHTTPApplication(
    configuration: HTTPConfiguration,
    dependencies: HTTPDependencies,
    logger: Logger
) throws -> some ApplicationProtocol {
    let (host, port) = try splitHostPort(configuration.listen)
    return Application(
        router: buildRouter(configuration: configuration, dependencies: dependencies, logger: logger),
        server: .http1(),
        configuration: .init(address: .hostname(host, port: port), serverName: "farrier"),
        logger: logger
    )
}

/// The agent channel: HTTPS with the agent TLS identity, the agent's calls and images.
public func makeAgentApplication(
    configuration: HTTPConfiguration,
    dependencies: HTTPDependencies,
    tls: AgentTLS,
    logger: Logger
) throws -> some ApplicationProtocol {
    let (host, port) = try splitHostPort(configuration.agentListen)
    let key = try NIOSSLPrivateKey(bytes: Array(tls.privateKeyPEM.utf8), format: .pem)
    let chain = try NIOSSLCertificate.fromPEMBytes(Array(tls.certificateChainPEM.utf8)).map {
        NIOSSLCertificateSource.certificate($0)
    }
    var tlsConfiguration = TLSConfiguration.makeServerConfiguration(
        certificateChain: chain,
        privateKey: .privateKey(key)
    )
    tlsConfiguration.minimumTLSVersion = .tlsv12
    return Application(
        router: buildRouter(
            configuration: configuration,
            dependencies: dependencies,
            logger: logger,
            agentChannel: true
        ),
        server: try .tls(.http1(), tlsConfiguration: tlsConfiguration),
        configuration: .init(address: .hostname(host, port: port), serverName: "farrier"),
        logger: logger
    )
}
