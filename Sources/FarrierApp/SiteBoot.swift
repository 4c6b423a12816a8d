import DHCPServer
import FarrierCore
import FarrierHTTP
import FarrierStore
import Foundation
import Logging
import ServiceLifecycle
import TFTPServer
import UnixSignals

/// A site's boot services: DHCP (or ProxyDHCP), TFTP and HTTP boot for the machines at the
/// site, decided at the site so they go on while the region is away.
///
/// Leases are decided here and committed to the site's own SQLite database (DATA-DIR/site.sqlite)
/// before the ACK leaves, as at the region. Scripts come from what the region last said each
/// machine boots next (`machine`), so a deployed machine that renews its lease and reboots
/// during an outage gets its lease and boots its disk. Boot-root files (iPXE) are served from
/// DATA-DIR/boot, over TFTP and under /tftp over HTTP.
public struct SiteBoot: Sendable {
    public let dhcp: DHCPService
    public let tftp: TFTPService
    public let services: [any Service]
    /// The site's leases and timeline (events wait here for the region).
    public let store: SQLiteStore

    /// `c` supplies the boot settings (dhcp.*, tftp.*, http.listen, ipxe.source); its data
    /// directory is the site's.
    public init(
        configuration c: ServerConfiguration,
        machine: @escaping @Sendable (MACAddress) -> SiteBootEntry?,
        logger: Logger
    ) async throws {
        try FileManager.default.createDirectory(atPath: c.dataDir, withIntermediateDirectories: true)
        store = try SQLiteStore(path: c.dataDir + "/site.sqlite")
        try prepareBootRoot(c.tftpRoot, ipxeSource: c.ipxeSource, logger: logger)
        let recorder = TimelineRecorder(
            store: store,
            // Machines DHCP saw network-booting here: the region's list is not the site's
            // table, and a timeline needs a row to hang on.
            known: try await store.machines().map(\.mac),
            maxDiscovered: c.discoveryMaxMachines,
            onError: { [logger] error in logger.error("timeline write failed", metadata: ["error": "\(error)"]) }
        )
        let addressBook = AddressBook()
        for r in c.dhcp.reservations { addressBook.record(r.address, r.mac) }
        let (_, httpPort) = try splitHostPort(c.http.listen)
        dhcp = try DHCPService(
            configuration: c.dhcp,
            httpPort: httpPort,
            store: store,
            recorder: recorder,
            addressBook: addressBook,
            logger: logger
        )
        var tftpConfig = c.tftp
        tftpConfig.root = c.tftpRoot
        tftp = TFTPService(configuration: tftpConfig, recorder: recorder, addressBook: addressBook, logger: logger)
        let (dhcpMetrics, tftpMetrics) = (dhcp.metrics, tftp.metrics)
        var deps = HTTPDependencies(
            store: store,
            recorder: recorder,
            addressBook: addressBook,
            bootRoot: BootRoot(path: c.tftpRoot),
            metrics: { renderMetrics(dhcp: dhcpMetrics, tftp: tftpMetrics, recorder: recorder) }
        )
        deps.siteBoot = machine
        let http = try makeHTTPApplication(configuration: c.http, dependencies: deps, logger: logger)
        services = [http, tftp, dhcp]
        logger.info(
            "boot services",
            metadata: [
                "http.listen": "\(c.http.listen)", "tftp.listen": "\(c.tftp.listen)", "dhcp.mode": "\(c.dhcp.mode)",
                "dhcp.interfaces": "\(c.dhcp.interfaces.joined(separator: ","))",
            ]
        )
    }
}

/// Runs `work` beside `services` until either ends, SIGTERM or SIGINT: a failure of either
/// is thrown, and the other is stopped.
public func runServices(
    _ services: [any Service],
    alongside work: @escaping @Sendable () async throws -> Void,
    logger: Logger
) async throws {
    let group = ServiceGroup(
        configuration: .init(
            services: services.map { .init(service: $0) } + [.init(service: Work(body: work))],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        )
    )
    try await group.run()
}

/// A closure as a service that ends with it, and at a graceful shutdown.
private struct Work: Service {
    let body: @Sendable () async throws -> Void
    func run() async throws { try await cancelWhenGracefulShutdown { try await body() } }
}
