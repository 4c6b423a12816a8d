import FarrierControl
import FarrierCore
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import TFTPServer

/// HTTP configuration.
public struct HTTPConfiguration: Sendable, Hashable {
    /// Where to listen, e.g. `0.0.0.0:8080`.
    public var listen = "0.0.0.0:8080"
    /// How often a waiting machine re-fetches its script.
    public var pollSeconds = 30
    public init() {}
}

/// Per-request context that remembers the peer address, to put static-file fetches on the
/// timeline of the machine that holds that address.
public struct FarrierRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// Everything the HTTP routes need.
public struct HTTPDependencies: Sendable {
    public var store: any MachineStore
    public var recorder: TimelineRecorder
    public var addressBook: AddressBook
    public var bootRoot: BootRoot
    public var metrics: @Sendable () -> String
    /// Agent endpoints and next-boot decisions; nil serves only the wait script (tests).
    public var controller: Controller?
    /// Content-addressed image bytes, served under /images/<sha256>.
    public var imageDirectory: String?

    public init(
        store: any MachineStore, recorder: TimelineRecorder, addressBook: AddressBook, bootRoot: BootRoot,
        metrics: @escaping @Sendable () -> String, controller: Controller? = nil, imageDirectory: String? = nil
    ) {
        self.controller = controller
        self.imageDirectory = imageDirectory
        self.store = store
        self.recorder = recorder
        self.addressBook = addressBook
        self.bootRoot = bootRoot
        self.metrics = metrics
    }
}

/// Builds the router: iPXE scripts under `/boot`, boot-root files under `/tftp`, `/healthz`, `/metrics`.
public func buildRouter(
    configuration: HTTPConfiguration, dependencies deps: HTTPDependencies, logger: Logger
) -> Router<FarrierRequestContext> {
    let router = Router(context: FarrierRequestContext.self)
    router.add(middleware: TimelineMiddleware(deps: deps))
    router.add(
        middleware: FileMiddleware(
            fileProvider: BootRootFileProvider(root: deps.bootRoot, logger: logger), urlBasePath: "/tftp"))

    if let dir = deps.imageDirectory {
        router.add(
            middleware: FileMiddleware(
                fileProvider: BootRootFileProvider(root: BootRoot(path: dir), logger: logger), urlBasePath: "/images"))
    }
    if let controller = deps.controller { addAgentRoutes(router, controller: controller) }

    router.get("/healthz") { _, _ in "ok\n" }

    router.get("/metrics") { _, _ in
        Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
            body: .init(byteBuffer: ByteBuffer(string: deps.metrics())))
    }

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
        // HTTP creates no machine (only DHCP traffic does, under its cap): a MAC Farrier does
        // not know gets the wait loop, which names no machine and no state, and nothing is written.
        guard let machine = try deps.store.recordSighting(mac: mac, platform: client, at: Date(), create: nil) else {
            return ipxe(BootScript.wait(
                scriptURL: "\(base)?platform=\(platform)&buildarch=\(q["buildarch"].map(String.init) ?? "")", mac: mac,
                reason: "not known to Farrier", pollSeconds: configuration.pollSeconds))
        }
        deps.recorder.markKnown(mac)
        deps.recorder.record(TimelineEvent(
            mac: mac, time: Date(), stage: .http, event: "script",
            detail: "state=\(machine.state.rawValue) platform=\(platform)"))
        let selfURL = "\(base)?platform=\(platform)&buildarch=\(q["buildarch"].map(String.init) ?? "")"
        if let controller = deps.controller {
            switch Lifecycle.nextBoot(machine.state, phase: machine.phase) {
            case .ramdisk, .rescue:
                let mode = Lifecycle.nextBoot(machine.state, phase: machine.phase) == .rescue ? "rescue" : "agent"
                return ipxe(BootScript.ramdisk(
                    serverURL: "http://\(host)", scriptURL: selfURL, machine: machine.name,
                    token: controller.agentToken(for: machine), mode: mode))
            case .disk:
                return ipxe(BootScript.localDisk(machine: machine.name, firmware: machine.firmware))
            case .wait:
                break
            }
        }
        switch machine.state {
        case .discovered:
            return ipxe(BootScript.wait(
                scriptURL: selfURL, mac: mac, reason: "discovered (not enrolled)", pollSeconds: configuration.pollSeconds))
        case .enrolled:
            return ipxe(BootScript.wait(
                scriptURL: selfURL, mac: mac, reason: "enrolled as \(machine.name) (nothing to do yet)",
                pollSeconds: configuration.pollSeconds))
        default:
            // ready, failed: nothing to boot until a user asks for something.
            return ipxe(BootScript.wait(
                scriptURL: selfURL, mac: mac, reason: "\(machine.name) is \(machine.state.rawValue)",
                pollSeconds: configuration.pollSeconds))
        }
    }
    return router
}

/// The agent's endpoints (see `AgentAPI`): JSON in, JSON out, bearer token per machine and step.
func addAgentRoutes(_ router: Router<FarrierRequestContext>, controller: Controller) {
    @Sendable func token(_ request: Request) throws -> String {
        guard let h = request.headers[.authorization], h.lowercased().hasPrefix("bearer ") else {
            throw HTTPError(.unauthorized, message: "agent token required\n")
        }
        return String(h.dropFirst(7)).trimmingCharacters(in: .whitespaces)
    }
    @Sendable func body(_ request: Request) async throws -> Data {
        Data(try await request.body.collect(upTo: 1 << 20).readableBytesView)
    }
    @Sendable func run(_ work: () throws -> any Encodable) throws -> Response {
        do {
            let data = try JSONEncoder().encode(try work())
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
        } catch let e as ControlError {
            let status: HTTPResponse.Status =
                switch e.kind {
                case .permission: .forbidden
                case .notFound: .notFound
                case .invalid: .badRequest
                case .conflict: .conflict
                case .unavailable: .serviceUnavailable
                }
            throw HTTPError(status, message: e.description + "\n")
        }
    }
    struct Empty: Encodable {}
    router.post(RouterPath(AgentAPI.hello)) { request, _ -> Response in
        let t = try token(request), hello = try decode(AgentHello.self, try await body(request))
        return try run { try controller.agentHello(token: t, hello: hello) }
    }
    router.post(RouterPath(AgentAPI.progress)) { request, _ -> Response in
        let t = try token(request), report = try decode(AgentProgress.self, try await body(request))
        return try run { try controller.agentProgress(token: t, report: report); return Empty() }
    }
    // cloud-init NoCloud: /metadata/<token>/{meta-data,user-data,vendor-data}
    router.get("/metadata/:token/:file") { request, context -> Response in
        let t = try context.parameters.require("token"), file = try context.parameters.require("file")
        do {
            let text = try controller.metadataFile(token: t, name: file)
            return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: text)))
        } catch let e as ControlError {
            throw HTTPError(e.kind == .notFound ? .notFound : .badRequest, message: e.description + "\n")
        }
    }
    router.post(RouterPath(AgentAPI.done)) { request, _ -> Response in
        let t = try token(request), result = try decode(AgentResult.self, try await body(request))
        return try run { try controller.agentDone(token: t, result: result); return Empty() }
    }
}

func decode<T: Decodable>(_ type: T.Type, _ data: Data) throws -> T {
    do { return try JSONDecoder().decode(T.self, from: data) } catch {
        throw HTTPError(.badRequest, message: "bad JSON: \(error)\n")
    }
}

func ipxe(_ text: String) -> Response {
    Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: text)))
}

/// Records boot-root fetches on the timeline of the machine holding the client's address.
struct TimelineMiddleware: RouterMiddleware {
    let deps: HTTPDependencies

    func handle(
        _ request: Request, context: FarrierRequestContext,
        next: (Request, FarrierRequestContext) async throws -> Response
    ) async throws -> Response {
        let response = try await next(request, context)
        if request.uri.path.hasPrefix("/tftp/"), let ip = context.remoteAddress?.ipAddress.flatMap({ IPv4Address($0) }),
            let mac = deps.addressBook.mac(for: ip)
        {
            deps.recorder.record(TimelineEvent(
                mac: mac, time: Date(), stage: .http, event: "GET",
                detail: "path=\(request.uri.path) status=\(response.status.code)"))
        }
        return response
    }
}

/// The HTTP server as a lifecycle service.
public func makeHTTPApplication(
    configuration: HTTPConfiguration, dependencies: HTTPDependencies, logger: Logger
) throws -> some ApplicationProtocol {
    let (host, port) = try splitHostPort(configuration.listen)
    return Application(
        router: buildRouter(configuration: configuration, dependencies: dependencies, logger: logger),
        server: HTTPServerBuilder { responder in
            FarrierHTTP1Channel(
                inner: HTTP1Channel(responder: responder),
                images: dependencies.imageDirectory.map { BootRoot(path: $0) })
        },
        configuration: .init(address: .hostname(host, port: port), serverName: "farrier"),
        logger: logger)
}
