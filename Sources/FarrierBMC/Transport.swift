import NIOCore
import NIOPosix
import Synchronization

/// A connected UDP socket: datagrams from one peer, received by awaiting `next(timeout:)`.
///
/// One reader task owns the socket's `NIOAsyncChannel` and iterates its inbound stream until the
/// channel closes; callers never touch that stream. A read cancelled on an `NIOAsyncChannel` ends
/// its inbound stream for good (the socket would stay open and deaf), so a caller's deadline or
/// cancellation must end only a wait of its own: each `next` waits on a continuation that the
/// reader resumes with a datagram, or the socket's timer with nil at the deadline
/// (docs/ipmi-transport-design.md).
final class UDPEndpoint: Sendable {
    let channel: any Channel
    let mailbox: Mailbox
    let remote: SocketAddress
    private let reader: Task<Void, Never>

    /// What the reader hands over and callers wait for: a backlog while nobody waits, else the one
    /// waiter's continuation.
    final class Mailbox: Sendable {
        /// Resumed exactly once, by whoever takes it out of `State.waiter` under the lock: the
        /// datagram, the deadline, a newer wait, close, or the waiting task's cancellation.
        typealias Waiter = CheckedContinuation<[UInt8]?, Never>
        struct State {
            var backlog: [[UInt8]] = []
            var waiter: (id: UInt64, continuation: Waiter, deadline: ContinuousClock.Instant)?
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
        let waits = Atomic<UInt64>(0)
        /// Datagrams kept while nobody waits: a flood from the BMC cannot grow memory without limit.
        static let backlogLimit = 256

        func deliver(_ bytes: [UInt8]) {
            // A wait that ended at the instant its datagram came (its deadline, or its task
            // cancelled) is no longer in the state: the datagram is kept for the next.
            let waiter: Waiter? = state.withLock { s in
                if let w = s.waiter {
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
            waiter?.resume(returning: bytes)
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
            waiter?.resume(returning: nil)
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
            let id = waits.wrappingAdd(1, ordering: .relaxed).newValue
            return await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: Waiter) in
                    park(continuation, id: id, deadline: ContinuousClock.now + timeout)
                }
            } onCancel: {
                // Installed before the cancellation: ended here. Installed after it: `ready` saw
                // the task cancelled under the lock, and it never waited.
                let waiter: Waiter? = state.withLock { s in
                    guard let w = s.waiter, w.id == id else { return nil }
                    s.waiter = nil
                    return w.continuation
                }
                waiter?.resume(returning: nil)
            }
        }

        /// Installs a wait (or ends it at once: a datagram came meanwhile, or the socket closed,
        /// or the task is cancelled), and sees that a timer will end it at its deadline.
        private func park(_ continuation: Waiter, id: UInt64, deadline: ContinuousClock.Instant) {
            let (immediate, displaced, timer, replaced): ([UInt8]??, Waiter?, UInt64?, Task<Void, Never>?) =
                state.withLock { s in
                    // Again under the lock that installs the wait: a datagram may have come meanwhile.
                    if let ready = Self.ready(&s) { return (ready, nil, nil, nil) }
                    // One wait at a time: a second one (a session closed under a late user) ends the
                    // first, which gets nil, rather than leaving it parked forever.
                    let displaced = s.waiter?.continuation
                    s.waiter = (id, continuation, deadline)
                    // A timer already sleeping until no later than this deadline will see to it.
                    if let until = s.timerUntil, until <= deadline { return (nil, displaced, nil, nil) }
                    s.timerNumber += 1
                    s.timerUntil = deadline
                    defer { s.timer = nil }
                    return (nil, displaced, s.timerNumber, s.timer)
                }
            displaced?.resume(returning: nil)
            replaced?.cancel()
            if let immediate {
                continuation.resume(returning: immediate)
                return
            }
            guard let timer else { return }
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
                due?.resume(returning: nil)
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

    /// How the initializer, on the channel's loop, hands the async channel it made to `connect`.
    final class Handover: Sendable {
        let channel = Mutex<NIOAsyncChannel<[UInt8], Never>?>(nil)
    }

    private init(channel: any Channel, mailbox: Mailbox, remote: SocketAddress, reader: Task<Void, Never>) {
        self.channel = channel
        self.mailbox = mailbox
        self.remote = remote
        self.reader = reader
    }

    static func connect(host: String, port: Int) async throws -> UDPEndpoint {
        let remote = try SocketAddress.makeAddressResolvingHost(host, port: port)
        // The async channel is made on the loop by the initializer and handed out through this
        // box, not through the bootstrap's generic `connect(to:channelInitializer:)`, whose chain
        // of futures of a generic type runs unspecialized for every socket. With outbound `Never`
        // (sends go through the channel itself, `send`), 2–3 % off a bench/bmc sweep.
        let made = Handover()
        // Connected: the kernel drops datagrams from any other address (and binds an ephemeral
        // port).
        let channel: any Channel
        do {
            channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        // The future-returning connect does not close a channel whose
                        // initializer failed: closed here.
                        do {
                            try ch.pipeline.syncOperations.addHandler(DatagramInbound())
                            let wrapped = try NIOAsyncChannel<[UInt8], Never>(wrappingChannelSynchronously: ch)
                            made.channel.withLock { $0 = wrapped }
                        } catch {
                            ch.close(promise: nil)
                            throw error
                        }
                    }
                }
                .connect(to: remote).get()
        } catch {
            // NIO closes a channel whose connect(2) failed (test aRefusedConnectLeavesNoSocketOpen);
            // this closes one that failed at any other step after the initializer.
            if let wrapped = made.channel.withLock({ $0 }) { try? await wrapped.channel.close() }
            throw error
        }
        guard let wrapped = made.channel.withLock({ $0 }) else {
            try? await channel.close()
            throw ChannelError.inappropriateOperationForState
        }
        let mailbox = Mailbox()
        // Detached: the reader outlives the call that connected, and must inherit neither its
        // cancellation nor its task-locals (a trace context). Only closing the channel ends it.
        let reader = Task.detached {
            _ = try? await wrapped.executeThenClose { inbound in
                for try await bytes in inbound { mailbox.deliver(bytes) }
            }
            mailbox.close()
        }
        return UDPEndpoint(channel: channel, mailbox: mailbox, remote: remote, reader: reader)
    }

    /// Written through the channel itself (the async channel has no outbound writer), so that a
    /// write error (EMSGSIZE, EHOSTUNREACH, a closed channel) is thrown here.
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
