import NIOCore
import NIOPosix
import Synchronization

/// A connected UDP socket: datagrams from one peer, received by awaiting `next(timeout:)`.
///
/// One reader task owns the socket's `NIOAsyncChannel` and iterates its inbound stream until the
/// channel closes; callers never touch that stream. A read cancelled on an `NIOAsyncChannel` ends
/// its inbound stream for good (the socket would stay open and deaf), so a caller's deadline or
/// cancellation must end only a wait of its own: each `next` waits on a one-element stream that
/// the reader fills, a datagram or the deadline first (docs/ipmi-transport-design.md).
final class UDPEndpoint: Sendable {
    let channel: any Channel
    let mailbox: Mailbox
    let remote: SocketAddress
    private let reader: Task<Void, Never>

    /// What the reader hands over and callers wait for: a backlog while nobody waits, else the one
    /// waiter's stream.
    final class Mailbox: Sendable {
        typealias Waiter = AsyncStream<[UInt8]>.Continuation
        struct State {
            var backlog: [[UInt8]] = []
            var waiter: (id: UInt64, continuation: Waiter, deadline: ContinuousClock.Instant)?
            var nextID: UInt64 = 0
            var closed = false
            /// Datagrams dropped because the backlog was full.
            var dropped = 0
            /// The instant the live timer task sleeps until (nil: none runs), and its number: a
            /// timer whose number is no longer the current one has been replaced and just ends.
            var timerUntil: ContinuousClock.Instant?
            var timerNumber: UInt64 = 0
            /// The live timer, cancelled when a new one replaces it or the socket closes, so that
            /// none sleeps on towards a deadline nobody waits for.
            var timer: Task<Void, Never>?
        }
        let state = Mutex(State())
        /// Datagrams kept while nobody waits: a flood from the BMC cannot grow memory without limit.
        static let backlogLimit = 256

        func deliver(_ bytes: [UInt8]) {
            // A waiter that ended at the instant its datagram came (its deadline, or its task
            // cancelled) passes it on to the next waiter or the backlog; the third pass keeps it.
            for pass in 1...3 {
                let waiter: Waiter? = state.withLock { s in
                    if pass < 3, let w = s.waiter {
                        s.waiter = nil
                        return w.continuation
                    }
                    if s.backlog.count < Self.backlogLimit {
                        s.backlog.append(bytes)
                    } else {
                        s.dropped += 1
                    }
                    return nil
                }
                guard let waiter else { return }
                if case .enqueued = waiter.yield(bytes) {
                    waiter.finish()
                    return
                }
            }
        }

        func close() {
            let (waiter, timer) = state.withLock { s -> (Waiter?, Task<Void, Never>?) in
                s.closed = true
                defer {
                    s.waiter = nil
                    s.timer = nil
                }
                return (s.waiter?.continuation, s.timer)
            }
            waiter?.finish()
            timer?.cancel()
        }

        /// What a wait gets without waiting: the oldest datagram kept, or nil once closed or when
        /// the task is cancelled; `.none` when it must wait.
        private static func ready(_ s: inout State) -> [UInt8]?? {
            if !s.backlog.isEmpty { return .some(s.backlog.removeFirst()) }
            if s.closed || Task.isCancelled { return .some(nil) }
            return .none
        }

        func next(timeout: Duration) async -> [UInt8]? {
            // Fast path: a datagram already kept, or nothing to wait for.
            if let ready = state.withLock({ Self.ready(&$0) }) { return ready }
            let (stream, continuation) = AsyncStream.makeStream(of: [UInt8].self, bufferingPolicy: .bufferingOldest(1))
            let deadline = ContinuousClock.now + timeout
            let (id, immediate, displaced, timer, replaced): (UInt64, [UInt8]??, Waiter?, UInt64?, Task<Void, Never>?) =
                state.withLock { s in
                    // Again under the lock that installs the wait: a datagram may have come meanwhile.
                    if let ready = Self.ready(&s) { return (0, ready, nil, nil, nil) }
                    s.nextID += 1
                    // One wait at a time: a second one (a session closed under a late user) ends the
                    // first, which gets nil, rather than leaving it parked forever.
                    let displaced = s.waiter?.continuation
                    s.waiter = (s.nextID, continuation, deadline)
                    // A timer already sleeping until no later than this deadline will see to it.
                    if let until = s.timerUntil, until <= deadline { return (s.nextID, nil, displaced, nil, nil) }
                    s.timerNumber += 1
                    s.timerUntil = deadline
                    defer { s.timer = nil }
                    return (s.nextID, nil, displaced, s.timerNumber, s.timer)
                }
            displaced?.finish()
            replaced?.cancel()
            if let immediate {
                continuation.finish()
                return immediate
            }
            if let timer {
                // Detached: it outlives this wait and must not keep its task-locals (a trace context).
                let task = Task.detached { await self.expire(timer: timer, from: deadline) }
                // Kept unless a newer timer or close came first, in which case it is not needed.
                let stale = state.withLock { s in
                    guard s.timerNumber == timer, !s.closed else { return true }
                    s.timer = task
                    return false
                }
                if stale { task.cancel() }
            }
            // Nil at the deadline, when displaced or closed, or when this task is cancelled (an
            // AsyncStream ends its wait on cancellation): the socket's stream is untouched.
            var waiting = stream.makeAsyncIterator()
            let bytes = await waiting.next()
            state.withLock { s in
                if s.waiter?.id == id { s.waiter = nil }
            }
            return bytes
        }

        /// The deadlines, kept by one task per socket rather than one per wait (a task started
        /// for each wait and cancelled when its datagram came cost two more task runs per
        /// datagram). It sleeps until the earliest deadline it knows, ends the wait then due, and
        /// sleeps on until the current wait's deadline; with no wait left it ends. A wait due
        /// before the timer would wake (a shorter timeout than the one before) starts a new timer,
        /// which replaces it; a replaced or closed timer is cancelled and ends at once.
        func expire(timer: UInt64, from first: ContinuousClock.Instant) async {
            var until = first
            // Each pass either ends or moves `until` to a later wait's deadline.
            while true {
                try? await Task.sleep(until: until, clock: .continuous)
                let (due, next): (Waiter?, ContinuousClock.Instant?) = state.withLock { s in
                    guard s.timerNumber == timer else { return (nil, nil) }
                    var due: Waiter?
                    if let w = s.waiter, w.deadline <= .now {
                        due = w.continuation
                        s.waiter = nil
                    }
                    s.timerUntil = s.closed ? nil : s.waiter?.deadline
                    return (due, s.timerUntil)
                }
                due?.finish()
                guard let next, !Task.isCancelled else { return }
                until = next
            }
        }
    }

    /// Each datagram's bytes, copied on the event loop. Errors stop here: the `ECONNREFUSED` of an
    /// ICMP port unreachable on the connected socket is not fatal to it, and passed on it would end
    /// the inbound stream; the wait times out instead. A fatal error closes the channel, which
    /// ends the stream.
    final class DatagramInbound: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        typealias InboundOut = [UInt8]

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            context.fireChannelRead(wrapInboundOut(Array(envelope.data.readableBytesView)))
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {}
    }

    private init(channel: any Channel, mailbox: Mailbox, remote: SocketAddress, reader: Task<Void, Never>) {
        self.channel = channel
        self.mailbox = mailbox
        self.remote = remote
        self.reader = reader
    }

    static func connect(host: String, port: Int) async throws -> UDPEndpoint {
        let remote = try SocketAddress.makeAddressResolvingHost(host, port: port)
        // Connected: the kernel drops datagrams from any other address (and binds an ephemeral
        // port). On a failure the bootstrap closes the channel it made.
        let wrapped = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(to: remote) {
            ch in
            ch.eventLoop.makeCompletedFuture {
                try ch.pipeline.syncOperations.addHandler(DatagramInbound())
                return try NIOAsyncChannel<[UInt8], AddressedEnvelope<ByteBuffer>>(wrappingChannelSynchronously: ch)
            }
        }
        let mailbox = Mailbox()
        // Detached: the reader outlives the call that connected, and must inherit neither its
        // cancellation nor its task-locals (a trace context). Only closing the channel ends it.
        let reader = Task.detached {
            _ = try? await wrapped.executeThenClose { inbound, _ in
                for try await bytes in inbound { mailbox.deliver(bytes) }
            }
            mailbox.close()
        }
        return UDPEndpoint(channel: wrapped.channel, mailbox: mailbox, remote: remote, reader: reader)
    }

    /// Written through the channel itself, not the async writer, so that a write error (EMSGSIZE,
    /// EHOSTUNREACH, a closed channel) is thrown here.
    func send(_ bytes: [UInt8]) async throws {
        let buffer = channel.allocator.buffer(bytes: bytes)
        try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: remote, data: buffer))
    }

    /// The next datagram (the oldest kept first), or nil at the deadline, on cancellation, or once
    /// closed.
    func next(timeout: Duration) async -> [UInt8]? {
        await mailbox.next(timeout: timeout)
    }

    /// Closes the socket and waits for its reader to end: a parked `next` gets nil, later ones nil
    /// at once, and `send` throws.
    func close() async {
        try? await channel.close()
        mailbox.close()
        await reader.value
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
