import Foundation
import IPMIWire
import Testing
import WireSupport

func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }
func bytes(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var i = s.startIndex
    while i < s.endIndex {
        let j = s.index(i, offsetBy: 2)
        out.append(UInt8(s[i..<j], radix: 16)!)
        i = j
    }
    return out
}

@Suite struct IPMIFramingTests {
    @Test func presencePingMatchesASFLayout() {
        // ASF 2.0 §3.2.4.1: RMCP 06 00 FF 06, IANA 4542, type 80, tag, reserved, length 0.
        #expect(hex(ASFPresencePing(tag: 7).encoded()) == "0600ff06" + "000011be" + "80070000")
    }

    @Test func presencePongDecodes() throws {
        // The pong ipmi_sim sends (shape per ASF 2.0 §3.2.4.2): IPMI supported.
        let pong = bytes("0600ff06000011be40070010000011be000000008100000000000000")
        let decoded = try ASFPresencePong(decoding: pong)
        #expect(decoded.tag == 7)
        #expect(decoded.supportsIPMI)
    }

    @Test func requestChecksums() {
        // Get Device ID, sequence 0: chk1 = -(0x20+0x18), chk2 = -(0x81+0x00+0x01).
        #expect(hex(IPMICommand.getDeviceID(sequence: 0).encoded()) == "2018c88100017e")
        // Chassis Control power up, sequence 5.
        #expect(hex(IPMICommand.chassisControl(.powerUp, sequence: 5).encoded()) == "2000e08114020168")
    }

    @Test func responseDecodesAndMatches() throws {
        // Get Chassis Status response, power on: 81 04 7b 20 14 01 00 01 00 00 chk.
        var msg: [UInt8] = [0x81, 0x04]
        msg.append(0 &- (0x81 &+ 0x04))
        var tail: [UInt8] = [0x20, 5 << 2, 0x01, 0x00, 0x01, 0x00, 0x00]
        tail.append(0 &- tail.reduce(0, &+))
        msg += tail
        let response = try IPMIResponse(decoding: msg)
        #expect(response.answers(IPMICommand.getChassisStatus(sequence: 5)))
        #expect(!response.answers(IPMICommand.getChassisStatus(sequence: 6)))
        #expect(response.completionCode == .ok)
        #expect(try ChassisStatus(decoding: response.data).powerOn)
        var corrupt = msg
        corrupt[7] ^= 1
        #expect(throws: WireError.self) { try IPMIResponse(decoding: corrupt) }
    }

    @Test func v15PresessionLayout() throws {
        let packet = IPMIv15Packet(message: IPMICommand.getChannelAuthCapabilities().encoded()).encoded()
        #expect(hex(Array(packet.prefix(14))) == "0600ff0700" + "00000000" + "00000000" + "09")
        guard case .v15(let message) = try IPMIDatagram(decoding: packet) else {
            Issue.record("not decoded as v1.5")
            return
        }
        #expect(message.count == 9)
    }

    @Test func cipherSuiteRecordsParse() {
        // Suites 3 and 17 as a BMC lists them, then an OEM record.
        let data = bytes(
            "c003014181" + "c011034481" + "c1 80 a2 02 00 01 41 81".replacingOccurrences(of: " ", with: "")
        )
        let records = IPMICipherSuiteRecord.parse(data)
        #expect(records.map(\.id) == [3, 17, 0x80])
        #expect(records[1].authentication == 3 && records[1].integrity == 4 && records[1].confidentiality == 1)
        #expect(IPMICipherSuite.preferred(among: records.map(\.id)) == .suite17)
        #expect(IPMICipherSuite.preferred(among: [0, 1, 2, 3]) == .suite3)
        #expect(IPMICipherSuite.preferred(among: [0, 1]) == nil)
    }

    @Test func bootFlagsEncoding() throws {
        // PROTOCOLS.md: PXE once UEFI 05 A0 04 00 00 00; persistent UEFI E0; once legacy 80.
        #expect(hex(IPMIBootFlags(device: .pxe, persistent: false, efi: true).encoded()) == "a004000000")
        #expect(hex(IPMIBootFlags(device: .pxe, persistent: true, efi: true).encoded()) == "e004000000")
        #expect(hex(IPMIBootFlags(device: .pxe, persistent: false, efi: false).encoded()) == "8004000000")
        #expect(hex(IPMIBootFlags(device: .disk, persistent: false, efi: false).encoded()) == "8008000000")
        let got = try IPMIBootFlags(decodingResponse: [0x01, 0x05, 0x00, 0x04, 0, 0, 0])
        #expect(got.device == .pxe && !got.valid)
    }

    @Test func solPacketRoundTrip() throws {
        let p = SOLPacket(sequence: 3, ackSequence: 2, acceptedCount: 10, control: 0, data: Array("hi".utf8))
        #expect(try SOLPacket(decoding: p.encoded()) == p)
    }

    @Test func truncatedInputsThrow() {
        for n in 0..<12 {
            let short = Array(rmcpPlusPresession(.openSessionRequest, payload: [1, 2, 3, 4]).prefix(n))
            #expect(throws: WireError.self) { try IPMIDatagram(decoding: short) }
        }
        #expect(throws: WireError.self) { try OpenSessionResponse(decoding: [1]) }
        #expect(throws: WireError.self) { try RAKPExchange.Message2(decoding: [1, 0, 0]) }
    }
}

/// Known-answer tests: Python's `hmac`/`hashlib` and the `openssl` command compute the same values
/// independently, inside the test. ipmi_sim has no SHA-256, so this is the check for suite 17.
@Suite struct RAKPKnownAnswerTests {
    static let rm = bytes("000102030405060708090a0b0c0d0e0f")
    static let rc = bytes("f0e1d2c3b4a5968778695a4b3c2d1e0f")
    static let guid = bytes("a1a2a3a4b1b2c1c2d1d2e1e2e3e4e5e6")
    static let sidm: UInt32 = 0x1234_5678
    static let sidc: UInt32 = 0x0a0b_0c0d

    /// Runs Python to compute RAKP values for `digest` ("sha1" or "sha256").
    static func python(
        _ digest: String,
        icvLength: Int,
        integLength: Int,
        packetPrefix: String
    ) throws -> [String: String] {
        let script = """
            import hmac, hashlib, json, struct, sys
            H = lambda k, m: hmac.new(k, m, hashlib.\(digest)).digest()
            rm = bytes.fromhex('\(hex(rm))'); rc = bytes.fromhex('\(hex(rc))'); guid = bytes.fromhex('\(hex(guid))')
            sidm = struct.pack('<I', \(sidm)); sidc = struct.pack('<I', \(sidc))
            user = b'admin'; role = bytes([0x14]); ulen = bytes([len(user)])
            kuid = b'secret'.ljust(20, b'\\0')
            rakp2 = H(kuid, sidm + sidc + rm + rc + guid + role + ulen + user)
            rakp3 = H(kuid, rc + sidm + role + ulen + user)
            sik = H(kuid, rm + rc + role + ulen + user)
            icv = H(sik, rm + sidc + guid)[:\(icvLength)]
            k1 = H(sik, b'\\x01' * 20); k2 = H(sik, b'\\x02' * 20)
            auth = H(k1, bytes.fromhex(sys.argv[1]))[:\(integLength)]
            print(json.dumps({k: v.hex() for k, v in dict(rakp2=rakp2, rakp3=rakp3, sik=sik, icv=icv, k1=k1, k2=k2, auth=auth).items()}))
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script, packetPrefix]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return try JSONSerialization.jsonObject(with: data) as! [String: String]
    }

    static func openssl(key: [UInt8], iv: [UInt8], plaintext: [UInt8]) throws -> [UInt8] {
        let dir = NSTemporaryDirectory() + "farrier-aes-\(UInt32.random(in: 0..<UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(plaintext).write(to: URL(fileURLWithPath: dir + "/in"))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [
            "openssl", "enc", "-aes-128-cbc", "-nopad", "-K", hex(key), "-iv", hex(iv), "-in", dir + "/in", "-out",
            dir + "/out",
        ]
        try p.run()
        p.waitUntilExit()
        return Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/out")))
    }

    static let suites: [IPMICipherSuite] = [.suite3, .suite17]

    @Test(arguments: suites) func keysMatchPython(suite: IPMICipherSuite) throws {
        let exchange = RAKPExchange(
            suite: suite,
            consoleSessionID: Self.sidm,
            bmcSessionID: Self.sidc,
            consoleRandom: Self.rm,
            userName: "admin",
            password: Array("secret".utf8),
            privilege: .administrator
        )
        // The BMC's RAKP2, built as the BMC would, with the code Python computes.
        let digest = suite == .suite17 ? "sha256" : "sha1"
        // A sealed packet to check the integrity AuthCode: encrypt "Get Device ID" with a fixed IV.
        let m2Shell = try RAKPExchange.Message2(
            decoding: [0, 0, 0, 0] + le32(Self.sidm) + Self.rc + Self.guid + [UInt8](repeating: 0, count: 20)
        )
        let keys = exchange.sessionKeys(after: m2Shell)
        var crypto = IPMISessionCrypto(keys: keys, bmcSessionID: Self.sidc, consoleSessionID: Self.sidm)
        let iv = bytes("00112233445566778899aabbccddeeff")
        let message = IPMICommand.getDeviceID(sequence: 1).encoded()
        let sealed = crypto.seal(.ipmi, payload: message, iv: iv)
        let covered = Array(sealed[4..<(sealed.count - suite.integrity.authCodeLength)])
        let py = try Self.python(
            digest,
            icvLength: suite == .suite17 ? 16 : 12,
            integLength: suite.integrity.authCodeLength,
            packetPrefix: hex(covered)
        )

        #expect(hex(exchange.expectedRAKP2Code(m2Shell)) == py["rakp2"])
        #expect(hex(Array(exchange.rakp3(tag: 0, after: m2Shell).dropFirst(8))) == py["rakp3"])
        #expect(hex(keys.sik) == py["sik"])
        #expect(hex(keys.k1) == py["k1"])
        #expect(hex(keys.k2) == py["k2"])
        #expect(hex(exchange.expectedRAKP4ICV(m2Shell)) == py["icv"])
        #expect(hex(Array(sealed.suffix(suite.integrity.authCodeLength))) == py["auth"])
        // Layout: auth type 06, payload type C0 (encrypted+authenticated IPMI), SIDc, seq 1.
        #expect(hex(Array(sealed[4..<14])) == "06c0" + hex(le32(Self.sidc)) + "01000000")
        // Confidentiality: IV then AES-CBC-128 (key K2[0..16)) over message + pad 01..N + N.
        var plain = message
        let n = (16 - (message.count + 1) % 16) % 16
        for i in 0..<n { plain.append(UInt8(i + 1)) }
        plain.append(UInt8(n))
        let expectedCipher = try Self.openssl(key: Array(keys.k2.prefix(16)), iv: iv, plaintext: plain)
        let length = Int(sealed[14]) | Int(sealed[15]) << 8
        #expect(Array(sealed[16..<(16 + length)]) == iv + expectedCipher)
    }

    @Test(arguments: suites) func sealedPacketsOpenOnTheOtherSide(suite: IPMICipherSuite) throws {
        let exchange = RAKPExchange(
            suite: suite,
            consoleSessionID: Self.sidm,
            bmcSessionID: Self.sidc,
            consoleRandom: Self.rm,
            userName: "admin",
            password: Array("secret".utf8),
            privilege: .administrator
        )
        let m2 = try RAKPExchange.Message2(decoding: [0, 0, 0, 0] + le32(Self.sidm) + Self.rc + Self.guid)
        let keys = exchange.sessionKeys(after: m2)
        // The "BMC" side: the same keys with the session IDs swapped.
        var bmc = IPMISessionCrypto(keys: keys, bmcSessionID: Self.sidm, consoleSessionID: Self.sidc)
        var console = IPMISessionCrypto(keys: keys, bmcSessionID: Self.sidc, consoleSessionID: Self.sidm)
        for size in [0, 1, 14, 15, 16, 17, 100] {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 * 7) }
            let wire = bmc.seal(.sol, payload: payload, iv: (0..<16).map { _ in UInt8.random(in: 0...255) })
            guard case .v2(let envelope) = try IPMIDatagram(decoding: wire) else {
                Issue.record("not v2")
                return
            }
            #expect(envelope.payloadType == .sol)
            #expect(try console.open(envelope) == payload)
            // Replays and tampering are refused.
            #expect(throws: WireError.self) { try console.open(envelope) }
            var tampered = wire
            tampered[20] ^= 0x01
            if case .v2(let bad) = try IPMIDatagram(decoding: tampered) {
                #expect(throws: WireError(.integrityCheckFailed)) { try console.open(bad) }
            }
        }
    }
}

func le32(_ v: UInt32) -> [UInt8] {
    [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)]
}
