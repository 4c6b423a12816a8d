import FarrierCore
import Foundation
import Hummingbird
import NIOCore

/// `GET`/`HEAD /images/<sha256>` on the agent channel (after `ImageAccessMiddleware` let the
/// request through): the whole file or one `bytes=` range (416 when it cannot be met), a
/// strong ETag (the name is the content's SHA-256) and `If-None-Match`.
func addImageRoute(_ router: Router<FarrierRequestContext>, directory: String) {
    let files = FileIO()
    @Sendable func answer(_ request: Request, _ context: FarrierRequestContext, head: Bool) async throws -> Response {
        let name = try context.parameters.require("name")
        // Content-addressed names only: nothing to resolve, nowhere else to reach.
        guard name.count == 64, name.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            throw HTTPError(.badRequest, message: "an image is named by its SHA-256 (64 lowercase hex digits)\n")
        }
        let path = directory + "/" + name
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw HTTPError(.notFound, message: "no such image\n")
        }
        let size = Int64(st.st_size)
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
        guard !head, let range else { return Response(status: status, headers: headers, body: .init()) }
        // Hummingbird's reader: 128 KiB chunks read on NIO's thread pool, sealed by NIOSSL on the
        // event loop. Measured against nginx over HTTPS (bench/http, perf over the run): both
        // spend their CPU sealing (AES-GCM) and copying into the socket, as sendfile cannot
        // apply under TLS without kernel TLS; 1 and 4 MiB chunks measured within the noise of
        // 128 KiB (README, Benchmarks), so the default stays.
        let body = try await files.loadFile(
            path: path,
            range: Int(range.lowerBound)...Int(range.upperBound),
            context: context
        )
        return Response(status: status, headers: headers, body: body)
    }
    router.get("/images/:name") { request, context in try await answer(request, context, head: false) }
    router.head("/images/:name") { request, context in try await answer(request, context, head: true) }
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
