import FarrierCore
import Testing

/// The LLDP decoder (issue 18 point 6): frames as switches send them (IEEE 802.1AB TLVs), and
/// frames no switch should send, which are refused with the reason.
struct LLDPTests {
    /// One TLV: a 7-bit type and a 9-bit length, then the value.
    static func tlv(_ type: Int, _ value: [UInt8]) -> [UInt8] {
        [UInt8(type << 1 | value.count >> 8), UInt8(value.count & 0xff)] + value
    }
    static func text(_ s: String) -> [UInt8] { Array(s.utf8) }
    static let header: [UInt8] = LLDPNeighbour.multicast + [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc] + [0x88, 0xcc]

    /// A switch's frame: chassis by MAC, port by interface name, TTL, port description, system
    /// name and description, IPv4 management address, the 802.1 port VLAN ID, then End.
    static var switchFrame: [UInt8] {
        header + tlv(1, [4, 0x0c, 0x42, 0xa1, 0x00, 0x11, 0x22]) + tlv(2, [5] + text("Ethernet1/7"))
            + tlv(3, [0, 120]) + tlv(4, text("rack 12 server 7 ")) + tlv(5, text("leaf-12a"))
            + tlv(6, text("Arista EOS\n4.30")) + tlv(8, [5, 1, 10, 0, 12, 1, 2, 0, 0, 0, 1, 0])
            + tlv(127, [0x00, 0x80, 0xc2, 1, 0x00, 0x64]) + tlv(0, [])
    }

    @Test func aSwitchsFrameNamesTheSwitchAndPort() throws {
        let n = try LLDPNeighbour.decode(frame: Self.switchFrame)
        #expect(
            n
                == LLDPNeighbour(
                    chassisID: "0c:42:a1:00:11:22",
                    portID: "Ethernet1/7",
                    systemName: "leaf-12a",
                    portDescription: "rack 12 server 7",
                    systemDescription: "Arista EOS4.30",
                    vlan: 100,
                    managementAddress: "10.0.12.1"
                )
        )
        // Behind an 802.1Q tag, the same.
        let tagged = Array(Self.switchFrame[0..<12]) + [0x81, 0x00, 0x00, 0x64] + Array(Self.switchFrame[12...])
        #expect(try LLDPNeighbour.decode(frame: tagged) == n)
    }

    /// A frame lldpd 1.0.16 (Debian 12) sent on a lab tap (`-I frtap9`, system name and port ID
    /// subtype ifname set with lldpcli), as a VM's NIC received it.
    static let lldpdFrame =
        "0180c200000e2af83a20c93688cc0207042af83a20c936040705667274617039060200040a12666172726965722d6c61622d"
        + "7377697463680c5644656269616e20474e552f4c696e75782031322028626f6f6b776f726d29204c696e757820362e31382e"
        + "34342d66632d763132353220233120534d5020505245454d50545f44594e414d4943204030207838365f36340e04009c0004"
        + "10181102fe80000000000000e0d4e5fffe8de1720200000002000806667274617039fe0900120f030100000000fe0900120f"
        + "0100800000360000"

    @Test func lldpdsFrameDecodes() throws {
        let hex = Array(Self.lldpdFrame.utf8)
        let bytes = stride(from: 0, to: hex.count, by: 2).map {
            UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16)!
        }
        let n = try LLDPNeighbour.decode(frame: bytes)
        #expect(n.chassisID == "2a:f8:3a:20:c9:36" && n.portID == "frtap9", "\(n)")
        #expect(n.systemName == "farrier-lab-switch" && n.portDescription == "frtap9", "\(n)")
        #expect(n.systemDescription?.hasPrefix("Debian GNU/Linux 12 (bookworm)") == true, "\(n)")
        #expect(n.managementAddress == "fe80:0:0:0:e0d4:e5ff:fe8d:e172" && n.vlan == nil, "\(n)")
    }

    @Test func portAndChassisSubtypesAreShownAsWhatTheyAre() throws {
        // Chassis: locally assigned text; port: a MAC; an IPv6 management address; no End TLV.
        let frame =
            Self.header + Self.tlv(1, [7] + Self.text("sw1.example")) + Self.tlv(2, [3, 0x52, 0x54, 0, 0x18, 0, 1])
            + Self.tlv(3, [0, 120])
            + Self.tlv(8, [17, 2, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 1, 0])
        let n = try LLDPNeighbour.decode(frame: frame)
        #expect(n.chassisID == "sw1.example" && n.portID == "52:54:00:18:00:01", "\(n)")
        #expect(n.managementAddress == "2001:db8:0:0:0:0:0:1" && n.systemName == nil && n.vlan == nil, "\(n)")
        // Chassis by network address (subtype 5, IPv4).
        let byAddress =
            Self.header + Self.tlv(1, [5, 1, 192, 0, 2, 9]) + Self.tlv(2, [7, 0x31]) + Self.tlv(3, [0, 5])
        #expect(try LLDPNeighbour.decode(frame: byAddress).chassisID == "192.0.2.9")
    }

    @Test func framesNoSwitchShouldSendAreRefusedWithTheReason() {
        let cases: [([UInt8], String)] = [
            (Array(Self.switchFrame.prefix(13)), "frame of 13 bytes"),
            (
                Self.header.dropLast(2) + [0x08, 0x00] + Self.tlv(1, [4, 1, 2, 3, 4, 5, 6]), "EtherType 0x800, not LLDP"
            ),
            // The port ID before the chassis ID.
            (
                Self.header + Self.tlv(2, [5, 0x31]) + Self.tlv(1, [4, 1, 2, 3, 4, 5, 6]) + Self.tlv(3, [0, 1]),
                "begins with the chassis ID, port ID and TTL"
            ),
            // A TLV longer than what is left of the frame.
            (Self.header + [0x02, 0x40, 4, 1, 2], "TLV type 1 of 64 bytes runs past the frame's end"),
            // An empty chassis ID.
            (Self.header + Self.tlv(1, [4]) + Self.tlv(2, [5, 0x31]) + Self.tlv(3, [0, 1]), "without a value"),
            (Self.header + Self.tlv(1, [4, 1]) + Self.tlv(2, [5, 0x31]) + Self.tlv(3, [0]), "TTL not of 2 bytes"),
            (Self.header, "begins with the chassis ID"),
            // To a unicast address (a host on the segment posing as the switch): not the switch port's.
            (
                [0x52, 0x54, 0, 0x18, 0, 1] + Array(Self.switchFrame[6...]),
                "sent to 52:54:00:18:00:01, not the nearest-bridge address 01:80:c2:00:00:0e"
            ),
        ]
        for (frame, reason) in cases {
            do {
                let n = try LLDPNeighbour.decode(frame: frame)
                Issue.record("decoded \(n) from a bad frame; expected: \(reason)")
            } catch {
                #expect(error.description.contains(reason), "\(error.description) (expected \(reason))")
            }
        }
    }

    /// Every truncation of a good frame either decodes or is refused: no crash, no hang.
    @Test func everyTruncationIsDecodedOrRefused() {
        let frame = Self.switchFrame
        var refused = 0
        for n in 0...frame.count {
            if (try? LLDPNeighbour.decode(frame: Array(frame.prefix(n)))) == nil { refused += 1 }
        }
        // Up to the TTL's end nothing decodes; after it, cuts between TLVs decode.
        #expect(refused > 30 && refused < frame.count, "\(refused) of \(frame.count + 1) refused")
    }
}
