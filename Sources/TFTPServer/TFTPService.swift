import FarrierCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TFTPWire
import WireSupport

/// TFTP configuration (RFC 1350, 2347–2349, 7440).
public struct TFTPConfiguration: Sendable, Hashable {
    /// Where to listen, e.g. `0.0.0.0:69`. Empty: TFTP is off.
    public var listen = "0.0.0.0:69"
    public var root = "/var/lib/farrier/boot"
    public var limits = TFTPNegotiation.Limits()
    /// Retransmit timeout when the client did not negotiate one.
    public var retransmitTimeout: Duration = .seconds(1)
    public var maxRetries = 5
    /// Transfers at once (each has a thread); a request beyond it gets ERROR 0 "server busy",
    /// and the client retries. A rack booting at once is well under it; a flood of requests is not.
    public var maxTransfers = 1024
    /// Transfers at once from one client address: a booting machine needs one at a time, so
    /// one host cannot take the slots of a rack. Beyond it: ERROR 0 "too many transfers".
    public var maxTransfersPerClient = 4
    /// How long a transfer polls for the client's ACK before it sleeps in recv(2); zero (the
    /// default) never polls. See `BusyPoll` for what polling buys and costs.
    public var busyPoll: Duration = .zero
    public init() {}
}

public final class TFTPMetrics: Sendable {
    public let requests = Atomic<Int>(0)
    public let malformed = Atomic<Int>(0)
    public let completed = Atomic<Int>(0)
    public let failed = Atomic<Int>(0)
    public let refused = Atomic<Int>(0)
    public let retransmissions = Atomic<Int>(0)
    public let active = Atomic<Int>(0)
    /// Requests refused because their client address already had its share of transfers.
    public let refusedPerClient = Atomic<Int>(0)
    public let bytesSent = Atomic<Int>(0)
    /// Waits for a packet that polling caught, and waits that fell through to a sleep.
    public let pollHits = Atomic<Int>(0)
    public let pollMisses = Atomic<Int>(0)
    public init() {}
}

struct TFTPContext: Sendable {
    let configuration: TFTPConfiguration
    let root: BootRoot
    let recorder: TimelineRecorder?
    let addressBook: AddressBook?
    let metrics: TFTPMetrics
    let logger: Logger
    /// CPUs this process may run on (for `BusyPoll`).
    let cpus = ProcessInfo.processInfo.activeProcessorCount
    /// Active transfers per client address.
    let perClient = PerClientCount()
    /// Told each time the last active transfer ends, so shutdown waits for that instead of
    /// polling the count. Only the newest signal is kept: the waiter re-reads the count anyway.
    let idle = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))

    func timeline(_ ip: IPv4Address, _ event: String, _ detail: String) {
        guard let recorder, let mac = addressBook?.mac(for: ip) else { return }
        recorder.record(TimelineEvent(mac: mac, time: Date(), stage: .tftp, event: event, detail: detail))
    }
}

/// A read-only TFTP server as a lifecycle `Service`.
public final class TFTPService: Service, Sendable {
    let context: TFTPContext
    public var metrics: TFTPMetrics { context.metrics }
    let boundPort = Mutex<Int?>(nil)

    public init(
        configuration: TFTPConfiguration,
        recorder: TimelineRecorder?,
        addressBook: AddressBook?,
        logger: Logger
    ) {
        context = TFTPContext(
            configuration: configuration,
            root: BootRoot(path: configuration.root),
            recorder: recorder,
            addressBook: addressBook,
            metrics: TFTPMetrics(),
            logger: logger
        )
    }

    /// The port actually bound (useful with port 0).
    public var port: Int? { boundPort.withLock { $0 } }

    public func run() async throws {
        guard !context.configuration.listen.isEmpty else {
            context.logger.notice("TFTP is off (tftp.listen is empty)")
            try await gracefulShutdown()
            return
        }
        let (host, port) = try splitHostPort(context.configuration.listen)
        let ctx = context
        let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.receivePacketInfo, value: true)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(TFTPListenerHandler(context: ctx))
                }
            }
            .bind(host: host, port: port).get()
        boundPort.withLock { $0 = channel.localAddress?.port }
        context.logger.info(
            "TFTP listening",
            metadata: [
                "tftp.listen": "\(host):\(channel.localAddress?.port ?? port)",
                "tftp.root": "\(context.configuration.root)",
            ]
        )
        try? await gracefulShutdown()
        try? await channel.close()
        // Let transfers in flight finish, within a bound: woken when the last one ends.
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                var signals = ctx.idle.stream.makeAsyncIterator()
                while ctx.metrics.active.load(ordering: .relaxed) > 0 {
                    guard await signals.next() != nil else { return }  // cancelled: the bound passed
                }
            }
            group.addTask { try? await Task.sleep(for: .seconds(10)) }
            await group.next()
            group.cancelAll()
        }
        context.logger.info("TFTP stopped")
    }
}

/// Receives requests on the well-known port and starts a transfer for each on a new port (its TID).
final class TFTPListenerHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>
    let context: TFTPContext

    init(context: TFTPContext) { self.context = context }

    func channelRead(context ctx: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let remote = envelope.remoteAddress
        let bytes = Array(envelope.data.readableBytesView)
        let log = context.logger
        let packet: TFTPPacket
        do {
            packet = try TFTPPacket(decoding: bytes)
        } catch {
            context.metrics.malformed.add(1, ordering: .relaxed)
            log.debug("dropped malformed TFTP packet", metadata: ["tftp.error": "\(error)", "tftp.src": "\(remote)"])
            return
        }
        // The local address the request arrived on: replies must come from it.
        var localHost = ctx.channel.localAddress?.ipAddress ?? "0.0.0.0"
        if let dest = envelope.metadata?.packetInfo?.destinationAddress.ipAddress { localHost = dest }
        let clientIP = remote.ipAddress.flatMap { IPv4Address($0) } ?? .any
        switch packet {
        case .readRequest(let request):
            context.metrics.requests.add(1, ordering: .relaxed)
            startTransfer(request, remote: remote, localHost: localHost, clientIP: clientIP)
        case .writeRequest(let request):
            context.metrics.refused.add(1, ordering: .relaxed)
            log.debug("refused write request", metadata: ["tftp.file": "\(request.filename)", "tftp.src": "\(remote)"])
            reply(.error(code: .accessViolation, message: "read-only server"), to: remote, ctx: ctx)
        default:
            // DATA/ACK/ERROR/OACK on the request port belong to no transfer (RFC 1350 §4).
            reply(.error(code: .unknownTransferID, message: "unknown transfer ID"), to: remote, ctx: ctx)
        }
    }

    func reply(_ packet: TFTPPacket, to remote: SocketAddress, ctx: ChannelHandlerContext) {
        let buffer = ctx.channel.allocator.buffer(bytes: packet.encoded())
        ctx.writeAndFlush(wrapOutboundOut(AddressedEnvelope(remoteAddress: remote, data: buffer)), promise: nil)
    }

    func open(_ request: TFTPRequest) -> (BootFile?, (TFTPErrorCode, String)?) {
        if request.mode != "octet" && request.mode != "netascii" {
            return (nil, (.illegalOperation, "unsupported mode \(request.mode)"))
        }
        do {
            return (try context.root.open(request.filename), nil)
        } catch let refusal as BootRoot.Refusal {
            return (nil, (refusal == .outsideRoot ? .accessViolation : .fileNotFound, refusal.description))
        } catch {
            return (nil, (.fileNotFound, "file not found"))
        }
    }

    func startTransfer(
        _ request: TFTPRequest,
        remote: SocketAddress,
        localHost: String,
        clientIP: IPv4Address
    ) {
        let ctx = context
        let log = context.logger
        ctx.timeline(
            clientIP,
            "RRQ",
            "file=\(request.filename) options=\(request.options.map { "\($0.name)=\($0.value)" }.joined(separator: ","))"
        )
        let socket: CInt
        do {
            socket = try TFTPTransfer.openSocket(localHost: localHost, remote: remote)
        } catch {
            log.warning("could not open a transfer socket", metadata: ["tftp.error": "\(error)"])
            return
        }
        // Checked before the file is opened, so a flood costs no file work. Only this handler
        // (one channel, one event loop) adds to `active`, so the check cannot be overshot.
        let active = ctx.metrics.active.load(ordering: .relaxed)
        guard active < ctx.configuration.maxTransfers else {
            ctx.metrics.refused.add(1, ordering: .relaxed)
            log.warning(
                "too many transfers; request refused",
                metadata: ["tftp.file": "\(request.filename)", "tftp.src": "\(remote)", "tftp.active": "\(active)"]
            )
            TFTPTransfer.refuse(socket: socket, code: .undefined, message: "server busy, try again")
            return
        }
        let (file, error) = open(request)
        guard let file else {
            let (code, message) = error ?? (.fileNotFound, "file not found")
            ctx.metrics.refused.add(1, ordering: .relaxed)
            log.debug(
                "refused read request",
                metadata: ["tftp.file": "\(request.filename)", "tftp.src": "\(remote)", "tftp.error": "\(message)"]
            )
            ctx.timeline(clientIP, "ERROR", "file=\(request.filename) \(message)")
            TFTPTransfer.refuse(socket: socket, code: code, message: message)
            return
        }
        guard ctx.perClient.enter(clientIP, limit: ctx.configuration.maxTransfersPerClient) else {
            ctx.metrics.refused.add(1, ordering: .relaxed)
            ctx.metrics.refusedPerClient.add(1, ordering: .relaxed)
            log.warning(
                "too many transfers from one client; request refused",
                metadata: [
                    "tftp.file": "\(request.filename)", "tftp.src": "\(remote)",
                    "tftp.limit": "\(ctx.configuration.maxTransfersPerClient)",
                ]
            )
            ctx.timeline(clientIP, "ERROR", "file=\(request.filename) too many transfers from this client")
            TFTPTransfer.refuse(
                socket: socket,
                code: .undefined,
                message: "too many transfers from this client, try again"
            )
            return
        }
        ctx.metrics.active.add(1, ordering: .relaxed)  // left by the transfer when it ends, with its client's count
        let negotiation = TFTPNegotiation(request: request, fileSize: file.size, limits: ctx.configuration.limits)
        let thread = Thread {
            var transfer = TFTPTransfer(
                context: ctx,
                socket: socket,
                file: file,
                request: request,
                negotiation: negotiation,
                clientIP: clientIP
            )
            transfer.run()
        }
        thread.name = "tftp-transfer"
        thread.stackSize = 256 << 10
        thread.start()
    }
}

/// Active transfers per client address, entered before a transfer starts and left when it
/// ends. A client at its limit is refused.
final class PerClientCount: Sendable {
    let counts = Mutex<[IPv4Address: Int]>([:])

    func enter(_ ip: IPv4Address, limit: Int) -> Bool {
        counts.withLock { c in
            let n = c[ip, default: 0]
            guard n < limit else { return false }
            c[ip] = n + 1
            return true
        }
    }

    func leave(_ ip: IPv4Address) {
        counts.withLock { c in
            let n = c[ip, default: 0] - 1
            c[ip] = n > 0 ? n : nil
        }
    }
}

func format(_ d: Duration) -> String {
    let ms = Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
    return String(format: "%.1fms", ms)
}
