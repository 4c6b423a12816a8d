import FarrierCore
import GRPCCore
import GRPCNIOTransportHTTP2

// The client side of the API, for the CLI and the tests: where a server is, and a connection
// to it that sends the caller's token with every call.

/// Where and how the CLI reaches a server.
public struct ClientConnection: Sendable {
    public var server: String
    public var token: String?
    /// Use TLS; verify the server against this CA bundle (PEM), or the system roots when nil.
    public var tls: Bool
    public var caFile: String?

    /// The certificate is verified against the host name in `server`.
    public init(server: String, token: String?, tls: Bool = false, caFile: String? = nil) {
        self.server = server
        self.token = token
        self.tls = tls
        self.caFile = caFile
    }
}

/// Adds the bearer token to every call.
struct BearerToken: ClientInterceptor {
    let token: String
    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingClientRequest<Input>,
        context: ClientContext,
        next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
    ) async throws -> StreamingClientResponse<Output> {
        var request = request
        request.metadata.addString("Bearer \(token)", forKey: "authorization")
        return try await next(request, context)
    }
}

/// Connects to a Farrier server and runs `body` with a client.
public func withFarrierClient<R: Sendable>(
    _ c: ClientConnection,
    _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> R
) async throws -> R {
    let (host, port) = try splitHostPort(c.server)
    let security: HTTP2ClientTransport.Posix.TransportSecurity =
        if c.tls {
            .tls { config in
                if let ca = c.caFile { config.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
            }
        } else { .plaintext }
    // An IP literal connects as one (TLS then checks the certificate's IP SANs against the
    // peer address; SNI cannot carry an IP); a name resolves through DNS and is verified as one.
    let target: any ResolvableTarget =
        if IPv4Address(host) != nil { .ipv4(address: host, port: port) } else { .dns(host: host, port: port) }
    let transport = try HTTP2ClientTransport.Posix(target: target, transportSecurity: security)
    let interceptors: [any ClientInterceptor] = c.token.map { [BearerToken(token: $0)] } ?? []
    return try await withGRPCClient(transport: transport, interceptors: interceptors) { client in try await body(client)
    }
}
