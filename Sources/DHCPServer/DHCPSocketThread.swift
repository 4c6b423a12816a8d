#if canImport(Glibc)
import Glibc
#endif
import CFarrierNet
import Dispatch
import FarrierCore
import Foundation
import Logging
import Synchronization

/// Replies waiting to leave one DHCP socket, sent together as one sendmmsg(2). Owned by the
/// socket's thread.
final class DHCPOutbox {
    struct Reply {
        var bytes: [UInt8]
        var address: IPv4Address
        var port: Int
    }

    let socket: CInt
    var pending: [Reply] = []
    let metrics: DHCPMetrics
    let logger: Logger

    init(socket: CInt, metrics: DHCPMetrics, logger: Logger) {
        self.socket = socket
        self.metrics = metrics
        self.logger = logger
    }

    func enqueue(_ reply: [UInt8], _ address: IPv4Address, _ port: Int) {
        pending.append(Reply(bytes: reply, address: address, port: port))
    }

    /// Sends everything queued. A reply the kernel refuses is counted and skipped, so one bad
    /// destination never holds back the rest.
    func flush() {
        guard !pending.isEmpty else { return }
        let failed = Self.send(pending, on: socket)
        pending.removeAll(keepingCapacity: true)
        guard !failed.isEmpty else { return }
        metrics.sendErrors.add(failed.count, ordering: .relaxed)
        for (reply, code) in failed {
            logger.debug(
                "DHCP reply not sent",
                metadata: ["dhcp.dst": "\(reply.address):\(reply.port)", "dhcp.error": "\(String(cString: strerror(code)))"])
        }
    }

    /// One sendmmsg for the lot (more when the kernel takes fewer), each reply with its own
    /// destination. Returns the replies that failed with their errno.
    static func send(_ replies: [Reply], on fd: CInt) -> [(Reply, CInt)] {
        let n = replies.count
        var blob: [UInt8] = []
        blob.reserveCapacity(replies.reduce(0) { $0 + $1.bytes.count })
        var offsets: [Int] = []
        offsets.reserveCapacity(n)
        for r in replies {
            offsets.append(blob.count)
            blob.append(contentsOf: r.bytes)
        }
        var names = replies.map { r -> sockaddr_in in
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = in_port_t(UInt16(truncatingIfNeeded: r.port).bigEndian)
            sin.sin_addr = in_addr(s_addr: r.address.value.bigEndian)
            return sin
        }
        var iovecs = [iovec](repeating: iovec(), count: n)
        var headers = [farrier_mmsghdr](repeating: farrier_mmsghdr(), count: n)
        var failed: [(Reply, CInt)] = []
        blob.withUnsafeMutableBytes { bytes in
            names.withUnsafeMutableBufferPointer { names in
                iovecs.withUnsafeMutableBufferPointer { iovecs in
                    headers.withUnsafeMutableBufferPointer { headers in
                        for i in 0..<n {
                            iovecs[i] = iovec(iov_base: bytes.baseAddress! + offsets[i], iov_len: replies[i].bytes.count)
                            headers[i].msg_hdr.msg_name = UnsafeMutableRawPointer(names.baseAddress! + i)
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
                                failed.append((replies[next], rc < 0 ? errno : EIO))
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
    let stopping = Atomic<Bool>(false)
    let finished = DispatchGroup()

    /// Takes ownership of `socket` (closed by `stop()`, or here if setting it up fails).
    init(engine: DHCPEngine, interface: InterfaceAddress, port: Int, socket: CInt) throws {
        var timeout = Self.receiveTimeout
        guard setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            let e = String(cString: strerror(errno))
            Glibc.close(socket)
            throw SocketError(description: "SO_RCVTIMEO on \(interface.name):\(port): \(e)")
        }
        self.engine = engine
        self.interface = interface
        self.port = port
        self.socket = socket
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
        let batch = Self.batch, size = Self.bufferSize
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
        while !stopping.load(ordering: .relaxed) {
            for i in 0..<batch {
                headers[i].msg_hdr.msg_namelen = socklen_t(MemoryLayout<sockaddr_in>.size)
                headers[i].msg_hdr.msg_flags = 0
            }
            let n = farrier_recvmmsg_waitforone(socket, headers, UInt32(batch))
            if n < 0 {
                let code = errno
                if code == EAGAIN || code == EWOULDBLOCK || code == EINTR { continue }  // the timeout: check stopping
                // Not expected on a bound UDP socket; logged, and paced so it cannot spin.
                failures += 1
                if failures == 1 || failures % 100 == 0 {
                    engine.logger.error(
                        "DHCP receive failed",
                        metadata: ["dhcp.interface": "\(interface.name)", "dhcp.port": "\(port)",
                                   "dhcp.error": "\(String(cString: strerror(code)))", "dhcp.failures": "\(failures)"])
                }
                usleep(10_000)
                continue
            }
            for i in 0..<Int(n) {
                let length = Int(headers[i].msg_len)
                var source = IPv4Address.any, sourcePort = 0
                if names[i].sin_family == sa_family_t(AF_INET) {
                    source = IPv4Address(UInt32(bigEndian: names[i].sin_addr.s_addr))
                    sourcePort = Int(UInt16(bigEndian: names[i].sin_port))
                }
                if headers[i].msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0 {
                    engine.metrics.received.add(1, ordering: .relaxed)
                    engine.metrics.malformed.add(1, ordering: .relaxed)
                    engine.logger.debug(
                        "dropped oversized DHCP packet",
                        metadata: ["dhcp.src": "\(source):\(sourcePort)", "dhcp.interface": "\(interface.name)",
                                   "dhcp.limit": "\(size)"])
                    continue
                }
                let bytes = [UInt8](UnsafeRawBufferPointer(start: buffers.baseAddress! + i * size, count: length))
                let ingress = DHCPIngress(
                    interface: interface.name, address: interface.address, network: interface.network, port: port,
                    sourceAddress: source, sourcePort: sourcePort)
                engine.handle(bytes, ingress: ingress, leases: &leases, send: send)
            }
            outbox.flush()
            if !leases.isEmpty {
                leases.commit(to: engine.store)
                outbox.flush()
            }
        }
    }
}
