import FarrierCore
import GRPCCore
import GRPCInProcessTransport
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle

/// Runs a gRPC server inside a ServiceGroup: graceful shutdown stops accepting RPCs and lets
/// those in flight finish.
public struct GRPCService: Service {
    let server: GRPCServer<HTTP2ServerTransport.Posix>
    let logger: Logger
    let listen: String
    /// What the log calls this listener.
    let name: String

    public init(
        listen: String,
        services: [any RegistrableRPCService],
        interceptors: [any ServerInterceptor] = [],
        tls: (certificate: String, key: String)? = nil,
        logger: Logger
    ) throws {
        let security: HTTP2ServerTransport.Posix.TransportSecurity =
            if let tls {
                .tls(
                    certificateChain: [.file(path: tls.certificate, format: .pem)],
                    privateKey: .file(path: tls.key, format: .pem)
                )
            } else { .plaintext }
        try self.init(
            listen: listen,
            services: services,
            interceptors: interceptors,
            security: security,
            logger: logger
        )
    }

    public init(
        listen: String,
        services: [any RegistrableRPCService],
        interceptors: [any ServerInterceptor] = [],
        security: HTTP2ServerTransport.Posix.TransportSecurity,
        keepalive: HTTP2ServerTransport.Config.Keepalive? = nil,
        name: String = "gRPC",
        logger: Logger
    ) throws {
        let (host, port) = try splitHostPort(listen)
        var config = HTTP2ServerTransport.Posix.Config.defaults
        if let keepalive {
            config.connection.keepalive = keepalive
            // A connection whose pings go unanswered is shut down gracefully: a GOAWAY, then
            // (once the peer acknowledges it) this long at most for its streams to end. A peer
            // that never acknowledges keeps it until TCP gives up: a long-lived stream on it
            // needs a liveness check of its own (the site link's BMC channel has one).
            config.connection.maxGraceTime = keepalive.timeout
        }
        server = GRPCServer(
            transport: .http2NIOPosix(
                address: .ipv4(host: host, port: port),
                transportSecurity: security,
                config: config
            ),
            services: services,
            interceptors: interceptors
        )
        self.logger = logger
        self.listen = listen
        self.name = name
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await server.serve() }
                if let address = try await server.listeningAddress {
                    logger.info("\(name) listening", metadata: ["listen": "\(address)"])
                }
            }
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}

/// The API served in process, for the web console: the same services and interceptors as the
/// network listener (authentication, metrics), and a client of it. Runs inside a ServiceGroup;
/// graceful shutdown lets calls in flight finish.
public struct InProcessAPI: Service {
    let server: GRPCServer<InProcessTransport.Server>
    public let client: GRPCClient<InProcessTransport.Client>

    public init(services: [any RegistrableRPCService], interceptors: [any ServerInterceptor]) {
        let transport = InProcessTransport()
        server = GRPCServer(transport: transport.server, services: services, interceptors: interceptors)
        client = GRPCClient(transport: transport.client)
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await server.serve() }
                group.addTask { try await client.runConnections() }
            }
        } onGracefulShutdown: {
            client.beginGracefulShutdown()
            server.beginGracefulShutdown()
        }
    }
}
