import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An OTLP/HTTP traces receiver for the tests, on 127.0.0.1: it accepts only
/// `POST /v1/traces` with a protobuf body (`ExportTraceServiceRequest`), decodes what it is
/// sent with a wire reader of its own (swift-otel's generated types are not public), and checks
/// it as it goes. Anything else (another path, content type or encoding, a body that does not
/// decode, a span with bad IDs or times) is answered 400 and recorded in `problems`, which
/// the tests require to be empty. The OpenTelemetry Collector is not packaged for Debian.
final class OTLPReceiver: @unchecked Sendable {
    struct Span: Sendable, CustomStringConvertible {
        var traceID: String
        var spanID: String
        var parentSpanID: String
        var name: String
        var kind: Int
        var start: UInt64
        var end: UInt64
        var attributes: [String: String]
        var statusCode: Int
        var statusMessage: String
        /// The resource's attributes (`service.name`, `service.instance.id`).
        var resource: [String: String]

        var description: String {
            "\(name) [\(spanID) <- \(parentSpanID.isEmpty ? "root" : parentSpanID)] \(attributes) status \(statusCode)"
        }
    }

    struct WireError: Error, CustomStringConvertible { var description: String }

    let port: Int
    private let listener: Int32
    private let state = Mutex<(spans: [Span], problems: [String], requests: Int)>(([], [], 0))
    private let stopped = Atomic<Bool>(false)

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw WireError(description: "socket: \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw WireError(description: "bind/listen: \(errno)")
        }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) }
        }
        listener = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
        let t = Thread { [self] in acceptLoop() }
        t.start()
    }

    var endpoint: String { "http://127.0.0.1:\(port)" }
    var spans: [Span] { state.withLock { $0.spans } }
    var problems: [String] { state.withLock { $0.problems } }
    var requests: Int { state.withLock { $0.requests } }

    func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    deinit { stop() }

    private func acceptLoop() {
        while !stopped.load(ordering: .relaxed) {
            let c = accept(listener, nil, nil)
            if c < 0 {
                if errno == EINTR { continue }
                return
            }
            var tv = timeval(tv_sec: 30, tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let t = Thread { [self] in
                serve(c)
                close(c)
            }
            t.start()
        }
    }

    /// One connection: requests until it closes (AHC keeps connections alive).
    private func serve(_ fd: Int32) {
        var buffer: [UInt8] = []
        func fill() -> Bool {
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return false }
            buffer.append(contentsOf: chunk[0..<n])
            return true
        }
        func line() -> String? {
            while true {
                if let i = buffer.firstIndex(of: 10) {
                    let l = String(decoding: buffer[..<i], as: UTF8.self).trimmingCharacters(in: .newlines)
                    buffer.removeFirst(i + 1)
                    return l
                }
                guard buffer.count < 1 << 16, fill() else { return nil }
            }
        }
        func bytes(_ n: Int) -> [UInt8]? {
            while buffer.count < n { guard fill() else { return nil } }
            let b = Array(buffer[..<n])
            buffer.removeFirst(n)
            return b
        }
        while let request = line() {
            if request.isEmpty { continue }
            var headers: [String: String] = [:]
            while let h = line(), !h.isEmpty {
                guard let colon = h.firstIndex(of: ":") else { continue }
                headers[h[..<colon].lowercased()] = h[h.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            var body: [UInt8] = []
            if let length = headers["content-length"].flatMap({ Int($0) }) {
                guard let b = bytes(length) else { return }
                body = b
            } else if headers["transfer-encoding"]?.lowercased() == "chunked" {
                while let size = line().flatMap({ Int($0.split(separator: ";")[0], radix: 16) }) {
                    if size == 0 {
                        _ = line()
                        break
                    }
                    guard let b = bytes(size) else { return }
                    body += b
                    _ = line()
                }
            }
            var problem: String?
            if request.split(separator: " ").prefix(2) != ["POST", "/v1/traces"] {
                problem = "unexpected request \(request)"
            } else if headers["content-type"] != "application/x-protobuf" {
                problem = "content-type \(headers["content-type"] ?? "none")"
            } else if let e = headers["content-encoding"], e != "identity" {
                problem = "content-encoding \(e)"
            } else {
                do {
                    let decoded = try Self.decodeRequest(body)
                    state.withLock {
                        $0.spans += decoded
                        $0.requests += 1
                    }
                } catch {
                    problem = "body: \(error)"
                }
            }
            let answer =
                problem == nil
                ? "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                : "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
            if let problem { state.withLock { $0.problems.append(problem) } }
            let out = Array(answer.utf8)
            var sent = 0
            while sent < out.count {
                let n = out[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { return }
                sent += n
            }
        }
    }

    // MARK: The protobuf wire format, as far as OTLP traces need it

    struct Reader {
        var bytes: ArraySlice<UInt8>

        var atEnd: Bool { bytes.isEmpty }

        mutating func varint() throws -> UInt64 {
            var v: UInt64 = 0
            for shift in stride(from: 0, to: 64, by: 7) {
                guard let b = bytes.popFirst() else { throw WireError(description: "truncated varint") }
                v |= UInt64(b & 0x7f) << UInt64(shift)
                if b & 0x80 == 0 { return v }
            }
            throw WireError(description: "varint over 10 bytes")
        }

        mutating func fixed(_ n: Int) throws -> UInt64 {
            guard bytes.count >= n else { throw WireError(description: "truncated fixed\(n * 8)") }
            var v: UInt64 = 0
            for (i, b) in bytes.prefix(n).enumerated() { v |= UInt64(b) << UInt64(8 * i) }
            bytes.removeFirst(n)
            return v
        }

        mutating func delimited() throws -> ArraySlice<UInt8> {
            let n = Int(try varint())
            guard n >= 0, bytes.count >= n else { throw WireError(description: "truncated field of \(n) bytes") }
            let b = bytes.prefix(n)
            bytes.removeFirst(n)
            return b
        }

        /// The next field: its number and wire type; the caller reads or skips its value.
        mutating func tag() throws -> (field: Int, wire: Int) {
            let t = try varint()
            guard t >> 3 > 0 else { throw WireError(description: "field number 0") }
            return (Int(t >> 3), Int(t & 7))
        }

        mutating func skip(_ wire: Int) throws {
            switch wire {
            case 0: _ = try varint()
            case 1: _ = try fixed(8)
            case 2: _ = try delimited()
            case 5: _ = try fixed(4)
            default: throw WireError(description: "wire type \(wire)")
            }
        }

        /// Each field of a message, to `body`, which must consume or skip it.
        static func fields(_ bytes: ArraySlice<UInt8>, _ body: (Int, Int, inout Reader) throws -> Void) throws {
            var r = Reader(bytes: bytes)
            while !r.atEnd {
                let (field, wire) = try r.tag()
                try body(field, wire, &r)
            }
        }
    }

    static func string(_ b: ArraySlice<UInt8>) throws -> String {
        guard let s = String(validating: b, as: UTF8.self) else { throw WireError(description: "string not UTF-8") }
        return s
    }

    static func hex(_ b: ArraySlice<UInt8>) -> String { b.map { String(format: "%02x", $0) }.joined() }

    /// KeyValue{1 key, 2 AnyValue{1 string, 2 bool, 3 int, 4 double}}, as text.
    static func keyValue(_ b: ArraySlice<UInt8>) throws -> (String, String) {
        var key = ""
        var value = ""
        try Reader.fields(b) { field, wire, r in
            switch (field, wire) {
            case (1, 2): key = try string(try r.delimited())
            case (2, 2):
                try Reader.fields(try r.delimited()) { f, w, r in
                    switch (f, w) {
                    case (1, 2): value = try string(try r.delimited())
                    case (2, 0): value = try r.varint() != 0 ? "true" : "false"
                    case (3, 0): value = "\(Int64(bitPattern: try r.varint()))"
                    case (4, 1): value = "\(Double(bitPattern: try r.fixed(8)))"
                    default: try r.skip(w)
                    }
                }
            default: try r.skip(wire)
            }
        }
        guard !key.isEmpty else { throw WireError(description: "attribute without a key") }
        return (key, value)
    }

    static func decodeRequest(_ body: [UInt8]) throws -> [Span] {
        var spans: [Span] = []
        // ExportTraceServiceRequest{1 resource_spans}
        try Reader.fields(body[...]) { field, wire, r in
            guard field == 1, wire == 2 else { return try r.skip(wire) }
            var resource: [String: String] = [:]
            var scopeSpans: [ArraySlice<UInt8>] = []
            // ResourceSpans{1 resource{1 attributes}, 2 scope_spans}
            try Reader.fields(try r.delimited()) { f, w, r in
                switch (f, w) {
                case (1, 2):
                    try Reader.fields(try r.delimited()) { f, w, r in
                        if f == 1, w == 2 {
                            let (k, v) = try keyValue(try r.delimited())
                            resource[k] = v
                        } else {
                            try r.skip(w)
                        }
                    }
                case (2, 2): scopeSpans.append(try r.delimited())
                default: try r.skip(w)
                }
            }
            // ScopeSpans{2 spans}
            for s in scopeSpans {
                try Reader.fields(s) { f, w, r in
                    guard f == 2, w == 2 else { return try r.skip(w) }
                    spans.append(try span(try r.delimited(), resource: resource))
                }
            }
        }
        return spans
    }

    /// Span{1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 7/8 times, 9 attributes,
    /// 15 status{2 message, 3 code}}, checked: IDs of 16 and 8 bytes (the parent's 8, or none),
    /// not all zero, a name, and an end not before the start.
    static func span(_ b: ArraySlice<UInt8>, resource: [String: String]) throws -> Span {
        var s = Span(
            traceID: "",
            spanID: "",
            parentSpanID: "",
            name: "",
            kind: 0,
            start: 0,
            end: 0,
            attributes: [:],
            statusCode: 0,
            statusMessage: "",
            resource: resource
        )
        var rawTrace: ArraySlice<UInt8> = []
        var rawSpan: ArraySlice<UInt8> = []
        var rawParent: ArraySlice<UInt8> = []
        try Reader.fields(b) { f, w, r in
            switch (f, w) {
            case (1, 2): rawTrace = try r.delimited()
            case (2, 2): rawSpan = try r.delimited()
            case (4, 2): rawParent = try r.delimited()
            case (5, 2): s.name = try string(try r.delimited())
            case (6, 0): s.kind = Int(try r.varint())
            case (7, 1): s.start = try r.fixed(8)
            case (8, 1): s.end = try r.fixed(8)
            case (9, 2):
                let (k, v) = try keyValue(try r.delimited())
                s.attributes[k] = v
            case (15, 2):
                try Reader.fields(try r.delimited()) { f, w, r in
                    switch (f, w) {
                    case (2, 2): s.statusMessage = try string(try r.delimited())
                    case (3, 0): s.statusCode = Int(try r.varint())
                    default: try r.skip(w)
                    }
                }
            default: try r.skip(w)
            }
        }
        guard rawTrace.count == 16, rawTrace.contains(where: { $0 != 0 }) else {
            throw WireError(description: "span \(s.name): trace ID of \(rawTrace.count) bytes")
        }
        guard rawSpan.count == 8, rawSpan.contains(where: { $0 != 0 }) else {
            throw WireError(description: "span \(s.name): span ID of \(rawSpan.count) bytes")
        }
        guard rawParent.isEmpty || (rawParent.count == 8 && rawParent.contains(where: { $0 != 0 })) else {
            throw WireError(description: "span \(s.name): parent span ID of \(rawParent.count) bytes")
        }
        guard !s.name.isEmpty else { throw WireError(description: "a span without a name") }
        guard s.start > 0, s.end >= s.start else {
            throw WireError(description: "span \(s.name): start \(s.start), end \(s.end)")
        }
        s.traceID = hex(rawTrace)
        s.spanID = hex(rawSpan)
        s.parentSpanID = hex(rawParent)
        return s
    }
}
