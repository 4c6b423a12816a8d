import DHCPWire
import FarrierCore
import Foundation

/// Where a datagram arrived: the interface's own address and network, and the port.
public struct DHCPIngress: Sendable, Hashable {
    public var interface: String
    public var address: IPv4Address
    public var network: IPv4Network
    /// The local port the datagram arrived on (67, or 4011 for ProxyDHCP boot-server requests).
    public var port: Int
    /// Where it came from.
    public var sourceAddress: IPv4Address
    public var sourcePort: Int

    public init(
        interface: String,
        address: IPv4Address,
        network: IPv4Network,
        port: Int,
        sourceAddress: IPv4Address,
        sourcePort: Int
    ) {
        self.interface = interface
        self.address = address
        self.network = network
        self.port = port
        self.sourceAddress = sourceAddress
        self.sourcePort = sourcePort
    }
}

/// What to do with one request.
public struct DHCPOutcome: Sendable {
    public var reply: DHCPMessage?
    public var destinationAddress: IPv4Address = .broadcast
    public var destinationPort: Int = 68
    /// Must be durable before `reply` is sent.
    public var commit: Lease?
    /// A lease given back: delete it from the store.
    public var forget: MACAddress?
    /// Why nothing is sent, for the debug log.
    public var dropReason: String?
    /// Set when a DISCOVER went unanswered because this subnet's pool had no free address: an
    /// operator's problem, logged at warning and counted, not only a debug line.
    public var exhaustedSubnet: IPv4Network?
    /// The client kind, for the timeline.
    public var client: BootClient = .plain

    static func drop(_ reason: String, _ client: BootClient = .plain) -> DHCPOutcome {
        var o = DHCPOutcome()
        o.dropReason = reason
        o.client = client
        return o
    }
}

/// Decides replies (RFC 2131 §4.3, PXE 2.1, RFC 4578). Pure: no I/O; the lease table is a value
/// it owns, and time comes in as an argument.
public struct DHCPResponder: Sendable {
    public let configuration: DHCPConfiguration
    public private(set) var leases: LeaseTable
    /// Port of Farrier's HTTP server; URLs handed to clients use the address of the interface
    /// the request arrived on (`httpBase(_:)`).
    public var httpPort: Int

    public init(configuration: DHCPConfiguration, httpPort: Int) {
        self.configuration = configuration
        self.leases = LeaseTable(configuration: configuration)
        self.httpPort = httpPort
    }

    public mutating func loadLeases(_ l: [Lease]) { leases.load(l) }

    func httpBase(_ server: IPv4Address) -> String { "http://\(server):\(httpPort)" }

    /// The per-machine iPXE script URL handed to iPXE clients.
    public func scriptURL(server: IPv4Address, mac: MACAddress, optionArch: UInt16?) -> String {
        var url = "\(httpBase(server))/boot/\(mac.formatted(separator: "-")).ipxe"
        if let optionArch { url += "?arch=\(optionArch)" }
        return url
    }

    public mutating func handle(_ request: DHCPMessage, ingress: DHCPIngress, now: Date) -> DHCPOutcome {
        var outcome = decide(request, ingress: ingress, now: now)
        // Relay agent information goes last (RFC 3046 §2.0), after every option added above.
        if var reply = outcome.reply, let relay = reply.options[.relayAgentInformation] {
            reply.options[.relayAgentInformation] = nil
            reply.options[.relayAgentInformation] = relay
            outcome.reply = reply
        }
        return outcome
    }

    mutating func decide(_ request: DHCPMessage, ingress: DHCPIngress, now: Date) -> DHCPOutcome {
        guard request.op == .bootRequest else { return .drop("not a BOOTREQUEST") }
        guard let mac = request.clientMAC else { return .drop("not Ethernet (htype \(request.htype))") }
        guard let type = request.messageType else { return .drop("no message type (BOOTP is not served)") }
        let client = BootClient(request)
        switch configuration.mode {
        case .off:
            return .drop("DHCP is off", client)
        case .proxy:
            return proxy(request, type: type, mac: mac, client: client, ingress: ingress)
        case .full:
            if ingress.port == configuration.proxyPort && ingress.port != configuration.serverPort {
                return proxy(request, type: type, mac: mac, client: client, ingress: ingress)
            }
            return full(request, type: type, mac: mac, client: client, ingress: ingress, now: now)
        }
    }

    // MARK: Full mode

    mutating func full(
        _ req: DHCPMessage,
        type: DHCPMessageType,
        mac: MACAddress,
        client: BootClient,
        ingress: DHCPIngress,
        now: Date
    ) -> DHCPOutcome {
        let locator = req.giaddr != .any ? req.giaddr : ingress.address
        guard let subnet = leases.subnet(containing: locator) else {
            return .drop("no subnet configured for \(locator)", client)
        }
        switch type {
        case .discover:
            guard
                let ip = leases.offer(
                    mac: mac,
                    subnet: subnet.network,
                    requested: req.options.requestedIPAddress,
                    now: now
                )
            else {
                var out = DHCPOutcome.drop("no free address in \(subnet.network)", client)
                out.exhaustedSubnet = subnet.network
                return out
            }
            var out = reply(to: req, type: .offer, ingress: ingress, client: client, mac: mac)
            out.reply!.yiaddr = ip
            addLeaseOptions(&out.reply!, subnet: subnet, mac: mac)
            return out

        case .request:
            if let sid = req.options.serverIdentifier {
                // SELECTING (§4.3.2): the client chose a server.
                guard sid == ingress.address else {
                    leases.withdrawOffer(mac: mac)
                    return .drop("client selected server \(sid)", client)
                }
                guard let requested = req.options.requestedIPAddress ?? (req.ciaddr != .any ? req.ciaddr : nil) else {
                    return nak(req, ingress: ingress, client: client, "no requested address")
                }
                return ack(
                    req,
                    address: requested,
                    subnet: subnet,
                    mac: mac,
                    client: client,
                    ingress: ingress,
                    now: now
                )
            }
            if req.ciaddr == .any {
                // INIT-REBOOT: the client asks to keep an address it remembers.
                guard let requested = req.options.requestedIPAddress else {
                    return .drop("REQUEST without server id, requested address or ciaddr", client)
                }
                guard subnet.network.contains(requested) else {
                    return nak(req, ingress: ingress, client: client, "\(requested) is not on \(subnet.network)")
                }
                return ack(
                    req,
                    address: requested,
                    subnet: subnet,
                    mac: mac,
                    client: client,
                    ingress: ingress,
                    now: now
                )
            }
            // RENEWING / REBINDING: extend the lease on ciaddr.
            guard leases.lease(for: mac)?.address == req.ciaddr else {
                return nak(req, ingress: ingress, client: client, "no lease for \(req.ciaddr)")
            }
            return ack(req, address: req.ciaddr, subnet: subnet, mac: mac, client: client, ingress: ingress, now: now)

        case .decline:
            guard let ip = req.options.requestedIPAddress, leases.decline(mac: mac, address: ip, now: now) else {
                return .drop("DECLINE for an address the client does not hold", client)
            }
            var o = DHCPOutcome.drop("declined \(ip)", client)
            o.forget = mac
            return o

        case .release:
            guard leases.release(mac: mac, address: req.ciaddr, now: now) else {
                return .drop("RELEASE for an address the client does not hold", client)
            }
            var o = DHCPOutcome.drop("released \(req.ciaddr)", client)
            o.forget = mac
            return o

        case .inform:
            // §3.4: configuration only; no yiaddr, no lease time; unicast to ciaddr.
            var out = reply(to: req, type: .ack, ingress: ingress, client: client, mac: mac)
            addLeaseOptions(&out.reply!, subnet: subnet, mac: mac, includeLeaseTime: false)
            if req.ciaddr != .any, req.giaddr == .any {
                out.destinationAddress = req.ciaddr
            }
            return out

        default:
            return .drop("\(type) is not a client message", client)
        }
    }

    mutating func ack(
        _ req: DHCPMessage,
        address: IPv4Address,
        subnet: DHCPConfiguration.Subnet,
        mac: MACAddress,
        client: BootClient,
        ingress: DHCPIngress,
        now: Date
    ) -> DHCPOutcome {
        guard let lease = leases.bind(mac: mac, address: address, leaseTime: subnet.leaseTime, now: now) else {
            return nak(req, ingress: ingress, client: client, "\(address) is not available to \(mac)")
        }
        var out = reply(to: req, type: .ack, ingress: ingress, client: client, mac: mac)
        out.reply!.yiaddr = address
        addLeaseOptions(&out.reply!, subnet: subnet, mac: mac)
        out.commit = lease
        return out
    }

    func nak(_ req: DHCPMessage, ingress: DHCPIngress, client: BootClient, _ reason: String) -> DHCPOutcome {
        var m = DHCPMessage(
            op: .bootReply,
            htype: req.htype,
            hlen: req.hlen,
            xid: req.xid,
            flags: req.flags,
            giaddr: req.giaddr,
            chaddr: req.chaddr
        )
        m.options.messageType = .nak
        m.options.set(.serverIdentifier, ipv4: ingress.address)
        m.options.set(.message, string: reason)
        echo(req, into: &m)
        var out = DHCPOutcome()
        out.reply = m
        out.client = client
        out.dropReason = reason
        // §4.3.2: NAKs are broadcast unless relayed.
        if req.giaddr != .any {
            out.destinationAddress = req.giaddr
            out.destinationPort = configuration.serverPort
        } else {
            out.destinationAddress = .broadcast
            out.destinationPort = configuration.clientPort
        }
        return out
    }

    func addLeaseOptions(
        _ m: inout DHCPMessage,
        subnet: DHCPConfiguration.Subnet,
        mac: MACAddress,
        includeLeaseTime: Bool = true
    ) {
        if includeLeaseTime {
            m.options.set(.leaseTime, uint32: UInt32(subnet.leaseTime))
            m.options.set(.renewalTime, uint32: UInt32(subnet.leaseTime / 2))
            m.options.set(.rebindingTime, uint32: UInt32(subnet.leaseTime * 7 / 8))
        }
        m.options.set(.subnetMask, ipv4: subnet.network.netmask)
        m.options.set(.broadcastAddress, ipv4: subnet.network.broadcast)
        if let r = subnet.router { m.options.set(.router, ipv4: r) }
        if !subnet.dnsServers.isEmpty { m.options.set(.domainNameServer, ipv4List: subnet.dnsServers) }
        if let d = subnet.domainName { m.options.set(.domainName, string: d) }
        if let h = leases.reservation(for: mac)?.hostname { m.options.set(.hostName, string: h) }
    }

    // MARK: Proxy mode

    func proxy(
        _ req: DHCPMessage,
        type: DHCPMessageType,
        mac: MACAddress,
        client: BootClient,
        ingress: DHCPIngress
    ) -> DHCPOutcome {
        // Answer only network-boot clients that name their architecture (option 93).
        guard client.isNetworkBoot, req.options.clientArchitectures != nil else {
            return .drop("not a PXE/HTTP-boot client", client)
        }
        if case .unsupportedPXE(let a) = client {
            return .drop("no boot file for architecture \(a.map(String.init) ?? "none")", client)
        }
        let onBootServerPort = ingress.port == configuration.proxyPort && ingress.port != configuration.serverPort
        switch type {
        case .discover where !onBootServerPort:
            // PXE 2.1 ProxyDHCP offer: no address, no lease time; boot data and PXEClient.
            var out = reply(to: req, type: .offer, ingress: ingress, client: client, mac: mac)
            out.reply!.yiaddr = .any
            return out
        case .request where onBootServerPort:
            // Boot-server request to 4011: ACK straight back to the source address and port.
            var out = reply(to: req, type: .ack, ingress: ingress, client: client, mac: mac)
            out.reply!.yiaddr = .any
            out.reply!.ciaddr = req.ciaddr
            out.destinationAddress = ingress.sourceAddress
            out.destinationPort = ingress.sourcePort
            return out
        case .request:
            // A REQUEST to the real server names it in option 54; answer only one naming us.
            guard req.options.serverIdentifier == ingress.address else {
                return .drop("REQUEST for another server", client)
            }
            var out = reply(to: req, type: .ack, ingress: ingress, client: client, mac: mac)
            out.reply!.yiaddr = .any
            return out
        default:
            return .drop("\(type) is not answered in proxy mode", client)
        }
    }

    // MARK: Common

    /// A reply skeleton: header fields echoed, server identifier, echoed options, boot data.
    func reply(
        to req: DHCPMessage,
        type: DHCPMessageType,
        ingress: DHCPIngress,
        client: BootClient,
        mac: MACAddress
    ) -> DHCPOutcome {
        var m = DHCPMessage(
            op: .bootReply,
            htype: req.htype,
            hlen: req.hlen,
            xid: req.xid,
            flags: req.flags,
            giaddr: req.giaddr,
            chaddr: req.chaddr
        )
        m.options.messageType = type
        m.options.set(.serverIdentifier, ipv4: ingress.address)
        addBootOptions(&m, request: req, client: client, server: ingress.address, mac: mac)
        echo(req, into: &m)
        var out = DHCPOutcome()
        out.reply = m
        out.client = client
        // §4.1: relayed → giaddr:67; renewing (ciaddr) → ciaddr:68; otherwise broadcast.
        if req.giaddr != .any {
            out.destinationAddress = req.giaddr
            out.destinationPort = configuration.serverPort
        } else if req.ciaddr != .any {
            out.destinationAddress = req.ciaddr
            out.destinationPort = configuration.clientPort
        } else {
            out.destinationAddress = .broadcast
            out.destinationPort = configuration.clientPort
        }
        return out
    }

    /// Options echoed from the request: client id (RFC 6842), relay agent info (RFC 3046),
    /// machine GUID (RFC 4578 §2.3).
    func echo(_ req: DHCPMessage, into m: inout DHCPMessage) {
        if let v = req.options[.clientIdentifier] { m.options[.clientIdentifier] = v }
        if let v = req.options.clientMachineIdentifier { m.options[.clientMachineIdentifier] = v }
        if let v = req.options[.relayAgentInformation] { m.options[.relayAgentInformation] = v }
    }

    func addBootOptions(
        _ m: inout DHCPMessage,
        request req: DHCPMessage,
        client: BootClient,
        server: IPv4Address,
        mac: MACAddress
    ) {
        let wantsBootFileOption = req.options.parameterRequestList.contains(DHCPOptionCode.bootfileName.rawValue)
        func setFile(_ name: String) {
            m.bootFileName = name
            if wantsBootFileOption { m.options.set(.bootfileName, string: name) }
        }
        switch client {
        case .plain, .unsupportedPXE:
            return
        case .ipxe(_, let arch):
            // Already iPXE: hand it its script over HTTP, never another iPXE binary (no chainload loop).
            m.options.set(.vendorClassIdentifier, string: "PXEClient")
            m.siaddr = server
            setFile(scriptURL(server: server, mac: mac, optionArch: arch))
        case .httpBoot(let platform, _):
            m.options.set(.vendorClassIdentifier, string: "HTTPClient")
            setFile("\(httpBase(server))/tftp/\(bootFile(for: platform))")
        case .pxe(let platform, _):
            m.options.set(.vendorClassIdentifier, string: "PXEClient")
            // PXE discovery control: use the boot file offered, skip boot-server discovery.
            m.options[.vendorSpecific] = [6, 1, 8, 255]
            m.siaddr = server
            m.serverHostName = server.description
            setFile(bootFile(for: platform))
        }
    }

    func bootFile(for p: ClientPlatform) -> String {
        let f = configuration.bootFiles
        switch (p.firmware, p.architecture) {
        case (.bios, _): return f.bios
        case (.uefi, .i386): return f.uefiI386
        case (.uefi, .arm64): return f.uefiARM64
        case (.uefi, .arm32): return f.uefiARM32
        default: return f.uefiX64
        }
    }
}
