import CFarrierNet
import Dispatch
import FarrierCore
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Replies waiting to leave one DHCP socket, sent together as one sendmmsg(2). Owned by the
/// socket's thread. Replies are queued straight into the send buffer: their bytes end to end,
/// where each starts, and where each goes.
final class DHCPOutbox {
    let socket: CInt
    var bytes: [UInt8] = []
    var starts: [Int] = []
    var destinations: [sockaddr_in] = []
    let metrics: DHCPMetrics
    let logger: Logger

    init(socket: CInt, metrics: DHCPMetrics, logger: Logger) {
        self.socket = socket
        self.metrics = metrics
        self.logger = logger
    }

    func enqueue(_ reply: [UInt8], _ address: IPv4Address, _ port: Int) {
        starts.append(bytes.count)
        bytes.append(contentsOf: reply)
        destinations.append(sockaddr_in(address, port: port))
    }

    /// Sends everything queued. A reply the kernel refuses is counted and skipped, so one bad
    /// destination never holds back the rest.
    func flush() {
        guard !starts.isEmpty else { return }
        let failed = send()
        if !failed.isEmpty {
            metrics.sendErrors.add(failed.count, ordering: .relaxed)
            for (i, code) in failed {
                logger.debug(
                    "DHCP reply not sent",
                    metadata: [
                        "dhcp.dst": "\(destinations[i].address):\(destinations[i].port)",
                        "dhcp.error": "\(String(cString: strerror(code)))",
                    ]
                )
            }
        }
        bytes.removeAll(keepingCapacity: true)
        starts.removeAll(keepingCapacity: true)
        destinations.removeAll(keepingCapacity: true)
    }

    /// One sendmmsg for the lot (more when the kernel takes fewer), each reply to its own
    /// destination. Returns the index and errno of each reply that failed.
    func send() -> [(Int, CInt)] {
        let n = starts.count
        let ends = starts.dropFirst() + [bytes.count]
        var iovecs = [iovec](repeating: iovec(), count: n)
        var headers = [farrier_mmsghdr](repeating: farrier_mmsghdr(), count: n)
        var failed: [(Int, CInt)] = []
        let fd = socket
        bytes.withUnsafeMutableBytes { bytes in
            destinations.withUnsafeMutableBufferPointer { destinations in
                iovecs.withUnsafeMutableBufferPointer { iovecs in
                    headers.withUnsafeMutableBufferPointer { headers in
                        for (i, (start, end)) in zip(starts, ends).enumerated() {
                            iovecs[i] = iovec(iov_base: bytes.baseAddress! + start, iov_len: end - start)
                            headers[i].msg_hdr.msg_name = UnsafeMutableRawPointer(destinations.baseAddress! + i)
                            headers[i].msg_hdr.msg_namelen = socklen_t(MemoryLayout<sockaddr_in>.size)
                            headers[i].msg_hdr.msg_iov = iovecs.baseAddress! + i
                            headers[i].msg_hdr.msg_iovlen = 1
                        }
                        // Each pass sends at least one reply or skips one that failed, except
                        // for EINTR, which gets a bounded number of retries.
                        var next = 0
                        var interrupted = 0
                        while next < n {
                            let rc = farrier_sendmmsg(fd, headers.baseAddress! + next, UInt32(n - next))
                            if rc > 0 {
                                next += Int(rc)
                            } else if rc < 0, errno == EINTR, interrupted < 8 {
                                interrupted += 1
                            } else {
                                failed.append((next, rc < 0 ? errno : EIO))
                                next += 1
                            }
                        }
                    }
                }
            }
        }
        return failed
    }
}

/// One DHCP socket (an interface and a port) served by a thread of its own, in a loop:
/// 1. recvmmsg(2) blocks for the first datagram and takes every other one already queued (up to
///    `batch`);
/// 2. each is decoded and answered in turn; replies that need nothing written (OFFERs, NAKs,
///    ProxyDHCP) leave at once, together, in one sendmmsg(2);
/// 3. the leases the batch bound are written in one transaction and fsynced (group commit), and
///    only then do their ACKs leave, in one more sendmmsg.
/// Under load the batches grow by themselves: what arrives during one fsync is the next batch.
/// Under light load they would not: at 2 000 exchanges a second nearly every REQUEST came alone,
/// and paid a wakeup, a transaction and an fsync of its own (measured with perf at 2 000/s:
/// fdatasync, the WAL's pwrite and SQLite's transaction were about 30 % of the thread's CPU,
/// wakeups most of another 15 %). So a batch that bound leases and did not fill the receive
/// batch waits `commitDelay` (8 ms) first, then takes in and answers what arrived meanwhile,
/// and commits the lot: one wakeup and one fsync for every exchange of those milliseconds.
/// CPU per 10 000 DORA at 2 000/s (bench/dhcp, AMD, 5 ramps each): 0.87–0.90 s at 2 ms,
/// 0.76–0.84 s at 4 ms, 0.63–0.65 s at 8 ms; an ACK 8 ms later is nothing to a client that
/// retransmits after seconds.
///
/// Why not an event loop and a committer thread (the first design): DHCP is a request and a
/// reply with nothing to multiplex, and under load what costs is wakeups, not packets. Through
/// SwiftNIO each wakeup also paid an epoll_wait, a read that found the queue empty, and for the
/// ACKs a cross-thread hop from the committer (an eventfd write and read); and the committer was
/// a second thread to wake and schedule. On a small machine a third busy thread is what pushes
/// the rest of the host (on the bench, the load generator) off its core.
final class DHCPSocketThread: Sendable {
    static let batch = 64
    /// Larger than any DHCP message a client sends (576 bytes unless it raises option 57, and
    /// an Ethernet frame holds 1472); a longer datagram is flagged MSG_TRUNC and dropped.
    static let bufferSize = 2048
    /// How often a blocked receive wakes to check for shutdown.
    static let receiveTimeout = timeval(tv_sec: 0, tv_usec: 200_000)

    let engine: DHCPEngine
    let interface: InterfaceAddress
    let port: Int
    let socket: CInt
    let commitDelay: Duration
    let stopping = Atomic<Bool>(false)
    let finished = DispatchGroup()

    /// Takes ownership of `socket` (from `makeInterfaceSocket`, with `receiveTimeout`); `stop()`
    /// closes it.
    init(engine: DHCPEngine, interface: InterfaceAddress, port: Int, socket: CInt, commitDelay: Duration = .zero) {
        self.engine = engine
        self.interface = interface
        self.port = port
        self.socket = socket
        self.commitDelay = commitDelay
    }

    func start() {
        finished.enter()
        let name = "dhcp-\(port)"
        let thread = Thread { [self] in
            Thread.current.name = name  // set from the thread itself: corelibs Foundation names it only then
            run()
            finished.leave()
        }
        thread.stackSize = 512 << 10
        thread.start()
    }

    /// Stops the thread (within `receiveTimeout` plus one batch) and closes the socket once it
    /// has, so nothing can send on a descriptor number that is being reused.
    func stop() async {
        stopping.store(true, ordering: .relaxed)
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            finished.notify(queue: .global()) { c.resume() }
        }
        Glibc.close(socket)
    }

    func run() {
        let batch = Self.batch
        let size = Self.bufferSize
        let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: batch * size, alignment: 16)
        let names = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: batch)
        let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: batch)
        let headers = UnsafeMutablePointer<farrier_mmsghdr>.allocate(capacity: batch)
        defer {
            buffers.deallocate()
            names.deallocate()
            iovecs.deallocate()
            headers.deallocate()
        }
        names.initialize(repeating: sockaddr_in(), count: batch)
        for i in 0..<batch {
            iovecs[i] = iovec(iov_base: buffers.baseAddress! + i * size, iov_len: size)
            headers[i] = farrier_mmsghdr()
            headers[i].msg_hdr.msg_iov = iovecs + i
            headers[i].msg_hdr.msg_iovlen = 1
            headers[i].msg_hdr.msg_name = UnsafeMutableRawPointer(names + i)
        }
        let outbox = DHCPOutbox(socket: socket, metrics: engine.metrics, logger: engine.logger)
        let send = outbox.enqueue
        var leases = LeaseBatch()
        var failures = 0
        let (delaySeconds, delayAttoseconds) = commitDelay.components
        let delay = timespec(tv_sec: Int(delaySeconds), tv_nsec: Int(delayAttoseconds / 1_000_000_000))

        /// Takes up to `batch` datagrams (waiting for the first, up to `receiveTimeout`, when
        /// `wait`) and answers each. Returns how many came, or -1 with errno set.
        func receiveAndAnswer(wait: Bool) -> Int {
            for i in 0..<batch {
                headers[i].msg_hdr.msg_namelen = socklen_t(MemoryLayout<sockaddr_in>.size)
                headers[i].msg_hdr.msg_flags = 0
            }
            let n = Int(
                wait
                    ? farrier_recvmmsg_waitforone(socket, headers, UInt32(batch))
                    : farrier_recvmmsg_nowait(socket, headers, UInt32(batch))
            )
            guard n > 0 else { return n }
            engine.metrics.received.add(n, ordering: .relaxed)
            for i in 0..<n {
                let ingress = DHCPIngress(
                    interface: interface.name,
                    address: interface.address,
                    network: interface.network,
                    port: port,
                    sourceAddress: names[i].address,
                    sourcePort: names[i].port
                )
                if headers[i].msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0 {
                    engine.dropMalformed(
                        "dropped oversized DHCP packet",
                        reason: "longer than the \(size)-byte buffer (truncated)",
                        ingress: ingress,
                        count: Int(headers[i].msg_len)
                    )
                    continue
                }
                let bytes = [UInt8](
                    UnsafeRawBufferPointer(start: buffers.baseAddress! + i * size, count: Int(headers[i].msg_len))
                )
                engine.handle(bytes, ingress: ingress, leases: &leases, send: send)
            }
            return n
        }

        while !stopping.load(ordering: .relaxed) {
            let n = receiveAndAnswer(wait: true)
            if n < 0 {
                let code = errno
                if code == EAGAIN || code == EWOULDBLOCK || code == EINTR { continue }  // the timeout: check stopping
                // Not expected on a bound UDP socket; logged, and paced so it cannot spin.
                failures += 1
                if failures == 1 || failures % 100 == 0 {
                    engine.logger.error(
                        "DHCP receive failed",
                        metadata: [
                            "dhcp.interface": "\(interface.name)", "dhcp.port": "\(port)",
                            "dhcp.error": "\(String(cString: strerror(code)))", "dhcp.failures": "\(failures)",
                        ]
                    )
                }
                usleep(10_000)
                continue
            }
            outbox.flush()
            guard !leases.isEmpty else { continue }
            if commitDelay > .zero, n < batch {
                // Gather: one sleep, then everything that came meanwhile (bounded: one more
                // batch), answered now; its leases join this commit.
                var left = delay
                var rest = timespec()
                while nanosleep(&left, &rest) != 0, errno == EINTR { left = rest }
                if receiveAndAnswer(wait: false) > 0 { outbox.flush() }
            }
            leases.commit(to: engine.store)
            outbox.flush()
        }
    }
}
