import DHCPWire
import FarrierCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Counters a scrape can read. Never labelled by MAC or address.
public final class DHCPMetrics: Sendable {
    public let received = Atomic<Int>(0)
    public let malformed = Atomic<Int>(0)
    public let dropped = Atomic<Int>(0)
    public let offers = Atomic<Int>(0)
    public let acks = Atomic<Int>(0)
    public let naks = Atomic<Int>(0)
    public let commitFailures = Atomic<Int>(0)
    public init() {}
}

/// Shared between the per-interface channels: the responder (and its lease table), durable
/// commits, and the timeline.
final class DHCPEngine: Sendable {
    let responder: Mutex<DHCPResponder>
    let committer: LeaseCommitter
    let recorder: TimelineRecorder
    let addressBook: AddressBook
    let metrics: DHCPMetrics
    let logger: Logger
    let proxyMode: Bool
    let proxyPort: Int

    init(
        responder: DHCPResponder, store: any LeaseStore, recorder: TimelineRecorder, addressBook: AddressBook,
        metrics: DHCPMetrics, logger: Logger
    ) {
        self.proxyMode = responder.configuration.mode == .proxy
        self.proxyPort = responder.configuration.proxyPort
        self.responder = Mutex(responder)
        self.committer = LeaseCommitter(store: store)
        self.recorder = recorder
        self.addressBook = addressBook
        self.metrics = metrics
        self.logger = logger
    }

    /// Decodes and answers one datagram. `send` is called (possibly on another thread) with the
    /// encoded reply once anything it depends on is durable.
    func handle(
        _ bytes: [UInt8], ingress: DHCPIngress,
        send: @escaping @Sendable (_ reply: [UInt8], _ address: IPv4Address, _ port: Int) -> Void
    ) {
        metrics.received.add(1, ordering: .relaxed)
        let request: DHCPMessage
        do {
            request = try DHCPMessage(decoding: bytes)
        } catch {
            metrics.malformed.add(1, ordering: .relaxed)
            logger.debug(
                "dropped malformed DHCP packet",
                metadata: ["dhcp.error": "\(error)", "dhcp.src": "\(ingress.sourceAddress):\(ingress.sourcePort)",
                           "dhcp.interface": "\(ingress.interface)", "dhcp.bytes": "\(bytes.count)"])
            return
        }
        let now = Date()
        let outcome = responder.withLock { $0.handle(request, ingress: ingress, now: now) }
        let mac = request.clientMAC
        let stage: TimelineEvent.Stage = proxyMode || ingress.port == proxyPort ? .proxyDHCP : .dhcp
        let type = request.messageType?.description ?? "?"

        if let mac, outcome.client.isNetworkBoot || recorder.isKnown(mac) {
            if let p = outcome.client.platform, case .discover? = request.messageType { recorder.sighted(mac, platform: p) }
            recorder.record(TimelineEvent(
                mac: mac, time: now, stage: stage, event: type,
                detail: "client=\(outcome.client.label) via=\(ingress.interface):\(ingress.port)"))
        }
        guard let reply = outcome.reply else {
            metrics.dropped.add(1, ordering: .relaxed)
            logger.debug(
                "no reply", metadata: ["dhcp.xid": "\(hex(request.xid))", "dhcp.mac": "\(mac.map { "\($0)" } ?? "-")",
                                       "dhcp.type": "\(type)", "dhcp.reason": "\(outcome.dropReason ?? "")"])
            if outcome.forget != nil {
                committer.submit(commit: nil, forget: outcome.forget) { _ in }
            }
            return
        }
        let replyType = reply.messageType ?? .nak
        let encoded = reply.encoded()
        let destination = outcome.destinationAddress, port = outcome.destinationPort
        let finish: @Sendable () -> Void = { [self] in
            switch replyType {
            case .offer: metrics.offers.add(1, ordering: .relaxed)
            case .ack: metrics.acks.add(1, ordering: .relaxed)
            default: metrics.naks.add(1, ordering: .relaxed)
            }
            if let mac {
                if reply.yiaddr != .any { addressBook.record(reply.yiaddr, mac) }
                if request.ciaddr != .any { addressBook.record(request.ciaddr, mac) }
                if outcome.client.isNetworkBoot || recorder.isKnown(mac) {
                    var detail = reply.yiaddr != .any ? "address=\(reply.yiaddr)" : "proxy"
                    if !reply.bootFileName.isEmpty { detail += " file=\(reply.bootFileName)" }
                    recorder.record(TimelineEvent(mac: mac, time: Date(), stage: stage, event: replyType.description, detail: detail))
                }
            }
            logger.debug(
                "reply", metadata: ["dhcp.xid": "\(hex(request.xid))", "dhcp.mac": "\(mac.map { "\($0)" } ?? "-")",
                                    "dhcp.type": "\(replyType)", "dhcp.yiaddr": "\(reply.yiaddr)",
                                    "dhcp.file": "\(reply.bootFileName)", "dhcp.client": "\(outcome.client.label)"])
            send(encoded, destination, port)
        }
        if outcome.commit != nil || outcome.forget != nil {
            committer.submit(commit: outcome.commit, forget: outcome.forget) { [self] result in
                switch result {
                case .success: finish()
                case .failure(let error):
                    // The client retries; an ACK for a lease that is not on disk is never sent.
                    metrics.commitFailures.add(1, ordering: .relaxed)
                    logger.error("lease commit failed; ACK withheld", metadata: ["dhcp.error": "\(error)"])
                }
            }
        } else {
            finish()
        }
    }
}

func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }

/// DHCP (full or proxy) on the configured interfaces, as a lifecycle `Service`.
public final class DHCPService: Service, Sendable {
    let configuration: DHCPConfiguration
    let engine: DHCPEngine?
    let logger: Logger
    public let metrics: DHCPMetrics

    public init(
        configuration: DHCPConfiguration, httpPort: Int, store: any LeaseStore, recorder: TimelineRecorder,
        addressBook: AddressBook, logger: Logger
    ) throws {
        self.configuration = configuration
        self.logger = logger
        self.metrics = DHCPMetrics()
        if configuration.mode == .off || configuration.interfaces.isEmpty {
            engine = nil
            return
        }
        var responder = DHCPResponder(configuration: configuration, httpPort: httpPort)
        let stored = try store.leases()
        responder.loadLeases(stored)
        for l in stored { addressBook.record(l.address, l.mac) }
        engine = DHCPEngine(
            responder: responder, store: store, recorder: recorder, addressBook: addressBook, metrics: metrics,
            logger: logger)
    }

    public func run() async throws {
        guard let engine else {
            let why = configuration.mode == .off ? "mode is off" : "no interfaces are configured (dhcp.interfaces)"
            logger.notice("DHCP is off: \(why); nothing will be answered")
            try await gracefulShutdown()
            return
        }
        var ports = [configuration.serverPort]
        if configuration.mode == .proxy, configuration.proxyPort != 0 { ports.append(configuration.proxyPort) }
        var channels: [any Channel] = []
        do {
            for name in configuration.interfaces {
                guard let iface = InterfaceAddress.lookup(name) else {
                    throw SocketError(description: "DHCP interface \(name) does not exist or has no IPv4 address")
                }
                if configuration.mode == .full,
                    !configuration.subnets.contains(where: { $0.network.contains(iface.address) })
                {
                    logger.warning(
                        "no subnet configured for the interface's own network: only relayed requests will be answered",
                        metadata: ["dhcp.interface": "\(name)", "dhcp.address": "\(iface.address)"])
                }
                for port in ports {
                    let fd = try makeInterfaceSocket(interface: name, port: port)
                    let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                        .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 2048))
                        .channelOption(.maxMessagesPerRead, value: 16)
                        .channelInitializer { ch in
                            ch.eventLoop.makeCompletedFuture {
                                try ch.pipeline.syncOperations.addHandler(
                                    DHCPChannelHandler(engine: engine, interface: iface, port: port))
                            }
                        }
                        .withBoundSocket(fd).get()
                    channels.append(channel)
                    logger.info(
                        "DHCP listening",
                        metadata: ["dhcp.mode": "\(configuration.mode.rawValue)", "dhcp.interface": "\(name)",
                                   "dhcp.address": "\(iface.address)", "dhcp.port": "\(port)"])
                }
            }
        } catch {
            for c in channels { try? await c.close() }
            throw error
        }
        try? await gracefulShutdown()
        for c in channels { try? await c.close() }
        engine.recorder.drain()
        logger.info("DHCP stopped")
    }
}

final class DHCPChannelHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    let engine: DHCPEngine
    let interface: InterfaceAddress
    let port: Int

    init(engine: DHCPEngine, interface: InterfaceAddress, port: Int) {
        self.engine = engine
        self.interface = interface
        self.port = port
        self.outbox = Outbox()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let bytes = Array(envelope.data.readableBytesView)
        var source = IPv4Address.any
        var sourcePort = 0
        if case .v4(let a) = envelope.remoteAddress {
            source = IPv4Address(UInt32(bigEndian: a.address.sin_addr.s_addr))
            sourcePort = envelope.remoteAddress.port ?? 0
        }
        let ingress = DHCPIngress(
            interface: interface.name, address: interface.address, network: interface.network, port: port,
            sourceAddress: source, sourcePort: sourcePort)
        let outbox = self.outbox
        let loop = context.eventLoop
        engine.handle(bytes, ingress: ingress) { reply, address, port in
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
            sin.sin_addr = in_addr(s_addr: address.value.bigEndian)
            let envelope = AddressedEnvelope(remoteAddress: SocketAddress(sin, host: ""), data: ByteBuffer(bytes: reply))
            if loop.inEventLoop {
                // Answered during this read (an OFFER): written now, flushed once at read-complete.
                outbox.writeNow(envelope)
            } else {
                outbox.send(envelope)
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        outbox.flushIfWritten()
        context.fireChannelReadComplete()
    }

    let outbox: Outbox

    /// Replies queue here from any thread (ACKs come from the lease committer's thread once the
    /// batch is on disk) and leave in one event-loop task with one flush, so a commit batch goes
    /// out as one sendmmsg instead of a task and a syscall per reply.
    final class Outbox: Sendable {
        let channel: Mutex<(any Channel)?> = Mutex(nil)
        let pending = Mutex<(items: [AddressedEnvelope<ByteBuffer>], scheduled: Bool)>(([], false))
        /// Written on the event loop since the last flush (touched only there).
        let written = Atomic<Bool>(false)

        /// On the event loop: write without a task; `flushIfWritten` sends the lot as one sendmmsg.
        func writeNow(_ envelope: AddressedEnvelope<ByteBuffer>) {
            guard let channel = channel.withLock({ $0 }) else { return }
            channel.write(envelope, promise: nil)
            written.store(true, ordering: .relaxed)
        }

        func flushIfWritten() {
            guard written.exchange(false, ordering: .relaxed), let channel = channel.withLock({ $0 }) else { return }
            channel.flush()
        }

        func send(_ envelope: AddressedEnvelope<ByteBuffer>) {
            guard let channel = channel.withLock({ $0 }) else { return }
            let schedule = pending.withLock { p -> Bool in
                p.items.append(envelope)
                defer { p.scheduled = true }
                return !p.scheduled
            }
            guard schedule else { return }
            channel.eventLoop.execute { [self] in
                let items = pending.withLock { p -> [AddressedEnvelope<ByteBuffer>] in
                    defer { p = ([], false) }
                    return p.items
                }
                for item in items { channel.write(item, promise: nil) }
                channel.flush()
            }
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        outbox.channel.withLock { $0 = context.channel }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        outbox.channel.withLock { $0 = nil }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        engine.logger.debug("DHCP socket error", metadata: ["dhcp.error": "\(error)"])
    }
}
