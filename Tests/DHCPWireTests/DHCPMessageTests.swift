import DHCPWire
import Foundation
import Testing
import WireSupport

func fixture(_ name: String) throws -> [UInt8] {
    let url = try #require(Bundle.module.url(forResource: "Fixtures/\(name)", withExtension: "bin"))
    return Array(try Data(contentsOf: url))
}

@Suite struct DHCPFixtureTests {
    static let all = [
        "dhclient-discover", "dhclient-request", "ipxe-bios-discover", "ipxe-bios-request", "ovmf-pxe-discover",
        "ovmf-pxe-request",
    ]

    @Test(arguments: all)
    func reencodesByteForByte(_ name: String) throws {
        let bytes = try fixture(name)
        let m = try DHCPMessage(decoding: bytes)
        #expect(m.encoded(minimumLength: bytes.count) == bytes)
        #expect(try DHCPMessage(decoding: m.encoded()) == m)
    }

    @Test func dhclientDiscover() throws {
        let m = try DHCPMessage(decoding: fixture("dhclient-discover"))
        #expect(m.op == .bootRequest && m.htype == 1 && m.hlen == 6)
        #expect(m.xid == 0x4dc3_2f33)
        #expect(m.messageType == .discover)
        #expect(m.clientMAC == MACAddress("52:54:00:fa:00:01"))
        #expect(m.options.string(.hostName) == "vm")
        #expect(m.options.parameterRequestList.count == 13)
        #expect(m.options.clientArchitectures == nil)
    }

    @Test func dhclientRequestSelectsAServer() throws {
        let m = try DHCPMessage(decoding: fixture("dhclient-request"))
        #expect(m.messageType == .request)
        #expect(m.options.serverIdentifier == IPv4Address("198.18.250.1"))
        #expect(m.options.requestedIPAddress == IPv4Address("198.18.250.185"))
        #expect(m.ciaddr == .any)
    }

    @Test func iPXEBIOSDiscover() throws {
        let m = try DHCPMessage(decoding: fixture("ipxe-bios-discover"))
        #expect(m.messageType == .discover)
        #expect(m.xid == 0x9128_a921)
        #expect(m.secs == 4)
        #expect(m.options.vendorClassIdentifier == "PXEClient:Arch:00000:UNDI:002001")
        #expect(m.options.clientArchitectures == [0])
        #expect(m.options[.clientNetworkInterfaceIdentifier] == [1, 2, 1])
        // iPXE sends its user class raw, without the RFC 3004 length byte.
        #expect(m.options.userClasses == [Array("iPXE".utf8)])
        #expect(m.options.maximumMessageSize == 1472)
        #expect(m.options.clientMachineIdentifier?.count == 17)
        #expect(m.options[.clientIdentifier] == [1, 0x52, 0x54, 0, 0xfa, 0, 2])
        let ipxe = try #require(m.options.encapsulated(.ipxeEncapsulated))
        #expect(ipxe[0x13] == [1])  // HTTP supported
        #expect(ipxe[0x24] == nil)  // not an EFI build
    }

    @Test func ovmfPXEDiscover() throws {
        let m = try DHCPMessage(decoding: fixture("ovmf-pxe-discover"))
        #expect(m.isBroadcast)
        #expect(m.options.vendorClassIdentifier == "PXEClient:Arch:00007:UNDI:003000")
        #expect(m.options.clientArchitectures == [7])
        #expect(m.options.userClasses.isEmpty)
        #expect(m.clientMAC == MACAddress("52:54:00:fa:00:03"))
    }

    @Test func ovmfRequestRaisesMaxMessageSize() throws {
        let m = try DHCPMessage(decoding: fixture("ovmf-pxe-request"))
        #expect(m.messageType == .request)
        #expect(m.options.maximumMessageSize == 65280)
        #expect(m.options.requestedIPAddress == IPv4Address("198.18.250.187"))
    }
}

@Suite struct DHCPEncodingTests {
    func offer() -> DHCPMessage {
        var m = DHCPMessage(
            op: .bootReply,
            xid: 0x0102_0304,
            flags: 0x8000,
            yiaddr: IPv4Address("198.18.0.100")!,
            siaddr: IPv4Address("198.18.0.1")!,
            chaddr: [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        )
        m.options.messageType = .offer
        m.options.set(.serverIdentifier, ipv4: IPv4Address("198.18.0.1")!)
        m.options.set(.leaseTime, uint32: 3600)
        m.options.set(.vendorClassIdentifier, string: "PXEClient")
        m.bootFileName = "undionly.kpxe"
        return m
    }

    @Test func goldenOfferBytes() {
        let b = offer().encoded()
        #expect(b.count == 300)
        #expect(Array(b[0..<12]) == [2, 1, 6, 0, 1, 2, 3, 4, 0, 0, 0x80, 0])
        #expect(Array(b[16..<24]) == [198, 18, 0, 100, 198, 18, 0, 1])
        #expect(Array(b[108..<121]) == Array("undionly.kpxe".utf8))
        #expect(b[121] == 0)
        #expect(Array(b[236..<240]) == [0x63, 0x82, 0x53, 0x63])
        #expect(
            Array(b[240..<264]) == [
                53, 1, 2, 54, 4, 198, 18, 0, 1, 51, 4, 0, 0, 0x0e, 0x10, 60, 9,
                0x50, 0x58, 0x45, 0x43, 0x6c, 0x69, 0x65,
            ]
        )
        #expect(b[240 + 3 + 6 + 6 + 11] == 255)
    }

    @Test func longOptionsAreSplitAndConcatenated() throws {
        var m = offer()
        let long = [UInt8](repeating: 0x41, count: 600)
        m.options[.vendorSpecific] = long
        let bytes = m.encoded()
        let back = try DHCPMessage(decoding: bytes)
        #expect(back.options[.vendorSpecific] == long)
        #expect(back == m)
    }

    @Test(arguments: 0..<64)
    func roundTripsVariedMessages(_ seed: Int) throws {
        var m = DHCPMessage(
            op: .bootRequest,
            hops: UInt8(seed % 4),
            xid: UInt32(seed * 7919),
            secs: UInt16(seed),
            flags: seed % 2 == 0 ? 0 : 0x8000,
            ciaddr: IPv4Address(UInt32(seed)),
            giaddr: IPv4Address(UInt32(seed * 3)),
            chaddr: (0..<6).map { UInt8(($0 + seed) & 0xFF) }
        )
        m.options.messageType = DHCPMessageType(rawValue: UInt8(seed % 8 + 1))
        for k in 0..<(seed % 9) {
            m.options[DHCPOptionCode(UInt8(100 + k))] = (0..<((seed * (k + 1)) % 300)).map {
                UInt8(($0 * 31 + k) & 0xFF)
            }
        }
        #expect(try DHCPMessage(decoding: m.encoded()) == m)
    }
}

@Suite struct DHCPMalformedTests {
    @Test func rejectsShortHeader() {
        #expect(throws: WireError(.truncatedHeader)) { try DHCPMessage(decoding: [UInt8](repeating: 0, count: 239)) }
    }

    @Test func rejectsBadCookie() throws {
        var b = try fixture("dhclient-discover")
        b[236] = 0
        #expect(throws: WireError(.badMagicCookie)) { try DHCPMessage(decoding: b) }
    }

    @Test func rejectsTruncatedOption() throws {
        var b = Array(try fixture("dhclient-discover")[0..<240])
        b += [55, 13, 1, 2, 3]
        #expect(throws: WireError(.truncatedOption)) { try DHCPMessage(decoding: b) }
    }

    @Test func rejectsBadHardwareLength() throws {
        var b = try fixture("dhclient-discover")
        b[2] = 17
        #expect(throws: WireError(.badHardwareAddressLength)) { try DHCPMessage(decoding: b) }
    }

    @Test func resolvesOptionOverload() throws {
        var m = DHCPMessage(op: .bootRequest, xid: 9, chaddr: [1, 2, 3, 4, 5, 6])
        m.options.messageType = .discover
        m.options[.overload] = [1]
        m.file = [12, 3] + Array("abc".utf8) + [255]
        let back = try DHCPMessage(decoding: m.encoded())
        #expect(back.options.string(.hostName) == "abc")
        #expect(back.options[.overload] == nil)
        #expect(back.bootFileName == "")
    }

    @Test func rejectsInvalidOverloadValue() {
        var m = DHCPMessage(op: .bootRequest, xid: 9, chaddr: [1, 2, 3, 4, 5, 6])
        m.options[.overload] = [9]
        #expect(throws: WireError(.badOptionLength)) { try DHCPMessage(decoding: m.encoded()) }
    }

    @Test func machineIdentifierOfWrongLengthIsIgnored() {
        var o = DHCPOptions()
        o[.clientMachineIdentifier] = [0, 1, 2]
        #expect(o.clientMachineIdentifier == nil)
        o[.clientSystemArchitecture] = [0]
        #expect(o.clientArchitectures == nil)
    }
}

@Suite struct DHCPFuzzRegressionTests {
    @Test(arguments: ["overload-inside-file"])
    func decodedMessagesReencodeToTheSameMessage(_ name: String) throws {
        let m = try DHCPMessage(decoding: fixture("fuzz/\(name)"))
        #expect(m.options[.overload] == nil)
        #expect(try DHCPMessage(decoding: m.encoded()) == m)
    }
}
