import NIOCore
import NIOPosix
import Synchronization
import SystemSupport

/// A connected UDP socket: datagrams from one peer, received by awaiting `next(timeout:)`.
final class UDPEndpoint: Sendable {
    let channel: any Channel
    let inbox: Inbox
    let remote: SocketAddress

    final class Inbox: Sendable {
        struct State {
            var buffered: [[UInt8]] = []
            var waiter: (id: UInt64, continuation: CheckedContinuation<[UInt8]?, Never>)?
            var nextID: UInt64 = 0
            var closed = false
        }
        let state = Mutex(State())

        func deliver(_ bytes: [UInt8]) {
            let waiter: CheckedContinuation<[UInt8]?, Never>? = state.withLock { s in
                if let w = s.waiter {
                    s.waiter = nil
                    return w.continuation
                }
                // Bounded: a flood from the BMC cannot grow memory without limit.
                if s.buffered.count < 256 { s.buffered.append(bytes) }
                return nil
            }
            waiter?.resume(returning: bytes)
        }

        func close() {
            let waiter = state.withLock { s -> CheckedContinuation<[UInt8]?, Never>? in
                s.closed = true
                defer { s.waiter = nil }
                return s.waiter?.continuation
            }
            waiter?.resume(returning: nil)
        }

        func next(timeout: Duration, on loop: any EventLoop) async -> [UInt8]? {
            let id = state.withLock { s -> UInt64 in
                s.nextID += 1
                return s.nextID
            }
            return await withTaskCancellationHandler {
                await withCheckedContinuation { (c: CheckedContinuation<[UInt8]?, Never>) in
                    let immediate: [UInt8]?? = state.withLock { s in
                        if !s.buffered.isEmpty { return .some(s.buffered.removeFirst()) }
                        if s.closed || Task.isCancelled { return .some(nil) }
                        s.waiter = (id, c)
                        return .none
                    }
                    if let immediate {
                        c.resume(returning: immediate)
                        return
                    }
                    loop.scheduleTask(in: .nanoseconds(timeout.nanosecondsClamped)) { [self] in
                        self.expire(id)
                    }
                }
            } onCancel: {
                self.expire(id)
            }
        }

        func expire(_ id: UInt64) {
            let waiter = state.withLock { s -> CheckedContinuation<[UInt8]?, Never>? in
                guard let w = s.waiter, w.id == id else { return nil }
                s.waiter = nil
                return w.continuation
            }
            waiter?.resume(returning: nil)
        }
    }

    final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let inbox: Inbox
        init(inbox: Inbox) { self.inbox = inbox }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            inbox.deliver(Array(envelope.data.readableBytesView))
        }

        func channelInactive(context: ChannelHandlerContext) { inbox.close() }
    }

    private init(channel: any Channel, inbox: Inbox, remote: SocketAddress) {
        self.channel = channel
        self.inbox = inbox
        self.remote = remote
    }

    static func connect(host: String, port: Int) async throws -> UDPEndpoint {
        let remote = try SocketAddress.makeAddressResolvingHost(host, port: port)
        let inbox = Inbox()
        let bind = remote.protocol == .inet6 ? "::" : "0.0.0.0"
        let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Handler(inbox: inbox)) }
            }
            .bind(host: bind, port: 0).get()
        // Connected: the kernel drops datagrams from any other address, and ICMP port
        // unreachable surfaces as an error rather than silence.
        try await channel.connect(to: remote).get()
        return UDPEndpoint(channel: channel, inbox: inbox, remote: remote)
    }

    func send(_ bytes: [UInt8]) async throws {
        let buffer = channel.allocator.buffer(bytes: bytes)
        try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: remote, data: buffer))
    }

    func next(timeout: Duration) async -> [UInt8]? {
        await inbox.next(timeout: timeout, on: channel.eventLoop)
    }

    func close() async {
        try? await channel.close()
        inbox.close()
    }
}

/// One operation at a time, first come first served: the per-BMC limit.
actor SerialGate {
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        if busy {
            await withCheckedContinuation { waiters.append($0) }
        }
        busy = true
        defer {
            if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
        }
        return try await body()
    }
}
