import Foundation

/// A switch port's LLDP advertisement (IEEE 802.1AB), as a NIC heard it: which switch and
/// which port it is cabled to. A pure decoder of the frame's TLVs; the agent does the listening.
public struct LLDPNeighbour: Codable, Sendable, Hashable {
    /// The switch's chassis ID: a MAC (aa:bb:…), an address, or its own name for itself.
    public var chassisID: String
    /// The switch's port: an interface name (Ethernet1/7, swp12), a MAC, or a local name.
    public var portID: String
    public var systemName: String?
    public var portDescription: String?
    public var systemDescription: String?
    /// The port's VLAN ID (802.1 organisationally specific TLV), when sent.
    public var vlan: Int?
    /// The switch's management address (IPv4 or IPv6), when sent.
    public var managementAddress: String?

    public init(
        chassisID: String,
        portID: String,
        systemName: String? = nil,
        portDescription: String? = nil,
        systemDescription: String? = nil,
        vlan: Int? = nil,
        managementAddress: String? = nil
    ) {
        self.chassisID = chassisID
        self.portID = portID
        self.systemName = systemName
        self.portDescription = portDescription
        self.systemDescription = systemDescription
        self.vlan = vlan
        self.managementAddress = managementAddress
    }

    /// LLDP's EtherType.
    public static let etherType: UInt16 = 0x88cc
    /// The nearest-bridge group address LLDP is sent to (switches do not forward it).
    public static let multicast: [UInt8] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e]

    public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// Decodes a whole Ethernet frame (destination, source, EtherType 0x88cc, then the LLDPDU);
    /// an 802.1Q tag before the EtherType is skipped. Only a frame to the nearest-bridge group
    /// address, which no bridge forwards, can come from the switch port itself: one to any other
    /// address (another host on the segment, say a tenant's machine, posing as the switch) is
    /// an error, as is an LLDPDU without its chassis, port and TTL TLVs in that order.
    public static func decode(frame: [UInt8]) throws(DecodeError) -> LLDPNeighbour {
        guard frame.count >= 14 else { throw DecodeError(description: "frame of \(frame.count) bytes") }
        guard Array(frame[0..<6]) == multicast else {
            throw DecodeError(
                description: "sent to \(mac(frame[0..<6])), not the nearest-bridge address 01:80:c2:00:00:0e"
            )
        }
        var at = 12
        var type = UInt16(frame[at]) << 8 | UInt16(frame[at + 1])
        if type == 0x8100, frame.count >= 18 {
            at += 4
            type = UInt16(frame[at]) << 8 | UInt16(frame[at + 1])
        }
        guard type == etherType else {
            throw DecodeError(description: "EtherType 0x\(String(type, radix: 16)), not LLDP")
        }
        return try decode(lldpdu: Array(frame[(at + 2)...]))
    }

    /// Decodes an LLDPDU (the frame's payload): TLVs of a 7-bit type and a 9-bit length.
    public static func decode(lldpdu bytes: [UInt8]) throws(DecodeError) -> LLDPNeighbour {
        var tlvs: [(type: Int, value: ArraySlice<UInt8>)] = []
        var i = 0
        while i + 2 <= bytes.count {
            let header = Int(bytes[i]) << 8 | Int(bytes[i + 1])
            let type = header >> 9
            let length = header & 0x1ff
            guard i + 2 + length <= bytes.count else {
                throw DecodeError(description: "TLV type \(type) of \(length) bytes runs past the frame's end")
            }
            if type == 0 { break }  // End of LLDPDU
            tlvs.append((type, bytes[(i + 2)..<(i + 2 + length)]))
            i += 2 + length
        }
        guard tlvs.count >= 3, tlvs[0].type == 1, tlvs[1].type == 2, tlvs[2].type == 3 else {
            throw DecodeError(description: "an LLDPDU begins with the chassis ID, port ID and TTL TLVs")
        }
        guard tlvs[0].value.count >= 2, tlvs[1].value.count >= 2, tlvs[2].value.count == 2 else {
            throw DecodeError(description: "a chassis ID or port ID without a value, or a TTL not of 2 bytes")
        }
        var n = LLDPNeighbour(
            chassisID: identifier(tlvs[0].value, macSubtype: 4, addressSubtype: 5),
            portID: identifier(tlvs[1].value, macSubtype: 3, addressSubtype: 4)
        )
        for (type, value) in tlvs.dropFirst(3) {
            switch type {
            case 4: n.portDescription = text(value)
            case 5: n.systemName = text(value)
            case 6: n.systemDescription = text(value)
            case 8:
                // Management address: length (subtype + address), subtype (1 IPv4, 2 IPv6), address…
                guard let len = value.first.map(Int.init), len >= 2, value.count >= 1 + len else { continue }
                let sub = value[value.startIndex + 1]
                let address = value[(value.startIndex + 2)..<(value.startIndex + 1 + len)]
                if n.managementAddress == nil { n.managementAddress = Self.address(family: sub, address) }
            case 127:
                // 802.1 (OUI 00-80-C2) subtype 1: Port VLAN ID.
                let v = Array(value)
                if v.count == 6, v[0] == 0x00, v[1] == 0x80, v[2] == 0xc2, v[3] == 1 {
                    let id = Int(v[4]) << 8 | Int(v[5])
                    if id > 0 { n.vlan = id }
                }
            default: break
            }
        }
        return n
    }

    /// A chassis or port ID: its subtype byte, then the ID; a MAC or an address subtype is
    /// formatted as such, any other as text.
    static func identifier(_ value: ArraySlice<UInt8>, macSubtype: UInt8, addressSubtype: UInt8) -> String {
        let sub = value[value.startIndex]
        let id = value.dropFirst()
        if sub == macSubtype, id.count == 6 { return mac(id) }
        if sub == addressSubtype, let family = id.first {
            return address(family: family, id.dropFirst()) ?? text(id)
        }
        return text(id)
    }

    static func mac(_ bytes: ArraySlice<UInt8>) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }

    /// An IANA address family 1 (IPv4) or 2 (IPv6) address as text; nil for others.
    static func address(family: UInt8, _ bytes: ArraySlice<UInt8>) -> String? {
        let b = Array(bytes)
        if family == 1, b.count == 4 { return b.map(String.init).joined(separator: ".") }
        if family == 2, b.count == 16 {
            return stride(from: 0, to: 16, by: 2).map { String(Int(b[$0]) << 8 | Int(b[$0 + 1]), radix: 16) }
                .joined(separator: ":")
        }
        return nil
    }

    /// Printable text: UTF-8 with control characters dropped and spaces trimmed, at most 255.
    static func text(_ bytes: ArraySlice<UInt8>) -> String {
        let s = String(decoding: bytes, as: UTF8.self).unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7f }
        return String(String(String.UnicodeScalarView(s)).trimmingCharacters(in: .whitespaces).prefix(255))
    }
}
