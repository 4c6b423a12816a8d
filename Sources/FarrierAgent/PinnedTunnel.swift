import Crypto
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import WireSupport

/// The agent's HTTPS: a local TLS tunnel. It listens on 127.0.0.1 (an ephemeral port) inside
/// the ramdisk, and carries each connection to the server over TLS, accepting only the
/// certificate whose SHA-256 the kernel command line names (pinned: no CA, no hostname).
/// `BlockingHTTP` speaks plain HTTP/1.1 to the tunnel, so the agent's blocking, one-buffer
/// streaming stays as it is; only the wire to the server is encrypted and authenticated.
/// A certificate that does not match closes the connection before a byte of the request leaves.
public final class PinnedTunnel: Sendable {
    let group: MultiThreadedEventLoopGroup
    let listener: any Channel
    /// Where `BlockingHTTP` connects: `http://127.0.0.1:<port>`.
    public let localURL: String

    /// - Parameters:
    ///   - host, port: the server's agent channel.
    ///   - fingerprint: SHA-256 of the server certificate's DER, hex (an optional `sha256:` prefix).
    public init(
        host: String,
        port: Int,
        fingerprint: String,
        sourceAddress: String? = nil,
        log: @escaping @Sendable (String) -> Void = { _ in }
    ) throws {
        let pin = try CertificatePin.normalized(fingerprint)
        let context = try CertificatePin.clientContext()
        let source = try sourceAddress.map { try SocketAddress(ipAddress: $0, port: 0) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        do {
            listener = try ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.autoRead, value: false)
                .childChannelInitializer { inbound in
                    var client = ClientBootstrap(group: inbound.eventLoop).connectTimeout(.seconds(10))
                    if let source { client = client.bind(to: source) }
                    return
                        client
                        .channelInitializer { outbound in
                            outbound.eventLoop.makeCompletedFuture {
                                let handler = try NIOSSLClientHandler(context: context, serverHostname: nil) {
                                    certificates,
                                    promise in
                                    let (ok, seen) = CertificatePin.check(certificates, pin: pin)
                                    if !ok {
                                        log(
                                            "TLS: the server's certificate is sha256:\(seen), not the pinned sha256:\(pin); refused"
                                        )
                                    }
                                    promise.succeed(ok ? .certificateVerified : .failed)
                                }
                                try outbound.pipeline.syncOperations.addHandler(handler)
                            }
                        }
                        .connect(host: host, port: port)
                        .flatMap { outbound in
                            let (a, b) = GlueHandler.matchedPair()
                            return inbound.eventLoop.makeCompletedFuture {
                                try inbound.pipeline.syncOperations.addHandler(a)
                                try outbound.pipeline.syncOperations.addHandler(b)
                            }
                        }
                        .flatMapError { error in
                            log("TLS: cannot reach the server at \(host):\(port): \(error)")
                            return inbound.close().flatMapThrowing { throw error }
                        }
                }
                .bind(host: "127.0.0.1", port: 0).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        localURL = "http://127.0.0.1:\(listener.localAddress?.port ?? 0)"
    }

    public func close() {
        try? listener.close().wait()
        try? group.syncShutdownGracefully()
    }
}

/// The agent channel's certificate pin: what the agent's tunnel (and the simulator's agents)
/// accept from the server.
public enum CertificatePin {
    /// The 64 hex digits of `sha256:HEX` (or HEX; colons allowed), lower-cased.
    public static func normalized(_ fingerprint: String) throws -> String {
        let pin = fingerprint.lowercased().replacingOccurrences(of: "sha256:", with: "").replacingOccurrences(
            of: ":",
            with: ""
        )
        guard pin.count == 64, pin.allSatisfy(\.isHexDigit) else {
            throw AgentFailure("farrier.cert must be sha256:<64 hex digits>, got '\(fingerprint)'")
        }
        return pin
    }

    /// A TLS client context whose verification is the pin alone (`check` in the handler's
    /// callback replaces BoringSSL's chain checks), with no CA store either: the ramdisk has
    /// none (loading the default one fails there).
    public static func clientContext() throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .noHostnameVerification
        tls.trustRoots = .certificates([])
        tls.minimumTLSVersion = .tlsv12
        return try NIOSSLContext(configuration: tls)
    }

    /// Whether the server's leaf certificate has the pinned SHA-256; and the one it has.
    public static func check(_ certificates: [NIOSSLCertificate], pin: String) -> (ok: Bool, seen: String) {
        let der = certificates.first.flatMap { try? $0.toDERBytes() } ?? []
        let seen = SHA256.hash(data: der).hexString
        return (!der.isEmpty && seen == pin, seen)
    }
}

/// Joins two channels on one event loop: what one reads the other writes, with backpressure
/// (a side reads only while its partner can write), and a close on either closes both.
final class GlueHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false

    static func matchedPair() -> (GlueHandler, GlueHandler) {
        let a = GlueHandler()
        let b = GlueHandler()
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { context.read() }
    }

    /// The accepted side reads nothing by itself (no auto-read) until both ends are joined.
    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        context.read()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    private func partnerWrite(_ data: NIOAny) { context?.write(data, promise: nil) }
    private func partnerFlush() { context?.flush() }
    private func partnerClose() { context?.close(promise: nil) }
    private var partnerWritable: Bool { context?.channel.isWritable ?? false }
    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { partner?.partnerWrite(data) }
    func channelReadComplete(context: ChannelHandlerContext) { partner?.partnerFlush() }
    func channelInactive(context: ChannelHandlerContext) { partner?.partnerClose() }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        partner?.partnerClose()
        context.close(promise: nil)
    }
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
    }
    func read(context: ChannelHandlerContext) {
        if partner?.partnerWritable ?? false { context.read() } else { pendingRead = true }
    }
}
