import FarrierAgent
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A request as the simulator's HTTP server saw it.
struct SimRequest: Sendable {
    var method: HTTPMethod
    var path: String
    var headers: HTTPHeaders
    var body: ByteBuffer
}

/// An answer of the simulator's HTTP server.
struct SimResponse: Sendable {
    var status: HTTPResponseStatus
    var headers: [(String, String)] = []
    var body: String = ""
    /// Delay the answer by this long (a slow BMC), or never answer and close (a BMC that times out).
    var dropConnection = false

    static func json(
        _ object: [String: Any],
        status: HTTPResponseStatus = .ok,
        headers: [(String, String)] = []
    ) -> SimResponse {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return SimResponse(
            status: status,
            headers: [("Content-Type", "application/json")] + headers,
            body: String(decoding: data, as: UTF8.self)
        )
    }
}

/// A small HTTP/1.1 server on SwiftNIO (keep-alive, one request at a time per connection): the
/// simulated Redfish service. Not a general server: it reads whole bodies (BMC requests are small).
final class SimHTTPServer: Sendable {
    let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    let port: Int

    init(host: String, port: Int) async throws {
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: port) { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.configureHTTPServerPipeline()
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                        wrappingChannelSynchronously: child
                    )
                }
            }
        self.port = channel.channel.localAddress?.port ?? port
    }

    /// Serves until the task is cancelled.
    func run(_ handler: @escaping @Sendable (SimRequest) async -> SimResponse) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            try await channel.executeThenClose { connections in
                for try await connection in connections {
                    group.addTask { await Self.serve(connection, handler) }
                }
            }
        }
    }

    static func serve(
        _ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>,
        _ handler: @escaping @Sendable (SimRequest) async -> SimResponse
    ) async {
        try? await connection.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            var body = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let h):
                    head = h
                    body.clear()
                case .body(var b):
                    guard body.readableBytes + b.readableBytes <= 1 << 20 else { return }
                    body.writeBuffer(&b)
                case .end:
                    guard let h = head else { return }
                    let path = String(h.uri.prefix { $0 != "?" })
                    let response = await handler(
                        SimRequest(method: h.method, path: path, headers: h.headers, body: body)
                    )
                    if response.dropConnection { return }
                    var headers = HTTPHeaders(response.headers)
                    headers.replaceOrAdd(name: "Content-Length", value: "\(response.body.utf8.count)")
                    try await outbound.write(
                        .head(HTTPResponseHead(version: h.version, status: response.status, headers: headers))
                    )
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(string: response.body))))
                    try await outbound.write(.end(nil))
                    head = nil
                }
            }
        }
    }

    func close() async { try? await channel.channel.close() }
}

/// A failed request of the simulated machines' HTTP client.
struct SimHTTPError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// An answer the simulated client read.
struct SimReply: Sendable {
    var status: Int
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
}

/// HTTP/1.1 client connections of one simulated machine: from the machine's own source
/// address (the server accepts agents only from the address reserved for their MAC), over TLS
/// pinned to one certificate's SHA-256 (as the real agent pins the kernel command line's), or
/// plain (iPXE fetching its script).
struct SimHTTPClient: Sendable {
    var host: String
    var port: Int
    var source: String
    /// sha256 hex of the server certificate's DER; nil: plain HTTP.
    var pin: String?
    var timeout: TimeAmount = .seconds(30)

    /// Built once: the context carries no per-connection state, and the pin is checked per connection.
    static let tlsContext: NIOSSLContext? = try? CertificatePin.clientContext()

    typealias Connection = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    func connect() async throws -> Connection {
        let pin = self.pin
        return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(10))
            .bind(to: try SocketAddress(ipAddress: source, port: 0))
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let pin {
                        guard let context = Self.tlsContext else {
                            throw SimHTTPError("cannot make a TLS client context")
                        }
                        let handler = try NIOSSLClientHandler(context: context, serverHostname: nil) {
                            certificates,
                            promise in
                            promise.succeed(
                                CertificatePin.check(certificates, pin: pin).ok ? .certificateVerified : .failed
                            )
                        }
                        try channel.pipeline.syncOperations.addHandler(handler)
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// Runs `body` with one keep-alive connection; `send` makes one request on it.
    func session<T: Sendable>(
        _ body: (_ send: (HTTPMethod, String, [(String, String)], [UInt8]?, Int) async throws -> SimReply) async throws
            -> T
    ) async throws -> T {
        let connection = try await connect()
        let host = self.host
        let port = self.port
        let timeout = self.timeout
        let channel = connection.channel
        return try await connection.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            return try await body { method, path, headers, payload, limit in
                var h = HTTPHeaders(headers)
                h.replaceOrAdd(name: "Host", value: "\(host):\(port)")
                h.replaceOrAdd(name: "Content-Length", value: "\(payload?.count ?? 0)")
                try await outbound.write(
                    .head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: h))
                )
                if let payload { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: payload)))) }
                // A request with no answer, or an answer that stalls, for `timeout` closes the
                // connection, which ends the read. A long download that keeps coming goes on.
                var timer = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
                var armed = NIODeadline.now()
                defer { timer.cancel() }
                try await outbound.write(.end(nil))
                return try await Self.read(&iterator, limit: limit) {
                    // Pushed back at most once a second: not for every chunk of a large body.
                    let now = NIODeadline.now()
                    guard now - armed >= .seconds(1) else { return }
                    timer.cancel()
                    timer = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
                    armed = now
                }
            }
        }
    }

    /// Reads one response; its body up to `limit` bytes is kept (the rest is counted and dropped).
    /// A `limit` below 0 stops reading at that many bytes (a partial download) and leaves the
    /// connection unusable.
    static func read(
        _ iterator: inout NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
        limit: Int,
        progress: () -> Void = {}
    ) async throws -> SimReply {
        var status = 0
        var body: [UInt8] = []
        var received = 0
        let stopAt = limit < 0 ? -limit : Int.max
        while let part = try await iterator.next() {
            progress()
            switch part {
            case .head(let h): status = Int(h.status.code)
            case .body(let b):
                received += b.readableBytes
                if limit > 0, body.count < limit { body += b.readableBytesView.prefix(limit - body.count) }
                if received >= stopAt { return SimReply(status: status, body: body) }
            case .end: return SimReply(status: status, body: body)
            }
        }
        throw SimHTTPError("the connection closed before a complete answer (or the answer stalled for the timeout)")
    }
}
