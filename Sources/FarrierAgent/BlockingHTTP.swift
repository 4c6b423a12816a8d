import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A small blocking HTTP/1.1 client over a POSIX socket, for the agent: one request per
/// connection, bodies with Content-Length, streaming reads into a caller's buffer. The agent
/// runs alone in its ramdisk, so blocking threads are simpler and cheaper than an event loop,
/// and memory stays one buffer per stream whatever the image size.
struct BlockingHTTP {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    struct URLParts {
        var host: String
        var port: UInt16
        var path: String
    }

    static func parse(_ url: String) throws -> URLParts {
        guard url.hasPrefix("http://") else {
            throw Failure(description: "only http:// URLs are supported, got \(url)")
        }
        let rest = url.dropFirst(7)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let path = slash == rest.endIndex ? "/" : String(rest[slash...])
        var host = String(authority)
        var port: UInt16 = 80
        if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let p = UInt16(authority[authority.index(after: colon)...]) else {
                throw Failure(description: "bad port in \(url)")
            }
            port = p
        }
        return URLParts(host: host, port: port, path: path)
    }

    /// An open response: status, headers, and the body to read.
    final class Response {
        let fd: Int32
        let status: Int
        let headers: [String: String]
        var remaining: Int64
        var pending: [UInt8]

        init(fd: Int32, status: Int, headers: [String: String], pending: [UInt8]) {
            self.fd = fd
            self.status = status
            self.headers = headers
            self.remaining = Int64(headers["content-length"] ?? "") ?? -1
            self.pending = pending
        }

        deinit { close(fd) }

        /// Reads up to `buffer.count` body bytes; 0 at the end of the body.
        func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
            if remaining == 0 { return 0 }
            var want = buffer.count
            if remaining > 0 { want = Int(min(Int64(want), remaining)) }
            var n: Int
            if !pending.isEmpty {
                n = min(want, pending.count)
                pending.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
                pending.removeFirst(n)
            } else {
                repeat { n = Glibc.read(fd, buffer.baseAddress, want) } while n < 0 && errno == EINTR
                if n < 0 { throw Failure(description: "read: \(String(cString: strerror(errno)))") }
                if n == 0 {
                    if remaining > 0 {
                        throw Failure(description: "connection closed with \(remaining) body bytes missing")
                    }
                    remaining = 0
                    return 0
                }
            }
            if remaining > 0 { remaining -= Int64(n) }
            return n
        }

        func readAll(limit: Int = 1 << 20) throws -> [UInt8] {
            var out: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                let n = try chunk.withUnsafeMutableBytes { try read(into: $0) }
                if n == 0 { break }
                out += chunk[0..<n]
                if out.count > limit { throw Failure(description: "response larger than \(limit) bytes") }
            }
            return out
        }
    }

    /// Sends a request and reads the status line and headers.
    static func request(
        _ method: String,
        _ url: String,
        headers: [String: String] = [:],
        body: [UInt8] = [],
        timeoutSeconds: Int = 30
    ) throws -> Response {
        let u = try parse(url)
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(u.host, String(u.port), &hints, &res) == 0, let ai = res else {
            throw Failure(description: "cannot resolve \(u.host)")
        }
        defer { freeaddrinfo(res) }
        let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype, ai.pointee.ai_protocol)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "connect \(u.host):\(u.port): \(e)")
        }
        var head =
            "\(method) \(u.path) HTTP/1.1\r\nHost: \(u.host):\(u.port)\r\nConnection: close\r\nUser-Agent: farrier-agent\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        if method != "GET" || !body.isEmpty { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        do {
            try writeAll(fd, Array(head.utf8) + body)
            // Status line and headers, up to 64 KiB.
            var buf: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 16 * 1024)
            var end: Int?
            while end == nil {
                let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n < 0, errno == EINTR { continue }
                guard n > 0 else {
                    throw Failure(description: "\(method) \(url): connection closed before the response")
                }
                buf += chunk[0..<n]
                end = find(buf, [13, 10, 13, 10])
                if end == nil, buf.count > 65536 { throw Failure(description: "response headers too long") }
            }
            let headText = String(decoding: buf[0..<end!], as: UTF8.self)
            var lines = headText.components(separatedBy: "\r\n")
            let statusLine = lines.removeFirst().split(separator: " ")
            guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
                throw Failure(description: "bad status line")
            }
            var hs: [String: String] = [:]
            for l in lines {
                guard let c = l.firstIndex(of: ":") else { continue }
                hs[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
            }
            if hs["transfer-encoding"]?.lowercased().contains("chunked") == true {
                throw Failure(description: "chunked responses are not supported")
            }
            return Response(fd: fd, status: status, headers: hs, pending: Array(buf[(end! + 4)...]))
        } catch {
            close(fd)
            throw error
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw Failure(description: "write: \(String(cString: strerror(errno)))")
                }
                off += n
            }
        }
    }

    static func find(_ hay: [UInt8], _ needle: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] {
            if Array(hay[i..<(i + needle.count)]) == needle { return i }
        }
        return nil
    }
}

/// A download that survives the server going away: when the connection drops before the whole
/// body has arrived (the server was restarted, a link flapped), it asks again for the rest with
/// `Range: bytes=N-` and carries on, up to `attempts` times, 2 s apart. The caller
/// sees one stream of bytes; nothing is read twice or skipped (a server that answers the range
/// with anything but the exact rest is an error).
final class ResumableDownload {
    let url: String
    let attempts: Int
    let delaySeconds: UInt32 = 2
    let log: (String) -> Void
    /// Sent with every request (the agent token).
    let headers: [String: String]
    /// The body's full length, from the first response.
    let total: Int64
    private(set) var offset: Int64 = 0
    private var response: BlockingHTTP.Response?

    init(url: String, headers: [String: String] = [:], attempts: Int, log: @escaping (String) -> Void) throws {
        self.url = url
        self.headers = headers
        self.attempts = max(1, attempts)
        self.log = log
        // The first request too is asked again, 2 s apart, while it fails on the way or is
        // answered 5xx (a site whose region is away for a moment, a replica killed); a refusal
        // (4xx) is final.
        for attempt in 1...self.attempts {
            var failure: any Error = BlockingHTTP.Failure(description: "GET \(url): no answer")
            var refused = false
            do {
                let r = try BlockingHTTP.request("GET", url, headers: headers, timeoutSeconds: 60)
                if r.status == 200 {
                    total = r.remaining
                    response = r
                    return
                }
                failure = BlockingHTTP.Failure(description: "GET \(url): HTTP \(r.status)")
                refused = r.status < 500
            } catch { failure = error }
            guard !refused, attempt < self.attempts else { throw failure }
            log("GET \(url) attempt \(attempt) failed (\(failure)); again in \(delaySeconds) s")
            sleep(delaySeconds)
        }
        throw BlockingHTTP.Failure(description: "GET \(url): no attempt made")
    }

    /// Reads up to `buffer.count` bytes; 0 at the end of the body.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var failures = 0
        while true {
            do {
                if response == nil { response = try reopen() }
                let n = try response!.read(into: buffer)
                offset += Int64(n)
                return n
            } catch {
                response = nil
                failures += 1
                // Without a length there is no telling what is missing: no resuming.
                guard total >= 0, failures < attempts else { throw error }
                log(
                    "download of \(url) interrupted at byte \(offset) of \(total) (\(error)); resuming in \(delaySeconds) s"
                )
                sleep(delaySeconds)
            }
        }
    }

    private func reopen() throws -> BlockingHTTP.Response {
        let r = try BlockingHTTP.request(
            "GET",
            url,
            headers: headers.merging(["Range": "bytes=\(offset)-"]) { $1 },
            timeoutSeconds: 60
        )
        let expected = "bytes \(offset)-\(total - 1)/\(total)"
        guard r.status == 206, r.headers["content-range"] == expected, r.remaining == total - offset else {
            throw BlockingHTTP.Failure(
                description:
                    "GET \(url) from byte \(offset): HTTP \(r.status), content-range \(r.headers["content-range"] ?? "none") (wanted \(expected))"
            )
        }
        log("resumed \(url) at byte \(offset)")
        return r
    }
}
