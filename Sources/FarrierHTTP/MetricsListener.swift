import FarrierCore
import Foundation
import Hummingbird
import Logging
import NIOCore

/// The metrics listener: `GET /metrics` (Prometheus text format 0.0.4) and `GET /healthz`, on
/// an address of its own, loopback by default, never the boot network's HTTP port. With a
/// token, a scrape must present it (`Authorization: Bearer TOKEN`, as Prometheus's
/// `authorization.credentials_file` sends it); anything else gets 401 and no numbers.
public func makeMetricsApplication(
    listen: String,
    token: String?,
    scrape: @escaping @Sendable () async -> [UInt8],
    logger: Logger
) throws -> some ApplicationProtocol {
    let (host, port) = try splitHostPort(listen)
    let router = Router()
    router.get("/metrics") { request, _ -> Response in
        if let token {
            // The scheme in any case (RFC 9110 11.1), then the token itself.
            let header = request.headers[.authorization] ?? ""
            let parts = header.split(separator: " ", maxSplits: 1)
            let given = parts.count == 2 && parts[0].lowercased() == "bearer" ? String(parts[1]) : ""
            guard ConstantTime.equal(given, token) else {
                return Response(
                    status: .unauthorized,
                    headers: [.wwwAuthenticate: "Bearer", .contentType: "text/plain; charset=utf-8"],
                    body: .init(
                        byteBuffer: ByteBuffer(string: "the metrics need the bearer token (metrics.token-file)\n")
                    )
                )
            }
        }
        return Response(
            status: .ok,
            headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: await scrape()))
        )
    }
    router.get("/healthz") { _, _ in "ok\n" }
    return Application(
        router: router,
        server: .http1(),
        configuration: .init(address: .hostname(host, port: port), serverName: "farrier"),
        logger: logger
    )
}
