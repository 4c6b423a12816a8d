@testable import FarrierHTTP
import NIOHTTP1
import Testing

/// The sendfile fast path's decisions: which requests it takes, and what it sends for a Range.
@Suite struct ImageRangeTests {
    func head(_ uri: String, _ headers: [(String, String)] = [], method: HTTPMethod = .GET) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HTTPHeaders(headers))
    }

    @Test func takesPlainImageRequestsOnly() {
        #expect(ImageRequest(head("/images/ab12")) != nil)
        #expect(ImageRequest(head("/images/ab12", method: .HEAD))?.headOnly == true)
        #expect(ImageRequest(head("/images/ab12", method: .POST)) == nil)
        #expect(ImageRequest(head("/tftp/ipxe.efi")) == nil)
        #expect(ImageRequest(head("/images/")) == nil)
        #expect(ImageRequest(head("/images/a/b")) == nil)
        #expect(ImageRequest(head("/images/..")) == nil)
        #expect(ImageRequest(head("/images/ab12?x=1")) == nil)
        #expect(ImageRequest(head("/images/%2e%2e")) == nil)
        // Conditional requests go to FileMiddleware, which knows ETags.
        #expect(ImageRequest(head("/images/ab12", [("If-None-Match", "\"x\"")])) == nil)
        #expect(ImageRequest(head("/images/ab12", [("If-Range", "\"x\"")])) == nil)
        #expect(ImageRequest(head("/images/ab12", [("Range", "bytes=1-2")]))?.range == "bytes=1-2")
        #expect(ImageRequest(head("/images/ab12", [("Connection", "close")]))?.keepAlive == false)
    }

    @Test(arguments: [
        (nil, ImageRequest.Answer.whole),
        ("bytes=0-0", .part(0...0)),
        ("bytes=100-199", .part(100...199)),
        ("bytes=100-", .part(100...999)),
        ("bytes=900-5000", .part(900...999)),  // the end is clamped to the file
        ("bytes=-10", .part(990...999)),  // suffix
        ("bytes=-5000", .part(0...999)),
        ("bytes=999-", .part(999...999)),
        ("bytes=1000-", .unsatisfiable),  // starts past the end
        ("bytes=-0", .unsatisfiable),
        ("bytes=5-2", .whole),  // invalid: ignored, as RFC 9110 allows
        ("bytes=0-1,5-6", .whole),  // several ranges: the whole file
        ("items=0-1", .whole),  // unknown unit: ignored
        ("bytes=-", .whole),
        ("bytes=a-b", .whole),
        ("BYTES=3-4", .part(3...4)),  // the unit is case-insensitive
        ("bytes = 3-4", .whole),  // no spaces around "=" in RFC 9110 ranges-specifier
    ] as [(String?, ImageRequest.Answer)])
    func rangeAnswers(_ header: String?, _ expected: ImageRequest.Answer) {
        #expect(ImageRequest.answer(range: header, size: 1000) == expected)
    }

    @Test func anEmptyFileHasNoRange() {
        #expect(ImageRequest.answer(range: nil, size: 0) == .whole)
        #expect(ImageRequest.answer(range: "bytes=0-", size: 0) == .unsatisfiable)
        #expect(ImageRequest.answer(range: "bytes=-1", size: 0) == .unsatisfiable)
    }
}
