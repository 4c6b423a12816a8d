import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// The region as a cache origin: `GET BASE/images/<sha256>` (the region's agent channel serves
/// images there), with the site's credential. Counts what it received, for the site's status
/// and the bench's ratio of bytes out of the region to bytes served.
public final class HTTPOrigin: CacheOrigin {
    let baseURL: String
    let authorization: String?
    let tls: TLSConfiguration?
    let received = Atomic<Int64>(0)
    let requests = Atomic<Int>(0)

    /// Made once: a pool per origin, idle connections closed after 30 s. Never shut down (a
    /// site has one origin for its life).
    static let client: HTTPClient = {
        var config = HTTPClient.Configuration(redirectConfiguration: .disallow)
        config.connectionPool = .init(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 8)
        config.timeout = .init(connect: .seconds(10), read: .seconds(60))
        // No span per request (a root one outside any trace); Farrier traces its own steps.
        config.tracing.tracer = nil
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }()

    /// `baseURL`: `https://HOST:PORT` (or http://); `authorization`: the whole header value;
    /// `tls`: how to check the region's certificate over https (nil: the system's roots).
    public init(baseURL: String, authorization: String?, tls: TLSConfiguration? = nil) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.authorization = authorization
        self.tls = tls
    }

    /// Body bytes received from the region, over all pulls (whole or not).
    public var bytesReceived: Int64 { received.load(ordering: .relaxed) }
    public var requestCount: Int { requests.load(ordering: .relaxed) }

    public func fetch(_ digest: String, into sink: PullSink) async throws {
        var request = HTTPClientRequest(url: baseURL + "/images/" + digest)
        request.tlsConfiguration = tls
        if let authorization { request.headers.add(name: "Authorization", value: authorization) }
        requests.add(1, ordering: .relaxed)
        let response = try await Self.client.execute(request, timeout: .hours(6))
        if response.status == .notFound { throw SiteCache.Failure.notFound(digest) }
        guard response.status == .ok else {
            let text = String(buffer: (try? await response.body.collect(upTo: 4096)) ?? ByteBuffer())
            throw SiteCache.Failure.origin(
                "GET /images/\(digest.prefix(12))…: \(response.status.code) \(text.trimmingCharacters(in: .whitespacesAndNewlines))"
            )
        }
        guard let length = response.headers.first(name: "Content-Length").flatMap({ Int64($0) }) else {
            throw SiteCache.Failure.origin("GET /images/\(digest.prefix(12))…: no Content-Length")
        }
        try await sink.begin(size: length)
        for try await chunk in response.body {
            received.add(Int64(chunk.readableBytes), ordering: .relaxed)
            try chunk.withUnsafeReadableBytes { try sink.write($0) }
        }
    }
}
