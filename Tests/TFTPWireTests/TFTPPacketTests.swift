import TFTPWire
import Testing
import WireSupport

@Suite struct TFTPPacketTests {
    // An RRQ laid out as curl 7.88 sends one for `curl --tftp-blksize 1468 tftp://…/undionly.kpxe`
    // (tsize, then blksize). Written by hand, not captured: captured TFTP fixtures are still to do.
    static let curlRRQ: [UInt8] =
        [0x00, 0x01] + Array("undionly.kpxe".utf8) + [0] + Array("octet".utf8) + [0] + Array("tsize".utf8) + [0]
        + Array("0".utf8) + [0] + Array("blksize".utf8) + [0] + Array("1468".utf8) + [0]

    @Test func decodesReadRequestWithOptions() throws {
        let p = try TFTPPacket(decoding: Self.curlRRQ)
        guard case .readRequest(let r) = p else {
            Issue.record("not an RRQ: \(p)")
            return
        }
        #expect(r.filename == "undionly.kpxe")
        #expect(r.mode == "octet")
        #expect(r.options == [TFTPOption("tsize", "0"), TFTPOption("blksize", "1468")])
        #expect(p.encoded() == Self.curlRRQ)
    }

    @Test func modeAndOptionNamesAreCaseInsensitive() throws {
        let bytes: [UInt8] = [0, 1] + Array("a\0OCTET\0BlkSize\0512\0".utf8)
        guard case .readRequest(let r) = try TFTPPacket(decoding: bytes) else {
            Issue.record("not RRQ")
            return
        }
        #expect(r.mode == "octet")
        #expect(r.option("blksize") == "512")
    }

    @Test(arguments: [
        TFTPPacket.ack(block: 0), .ack(block: 65535), .data(block: 7, payload: [1, 2, 3][...]),
        .data(block: 1, payload: [][...]), .error(code: .fileNotFound, message: "file not found"),
        .optionAck([TFTPOption("blksize", "1468"), TFTPOption("tsize", "67584")]),
        .readRequest(TFTPRequest(filename: "ipxe.efi", mode: "octet", options: [TFTPOption("windowsize", "4")])),
        .writeRequest(TFTPRequest(filename: "x", mode: "netascii")),
    ])
    func roundTrips(_ packet: TFTPPacket) throws {
        #expect(try TFTPPacket(decoding: packet.encoded()) == packet)
    }

    @Test func goldenBytes() {
        #expect(TFTPPacket.ack(block: 0x0102).encoded() == [0, 4, 1, 2])
        #expect(TFTPPacket.error(code: .accessViolation, message: "no").encoded() == [0, 5, 0, 2, 0x6E, 0x6F, 0])
        #expect(TFTPPacket.optionAck([TFTPOption("tsize", "9")]).encoded() == [0, 6] + Array("tsize\09\0".utf8))
    }

    static let malformed: [([UInt8], WireError.Code)] = {
        var cases: [([UInt8], WireError.Code)] = []
        cases.append(([], .truncated))
        cases.append(([0], .truncated))
        cases.append(([0, 9], .unknownOpcode))
        cases.append(([0, 1] + Array("file".utf8), .unterminatedString))
        cases.append(([0, 1] + Array("file\0octet\0blksize\0".utf8), .badOptionList))
        cases.append(([0, 1, 0xC3, 0xA9, 0] + Array("octet\0".utf8), .badText))
        cases.append(([0, 4, 1], .truncated))
        let long: [UInt8] = [0, 1] + [UInt8](repeating: 0x41, count: 600) + [0] + Array("octet\0".utf8)
        cases.append((long, .requestTooLong))
        return cases
    }()

    @Test(arguments: malformed)
    func rejectsMalformed(_ bytes: [UInt8], _ code: WireError.Code) {
        #expect(throws: WireError(code)) { try TFTPPacket(decoding: bytes) }
    }
}

@Suite struct TFTPNegotiationTests {
    func request(_ options: [(String, String)]) -> TFTPRequest {
        TFTPRequest(filename: "f", options: options.map { TFTPOption($0.0, $0.1) })
    }

    @Test func acknowledgesOnlyRequestedOptions() {
        let n = TFTPNegotiation(request: request([("blksize", "1468")]), fileSize: 1000)
        #expect(n.acknowledged == [TFTPOption("blksize", "1468")])
        #expect(n.blockSize == 1468)
        #expect(n.transferSize == nil)
    }

    @Test func noOptionsMeansNoOACK() {
        let n = TFTPNegotiation(request: request([]), fileSize: 1000)
        #expect(n.acknowledged.isEmpty)
        #expect(n.blockSize == 512)
        #expect(n.windowSize == 1)
    }

    @Test func allFourOptionsInClientOrder() {
        let n = TFTPNegotiation(
            request: request([
                ("windowsize", "8"), ("tsize", "0"), ("timeout", "3"), ("blksize", "1432"), ("multicast", ""),
            ]),
            fileSize: 67584
        )
        #expect(
            n.acknowledged == [
                TFTPOption("windowsize", "8"), TFTPOption("tsize", "67584"), TFTPOption("timeout", "3"),
                TFTPOption("blksize", "1432"),
            ]
        )
        #expect(n.windowSize == 8 && n.timeoutSeconds == 3 && n.blockSize == 1432 && n.transferSize == 67584)
    }

    @Test func clampsAndRefusesOutOfRange() {
        let limits = TFTPNegotiation.Limits(maxBlockSize: 8192, maxWindowSize: 16)
        let n = TFTPNegotiation(
            request: request([("blksize", "65464"), ("windowsize", "64"), ("timeout", "0"), ("tsize", "5")]),
            fileSize: 10,
            limits: limits
        )
        #expect(n.acknowledged == [TFTPOption("blksize", "8192"), TFTPOption("windowsize", "16")])
        let tiny = TFTPNegotiation(request: request([("blksize", "7"), ("timeout", "256")]), fileSize: 10)
        #expect(tiny.acknowledged.isEmpty)
        #expect(tiny.blockSize == 512)
    }

    /// A timeout over the cap (default 10 s) is refused, not clamped: RFC 2349 lets the server
    /// only accept the value as is or leave it out, and the client then uses the default.
    @Test func timeoutOverTheCapIsRefused() {
        let long = TFTPNegotiation(request: request([("timeout", "255"), ("blksize", "1468")]), fileSize: 10)
        #expect(long.timeoutSeconds == nil)
        #expect(long.acknowledged == [TFTPOption("blksize", "1468")])
        let atCap = TFTPNegotiation(request: request([("timeout", "10")]), fileSize: 10)
        #expect(atCap.timeoutSeconds == 10 && atCap.acknowledged == [TFTPOption("timeout", "10")])
        let raised = TFTPNegotiation(
            request: request([("timeout", "30")]),
            fileSize: 10,
            limits: .init(maxTimeoutSeconds: 60)
        )
        #expect(raised.timeoutSeconds == 30)
    }
}
