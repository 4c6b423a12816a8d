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
    public let bytesSent = Atomic<Int>(0)
    public init() {}
}

struct TFTPContext: Sendable {
    let configuration: TFTPConfiguration
    let root: BootRoot
    let recorder: TimelineRecorder?
    let addressBook: AddressBook?
    let metrics: TFTPMetrics
    let logger: Logger

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
        configuration: TFTPConfiguration, recorder: TimelineRecorder?, addressBook: AddressBook?, logger: Logger
    ) {
        context = TFTPContext(
            configuration: configuration, root: BootRoot(path: configuration.root), recorder: recorder,
            addressBook: addressBook, metrics: TFTPMetrics(), logger: logger)
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
            "TFTP listening", metadata: ["tftp.listen": "\(host):\(channel.localAddress?.port ?? port)", "tftp.root": "\(context.configuration.root)"])
        try? await gracefulShutdown()
        try? await channel.close()
        // Let transfers in flight finish, within a bound.
        let deadline = ContinuousClock.now + .seconds(10)
        while context.metrics.active.load(ordering: .relaxed) > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
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
            startTransfer(request, remote: remote, localHost: localHost, clientIP: clientIP, loop: ctx.eventLoop)
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
        _ request: TFTPRequest, remote: SocketAddress, localHost: String, clientIP: IPv4Address, loop: any EventLoop
    ) {
        let ctx = context
        let log = context.logger
        let (file, error) = open(request)
        ctx.timeline(clientIP, "RRQ", "file=\(request.filename) options=\(request.options.map { "\($0.name)=\($0.value)" }.joined(separator: ","))")
        let negotiation = file.map { TFTPNegotiation(request: request, fileSize: $0.size, limits: context.configuration.limits) }
        // Each transfer gets its own socket (its TID) on the address the request came in on.
        DatagramBootstrap(group: loop)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    if let file, let negotiation {
                        try ch.pipeline.syncOperations.addHandler(TFTPTransferHandler(
                            context: ctx, file: file, request: request, negotiation: negotiation, remote: remote,
                            clientIP: clientIP))
                    }
                }
            }
            .bind(host: localHost, port: 0)
            .flatMap { channel in
                // Connected to the client: the kernel routes each DATA without a lookup and drops
                // datagrams from any other TID before they reach us.
                channel.connect(to: remote).map { channel }.flatMapError { e in channel.close().flatMapThrowing { throw e } }
            }
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    if file != nil {
                        channel.pipeline.fireUserInboundEventTriggered(TFTPTransferHandler.Start())
                    } else if let error {
                        ctx.metrics.refused.add(1, ordering: .relaxed)
                        log.debug("refused read request", metadata: ["tftp.file": "\(request.filename)", "tftp.src": "\(remote)", "tftp.error": "\(error.1)"])
                        ctx.timeline(clientIP, "ERROR", "file=\(request.filename) \(error.1)")
                        let packet = TFTPPacket.error(code: error.0, message: error.1).encoded()
                        channel.writeAndFlush(AddressedEnvelope(remoteAddress: remote, data: channel.allocator.buffer(bytes: packet)))
                            .whenComplete { _ in channel.close(promise: nil) }
                    }
                case .failure(let e):
                    log.warning("could not open a transfer socket", metadata: ["tftp.error": "\(e)"])
                }
            }
    }
}

/// One transfer: drives `TFTPTransferStateMachine` from packets and a timer.
final class TFTPTransferHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = ByteBuffer

    /// Sent down the pipeline once the socket is connected to the client: start sending.
    struct Start: Sendable {}

    let context: TFTPContext
    let file: BootFile
    let request: TFTPRequest
    let remote: SocketAddress
    let clientIP: IPv4Address
    var machine: TFTPTransferStateMachine
    var timer: Scheduled<Void>?
    let startTime = ContinuousClock.now

    init(
        context: TFTPContext, file: BootFile, request: TFTPRequest, negotiation: TFTPNegotiation,
        remote: SocketAddress, clientIP: IPv4Address
    ) {
        self.context = context
        self.file = file
        self.request = request
        self.remote = remote
        self.clientIP = clientIP
        let timeout: Duration? = negotiation.timeoutSeconds == nil ? context.configuration.retransmitTimeout : nil
        machine = TFTPTransferStateMachine(
            negotiation: negotiation, fileSize: file.size, retransmitTimeout: timeout,
            maxRetries: context.configuration.maxRetries)
    }

    var started = false

    func userInboundEventTriggered(context ctx: ChannelHandlerContext, event: Any) {
        guard event is Start, !started else {
            ctx.fireUserInboundEventTriggered(event)
            return
        }
        started = true
        self.context.metrics.active.add(1, ordering: .relaxed)
        perform(machine.start(now: .now), ctx: ctx)
    }

    func channelInactive(context ctx: ChannelHandlerContext) {
        timer?.cancel()
        if started { self.context.metrics.active.subtract(1, ordering: .relaxed) }
    }

    func channelRead(context ctx: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        // The socket is connected to the client's TID, so the kernel already dropped datagrams
        // from any other (RFC 1350 §4 asks for an ERROR 5; a connected socket cannot send one).
        guard envelope.remoteAddress == remote else { return }
        // Fast path: a plain ACK (opcode 4, block), the packet of nearly every exchange.
        if envelope.data.readableBytes == 4, let (opcode, block) = envelope.data.getMultipleIntegers(at: envelope.data.readerIndex, as: (UInt16, UInt16).self), opcode == 4 {
            perform(machine.receiveAck(block, now: .now), ctx: ctx)
            return
        }
        let packet: TFTPPacket
        do {
            packet = try TFTPPacket(decoding: Array(envelope.data.readableBytesView))
        } catch {
            self.context.metrics.malformed.add(1, ordering: .relaxed)
            return
        }
        switch packet {
        case .ack(let block):
            perform(machine.receiveAck(block, now: .now), ctx: ctx)
        case .error(let code, let message):
            // EDK2 probes the size with tsize, then aborts with ERROR 8 and asks again: normal.
            self.context.logger.debug("client ended transfer", metadata: ["tftp.file": "\(request.filename)", "tftp.code": "\(code.rawValue)", "tftp.message": "\(message)"])
            perform(machine.receiveError(), ctx: ctx)
        default:
            break
        }
    }

    func perform(_ action: TFTPTransferStateMachine.Action, ctx: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .sendOptionAck(let options):
            send(TFTPPacket.optionAck(options).encoded(), ctx: ctx)
            ctx.flush()
        case .sendData(let blocks):
            var sent = 0
            for block in blocks {
                // Header and file bytes go straight into the outbound buffer: no copies.
                let range = machine.byteRange(ofBlock: block)
                var buffer = ctx.channel.allocator.buffer(capacity: 4 + range.count)
                buffer.writeMultipleIntegers(UInt16(3), TFTPTransferStateMachine.wireBlock(block))
                let file = self.file
                buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: range.count) { file.read(range, into: $0) }
                sent += buffer.readableBytes - 4
                ctx.write(wrapOutboundOut(buffer), promise: nil)
            }
            self.context.metrics.bytesSent.add(sent, ordering: .relaxed)
            ctx.flush()
        case .finished:
            let elapsed = ContinuousClock.now - startTime
            self.context.metrics.completed.add(1, ordering: .relaxed)
            self.context.timeline(clientIP, "COMPLETE", "file=\(request.filename) bytes=\(file.size) duration=\(format(elapsed))")
            self.context.logger.debug("transfer complete", metadata: ["tftp.file": "\(request.filename)", "tftp.bytes": "\(file.size)"])
            ctx.close(promise: nil)
            return
        case .failed(let reason):
            self.context.metrics.failed.add(1, ordering: .relaxed)
            self.context.timeline(clientIP, "FAILED", "file=\(request.filename) \(reason)")
            self.context.logger.debug("transfer failed", metadata: ["tftp.file": "\(request.filename)", "tftp.reason": "\(reason)"])
            ctx.close(promise: nil)
            return
        }
        armTimer(ctx: ctx)
    }

    /// One timer per transfer: when it fires early (the deadline moved on), it re-arms itself
    /// instead of being cancelled and rescheduled on every ACK.
    func armTimer(ctx: ChannelHandlerContext) {
        guard timer == nil, let deadline = machine.deadline else { return }
        let delay = ContinuousClock.now.duration(to: deadline)
        let loopBound = NIOLoopBound(self, eventLoop: ctx.eventLoop)
        let ctxBound = NIOLoopBound(ctx, eventLoop: ctx.eventLoop)
        timer = ctx.eventLoop.scheduleTask(in: .nanoseconds(max(0, delay.nanoseconds))) {
            let handler = loopBound.value
            handler.timer = nil
            handler.fire(ctx: ctxBound.value)
        }
    }

    func fire(ctx: ChannelHandlerContext) {
        guard let deadline = machine.deadline else { return }
        if ContinuousClock.now < deadline {
            armTimer(ctx: ctx)
            return
        }
        let before = machine.retransmissions
        let action = machine.timeout(now: .now)
        self.context.metrics.retransmissions.add(machine.retransmissions - before, ordering: .relaxed)
        perform(action, ctx: ctx)
    }

    func send(_ bytes: [UInt8], ctx: ChannelHandlerContext) {
        ctx.write(wrapOutboundOut(ctx.channel.allocator.buffer(bytes: bytes)), promise: nil)
    }
}

func format(_ d: Duration) -> String {
    let ms = Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
    return String(format: "%.1fms", ms)
}

extension Duration {
    var nanoseconds: Int64 { components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000 }
}
