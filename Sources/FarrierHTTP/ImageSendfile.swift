import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypesHTTP1
import NIOPosix
import TFTPServer

/// Hummingbird's HTTP/1.1 channel with one addition: a `sendfile(2)` path for image downloads.
///
/// Hummingbird writes response bodies as `ByteBuffer`s, so a file it serves is read into user
/// space and written back out: two copies per byte, measured at 0.76x nginx with 16 clients
/// (`bench/http`). Image downloads are the bulk of Farrier's traffic, so plain `GET`/`HEAD`
/// requests for `/images/<name>` are answered below Hummingbird's codec with a `FileRegion`,
/// which NIO writes with sendfile, with Range (one `bytes=` range; 416 when it cannot be met).
/// Everything else, and any image request the fast path does not take (conditional headers, a
/// missing file, a request pipelined behind one the router is still answering), goes to the
/// router as before, where FileMiddleware answers it.
struct FarrierHTTP1Channel: HTTPChannelHandler {
    typealias Value = HTTP1Channel.Value

    let inner: HTTP1Channel
    let images: BootRoot?
    /// Whether a request (image name, Authorization header, peer) may have the image; the
    /// router's `ImageAccessMiddleware` answers the refusals.
    let authorize: @Sendable (String, String?, SocketAddress?) -> Bool

    var responder: Responder { inner.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
            if let images {
                let ops = channel.pipeline.syncOperations
                let codec = try ops.handler(type: HTTP1ToHTTPServerCodec.self)
                try ops.addHandler(
                    ImageSendfileHandler(images: images, authorize: authorize, logger: logger), position: .before(codec))
            }
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        await inner.handle(value: value, logger: logger)
    }
}

/// An image request the fast path takes (nil: the router answers it), and the answer to its Range.
/// Pure, so it is tested without a socket.
struct ImageRequest: Equatable {
    static let prefix = "/images/"

    var name: String
    var headOnly: Bool
    /// The raw `Range` header, resolved against the file's size once it is open.
    var range: String?
    var keepAlive: Bool

    init?(_ head: HTTPRequestHead) {
        guard head.method == .GET || head.method == .HEAD, head.uri.hasPrefix(Self.prefix) else { return nil }
        let name = head.uri.dropFirst(Self.prefix.count)
        // Content-addressed names only: no query, no subdirectories, nothing to resolve.
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }),
            !name.hasPrefix(".")
        else { return nil }
        let conditional = ["if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range"]
        guard !conditional.contains(where: { head.headers.contains(name: $0) }) else { return nil }
        let ranges = head.headers["range"]
        self.name = String(name)
        self.headOnly = head.method == .HEAD
        self.range = ranges.count == 1 ? ranges.first : nil  // several: ignored, the whole file
        self.keepAlive = head.isKeepAlive
    }

    enum Answer: Equatable {
        /// 200 with the whole file (also for a Range header that is not one `bytes=` range: RFC 9110
        /// lets a server ignore a Range it does not take).
        case whole
        /// 206 with these bytes.
        case part(ClosedRange<Int64>)
        /// 416 with `Content-Range: bytes */size`.
        case unsatisfiable
    }

    /// What to send for a `Range` header from a file of `size` bytes.
    static func answer(range header: String?, size: Int64) -> Answer {
        guard let header else { return .whole }
        let h = header.trimmingCharacters(in: .whitespaces)
        guard h.lowercased().hasPrefix("bytes=") else { return .whole }
        let spec = h.dropFirst(6).trimmingCharacters(in: .whitespaces)
        guard !spec.contains(","), let dash = spec.firstIndex(of: "-") else { return .whole }
        let first = spec[..<dash], last = spec[spec.index(after: dash)...]
        guard first.allSatisfy(\.isASCIIDigit), last.allSatisfy(\.isASCIIDigit), !(first.isEmpty && last.isEmpty)
        else { return .whole }
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

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

/// Sits between NIO's HTTP/1 codec and Hummingbird's, answering the image requests it takes with
/// `sendfile`. While it answers one, it reads nothing more from the socket and holds any parts
/// already decoded, so responses stay in request order.
final class ImageSendfileHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let images: BootRoot
    private let authorize: @Sendable (String, String?, SocketAddress?) -> Bool
    private let fileIO = NonBlockingFileIO(threadPool: .singleton)
    private let logger: Logger

    /// Requests passed to the router whose response has not ended yet.
    private var routerRequests = 0
    /// Whether the body parts of the current request belong to the fast path (and are dropped).
    private var currentIsMine = false
    /// An image is being opened or sent: inbound parts wait in `held`, reads in `readHeld`.
    private var busy = false
    private var held: [HTTPServerRequestPart] = []
    private var readHeld = false

    init(images: BootRoot, authorize: @escaping @Sendable (String, String?, SocketAddress?) -> Bool, logger: Logger) {
        self.images = images
        self.authorize = authorize
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if busy { held.append(part) } else { process(part, context: context) }
    }

    func read(context: ChannelHandlerContext) {
        if busy { readHeld = true } else { context.read() }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { routerRequests -= 1 }
        context.write(data, promise: promise)
    }

    private func process(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            if routerRequests == 0, let request = ImageRequest(head),
                authorize(request.name, head.headers["authorization"].first, context.channel.remoteAddress)
            {
                currentIsMine = true
                busy = true
                serve(request, head: head, context: context)
            } else {
                pass(.head(head), context: context)
            }
        case .body, .end:
            if !currentIsMine { context.fireChannelRead(wrapInboundOut(part)) }
        }
    }

    private func pass(_ head: HTTPServerRequestPart, context: ChannelHandlerContext) {
        currentIsMine = false
        routerRequests += 1
        context.fireChannelRead(wrapInboundOut(head))
    }

    private func serve(_ request: ImageRequest, head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard let path = try? images.resolve(request.name) else {
            return fallBack(head, context: context)
        }
        fileIO.openFile(_deprecatedPath: path, eventLoop: context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .failure:
                self.fallBack(head, context: context)
            case .success(let (handle, region)):
                let size = Int64(region.readableBytes)
                self.send(request, handle: handle, answer: ImageRequest.answer(range: request.range, size: size),
                    size: size, version: head.version, context: context)
            }
        }
    }

    private func send(
        _ request: ImageRequest, handle: NIOFileHandle, answer: ImageRequest.Answer, size: Int64,
        version: HTTPVersion, context: ChannelHandlerContext
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "server", value: "farrier")
        headers.add(name: "date", value: httpDate())
        headers.add(name: "accept-ranges", value: "bytes")
        let status: HTTPResponseStatus
        var bytes: Range<Int64> = 0..<0
        switch answer {
        case .whole:
            status = .ok
            bytes = 0..<size
        case .part(let range):
            status = .partialContent
            bytes = range.lowerBound..<(range.upperBound + 1)
            headers.add(name: "content-range", value: "bytes \(range.lowerBound)-\(range.upperBound)/\(size)")
        case .unsatisfiable:
            status = .rangeNotSatisfiable
            headers.add(name: "content-range", value: "bytes */\(size)")
        }
        headers.add(name: "content-type", value: "application/octet-stream")
        headers.add(name: "content-length", value: String(bytes.count))
        if !request.keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        if !request.headOnly, !bytes.isEmpty {
            let region = FileRegion(fileHandle: handle, readerIndex: Int(bytes.lowerBound), endIndex: Int(bytes.upperBound))
            context.write(wrapOutboundOut(.body(.fileRegion(region))), promise: nil)
        }
        let start = NIODeadline.now()
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { result in
            try? handle.close()
            let seconds = Double((NIODeadline.now() - start).nanoseconds) / 1e9
            if case .failure(let error) = result {
                self.logger.info(
                    "image transfer cut short",
                    metadata: ["image": "\(request.name)", "bytes": "\(bytes)", "error": "\(error)"])
            } else {
                self.logger.debug(
                    "image sent",
                    metadata: ["image": "\(request.name)", "status": "\(status.code)", "bytes": "\(request.headOnly ? 0 : bytes.count)",
                        "seconds": "\(seconds)"])
            }
            guard request.keepAlive, case .success = result else {
                context.close(promise: nil)
                return
            }
            self.resume(context: context)
        }
    }

    /// The fast path declined after all: the router gets the request, and what came after it.
    private func fallBack(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        pass(.head(head), context: context)
        resume(context: context, delivered: true)
    }

    /// Replays the held parts, then reads again unless another image took the connection.
    /// Parts fired outside a socket read need their own read-complete: NIO's async channel hands
    /// reads on to the router only at read-complete.
    private func resume(context: ChannelHandlerContext, delivered: Bool = false) {
        busy = false
        let replayed = !held.isEmpty
        while !busy, !held.isEmpty { process(held.removeFirst(), context: context) }
        if delivered || replayed { context.fireChannelReadComplete() }
        if !busy, readHeld {
            readHeld = false
            context.read()
        }
    }
}

/// An HTTP date (RFC 9110 IMF-fixdate) for now.
private func httpDate() -> String {
    var t = time(nil)
    var parts = tm()
    gmtime_r(&t, &parts)
    let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
    return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(1900 + parts.tm_year) "
        + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
}
