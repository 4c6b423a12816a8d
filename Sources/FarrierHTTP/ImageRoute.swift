import CoreMetrics
import FarrierCore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOPosix
import Synchronization
import Tracing

/// Where `/images/<sha256>` finds its bytes: the region's blob directory, or a site's cache of
/// the region's files.
public protocol ImageSource: Sendable {
    /// The file named `name` (a SHA-256), held until its `release` runs; nil when there is none.
    /// An error is the source's own failure (a site that could not pull the file): 502.
    func open(_ name: String) async throws -> ImageFile?
}

/// An image file held open for one response.
public struct ImageFile: Sendable {
    public var path: String
    public var size: Int64
    /// Called once the response no longer needs the file (sent, refused or cut off).
    public var release: @Sendable () async -> Void

    public init(path: String, size: Int64, release: @escaping @Sendable () async -> Void) {
        self.path = path
        self.size = size
        self.release = release
    }
}

/// The region's images: files named by their SHA-256 in one directory.
public struct DirectoryImageSource: ImageSource {
    public let directory: String
    public init(directory: String) { self.directory = directory }

    public func open(_ name: String) async throws -> ImageFile? {
        let path = directory + "/" + name
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        return ImageFile(path: path, size: Int64(st.st_size), release: {})
    }
}

/// `GET`/`HEAD /images/<sha256>` on the agent channel (after `ImageAccessMiddleware` let the
/// request through): the whole file or one `bytes=` range (416 when it cannot be met), a
/// strong ETag (the name is the content's SHA-256) and `If-None-Match`.
public func addImageRoute(_ router: Router<some RequestContext>, source: any ImageSource) {
    @Sendable func answer(_ request: Request, _ context: some RequestContext, head: Bool) async throws -> Response {
        let name = try context.parameters.require("name")
        // Content-addressed names only: nothing to resolve, nowhere else to reach.
        guard name.count == 64, name.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            throw HTTPError(.badRequest, message: "an image is named by its SHA-256 (64 lowercase hex digits)\n")
        }
        let opened: ImageFile?
        do {
            opened = try await source.open(name)
        } catch {
            throw HTTPError(.badGateway, message: "image \(name.prefix(12))…: \(error)\n")
        }
        guard let file = opened else { throw HTTPError(.notFound, message: "no such image\n") }
        // An agent's download in a step's trace (it sends the step's `traceparent`): a span
        // until the file is let go.
        let span = imageSpan(request, name: name, size: file.size)
        // Released when the last holder lets go: at the end of this function for an answer
        // without a body; for a body, once it is sent or cut off, or dropped unsent.
        let hold = ReleaseOnce {
            await file.release()
            span?.end()
        }
        let path = file.path
        let size = file.size
        let etag = "\"\(name)\""
        var headers: HTTPFields = [.acceptRanges: "bytes", .eTag: etag, .contentType: "application/octet-stream"]
        if let match = request.headers[.ifNoneMatch],
            match.split(separator: ",").contains(where: {
                $0.trimmingCharacters(in: .whitespaces) == etag || $0.trimmingCharacters(in: .whitespaces) == "*"
            })
        {
            return Response(status: .notModified, headers: headers)
        }
        // If-Range with another validator: the whole file (RFC 9110 13.1.5).
        var rangeHeader = request.headers[.range]
        if let ifRange = request.headers[.ifRange], ifRange != etag { rangeHeader = nil }
        if request.headers[values: .range].count > 1 { rangeHeader = nil }
        let status: HTTPResponse.Status
        let range: ClosedRange<Int64>?
        switch ByteRange.answer(range: rangeHeader, size: size) {
        case .unsatisfiable:
            headers[.contentRange] = "bytes */\(size)"
            return Response(status: .rangeNotSatisfiable, headers: headers)
        case .whole:
            status = .ok
            range = size > 0 ? 0...(size - 1) : nil
            headers[.contentLength] = "\(size)"
        case .part(let r):
            status = .partialContent
            range = r
            headers[.contentRange] = "bytes \(r.lowerBound)-\(r.upperBound)/\(size)"
            headers[.contentLength] = "\(r.count)"
        }
        span?.attributes["http.response.status_code"] = Int(status.code)
        guard !head, let range else { return Response(status: status, headers: headers, body: .init()) }
        let loop = (context as? FarrierRequestContext)?.eventLoop
        let body = ImageStream.body(path: path, range: range, eventLoop: loop, hold: hold)
        return Response(status: status, headers: headers, body: body)
    }
    @Sendable func imageSpan(_ request: Request, name: String, size: Int64) -> (any Span)? {
        var headers: [String: String] = [:]
        for key in ["traceparent", "tracestate"] { headers[key] = request.headers[HTTPField.Name(key)!] }
        guard let carrier = StepTrace.sanitized(headers) else { return nil }
        var parent = InstrumentationContext.topLevel
        InstrumentationSystem.instrument.extract(carrier, into: &parent, using: HeaderExtractor())
        let span = InstrumentationSystem.tracer.startSpan("GET /images/:name", context: parent, ofKind: .server)
        span.attributes["http.request.method"] = request.method.rawValue
        span.attributes["http.route"] = "/images/:name"
        span.attributes["farrier.image.sha256"] = name
        span.attributes["farrier.image.size"] = Int(size)
        if let range = request.headers[.range] { span.attributes["http.request.header.range"] = range }
        return span
    }
    router.get("/images/:name") { request, context in try await answer(request, context, head: false) }
    router.head("/images/:name") { request, context in try await answer(request, context, head: true) }
}

/// An image's bytes as a response body: `chunk`-byte reads on NIO's thread pool, one read ahead
/// of the writer, and after each write a wait for the connection's event loop to have run it.
///
/// Why not Hummingbird's `FileIO` (measured serving 1 GiB over HTTPS to 16 clients at once on
/// 2 cores, /proc and perf over the run; README, Benchmarks):
/// - Its writes reach the event loop from another thread, and a writer is only held back once
///   the channel has turned unwritable, which the loop learns when it gets to the write: while
///   the loop was busy sealing other streams, a fast reader queued chunk after chunk behind it.
///   Peak RSS was 334 MB for four streams (979 MB with 16 KiB chunks), and the churn of fresh
///   pages was a sixth of the CPU. Waiting for a task submitted after each write bounds what a
///   stream has queued to one chunk.
/// - Its reader reads up to 8 chunks ahead of the writer, so bigger chunks cost 8 times their
///   size per stream. One chunk ahead keeps the disk and the socket busy at once.
/// - Every chunk costs four hand-offs between threads (the read, its result, the write, the
///   wait). With 512 KiB chunks read one ahead, 16 streams take 0.88–0.99 s of CPU per GiB
///   (128 KiB chunks, paced: about 1.2) at a peak RSS of 96–99 MB; one stream takes 0.72 s.
enum ImageStream {
    static let chunk = 512 * 1024

    static func body(
        path: String,
        range: ClosedRange<Int64>,
        eventLoop: (any EventLoop)?,
        hold: ReleaseOnce? = nil
    ) -> ResponseBody {
        ResponseBody(contentLength: Int(range.count)) { body in
            defer { hold?.run() }
            var writer: any ResponseBodyWriter =
                if let eventLoop { PacedBodyWriter(inner: body, eventLoop: eventLoop) } else { body }
            let pool = NIOThreadPool.singleton
            let fd = try await pool.runIfActive { () throws -> CInt in
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw ImageReadError(path: path, errno: errno) }
                return fd
            }
            @Sendable func read(at offset: Int64) -> Task<ByteBuffer, any Error> {
                let length = Int(min(Int64(chunk), range.upperBound - offset + 1))
                return Task { try await pool.runIfActive { try pread(fd, path: path, offset: offset, length: length) } }
            }
            var next: Task<ByteBuffer, any Error>? = read(at: range.lowerBound)
            do {
                var offset = range.lowerBound
                while let pending = next {
                    let buffer = try await pending.value
                    offset += Int64(buffer.readableBytes)
                    next = offset <= range.upperBound ? read(at: offset) : nil
                    let n = buffer.readableBytes
                    try await writer.write(buffer)
                    ImageMetrics.bytes.increment(by: n)
                }
            } catch {
                // The read in flight uses the descriptor: it ends before the descriptor closes.
                _ = try? await next?.value
                close(fd)
                throw error
            }
            // Closed once, before the end is written: a finish that fails (the client hung up
            // as the body ended) must not close the number again, by then maybe another file's.
            close(fd)
            try await writer.finish(nil)
            ImageMetrics.completed.increment()
        }
    }

    /// Up to `length` bytes at `offset` (fewer only at a short read; none is an error: the file
    /// ended before its size said).
    static func pread(_ fd: CInt, path: String, offset: Int64, length: Int) throws -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: length)
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { bytes in
            while true {
                let n = Foundation.pread(fd, bytes.baseAddress, length, off_t(offset))
                if n > 0 { return n }
                if n < 0, errno == EINTR { continue }
                throw ImageReadError(path: path, errno: n == 0 ? EIO : errno)
            }
        }
        return buffer
    }
}

/// Runs a file's release once: when asked, or when the last reference goes (a response dropped
/// before its body ran).
struct HeaderExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}

final class ReleaseOnce: Sendable {
    let action: @Sendable () async -> Void
    let done = Atomic<Bool>(false)

    init(_ action: @escaping @Sendable () async -> Void) { self.action = action }

    func run() {
        guard !done.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let action = action
        Task { await action() }
    }

    deinit { run() }
}

struct ImageReadError: Error, CustomStringConvertible {
    let path: String
    let errno: CInt
    var description: String { "reading image \(path): \(String(cString: strerror(errno)))" }
}

/// What to send for a `Range` header from a file of `size` bytes. Pure, so it is tested
/// without a socket.
enum ByteRange: Equatable {
    /// 200 with the whole file (also for a Range header that is not one `bytes=` range: RFC 9110
    /// lets a server ignore a Range it does not take).
    case whole
    /// 206 with these bytes.
    case part(ClosedRange<Int64>)
    /// 416 with `Content-Range: bytes */size`.
    case unsatisfiable

    static func answer(range header: String?, size: Int64) -> ByteRange {
        guard let header else { return .whole }
        let h = header.trimmingCharacters(in: .whitespaces)
        guard h.lowercased().hasPrefix("bytes=") else { return .whole }
        let spec = h.dropFirst(6).trimmingCharacters(in: .whitespaces)
        guard !spec.contains(","), let dash = spec.firstIndex(of: "-") else { return .whole }
        let first = spec[..<dash]
        let last = spec[spec.index(after: dash)...]
        let digits = { (s: Substring) in s.allSatisfy { $0.isASCII && $0.isNumber } }
        guard digits(first), digits(last), !(first.isEmpty && last.isEmpty) else { return .whole }
        if first.isEmpty {
            // Suffix: the last N bytes.
            guard let n = Int64(last) else { return .whole }
            guard n > 0, size > 0 else { return .unsatisfiable }
            return .part(max(0, size - n)...(size - 1))
        }
        guard let start = Int64(first) else { return .unsatisfiable }
        guard start < size else { return .unsatisfiable }
        let end = last.isEmpty ? size - 1 : min(Int64(last) ?? Int64.max, size - 1)
        guard end >= start else { return .whole }  // "5-2" is invalid syntax, not unsatisfiable
        return .part(start...end)
    }
}

/// Image bytes sent (each chunk once the connection took it) and bodies sent to their end.
enum ImageMetrics {
    static let bytes = CoreMetrics.Counter(label: "farrier_http_image_bytes_sent_total")
    static let completed = CoreMetrics.Counter(label: "farrier_http_image_transfers_total")
}
