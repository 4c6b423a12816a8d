import WireSupport

/// A DHCPv4 message (RFC 2131 §2, figure 1). A pure value: decoding and encoding do no I/O.
public struct DHCPMessage: Hashable, Sendable {
    public var op: DHCPOp
    public var htype: UInt8
    public var hlen: UInt8
    public var hops: UInt8
    public var xid: UInt32
    public var secs: UInt16
    /// Bit 15 is the BROADCAST flag (RFC 2131 §4.1).
    public var flags: UInt16
    public var ciaddr: IPv4Address
    public var yiaddr: IPv4Address
    /// Next server (the TFTP server) in replies.
    public var siaddr: IPv4Address
    /// Relay agent address (RFC 2131 §4.1, RFC 1542).
    public var giaddr: IPv4Address
    /// Client hardware address, always 16 bytes; the first `hlen` are meaningful.
    public var chaddr: [UInt8]
    /// Server host name, always 64 bytes (NUL padded).
    public var sname: [UInt8]
    /// Boot file name, always 128 bytes (NUL padded). Legacy PXE ROMs read the boot file here.
    public var file: [UInt8]
    public var options: DHCPOptions

    public static let magicCookie: UInt32 = 0x6382_5363
    public static let headerLength = 240
    /// BOOTP minimum message size (RFC 1542 §3.1.1): replies are padded up to it.
    public static let minimumLength = 300
    public static let broadcastFlag: UInt16 = 0x8000

    public init(
        op: DHCPOp,
        htype: UInt8 = 1,
        hlen: UInt8 = 6,
        hops: UInt8 = 0,
        xid: UInt32,
        secs: UInt16 = 0,
        flags: UInt16 = 0,
        ciaddr: IPv4Address = .any,
        yiaddr: IPv4Address = .any,
        siaddr: IPv4Address = .any,
        giaddr: IPv4Address = .any,
        chaddr: [UInt8],
        sname: [UInt8] = [],
        file: [UInt8] = [],
        options: DHCPOptions = DHCPOptions()
    ) {
        self.op = op
        self.htype = htype
        self.hlen = hlen
        self.hops = hops
        self.xid = xid
        self.secs = secs
        self.flags = flags
        self.ciaddr = ciaddr
        self.yiaddr = yiaddr
        self.siaddr = siaddr
        self.giaddr = giaddr
        self.chaddr = Self.fixed(chaddr, 16)
        self.sname = Self.fixed(sname, 64)
        self.file = Self.fixed(file, 128)
        self.options = options
    }

    static func fixed(_ bytes: [UInt8], _ n: Int) -> [UInt8] {
        if bytes.count == n { return bytes }  // decoding: already the right size, no copy
        return bytes.count > n ? Array(bytes.prefix(n)) : bytes + [UInt8](repeating: 0, count: n - bytes.count)
    }

    public var messageType: DHCPMessageType? { options.messageType }
    public var isBroadcast: Bool { flags & Self.broadcastFlag != 0 }

    /// The client's MAC address, when the hardware type is Ethernet with a 6-byte address.
    public var clientMAC: MACAddress? {
        htype == 1 && hlen == 6 ? MACAddress(chaddr.prefix(6)) : nil
    }

    /// The boot file name from the `file` field, up to its first NUL.
    public var bootFileName: String {
        get { String(decoding: file.prefix(while: { $0 != 0 }), as: UTF8.self) }
        set { file = Self.fixed(Array(newValue.utf8), 128) }
    }

    public var serverHostName: String {
        get { String(decoding: sname.prefix(while: { $0 != 0 }), as: UTF8.self) }
        set { sname = Self.fixed(Array(newValue.utf8), 64) }
    }
}

// MARK: Decoding

extension DHCPMessage {
    /// Decodes a DHCP message from a UDP payload.
    ///
    /// Options are read up to the END option (a missing END at the very end of the datagram is
    /// tolerated). Option overload (option 52, RFC 2132 §9.3) is resolved: options found in `file`
    /// and `sname` are merged, those fields are cleared, and option 52 is removed.
    public init(decoding bytes: [UInt8]) throws(WireError) {
        guard bytes.count >= Self.headerLength else {
            throw WireError(.truncatedHeader, "\(bytes.count) bytes")
        }
        var r = ByteReader(bytes)
        // The header length was checked above, so these reads cannot fail.
        let op = r.readUInt8()!
        let htype = r.readUInt8()!
        let hlen = r.readUInt8()!
        let hops = r.readUInt8()!
        let xid = r.readUInt32()!
        let secs = r.readUInt16()!
        let flags = r.readUInt16()!
        let ciaddr = IPv4Address(r.readUInt32()!)
        let yiaddr = IPv4Address(r.readUInt32()!)
        let siaddr = IPv4Address(r.readUInt32()!)
        let giaddr = IPv4Address(r.readUInt32()!)
        let chaddr = Array(r.readBytes(16)!)
        let sname = Array(r.readBytes(64)!)
        let file = Array(r.readBytes(128)!)
        let cookie = r.readUInt32()!
        guard cookie == Self.magicCookie else { throw WireError(.badMagicCookie) }
        guard hlen <= 16 else { throw WireError(.badHardwareAddressLength, "\(hlen)") }

        var options = DHCPOptions()
        try Self.readOptions(bytes[Self.headerLength...], into: &options, requireEnd: false)
        var message = DHCPMessage(
            op: DHCPOp(rawValue: op),
            htype: htype,
            hlen: hlen,
            hops: hops,
            xid: xid,
            secs: secs,
            flags: flags,
            ciaddr: ciaddr,
            yiaddr: yiaddr,
            siaddr: siaddr,
            giaddr: giaddr,
            chaddr: chaddr,
            sname: sname,
            file: file,
            options: options
        )
        if let overload = options[.overload] {
            guard overload.count == 1, (1...3).contains(overload[0]) else {
                throw WireError(.badOptionLength, "option 52")
            }
            message.options[.overload] = nil
            if overload[0] & 1 != 0 {
                try Self.readOptions(file[...], into: &message.options, requireEnd: true)
                message.file = Self.fixed([], 128)
            }
            if overload[0] & 2 != 0 {
                try Self.readOptions(sname[...], into: &message.options, requireEnd: true)
                message.sname = Self.fixed([], 64)
            }
            // Overload is meaningful only in the options field itself (RFC 2132 §9.3); one found
            // inside file or sname is ignored.
            message.options[.overload] = nil
        }
        self = message
    }

    static func readOptions(
        _ area: ArraySlice<UInt8>,
        into options: inout DHCPOptions,
        requireEnd: Bool
    )
        throws(WireError)
    {
        var i = area.startIndex
        while i < area.endIndex {
            let code = area[i]
            if code == 0 {
                i += 1
                continue
            }
            if code == 255 { return }
            guard i + 1 < area.endIndex else { throw WireError(.truncatedOption, "code \(code)") }
            let length = Int(area[i + 1])
            guard i + 2 + length <= area.endIndex else {
                throw WireError(.truncatedOption, "code \(code) length \(length)")
            }
            options.append(DHCPOptionCode(code), area[(i + 2)..<(i + 2 + length)])
            i += 2 + length
        }
        if requireEnd { throw WireError(.missingEndOption) }
    }
}

// MARK: Encoding

extension DHCPMessage {
    /// Encodes the message. Long options are split (RFC 3396), the END option is written, and the
    /// result is zero-padded to `minimumLength` (300 by default, the BOOTP minimum).
    public func encoded(minimumLength: Int = DHCPMessage.minimumLength) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(max(minimumLength, 576))
        out.append(op.rawValue)
        out.append(htype)
        out.append(hlen)
        out.append(hops)
        out.appendUInt32(xid)
        out.appendUInt16(secs)
        out.appendUInt16(flags)
        out.appendUInt32(ciaddr.value)
        out.appendUInt32(yiaddr.value)
        out.appendUInt32(siaddr.value)
        out.appendUInt32(giaddr.value)
        out.append(contentsOf: Self.fixed(chaddr, 16))
        out.append(contentsOf: Self.fixed(sname, 64))
        out.append(contentsOf: Self.fixed(file, 128))
        out.appendUInt32(Self.magicCookie)
        for (code, value) in options.entries where code != .pad && code != .end {
            if value.isEmpty {
                out.append(code.rawValue)
                out.append(0)
                continue
            }
            var start = 0
            while start < value.count {
                let n = min(255, value.count - start)
                out.append(code.rawValue)
                out.append(UInt8(n))
                out.append(contentsOf: value[start..<start + n])
                start += n
            }
        }
        out.append(255)
        if out.count < minimumLength { out.append(contentsOf: repeatElement(0, count: minimumLength - out.count)) }
        return out
    }
}
