import FarrierCore
import Foundation
import Hummingbird
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

    public init(
        store: any MachineStore, recorder: TimelineRecorder, addressBook: AddressBook, bootRoot: BootRoot,
        metrics: @escaping @Sendable () -> String
    ) {
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
        let machine = try deps.store.recordSighting(mac: mac, platform: client, at: Date())
        deps.recorder.markKnown(mac)
        deps.recorder.record(TimelineEvent(
            mac: mac, time: Date(), stage: .http, event: "script",
            detail: "state=\(machine.state.rawValue) platform=\(platform)"))
        let selfURL = "\(base)?platform=\(platform)&buildarch=\(q["buildarch"].map(String.init) ?? "")"
        switch machine.state {
        case .discovered:
            return ipxe(BootScript.wait(
                scriptURL: selfURL, mac: mac, reason: "discovered (not enrolled)", pollSeconds: configuration.pollSeconds))
        case .enrolled:
            return ipxe(BootScript.wait(
                scriptURL: selfURL, mac: mac, reason: "enrolled as \(machine.name) (nothing to do yet)",
                pollSeconds: configuration.pollSeconds))
        default:
            // The later states' boots (ramdisk, rescue, disk) come with the deploy agent; until
            // then every one of them waits safely.
            return ipxe(BootScript.wait(
                scriptURL: selfURL, mac: mac, reason: "\(machine.name) is \(machine.state.rawValue)",
                pollSeconds: configuration.pollSeconds))
        }
    }
    return router
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
        configuration: .init(address: .hostname(host, port: port), serverName: "farrier"),
        logger: logger)
}
