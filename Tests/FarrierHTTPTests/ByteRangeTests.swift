import Testing

@testable import FarrierHTTP

@Suite struct ByteRangeTests {
    @Test(
        arguments: [
            (nil, ByteRange.whole),
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
        ] as [(String?, ByteRange)]
    )
    func rangeAnswers(_ header: String?, _ expected: ByteRange) {
        #expect(ByteRange.answer(range: header, size: 1000) == expected)
    }

    @Test func anEmptyFileHasNoRange() {
        #expect(ByteRange.answer(range: nil, size: 0) == .whole)
        #expect(ByteRange.answer(range: "bytes=0-", size: 0) == .unsatisfiable)
        #expect(ByteRange.answer(range: "bytes=-1", size: 0) == .unsatisfiable)
    }
}
