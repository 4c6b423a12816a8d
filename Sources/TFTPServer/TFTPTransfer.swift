import FarrierCore
import Foundation
import Logging
import NIOCore
import Synchronization
import SystemSupport
import TFTPWire
import WireSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct TransferSocketError: Error, CustomStringConvertible {
    var description: String
}

/// One transfer on a thread of its own with a blocking socket connected to the client (its TID):
/// send the window, wait for the ACK or the retransmit deadline, repeat; driving the pure
/// `TFTPTransferStateMachine`. The wait is the loop tftpd-hpa and atftpd run, a sleep in recv(2)
/// with SO_RCVTIMEO. An operator can have a lone transfer first poll for the ACK for a few
/// microseconds (`BusyPoll`, off by default), which on a virtual machine takes most of the round
/// trip's time out at the price of a CPU.
///
/// Why not an event loop: TFTP is lockstep (or a small window), so its speed is the round trip,
/// and per packet an event loop adds a readiness wait, a failed read and its own bookkeeping to
/// the system calls the exchange needs (pread, send, recv). Measured here (`bench/tftp`), the
/// SwiftNIO transfer was 0.91x tftpd-hpa lockstep and 0.86x atftpd windowed, with about 4x
/// atftpd's user time per packet. A boot transfer is short (iPXE is under 1 MB), so a thread per
/// transfer is cheap; `TFTPConfiguration.maxTransfers` bounds how many there are.
struct TFTPTransfer {
    let context: TFTPContext
    let socket: CInt
    let file: BootFile
    let request: TFTPRequest
    let clientIP: IPv4Address
    var machine: TFTPTransferStateMachine
    let startTime = ContinuousClock.now
    /// The outgoing DATA packet, built in place for each block: header, then the file's bytes.
    var packet: [UInt8]
    var inbound = [UInt8](repeating: 0, count: 65536)
    var poll: BusyPoll

    /// Opens the transfer's socket: bound to the address the request came in on (port 0: a new
    /// TID), connected to the client so the kernel drops datagrams from any other TID.
    static func openSocket(localHost: String, remote: SocketAddress) throws -> CInt {
        let local = try SocketAddress(ipAddress: localHost, port: 0)
        #if os(Linux)
        let fd = Glibc.socket(remote.protocol.rawValue, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = Darwin.socket(remote.protocol.rawValue, SOCK_DGRAM, 0)
        #endif
        guard fd >= 0 else { throw TransferSocketError(description: "socket: \(String(cString: strerror(errno)))") }
        do {
            try local.withSockAddr { ptr, len in
                guard bind(fd, ptr, socklen_t(len)) == 0 else {
                    throw TransferSocketError(description: "bind \(localHost): \(String(cString: strerror(errno)))")
                }
            }
            try remote.withSockAddr { ptr, len in
                guard connect(fd, ptr, socklen_t(len)) == 0 else {
                    throw TransferSocketError(description: "connect \(remote): \(String(cString: strerror(errno)))")
                }
            }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Sends one ERROR from a fresh TID and closes it (a refused request).
    static func refuse(socket fd: CInt, code: TFTPErrorCode, message: String) {
        let bytes = TFTPPacket.error(code: code, message: message).encoded()
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        close(fd)
    }

    init(
        context: TFTPContext,
        socket: CInt,
        file: BootFile,
        request: TFTPRequest,
        negotiation: TFTPNegotiation,
        clientIP: IPv4Address
    ) {
        self.context = context
        self.socket = socket
        self.file = file
        self.request = request
        self.clientIP = clientIP
        let timeout: Duration? = negotiation.timeoutSeconds == nil ? context.configuration.retransmitTimeout : nil
        machine = TFTPTransferStateMachine(
            negotiation: negotiation,
            fileSize: file.size,
            retransmitTimeout: timeout,
            maxRetries: context.configuration.maxRetries
        )
        packet = [UInt8](repeating: 0, count: 4 + negotiation.blockSize)
        poll = BusyPoll(budget: context.configuration.busyPoll, cpus: context.cpus)
    }

    /// Runs the transfer to its end on the calling thread, then closes the socket and leaves
    /// the active count (which the caller entered it into).
    mutating func run() {
        defer {
            context.perClient.leave(clientIP)
            close(socket)
            if context.metrics.active.subtract(1, ordering: .relaxed).newValue == 0 {
                context.idle.continuation.yield()
            }
        }
        var action = machine.start(now: .now)
        while true {
            switch perform(action) {
            case .stop: return
            case .wait: break
            }
            action = waitForPacketOrDeadline()
        }
    }

    enum Next { case wait, stop }

    mutating func perform(_ action: TFTPTransferStateMachine.Action) -> Next {
        switch action {
        case .none:
            return .wait
        case .sendOptionAck(let options):
            let bytes = TFTPPacket.optionAck(options).encoded()
            _ = bytes.withUnsafeBytes { send(socket, $0.baseAddress, $0.count, 0) }
            return .wait
        case .sendData(let blocks):
            var sent = 0
            for block in blocks { sent += sendBlock(block) }
            context.metrics.bytesSent.add(sent, ordering: .relaxed)
            return .wait
        case .finished:
            context.metrics.completed.add(1, ordering: .relaxed)
            context.timeline(
                clientIP,
                "COMPLETE",
                "file=\(request.filename) bytes=\(file.size) duration=\(format(ContinuousClock.now - startTime))"
            )
            context.logger.debug(
                "transfer complete",
                metadata: ["tftp.file": "\(request.filename)", "tftp.bytes": "\(file.size)"]
            )
            return .stop
        case .failed(let reason):
            context.metrics.failed.add(1, ordering: .relaxed)
            context.timeline(clientIP, "FAILED", "file=\(request.filename) \(reason)")
            context.logger.debug(
                "transfer failed",
                metadata: ["tftp.file": "\(request.filename)", "tftp.reason": "\(reason)"]
            )
            return .stop
        }
    }

    /// DATA for one block, read from the file straight into the packet buffer. Returns the
    /// file bytes sent.
    mutating func sendBlock(_ block: Int) -> Int {
        let range = machine.byteRange(ofBlock: block)
        let wire = TFTPTransferStateMachine.wireBlock(block)
        let socket = self.socket
        // Moved out while in use (no copy): reading ahead mutates self too.
        var packet: [UInt8] = []
        swap(&packet, &self.packet)
        defer { swap(&packet, &self.packet) }
        return packet.withUnsafeMutableBytes { buf in
            buf[0] = 0
            buf[1] = 3
            buf[2] = UInt8(wire >> 8)
            buf[3] = UInt8(truncatingIfNeeded: wire)
            let n = readAhead(range, into: UnsafeMutableRawBufferPointer(rebasing: buf[4...]))
            _ = send(socket, buf.baseAddress, 4 + n, 0)
            return n
        }
    }

    /// File bytes read ahead, 64 KiB at a time, for a file that is not held in memory: one
    /// pread per 44 blocks of 1468 bytes instead of one per block.
    var ahead: [UInt8] = []
    var aheadStart = 0
    static let aheadSize = 64 << 10

    mutating func readAhead(_ range: Range<Int>, into out: UnsafeMutableRawBufferPointer) -> Int {
        if file.isInMemory { return file.read(range, into: out) }
        let r = min(range.lowerBound, file.size)..<min(range.upperBound, file.size)
        if r.lowerBound < aheadStart || r.upperBound > aheadStart + ahead.count {
            aheadStart = r.lowerBound
            ahead.removeAll(keepingCapacity: true)
            file.read(r.lowerBound..<(r.lowerBound + max(Self.aheadSize, r.count)), into: &ahead)
        }
        let offset = r.lowerBound - aheadStart
        let n = min(r.count, ahead.count - offset)
        ahead.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
        return n
    }

    /// The receive timeout in force, rounded to milliseconds.
    var receiveTimeoutMS = -1

    mutating func setReceiveTimeout(_ d: Duration) {
        let ms = Int(max(1, (d.nanosecondsClamped + 999_999) / 1_000_000))
        // Within 2 ms of the current setting is close enough: the deadline is rechecked anyway.
        guard abs(ms - receiveTimeoutMS) > 2 else { return }
        receiveTimeoutMS = ms
        var tv = timeval(tv_sec: ms / 1000, tv_usec: Int((ms % 1000) * 1000))
        _ = setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// What one receive returned: the datagram's length, or -1 and the error.
    typealias Received = (count: Int, error: CInt)

    /// Non-blocking receives until a datagram or an error (such as ECONNREFUSED, the client's
    /// port gone) arrives, or `until` passes: then nil, and the caller sleeps (see `BusyPoll`).
    mutating func pollForPacket(until: ContinuousClock.Instant) -> Received? {
        let socket = self.socket
        while true {
            let n = inbound.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, CInt(MSG_DONTWAIT)) }
            let error = errno
            if n >= 0 || (error != EAGAIN && error != EWOULDBLOCK && error != EINTR) { return (n, error) }
            if ContinuousClock.now >= until { return nil }
        }
    }

    /// One receive that sleeps until a datagram, an error or the SO_RCVTIMEO timeout.
    mutating func receiveBlocking() -> Received {
        let socket = self.socket
        let n = inbound.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
        return (n, errno)
    }

    /// Sleeps until a datagram arrives or the retransmit deadline passes; returns what the state
    /// machine makes of it.
    mutating func waitForPacketOrDeadline() -> TFTPTransferStateMachine.Action {
        while true {
            let now = ContinuousClock.now
            guard let deadline = machine.deadline else { return .failed("no deadline") }
            if now >= deadline {
                let before = machine.retransmissions
                let action = machine.timeout(now: now)
                context.metrics.retransmissions.add(machine.retransmissions - before, ordering: .relaxed)
                return action
            }
            // A blocking receive with SO_RCVTIMEO: one system call per wait (poll, then recv,
            // would be two). The timeout is set only when it changes: nearly every wait starts
            // right after a send, a full retransmit timeout before the deadline.
            setReceiveTimeout(now.duration(to: deadline))
            var received: Received?
            if poll.shouldPoll(active: context.metrics.active.load(ordering: .relaxed)) {
                received = pollForPacket(until: min(now + poll.budget, deadline))
                poll.record(hit: received != nil)
                if received != nil {
                    context.metrics.pollHits.add(1, ordering: .relaxed)
                } else {
                    context.metrics.pollMisses.add(1, ordering: .relaxed)
                }
            }
            let (n, error) = received ?? receiveBlocking()
            if n < 0 {
                // The deadline check handles it.
                if error == EINTR || error == EAGAIN || error == EWOULDBLOCK { continue }
                // ECONNREFUSED: the client's port is gone (ICMP port unreachable).
                return .failed("receive: \(String(cString: strerror(error)))")
            }
            // Fast path: a plain ACK (opcode 4, block), the packet of nearly every exchange.
            if n == 4, inbound[0] == 0, inbound[1] == 4 {
                return machine.receiveAck(UInt16(inbound[2]) << 8 | UInt16(inbound[3]), now: .now)
            }
            switch try? TFTPPacket(decoding: Array(inbound[0..<n])) {
            case .ack(let block):
                return machine.receiveAck(block, now: .now)
            case .error(let code, let message):
                // EDK2 probes the size with tsize, then aborts with ERROR 8 and asks again: normal.
                context.logger.debug(
                    "client ended transfer",
                    metadata: [
                        "tftp.file": "\(request.filename)", "tftp.code": "\(code.rawValue)",
                        "tftp.message": "\(message)",
                    ]
                )
                return machine.receiveError()
            case nil:
                context.metrics.malformed.add(1, ordering: .relaxed)
            default:
                break  // DATA, RRQ… on a read transfer's TID: ignored
            }
        }
    }
}
