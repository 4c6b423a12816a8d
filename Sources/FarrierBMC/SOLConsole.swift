import IPMIWire
import Logging
import Synchronization

/// A Serial-over-LAN console on its own RMCP+ session (IPMI v2.0 §15).
///
/// Every data packet from the BMC is acknowledged, and a repeated sequence number is
/// acknowledged again but not delivered twice. Our input goes one packet at a time, resent
/// until the BMC acknowledges it, within bounded retries.
final class SOLConsole: ConsoleSession, Sendable {
    let session: IPMISession
    let activation: SOLActivation
    let logger: Logger
    let output: AsyncStream<[UInt8]>
    let continuation: AsyncStream<[UInt8]>.Continuation
    let writeGate = SerialGate()
    let receiver = Mutex<Task<Void, Never>?>(nil)
    let closed = Atomic<Bool>(false)

    struct State {
        /// Starts at a random 1–15: a BMC that remembers the last sequence of the previous
        /// console session (ipmi_sim does) would take a fixed first number for a duplicate.
        var nextSequence = UInt8.random(in: 1...15)
        var lastInbound: UInt8 = 0
        var pending: (sequence: UInt8, attempt: Int, continuation: CheckedContinuation<Bool, Never>)?
        var attempts = 0
    }
    let state = Mutex(State())

    init(session: IPMISession, activation: SOLActivation, logger: Logger) {
        self.session = session
        self.activation = activation
        self.logger = logger
        (output, continuation) = AsyncStream.makeStream(of: [UInt8].self, bufferingPolicy: .bufferingNewest(4096))
        let task = Task { [self] in await self.receive() }
        receiver.withLock { $0 = task }
    }

    /// Largest chunk of input per packet (the BMC's inbound size includes the 4-byte header).
    var chunkSize: Int { max(1, min(Int(activation.inboundPayloadSize) - 4, 200)) }

    func receive() async {
        // BMCs time sessions out on IPMI inactivity, and SOL traffic does not count with all of
        // them (ipmi_sim): like ipmitool, send Get Device ID on the console's session while it
        // is quiet. Its answer arrives here and is ignored.
        let idleKeepAlive: Duration = .seconds(10)
        var lastKeepAlive = ContinuousClock.now
        while !Task.isCancelled {
            if ContinuousClock.now - lastKeepAlive > idleKeepAlive {
                lastKeepAlive = .now
                let request = IPMICommand.getDeviceID(sequence: session.nextRequestSequence())
                try? await session.endpoint.send(session.seal(.ipmi, request.encoded()))
            }
            guard let bytes = await session.endpoint.next(timeout: .seconds(1)) else {
                if Task.isCancelled || closed.load(ordering: .relaxed) { break }
                continue
            }
            guard let (type, payload) = session.open(bytes), type == .sol,
                let packet = try? SOLPacket(decoding: payload)
            else {
                continue
            }
            if packet.ackSequence != 0 {
                let waiter = state.withLock { s -> (CheckedContinuation<Bool, Never>, Bool)? in
                    guard let p = s.pending, p.sequence == packet.ackSequence else { return nil }
                    s.pending = nil
                    return (p.continuation, packet.control & SOLPacket.nack == 0)
                }
                if let (c, accepted) = waiter { c.resume(returning: accepted) }
            }
            if packet.sequence != 0 {
                let fresh = state.withLock { s -> Bool in
                    guard s.lastInbound != packet.sequence else { return false }
                    s.lastInbound = packet.sequence
                    return true
                }
                if fresh, !packet.data.isEmpty { continuation.yield(packet.data) }
                await sendRaw(
                    SOLPacket(
                        sequence: 0,
                        ackSequence: packet.sequence,
                        acceptedCount: UInt8(truncatingIfNeeded: packet.data.count)
                    )
                )
            }
            if packet.control & SOLPacket.deactivating != 0 {
                logger.info("BMC ended the serial console")
                break
            }
        }
        continuation.finish()
        failPending()
    }

    func failPending() {
        let c = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            defer { s.pending = nil }
            return s.pending?.continuation
        }
        c?.resume(returning: false)
    }

    func sendRaw(_ packet: SOLPacket) async {
        try? await session.endpoint.send(session.seal(.sol, packet.encoded()))
    }

    func write(_ bytes: [UInt8]) async throws {
        var offset = 0
        while offset < bytes.count {
            let chunk = Array(bytes[offset..<min(bytes.count, offset + chunkSize)])
            try await writeGate.run { try await self.sendChunk(chunk) }
            offset += chunk.count
        }
    }

    func sendChunk(_ chunk: [UInt8]) async throws {
        let seq = state.withLock { s -> UInt8 in
            let n = s.nextSequence
            s.nextSequence = n == 15 ? 1 : n + 1
            return n
        }
        let timeouts = session.timeouts
        for _ in 0...timeouts.retries {
            guard !closed.load(ordering: .relaxed) else {
                throw BMCError(.rejected, address: session.address, "console is closed")
            }
            let acked = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                let attempt = state.withLock { s -> Int in
                    s.attempts += 1
                    s.pending = (seq, s.attempts, c)
                    return s.attempts
                }
                Task {
                    await self.sendRaw(SOLPacket(sequence: seq, ackSequence: 0, acceptedCount: 0, data: chunk))
                    try? await Task.sleep(for: timeouts.attempt)
                    let c = self.state.withLock { s -> CheckedContinuation<Bool, Never>? in
                        guard let p = s.pending, p.attempt == attempt else { return nil }
                        s.pending = nil
                        return p.continuation
                    }
                    c?.resume(returning: false)
                }
            }
            if acked { return }
        }
        throw BMCError.timeout(
            session.address,
            after: timeouts.attempt * (timeouts.retries + 1),
            doing: "serial console input"
        )
    }

    func close() async {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        let task = receiver.withLock { $0 }
        task?.cancel()
        await task?.value
        continuation.finish()
        failPending()
        _ = try? await session.send({ IPMICommand.deactivateSOL(sequence: $0) }, what: "Deactivate Payload")
        await session.close()
    }
}
