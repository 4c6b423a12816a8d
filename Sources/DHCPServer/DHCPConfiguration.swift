import FarrierCore
import Foundation

/// DHCP configuration (RFC 2131, PXE 2.1). Plain values; the app maps files, flags and the
/// environment onto it.
public struct DHCPConfiguration: Sendable, Hashable {
    public enum Mode: String, Sendable, Hashable, CaseIterable {
        /// DHCP is not served at all.
        case off
        /// Farrier owns the subnets: it hands out addresses and boot options.
        case full
        /// Another server hands out addresses; Farrier answers only PXE/HTTP-boot clients with boot
        /// options (ProxyDHCP), on port 67 and on 4011.
        case proxy
    }

    /// A subnet served in full mode.
    public struct Subnet: Sendable, Hashable {
        public var network: IPv4Network
        /// Inclusive ranges addresses are handed out from.
        public var pools: [ClosedRange<IPv4Address>]
        public var router: IPv4Address?
        public var dnsServers: [IPv4Address]
        public var domainName: String?
        public var leaseTime: Int

        public init(
            network: IPv4Network,
            pools: [ClosedRange<IPv4Address>],
            router: IPv4Address? = nil,
            dnsServers: [IPv4Address] = [],
            domainName: String? = nil,
            leaseTime: Int = 3600
        ) {
            self.network = network
            self.pools = pools
            self.router = router
            self.dnsServers = dnsServers
            self.domainName = domainName
            self.leaseTime = leaseTime
        }
    }

    /// A fixed address for a known machine, keyed by MAC (never by client id: PXE ROM, iPXE and
    /// the installed OS send different client ids).
    public struct Reservation: Sendable, Hashable {
        public var mac: MACAddress
        public var address: IPv4Address
        public var hostname: String?

        public init(mac: MACAddress, address: IPv4Address, hostname: String? = nil) {
            self.mac = mac
            self.address = address
            self.hostname = hostname
        }
    }

    /// Boot file names, relative to the TFTP root, by client kind (RFC 4578 option 93).
    public struct BootFiles: Sendable, Hashable {
        public var bios = "undionly.kpxe"
        public var uefiX64 = "ipxe.efi"
        public var uefiI386 = "ipxe-i386.efi"
        public var uefiARM64 = "snp-arm64.efi"
        public var uefiARM32 = "snp-arm32.efi"
        public init() {}
    }

    public var mode: Mode = .off
    /// Interfaces DHCP listens on. With none, DHCP stays off whatever the mode.
    public var interfaces: [String] = []
    public var subnets: [Subnet] = []
    public var reservations: [Reservation] = []
    public var bootFiles = BootFiles()
    /// Port the server listens on (67). Replies to clients go to `clientPort`.
    public var serverPort = 67
    public var clientPort = 68
    /// ProxyDHCP boot-server port (PXE 2.1); 0 disables it.
    public var proxyPort = 4011
    /// How long an OFFERed address is held for the client before it may go to another.
    public var offerHold: TimeInterval = 60
    /// How long a DECLINEd address is kept out of the pool.
    public var declineQuarantine: TimeInterval = 600
    /// Group commit's gathering time: after a batch of datagrams that bound leases, and that
    /// did not fill the receive batch, the socket's thread sleeps this long, answers what
    /// arrived meanwhile, and writes all their leases in one fsynced transaction before any of
    /// their ACKs leave (PostgreSQL's `commit_delay`). An ACK waits at most this much longer;
    /// in exchange a few hundred exchanges a second share transactions and wakeups instead of
    /// paying one fsync each. Zero commits each batch at once.
    public var commitDelay: Duration = .milliseconds(8)

    public init() {}
}
