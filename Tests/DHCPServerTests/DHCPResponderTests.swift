import DHCPServer
import DHCPWire
import FarrierCore
import Foundation
import Testing
import WireSupport

func makeConfig(mode: DHCPConfiguration.Mode = .full, pool: ClosedRange<IPv4Address>? = nil) -> DHCPConfiguration {
    var c = DHCPConfiguration()
    c.mode = mode
    c.interfaces = ["br0"]
    c.subnets = [
        .init(
            network: IPv4Network("198.18.0.0/24")!,
            pools: [pool ?? IPv4Address("198.18.0.100")!...IPv4Address("198.18.0.199")!],
            router: IPv4Address("198.18.0.1"),
            dnsServers: [IPv4Address("198.18.0.1")!],
            leaseTime: 600
        )
    ]
    return c
}

let server = IPv4Address("198.18.0.1")!
let ingress = DHCPIngress(
    interface: "br0",
    address: server,
    network: IPv4Network("198.18.0.0/24")!,
    port: 67,
    sourceAddress: .any,
    sourcePort: 68
)

func mac(_ n: UInt8) -> MACAddress { MACAddress([0x52, 0x54, 0, 0, 0, n]) }

func request(
    _ type: DHCPMessageType,
    mac m: MACAddress,
    xid: UInt32 = 1,
    arch: UInt16? = nil,
    vendor: String? = nil,
    userClass: String? = nil,
    requested: IPv4Address? = nil,
    serverID: IPv4Address? = nil,
    ciaddr: IPv4Address = .any,
    giaddr: IPv4Address = .any
) -> DHCPMessage {
    var msg = DHCPMessage(op: .bootRequest, xid: xid, ciaddr: ciaddr, giaddr: giaddr, chaddr: m.bytes)
    msg.options.messageType = type
    if let vendor { msg.options.set(.vendorClassIdentifier, string: vendor) }
    if let arch { msg.options[.clientSystemArchitecture] = [UInt8(arch >> 8), UInt8(arch & 0xFF)] }
    if let userClass { msg.options.set(.userClass, string: userClass) }
    if let requested { msg.options.set(.requestedIPAddress, ipv4: requested) }
    if let serverID { msg.options.set(.serverIdentifier, ipv4: serverID) }
    return msg
}

@Suite struct DHCPResponderTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func fullDORA() throws {
        var r = DHCPResponder(configuration: makeConfig(), httpPort: 8080)
        let offer = r.handle(request(.discover, mac: mac(1)), ingress: ingress, now: now)
        let o = try #require(offer.reply)
        #expect(o.messageType == .offer)
        #expect(o.yiaddr == IPv4Address("198.18.0.100"))
        #expect(o.options.serverIdentifier == server)
        #expect(o.options.uint32(.leaseTime) == 600)
        #expect(o.options.ipv4(.subnetMask) == IPv4Address("255.255.255.0"))
        #expect(o.options.ipv4(.router) == server)
        #expect(offer.commit == nil)
        #expect(offer.destinationAddress == .broadcast && offer.destinationPort == 68)
        // A plain client gets no boot options and no PXEClient.
        #expect(o.options[.vendorClassIdentifier] == nil && o.bootFileName.isEmpty)

        let ack = r.handle(
            request(.request, mac: mac(1), requested: o.yiaddr, serverID: server),
            ingress: ingress,
            now: now
        )
        let a = try #require(ack.reply)
        #expect(a.messageType == .ack)
        #expect(a.yiaddr == o.yiaddr)
        #expect(ack.commit == Lease(mac: mac(1), address: o.yiaddr, expires: now.addingTimeInterval(600)))
    }

    @Test func noAddressGoesToTwoMACs() throws {
        var c = makeConfig(pool: IPv4Address("198.18.0.100")!...IPv4Address("198.18.0.109")!)
        c.offerHold = 60
        var r = DHCPResponder(configuration: c, httpPort: 8080)
        var given: [IPv4Address: MACAddress] = [:]
        for n in 1...10 {
            let o = try #require(r.handle(request(.discover, mac: mac(UInt8(n))), ingress: ingress, now: now).reply)
            let a = try #require(
                r.handle(
                    request(.request, mac: mac(UInt8(n)), requested: o.yiaddr, serverID: server),
                    ingress: ingress,
                    now: now
                ).reply
            )
            #expect(a.messageType == .ack)
            #expect(given[a.yiaddr] == nil, "address \(a.yiaddr) given twice")
            given[a.yiaddr] = mac(UInt8(n))
        }
        // The pool is exhausted: an 11th client gets no offer while the leases are valid.
        let eleventh = r.handle(request(.discover, mac: mac(11)), ingress: ingress, now: now)
        #expect(eleventh.reply == nil)
        // It cannot take an address by requesting it either.
        let steal = r.handle(
            request(.request, mac: mac(11), requested: IPv4Address("198.18.0.100")),
            ingress: ingress,
            now: now
        )
        #expect(steal.reply?.messageType == .nak)
        #expect(steal.commit == nil)
        // Once the leases expire, addresses are reused.
        let later = r.handle(request(.discover, mac: mac(11)), ingress: ingress, now: now.addingTimeInterval(601))
        #expect(later.reply?.messageType == .offer)
    }

    @Test func sameMACGetsTheSameAddressAfterRestart() throws {
        var r = DHCPResponder(configuration: makeConfig(), httpPort: 8080)
        _ = r.handle(request(.discover, mac: mac(1)), ingress: ingress, now: now)
        _ = r.handle(request(.discover, mac: mac(2)), ingress: ingress, now: now)
        let o = try #require(r.handle(request(.discover, mac: mac(2)), ingress: ingress, now: now).reply)
        let lease = try #require(
            r.handle(request(.request, mac: mac(2), requested: o.yiaddr, serverID: server), ingress: ingress, now: now)
                .commit
        )
        // A restarted server knows only the durable leases.
        var restarted = DHCPResponder(configuration: makeConfig(), httpPort: 8080)
        restarted.loadLeases([lease])
        let again = try #require(restarted.handle(request(.discover, mac: mac(2)), ingress: ingress, now: now).reply)
        #expect(again.yiaddr == lease.address)
        let other = try #require(restarted.handle(request(.discover, mac: mac(3)), ingress: ingress, now: now).reply)
        #expect(other.yiaddr != lease.address)
    }

    @Test func reservationsWinAndAreNotHandedToOthers() throws {
        var c = makeConfig(pool: IPv4Address("198.18.0.100")!...IPv4Address("198.18.0.101")!)
        c.reservations = [.init(mac: mac(9), address: IPv4Address("198.18.0.100")!, hostname: "node9")]
        var r = DHCPResponder(configuration: c, httpPort: 8080)
        let a = try #require(r.handle(request(.discover, mac: mac(1)), ingress: ingress, now: now).reply)
        #expect(a.yiaddr == IPv4Address("198.18.0.101"))
        let b = try #require(r.handle(request(.discover, mac: mac(9)), ingress: ingress, now: now).reply)
        #expect(b.yiaddr == IPv4Address("198.18.0.100"))
        #expect(b.options.string(.hostName) == "node9")
        // The pool is full: a third client gets nothing, and the outcome names the subnet.
        let c3 = r.handle(request(.discover, mac: mac(3)), ingress: ingress, now: now)
        #expect(c3.reply == nil && c3.exhaustedSubnet == IPv4Network("198.18.0.0/24"))
        // A client that holds an offer is still answered.
        let again = r.handle(request(.discover, mac: mac(1)), ingress: ingress, now: now)
        #expect(again.reply?.yiaddr == a.yiaddr && again.exhaustedSubnet == nil)
    }

    @Test func warningsAreLimitedPerKeyAndCountWhatTheyStandFor() {
        var limiter = WarningLimiter<String>(interval: .seconds(60))
        let t0 = ContinuousClock.now
        #expect(limiter.note("a", at: t0) == 1)
        #expect(limiter.note("a", at: t0 + .seconds(1)) == nil)
        #expect(limiter.note("b", at: t0 + .seconds(2)) == 1)
        #expect(limiter.note("a", at: t0 + .seconds(59)) == nil)
        // A minute after the first: one warning for the three since it.
        #expect(limiter.note("a", at: t0 + .seconds(60)) == 3)
        #expect(limiter.note("a", at: t0 + .seconds(61)) == nil)
    }

    @Test func renewAndRebootAndWrongServer() throws {
        var r = DHCPResponder(configuration: makeConfig(), httpPort: 8080)
        let o = try #require(r.handle(request(.discover, mac: mac(1)), ingress: ingress, now: now).reply)
        _ = r.handle(request(.request, mac: mac(1), requested: o.yiaddr, serverID: server), ingress: ingress, now: now)
        // RENEWING: ciaddr set, unicast reply to ciaddr.
        let renew = r.handle(
            request(.request, mac: mac(1), ciaddr: o.yiaddr),
            ingress: ingress,
            now: now.addingTimeInterval(300)
        )
        #expect(renew.reply?.messageType == .ack)
        #expect(renew.destinationAddress == o.yiaddr)
        #expect(renew.commit?.expires == now.addingTimeInterval(900))
        // INIT-REBOOT with a wrong-network address gets a NAK.
        let bad = r.handle(
            request(.request, mac: mac(1), requested: IPv4Address("10.0.0.5")),
            ingress: ingress,
            now: now
        )
        #expect(bad.reply?.messageType == .nak)
        // A REQUEST naming another server withdraws our offer silently.
        _ = r.handle(request(.discover, mac: mac(2)), ingress: ingress, now: now)
        let other = r.handle(
            request(.request, mac: mac(2), serverID: IPv4Address("198.18.0.254")),
            ingress: ingress,
            now: now
        )
        #expect(other.reply == nil)
        #expect(r.leases.lease(for: mac(2)) == nil)
    }

    @Test func relayedRequestsUseGiaddrSubnetAndReplyToTheRelay() throws {
        var c = makeConfig()
        c.subnets.append(
            .init(
                network: IPv4Network("198.19.0.0/16")!,
                pools: [IPv4Address("198.19.1.0")!...IPv4Address("198.19.1.255")!]
            )
        )
        var r = DHCPResponder(configuration: c, httpPort: 8080)
        var d = request(.discover, mac: mac(1), giaddr: IPv4Address("198.19.0.2")!)
        d.options[.relayAgentInformation] = [1, 3, 0x61, 0x62, 0x63]
        let out = r.handle(d, ingress: ingress, now: now)
        let o = try #require(out.reply)
        #expect(IPv4Network("198.19.0.0/16")!.contains(o.yiaddr))
        #expect(o.giaddr == IPv4Address("198.19.0.2"))
        #expect(out.destinationAddress == IPv4Address("198.19.0.2") && out.destinationPort == 67)
        #expect(o.options[.relayAgentInformation] == [1, 3, 0x61, 0x62, 0x63])
        #expect(o.options.codes.last == .relayAgentInformation)
    }

    @Test(arguments: [
        (UInt16(0), "undionly.kpxe"), (7, "ipxe.efi"), (9, "ipxe.efi"), (6, "ipxe-i386.efi"), (11, "snp-arm64.efi"),
    ])
    func bootFileByArchitecture(_ arch: UInt16, _ file: String) throws {
        var r = DHCPResponder(configuration: makeConfig(), httpPort: 8080)
        let o = try #require(
            r.handle(
                request(
                    .discover,
                    mac: mac(1),
                    arch: arch,
                    vendor: String(format: "PXEClient:Arch:%05d:UNDI:002001", arch)
                ),
                ingress: ingress,
                now: now
            ).reply
        )
        #expect(o.bootFileName == file)
        #expect(o.siaddr == server)
        #expect(o.options.vendorClassIdentifier == "PXEClient")
        #expect(o.options[.vendorSpecific] == [6, 1, 8, 255])
    }

    @Test func iPXEGetsItsScriptURLNotAnotherBinary() throws {
        var r = DHCPResponder(configuration: makeConfig(), httpPort: 8080)
        let o = try #require(
            r.handle(
                request(
                    .discover,
                    mac: mac(0x56),
                    arch: 0,
                    vendor: "PXEClient:Arch:00000:UNDI:002001",
                    userClass: "iPXE"
                ),
                ingress: ingress,
                now: now
            ).reply
        )
        #expect(o.bootFileName == "http://198.18.0.1:8080/boot/52-54-00-00-00-56.ipxe?arch=0")
        // 60 PXEClient with a boot file: iPXE does not wait for ProxyDHCP offers.
        #expect(o.options.vendorClassIdentifier == "PXEClient")
    }

    @Test func uefiHTTPBootGetsAnHTTPURL() throws {
        var r = DHCPResponder(configuration: makeConfig(), httpPort: 8080)
        let o = try #require(
            r.handle(
                request(.discover, mac: mac(1), arch: 16, vendor: "HTTPClient:Arch:00016:UNDI:003001"),
                ingress: ingress,
                now: now
            ).reply
        )
        #expect(o.options.vendorClassIdentifier == "HTTPClient")
        #expect(o.bootFileName == "http://198.18.0.1:8080/tftp/ipxe.efi")
    }

    @Test func unknownArchitectureGetsAddressButNoBootFile() throws {
        var r = DHCPResponder(configuration: makeConfig(), httpPort: 8080)
        let o = try #require(
            r.handle(
                request(.discover, mac: mac(1), arch: 99, vendor: "PXEClient:Arch:00099:UNDI:002001"),
                ingress: ingress,
                now: now
            ).reply
        )
        #expect(o.yiaddr != .any)
        #expect(o.bootFileName.isEmpty && o.options[.vendorClassIdentifier] == nil)
    }

    @Test func proxyModeAnswersOnlyPXEClientsWithoutAddresses() throws {
        var r = DHCPResponder(configuration: makeConfig(mode: .proxy), httpPort: 8080)
        #expect(r.handle(request(.discover, mac: mac(1)), ingress: ingress, now: now).reply == nil)
        #expect(
            r.handle(
                request(.discover, mac: mac(1), vendor: "PXEClient:Arch:00000:UNDI:002001"),
                ingress: ingress,
                now: now
            ).reply == nil
        )
        var d = request(.discover, mac: mac(1), arch: 0, vendor: "PXEClient:Arch:00000:UNDI:002001")
        d.options[.clientMachineIdentifier] = [0] + [UInt8](repeating: 7, count: 16)
        let out = r.handle(d, ingress: ingress, now: now)
        let o = try #require(out.reply)
        #expect(o.messageType == .offer)
        #expect(o.yiaddr == .any)
        #expect(o.options[.leaseTime] == nil)
        #expect(o.options.serverIdentifier == server)
        #expect(o.bootFileName == "undionly.kpxe")
        #expect(o.options.clientMachineIdentifier == [0] + [UInt8](repeating: 7, count: 16))
        // Boot-server request on 4011: ACK to the source address and port.
        var port4011 = ingress
        port4011.port = 4011
        port4011.sourceAddress = IPv4Address("198.18.0.150")!
        port4011.sourcePort = 68
        let req = request(
            .request,
            mac: mac(1),
            arch: 0,
            vendor: "PXEClient:Arch:00000:UNDI:002001",
            ciaddr: IPv4Address("198.18.0.150")!
        )
        let ack = r.handle(req, ingress: port4011, now: now)
        #expect(ack.reply?.messageType == .ack)
        #expect(ack.reply?.bootFileName == "undionly.kpxe")
        #expect(ack.destinationAddress == IPv4Address("198.18.0.150") && ack.destinationPort == 68)
        #expect(ack.commit == nil)
    }

    @Test func offModeAnswersNothing() {
        var r = DHCPResponder(configuration: makeConfig(mode: .off), httpPort: 8080)
        #expect(r.handle(request(.discover, mac: mac(1)), ingress: ingress, now: now).reply == nil)
    }

    @Test func declineQuarantinesTheAddress() throws {
        var r = DHCPResponder(
            configuration: makeConfig(pool: IPv4Address("198.18.0.100")!...IPv4Address("198.18.0.101")!),
            httpPort: 8080
        )
        let o = try #require(r.handle(request(.discover, mac: mac(1)), ingress: ingress, now: now).reply)
        _ = r.handle(request(.request, mac: mac(1), requested: o.yiaddr, serverID: server), ingress: ingress, now: now)
        let d = r.handle(
            request(.decline, mac: mac(1), requested: o.yiaddr, serverID: server),
            ingress: ingress,
            now: now
        )
        #expect(d.forget == mac(1))
        let next = try #require(r.handle(request(.discover, mac: mac(2)), ingress: ingress, now: now).reply)
        #expect(next.yiaddr != o.yiaddr)
    }
}
