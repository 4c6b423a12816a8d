import Foundation
import TestSupport
import Testing

/// DHCP against real clients: dhclient, udhcpc and perfdhcp, each in namespaces made here.
@Suite(.serialized, .enabled(if: Harness.canRun, "needs root and the peers from .ci/setup"))
struct DHCPIntegrationTests {
    static let subnet = "198.18.10.0/24,pool=198.18.10.100-198.18.10.199,router=198.18.10.1,dns=198.18.10.1,lease=600"

    func leasedAddress(_ h: Harness, _ ns: String, _ ifname: String) throws -> String? {
        try h.leasedAddress(ns, ifname, prefix: "198.18.10.")
    }

    func dhclient(_ h: Harness, _ ns: String, _ ifname: String, tag: String) throws -> (String?, String) {
        try h.dhclient(ns, ifname, tag: tag, prefix: "198.18.10.")
    }

    /// Two columns of every row of a query on the server's database, read by Python's sqlite3.
    func rows(_ h: Harness, _ sql: String) throws -> [(String, String)] {
        let script =
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); [print(a,b) for a,b in c.execute(sys.argv[2])]"
        let out = try h.run(["python3", "-c", script, h.directory + "/data/farrier.sqlite", sql]).stdout
        return out.split(separator: "\n").map { l in
            let p = l.split(separator: " ")
            return (String(p[0]), String(p[1]))
        }
    }

    func leaseRows(_ h: Harness) throws -> [(String, String)] { try rows(h, "select mac,address from lease") }

    /// A server with a veth to a client namespace, serving `subnet` on its side and, for
    /// perfdhcp's relayed requests (giaddr 198.19.0.2), 198.19.0.0/16 from 198.19.1.0-255.
    func relayedServer(
        _ h: Harness,
        flags: [String] = []
    ) throws -> (server: String, client: String, clientInterface: String) {
        let (s, sif, c, cif) = try h.veth(serverIP: "198.18.10.1/24")
        try h.run(["ip", "-n", c, "addr", "add", "198.19.0.2/16", "dev", cif])
        try h.run(["ip", "-n", s, "addr", "add", "198.19.0.1/16", "dev", sif])
        let relayed = "198.19.0.0/16,pool=198.19.1.0-198.19.1.255,lease=600"
        try h.startFarrier(
            namespace: s,
            flags: ["--dhcp-interface", sif, "--dhcp-subnet", Self.subnet, "--dhcp-subnet", relayed] + flags
        )
        return (s, c, cif)
    }

    @Test func dhclientGetsALeaseThatSurvivesKill9() throws {
        let h = try Harness("dhclient")
        defer { h.cleanup() }
        let (s, sif, c, cif) = try h.veth(serverIP: "198.18.10.1/24")
        try h.run(["ip", "-n", c, "link", "set", cif, "address", "52:54:00:0a:00:01"])
        let server = try h.startFarrier(namespace: s, flags: ["--dhcp-interface", sif, "--dhcp-subnet", Self.subnet])
        let (address, log) = try dhclient(h, c, cif, tag: "d1")
        let first = try #require(address, "no address: \(log)")
        #expect(log.contains("DHCPACK of \(first) from 198.18.10.1"))
        // The lease is on disk before the ACK left: kill -9 now, restart, ask again.
        kill(server.processIdentifier, SIGKILL)
        server.waitUntilExit()
        #expect(try leaseRows(h).map(\.1) == [first])
        try h.run(["ip", "-n", c, "addr", "flush", "dev", cif])
        try h.startFarrier(
            namespace: s,
            flags: ["--dhcp-interface", sif, "--dhcp-subnet", Self.subnet],
            log: "farrier2.log"
        )
        try? FileManager.default.removeItem(atPath: "\(h.directory)/d2.leases")
        let (again, log2) = try dhclient(h, c, cif, tag: "d2")
        #expect(again == first, "after restart: \(log2)")
    }

    /// Two replicas on one PostgreSQL, both configured for the same boot network: one answers,
    /// the other stands by without opening a DHCP socket; when the one answering is killed with
    /// SIGKILL, the other takes the network and gives the client the lease the first wrote.
    @Test func oneReplicaAnswersDHCPAndAnotherTakesOverWhenItDies() throws {
        let h = try Harness("dhcp-fence")
        defer { h.cleanup() }
        let (s, sif, c, cif) = try h.veth(serverIP: "198.18.10.1/24")
        let pg = try PostgresServer(h, namespace: s)
        defer { pg.stop() }
        let url = try pg.createDatabase("farrier")
        try h.run(["ip", "-n", c, "link", "set", cif, "address", "52:54:00:0a:00:05"])
        func replica(_ n: Int) throws -> Process {
            try h.start(
                [
                    "ip", "netns", "exec", s, Harness.farrierBinary, "server", "--data-dir", h.directory + "/data",
                    "--log-level", "debug", "--database", url, "--http-listen", "0.0.0.0:\(8080 + n)",
                    "--agent-listen", "127.0.0.1:\(8443 + n)", "--grpc-listen", "127.0.0.1:\(7700 + n)",
                    "--metrics-listen", "127.0.0.1:\(7790 + n)", "--tftp-listen", "", "--dhcp-interface", sif,
                    "--dhcp-subnet", Self.subnet,
                ],
                log: "replica-\(n).log"
            )
        }
        func waitForLog(_ n: Int, _ process: Process, _ text: String) throws {
            try h.waitUntil("replica \(n): \(text)", timeout: 30) {
                let log = h.read("replica-\(n).log")
                guard process.isRunning else { throw Harness.CommandError(description: "replica \(n) exited: \(log)") }
                return log.contains(text)
            }
        }
        let a = try replica(0)
        try waitForLog(0, a, "DHCP holds its boot network")
        let b = try replica(1)
        try waitForLog(1, b, "DHCP standing by")
        let (address, log) = try dhclient(h, c, cif, tag: "d1")
        let first = try #require(address, "no address: \(log)")
        #expect(h.read("replica-0.log").contains("DHCP listening"))
        #expect(!h.read("replica-1.log").contains("DHCP listening"), "the standby opened a DHCP socket")

        kill(a.processIdentifier, SIGKILL)
        a.waitUntilExit()
        try waitForLog(1, b, "DHCP holds its boot network")
        #expect(h.read("replica-1.log").contains("DHCP listening"))
        try h.run(["ip", "-n", c, "addr", "flush", "dev", cif])
        try? FileManager.default.removeItem(atPath: "\(h.directory)/d2.leases")
        let (again, log2) = try dhclient(h, c, cif, tag: "d2")
        #expect(again == first, "after the takeover: \(log2)")
        #expect(log2.contains("DHCPACK of \(first) from 198.18.10.1"))
    }

    @Test func udhcpcGetsALeaseWithOptions() throws {
        let h = try Harness("udhcpc")
        defer { h.cleanup() }
        let (s, sif, c, cif) = try h.veth(serverIP: "198.18.10.1/24")
        try h.startFarrier(namespace: s, flags: ["--dhcp-interface", sif, "--dhcp-subnet", Self.subnet])
        // udhcpc's script receives the options as environment; print them.
        let script = h.directory + "/udhcpc.sh"
        try
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"BOUND ip=$ip router=$router dns=$dns lease=$lease mask=$mask\"\nexit 0\n"
            .write(toFile: script, atomically: true, encoding: .utf8)
        try h.run(["chmod", "+x", script])
        let r = try h.run(
            ["ip", "netns", "exec", c, "udhcpc", "-f", "-q", "-n", "-t", "5", "-i", cif, "-s", script],
            timeout: 40,
            check: false
        )
        #expect(r.status == 0, "udhcpc: \(r.stdout) \(r.stderr)")
        let bound = try #require(
            r.stdout.split(separator: "\n").first(where: { $0.hasPrefix("BOUND") }).map(String.init)
        )
        #expect(bound.contains("ip=198.18.10.1"))  // from the pool 198.18.10.100-199
        #expect(
            bound.contains("router=198.18.10.1 ") && bound.contains("dns=198.18.10.1") && bound.contains("lease=600")
        )
        #expect(bound.contains("mask=24"))
    }

    @Test func malformedPacketsAreDroppedAndCounted() throws {
        let h = try Harness("malformed")
        defer { h.cleanup() }
        let (s, sif, c, cif) = try h.veth(serverIP: "198.18.10.1/24")
        try h.run(["ip", "-n", c, "addr", "add", "198.18.10.9/24", "dev", cif])
        try h.startFarrier(namespace: s, flags: ["--dhcp-interface", sif, "--dhcp-subnet", Self.subnet])
        let send = """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            for payload in [b'', b'\\x01' * 50, b'\\x01\\x01\\x06\\x00' + b'\\x00' * 232 + b'\\x63\\x82\\x53\\x64', b'\\x01\\x01\\x06\\x00' + b'\\x00' * 232 + b'\\x63\\x82\\x53\\x63\\x37\\x09\\x01']:
                s.sendto(payload, ('198.18.10.1', 67))
            # Longer than the server's 2048-byte receive buffer (sent as IP fragments): truncated, dropped.
            s.sendto(b'\\x01\\x01\\x06\\x00' + b'\\x00' * 232 + b'\\x63\\x82\\x53\\x63' + b'\\x00' * 3000, ('198.18.10.1', 67))
            """
        try h.run(["ip", "netns", "exec", c, "python3", "-c", send])
        try h.waitUntil("malformed counter", timeout: 10) {
            try h.metric(namespace: s, "farrier_dhcp_packets_malformed_total") == 5
        }
        // The server is still serving.
        let r = try h.run(
            ["ip", "netns", "exec", c, "udhcpc", "-f", "-q", "-n", "-t", "5", "-i", cif, "-s", "/bin/true"],
            timeout: 40,
            check: false
        )
        #expect(r.status == 0)
        #expect(h.read("farrier.log").contains("dropped malformed DHCP packet"))
        #expect(h.read("farrier.log").contains("dropped oversized DHCP packet"))
        #expect(try h.metric(namespace: s, "farrier_dhcp_packets_received_total") >= 6)  // the five, and udhcpc's
    }

    @Test func unconfiguredInterfaceGetsNoAnswer() throws {
        let h = try Harness("off")
        defer { h.cleanup() }
        let (s, _, c, cif) = try h.veth(serverIP: "198.18.10.1/24")
        try h.startFarrier(namespace: s, flags: ["--dhcp-subnet", Self.subnet])
        let r = try h.run(
            ["ip", "netns", "exec", c, "udhcpc", "-f", "-q", "-n", "-t", "2", "-T", "1", "-i", cif, "-s", "/bin/true"],
            timeout: 20,
            check: false
        )
        #expect(r.status != 0)
        #expect(h.read("farrier.log").contains("DHCP is off: no interfaces are configured"))
        #expect(try h.metric(namespace: s, "farrier_dhcp_packets_received_total") == 0)
    }

    @Test func perfdhcpNeverGetsOneAddressTwice() throws {
        let h = try Harness("perfdhcp")
        defer { h.cleanup() }
        // Relayed: perfdhcp sets giaddr 198.19.0.2, so leases come from the 198.19 subnet.
        let (_, c, cif) = try relayedServer(h)
        let r = try h.run(
            [
                "ip", "netns", "exec", c, "timeout", "30", "perfdhcp", "-4", "-l", cif, "-r", "100", "-R", "200", "-p",
                "4", "198.19.0.1",
            ],
            timeout: 40,
            check: false
        )
        let rows = try leaseRows(h)
        #expect(rows.count >= 50, "perfdhcp: \(r.stdout)")
        #expect(Set(rows.map(\.1)).count == rows.count, "an address was leased to two MACs")
        #expect(Set(rows.map(\.0)).count == rows.count)
        #expect(rows.allSatisfy { $0.1.hasPrefix("198.19.1.") })
        #expect(r.stdout.contains("sent packets: "))
    }

    /// What unauthenticated boot traffic can create is bounded: 40 PXE clients (perfdhcp with
    /// a PXE vendor class and client architecture) with --discovery-max-machines 5 make exactly
    /// five discovered machines, the rest counted and logged as refused; an iPXE script request
    /// for a MAC nobody knows creates nothing and names no machine, and neither does one for a
    /// known MAC from an address that MAC does not hold.
    @Test func discoveryIsCappedAndHTTPCreatesNothing() throws {
        let h = try Harness("discovery-cap")
        defer { h.cleanup() }
        let (s, c, cif) = try relayedServer(h, flags: ["--discovery-max-machines", "5"])
        // Vendor class "PXEClient:Arch:00000:UNDI:002001", client architecture 0 (BIOS).
        let pxe = Array("PXEClient:Arch:00000:UNDI:002001".utf8).map { String(format: "%02x", $0) }.joined()
        let r = try h.run(
            [
                "ip", "netns", "exec", c, "timeout", "20", "perfdhcp", "-4", "-l", cif, "-r", "20", "-R", "40", "-n",
                "40",
                "-o", "60,\(pxe)", "-o", "93,0000", "198.19.0.1",
            ],
            timeout: 30,
            check: false
        )
        #expect(r.stdout.contains("sent packets: "), "perfdhcp: \(r.stdout) \(r.stderr)")
        func machines() throws -> [String] { try rows(h, "select mac,state from machine").map { "\($0.0) \($0.1)" } }
        try h.waitUntil("refusals counted", timeout: 15) {
            try h.metric(namespace: s, "farrier_discovery_refused_total") >= 30
        }
        let found = try machines()
        #expect(found.count == 5 && found.allSatisfy { $0.hasSuffix(" discovered") }, "\(found)")
        #expect(h.read("farrier.log").contains("new machine not recorded: discovered machines are at their limit"))
        // A made-up MAC over HTTP: the generic wait loop, no name, no state, no row.
        let script = try h.run([
            "ip", "netns", "exec", c, "curl", "-sf",
            "http://198.19.0.1:8080/boot/02-00-00-00-00-99.ipxe?platform=pcbios&buildarch=i386",
        ]).stdout
        #expect(script.contains("not known to Farrier") && !script.contains("m-0200"), "\(script)")
        #expect(try machines().count == 5)
        // A discovered MAC's script, asked for from an address that MAC was not leased (the
        // client namespace's own): the same wait loop as for an unknown MAC.
        let mac = try #require(found.first?.split(separator: " ").first).replacingOccurrences(of: ":", with: "-")
        let known = try h.run([
            "ip", "netns", "exec", c, "curl", "-sf",
            "http://198.19.0.1:8080/boot/\(mac).ipxe?platform=pcbios&buildarch=i386",
        ]).stdout
        #expect(known.contains("not known to Farrier") && !known.contains("discovered"), "\(known)")
    }

    /// Proxy mode: dnsmasq leases, Farrier only watches. The address a machine's own REQUEST
    /// shows is what its boot script (and its agent's calls) are bound to, and it survives a
    /// kill -9 of Farrier (kept in seen_address, not as a lease): an agent booted before the
    /// restart asks for nothing again until it renews, hours later.
    @Test func proxyModeKeepsTheAddressItSawAcrossARestart() throws {
        let h = try Harness("proxy-seen")
        defer { h.cleanup() }
        let (s, sif, c, cif) = try h.veth(serverIP: "198.18.10.1/24")
        // dnsmasq daemonizes and is ended through its pid file (the harness's cleanup): as a
        // child of this process it stopped Foundation from reaping the test's later commands.
        let pidFile = h.directory + "/dnsmasq.pid"
        h.trackPIDFile(pidFile)
        try h.run(
            [
                "ip", "netns", "exec", s, "dnsmasq", "--port=0", "--interface=\(sif)", "--bind-interfaces",
                "--no-resolv", "--no-ping", "--dhcp-authoritative",
                "--dhcp-range=198.18.10.100,198.18.10.199,255.255.255.0,10m",
                "--dhcp-leasefile=\(h.directory)/dnsmasq.leases", "--pid-file=\(pidFile)",
                "--log-facility=\(h.directory)/dnsmasq.log", "--log-dhcp",
            ],
            timeout: 20
        )
        let flags = ["--dhcp-mode", "proxy", "--dhcp-interface", sif]
        let server = try h.startFarrier(namespace: s, flags: flags)
        #expect(FileManager.default.fileExists(atPath: pidFile), "dnsmasq wrote no pid file")
        // A PXE client is discovered (perfdhcp, relayed from 198.19.0.2, PXE vendor class and
        // architecture); its MAC then takes a lease from dnsmasq with udhcpc.
        try h.run(["ip", "-n", c, "addr", "add", "198.19.0.2/16", "dev", cif])
        try h.run(["ip", "-n", s, "addr", "add", "198.19.0.1/16", "dev", sif])
        let pxe = Array("PXEClient:Arch:00000:UNDI:002001".utf8).map { String(format: "%02x", $0) }.joined()
        _ = try h.run(
            [
                "ip", "netns", "exec", c, "timeout", "10", "perfdhcp", "-4", "-l", cif, "-r", "1", "-R", "1", "-n", "1",
                "-o", "60,\(pxe)", "-o", "93,0000", "198.19.0.1",
            ],
            timeout: 20,
            check: false
        )
        var mac = ""
        try h.waitUntil("the PXE client discovered", timeout: 15) {
            mac = try rows(h, "select mac,state from machine").first?.0 ?? ""
            return !mac.isEmpty
        }
        try h.run(["ip", "-n", c, "addr", "flush", "dev", cif])
        try h.run(["ip", "-n", c, "link", "set", cif, "address", mac])
        let script = h.directory + "/udhcpc.sh"
        try
            "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\" && echo \"BOUND ip=$ip\"\nexit 0\n"
            .write(toFile: script, atomically: true, encoding: .utf8)
        try h.run(["chmod", "+x", script])
        let r = try h.run(
            ["ip", "netns", "exec", c, "udhcpc", "-f", "-q", "-n", "-t", "5", "-i", cif, "-s", script],
            timeout: 40,
            check: false
        )
        let leased = try #require(
            r.stdout.split(separator: "\n").first(where: { $0.hasPrefix("BOUND ip=") })?.dropFirst(9).description,
            "udhcpc: \(r.stdout) \(r.stderr)"
        )
        #expect(leased.hasPrefix("198.18.10.1") && leased != "198.18.10.1", "dnsmasq's pool: \(leased)")
        let url =
            "http://198.18.10.1:8080/boot/\(mac.replacingOccurrences(of: ":", with: "-")).ipxe?platform=pcbios&buildarch=i386"
        func bootScript() throws -> String { try h.run(["ip", "netns", "exec", c, "curl", "-sf", url]).stdout }
        // Written to seen_address, never to the lease table: a client's claim is not a lease.
        try h.waitUntil("the address seen", timeout: 10) {
            try rows(h, "select mac,address from seen_address").contains { $0 == (mac, leased) }
        }
        #expect(try leaseRows(h).isEmpty)
        #expect(try bootScript().contains("discovered"), "from the address dnsmasq leased to \(mac)")
        // kill -9, restart, no DHCP in between: the binding is still there.
        kill(server.processIdentifier, SIGKILL)
        server.waitUntilExit()
        try h.startFarrier(namespace: s, flags: flags, log: "farrier2.log")
        #expect(try bootScript().contains("discovered"), "after the restart, from \(leased)")
        // Another address in the same namespace holds no lease for that MAC: nothing revealed.
        try h.run(["ip", "-n", c, "addr", "flush", "dev", cif])
        try h.run(["ip", "-n", c, "addr", "add", "198.18.10.250/24", "dev", cif])
        let other = try bootScript()
        #expect(other.contains("not known to Farrier") && !other.contains("discovered"), "\(other)")
    }
}
