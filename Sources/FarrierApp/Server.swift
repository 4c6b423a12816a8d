import DHCPServer
import FarrierAPI
import FarrierBMC
import FarrierConsole
import FarrierControl
import FarrierCore
import FarrierHTTP
import FarrierPostgres
import FarrierSite
import FarrierStore
import FarrierTelemetry
import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import Synchronization
import SystemSupport
import TFTPServer
import UnixSignals

/// Bootstraps logging for the process. Call once, from the executable only.
/// `metadataProvider` adds to every line (the current span's `trace_id`, `span_id`).
public func bootstrapLogging(
    level: Logger.Level,
    format: LineLogHandler.Format,
    metadataProvider: Logger.MetadataProvider? = nil
) {
    LoggingSystem.bootstrap(
        { label, provider in
            var h = LineLogHandler(label: label, level: level, format: format)
            h.metadataProvider = provider
            return h
        },
        metadataProvider: metadataProvider
    )
}

/// Copies the iPXE binaries into the boot root (when missing or changed), so TFTP and HTTP serve
/// them from a directory Farrier owns rather than through links leading out of it. Names in
/// `keep` are left as they are.
public func prepareBootRoot(
    _ root: String,
    ipxeSource: String,
    keep: Set<String> = [],
    logger: Logger
) throws {
    let fm = FileManager.default
    try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
    guard let names = try? fm.contentsOfDirectory(atPath: ipxeSource) else {
        logger.warning(
            "iPXE binaries not found; install Debian's ipxe package",
            metadata: ["ipxe.source": "\(ipxeSource)"]
        )
        return
    }
    var copied = 0
    for name in names where name.hasSuffix(".kpxe") || name.hasSuffix(".efi") || name.hasSuffix(".pxe") {
        // (A site keeps the region's build of a file it installed, over the local one.)
        guard !keep.contains(name) else { continue }
        let src = ipxeSource + "/" + name
        let dst = root + "/" + name
        let srcSize = (try? fm.attributesOfItem(atPath: src)[.size] as? Int) ?? -1
        let dstSize = (try? fm.attributesOfItem(atPath: dst)[.size] as? Int) ?? -2
        if srcSize == dstSize, fm.contentsEqual(atPath: src, andPath: dst) { continue }
        try? fm.removeItem(atPath: dst)
        try fm.copyItem(atPath: src, toPath: dst)
        copied += 1
    }
    logger.info("boot root ready", metadata: ["tftp.root": "\(root)", "ipxe.copied": "\(copied)"])
}

/// The running server's parts, built from a configuration.
public struct FarrierServer: Sendable {
    public let store: any StateStore
    public let dhcp: DHCPService
    public let tftp: TFTPService
    public let services: [any Service]
    /// The BMC drivers; closed at shutdown (Redfish sessions logged out, HTTP clients shut down).
    let bmcPool: BMCPool
    let logger: Logger

    public init(configuration c: ServerConfiguration, logger: Logger) async throws {
        self.logger = logger
        // Before anything makes a metric: one made earlier would record nowhere.
        Telemetry.bootstrap()
        try FileManager.default.createDirectory(atPath: c.dataDir, withIntermediateDirectories: true)
        if c.databaseURL.isEmpty {
            store = try SQLiteStore(path: c.databasePath)
        } else {
            store = try await PostgresStore(url: c.databaseURL, logger: logger)
            logger.info("state in PostgreSQL", metadata: ["database": "\(PostgresStore.redacted(c.databaseURL))"])
        }
        try prepareBootRoot(c.tftpRoot, ipxeSource: c.ipxeSource, logger: logger)
        reportRamdisk(c.tftpRoot + "/ramdisk", logger: logger)
        let recorder = TimelineRecorder(
            store: store,
            known: try await store.machines().map(\.mac),
            maxDiscovered: c.discoveryMaxMachines,
            onError: { [logger] error in logger.error("timeline write failed", metadata: ["error": "\(error)"]) },
            onRefused: { [logger, cap = c.discoveryMaxMachines] mac, n in
                // Logged for the first and then every 1000th: a flood must not flood the log too.
                if n == 1 || n % 1000 == 0 {
                    logger.warning(
                        "new machine not recorded: discovered machines are at their limit (discovery.max-machines); enroll or delete some, or raise it",
                        metadata: ["mac": "\(mac)", "discovery.max-machines": "\(cap)", "refused.total": "\(n)"]
                    )
                }
            }
        )
        let addressBook: AddressBook
        (addressBook, dhcp, tftp) = try makeBootPath(
            c,
            store: store,
            recorder: recorder,
            fence: (store as? PostgresStore)?.dhcpFence(),
            logger: logger
        )
        let collectors = ScrapeCollectors(
            boot: BootPathMetrics(dhcp: dhcp, tftp: tftp.metrics, recorder: recorder),
            fleet: FleetMetrics(store: store, logger: logger)
        )
        let (vault, agentTLS, siteAuthority) = try Self.loadKeys(c)
        bmcPool = BMCPool(vault: vault)
        // A site's machines' BMCs are reached through the site (their BMCs may sit where only it reaches).
        let bmcRelay = SiteBMCRelay()
        let controller = Controller(
            store: store,
            pool: MeasuredBMCs(SiteRoutedBMCs(local: bmcPool, relay: bmcRelay, vault: vault)),
            agentKey: vault.derivedKey(purpose: "agent-token"),
            configuration: c.control,
            logger: logger
        )
        // Other replicas' commits wake this one's watchers and reconciler (LISTEN/NOTIFY).
        (store as? PostgresStore)?.onEvents { [hub = controller.hub] in hub.notify() }
        logger.info(
            "replica",
            metadata: [
                "replica": "\(c.control.replica)", "claim-ttl.seconds": "\(c.control.claimTTL.components.seconds)",
            ]
        )
        // One replica reads the BMCs' power (PostgreSQL: the holder of its lock).
        let powerSync = PowerSync(
            controller: controller,
            fence: (store as? PostgresStore)?.dhcpFence(),
            logger: logger
        )
        let images = try ImageRepository(root: c.dataDir + "/images", maxVirtualSize: c.imageMaxVirtualSize)
        logger.info(
            "agent channel",
            metadata: ["agent.listen": "\(c.http.agentListen)", "agent.tls-sha256": "\(agentTLS.fingerprint)"]
        )
        var httpDependencies = HTTPDependencies(
            store: store,
            recorder: recorder,
            addressBook: addressBook,
            bootRoot: BootRoot(path: c.tftpRoot),
            controller: controller,
            imageDirectory: images.blobDirectory
        )
        httpDependencies.agentTLS = agentTLS
        let http = try makeHTTPApplication(configuration: c.http, dependencies: httpDependencies, logger: logger)
        let agentChannel = try makeAgentApplication(
            configuration: c.http,
            dependencies: httpDependencies,
            tls: agentTLS,
            logger: logger
        )
        if let secret = try await bootstrapAdminToken(store: store, dataDir: c.dataDir) {
            // Shown once; the file keeps it for the CLI on this host.
            FileHandle.standardError.write(
                Data(
                    """
                    Farrier: first start. Admin API token (also in \(c.dataDir)/admin.token, mode 0600):
                      \(secret)

                    """.utf8
                )
            )
        }
        // Networks on the boot segment keep clear of what this server's DHCP hands out: new ones
        // are refused (NetworkAPI); one that a changed DHCP configuration now meets is logged at
        // every start, for the operator to fix (DHCP could lease an address a machine holds).
        let dhcpSpace = Self.dhcpAddressSpace(c.dhcp)
        for n in try await store.networks() {
            if let clash = n.clash(with: dhcpSpace) {
                logger.error(
                    "a network's pool meets this server's DHCP: change one of them",
                    metadata: ["network": "\(n.name)", "clash": "\(clash)"]
                )
            }
        }
        let apiServices: [any RegistrableRPCService] = [
            MachineAPI(controller: controller, vault: vault, logger: logger),
            ImageAPI(store: store, repository: images, logger: logger), ProjectAPI(store: store),
            NetworkAPI(store: store, dhcp: dhcpSpace), TestScriptAPI(store: store),
            TokenAPI(store: store, logger: logger), SiteAPI(store: store, authority: siteAuthority, logger: logger),
        ]
        let apiInterceptors: [any ServerInterceptor] = [
            TracingInterceptor(), MetricsInterceptor(), AuthInterceptor(store: store),
        ]
        let grpc = try GRPCService(
            listen: c.grpcListen,
            services: apiServices,
            interceptors: apiInterceptors,
            tls: c.apiTLSCert.isEmpty ? nil : (c.apiTLSCert, c.apiTLSKey),
            logger: logger
        )
        // The web console calls the same API, in process, as the user who logged in.
        var console: [any Service] = []
        if !c.consoleListen.isEmpty {
            let inProcess = InProcessAPI(services: apiServices, interceptors: apiInterceptors)
            console = [
                inProcess,
                try makeConsoleApplication(
                    listen: c.consoleListen,
                    api: ConsoleAPI(client: inProcess.client),
                    tls: c.apiTLSCert.isEmpty ? nil : (c.apiTLSCert, c.apiTLSKey),
                    logger: logger
                ),
            ]
            logger.info("web console", metadata: ["console.listen": "\(c.consoleListen)"])
        }
        var siteLink: [any Service] = []
        if !c.siteListen.isEmpty {
            siteLink.append(
                try SiteLinkAPI.listener(
                    listen: c.siteListen,
                    names: c.siteLinkNamesOrDefault,
                    authority: siteAuthority,
                    store: store,
                    imageDirectory: images.blobDirectory,
                    bootRoot: c.tftpRoot,
                    controller: controller,
                    bmcRelay: bmcRelay,
                    logger: logger
                )
            )
        }
        let reconciler = Reconciler(controller: controller, logger: logger)
        let pruner = DiscoveryPruner(store: store, recorder: recorder, unseenFor: c.discoveryPruneAfter, logger: logger)
        let networkSync = NetworkSync(store: store, addressBook: addressBook, interval: .seconds(2), logger: logger)
        // ServiceGroup starts in order and stops in reverse: the reconciler and API go first, the boot path last.
        services =
            [
                http, agentChannel, tftp, dhcp, grpc, reconciler, powerSync, pruner, networkSync,
                MemoryTrimmer(interval: c.memoryTrimInterval),
            ] + siteLink + console + (try makeMetricsListener(c, collectors: collectors, logger: logger))
    }

    /// The keys kept in the data directory: the BMC vault's, the agent channel's TLS identity and
    /// the sites' CA, each loaded, or made at the first start. Replicas that share the directory
    /// and start together make them once, under a lock there: made apart, one could read a key
    /// file another had not finished writing, or pair one's certificate with the other's key.
    static func loadKeys(_ c: ServerConfiguration) throws -> (CredentialVault, AgentTLS, SiteAuthority) {
        let port = try splitHostPort(c.http.agentListen).1
        return try SecretFile.withExclusiveLock(c.dataDir + "/keys.lock") {
            (
                try CredentialVault.load(keyFile: c.bmcKeyFile.isEmpty ? nil : c.bmcKeyFile, dataDir: c.dataDir),
                try AgentCertificate.load(
                    certificate: c.agentTLSCert,
                    key: c.agentTLSKey,
                    dataDir: c.dataDir,
                    port: port
                ),
                try SiteAuthority.loadOrMake(dataDir: c.dataDir)
            )
        }
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully. `first` start before the
    /// server's services and stop after them (the tracer's exporter, which flushes their spans).
    public func run(first: [any Service] = []) async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: (first + services).map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        let result: Result<Void, any Error>
        do { result = .success(try await group.run()) } catch { result = .failure(error) }
        await bmcPool.closeAll()
        (store as? PostgresStore)?.close()
        try result.get()
    }
}

extension FarrierServer {
    /// What DHCP hands out on this server's boot segment: its pools and reservations in full
    /// mode on some interface; nothing otherwise (in proxy mode another server hands out
    /// addresses, and Farrier does not know its pools).
    public static func dhcpAddressSpace(_ d: DHCPConfiguration) -> DHCPAddressSpace {
        guard d.mode == .full, !d.interfaces.isEmpty else { return .init() }
        return DHCPAddressSpace(
            pools: d.subnets.flatMap(\.pools).map { IPRange(first: .v4($0.lowerBound), last: .v4($0.upperBound)) },
            reservations: Dictionary(
                d.reservations.map { (IPAddress.v4($0.address), $0.mac.description) },
                uniquingKeysWith: { a, _ in a }
            )
        )
    }
}

/// The boot path's address book (reservations recorded), DHCP and TFTP, from the configuration:
/// the region's and a site's alike.
func makeBootPath(
    _ c: ServerConfiguration,
    store: any MachineStore & LeaseStore,
    recorder: TimelineRecorder,
    fence: (any DHCPFence)? = nil,
    logger: Logger
) throws -> (AddressBook, DHCPService, TFTPService) {
    let addressBook = AddressBook()
    // A reservation is where its machine is, whoever hands out the address (Farrier's DHCP in
    // full mode; in proxy mode or with DHCP off, the operator vouches for it).
    for r in c.dhcp.reservations { addressBook.record(r.address, r.mac) }
    var tftpConfig = c.tftp
    tftpConfig.root = c.tftpRoot
    let (_, httpPort) = try splitHostPort(c.http.listen)
    let dhcp = try DHCPService(
        configuration: c.dhcp,
        httpPort: httpPort,
        store: store,
        recorder: recorder,
        addressBook: addressBook,
        fence: fence,
        logger: logger
    )
    let tftp = TFTPService(configuration: tftpConfig, recorder: recorder, addressBook: addressBook, logger: logger)
    return (addressBook, dhcp, tftp)
}

/// Says whether the Farrier ramdisk is in the boot root, and how big it is: without it,
/// commissioning, deploys, wipes and rescue cannot boot.
func reportRamdisk(_ dir: String, logger: Logger) {
    let fm = FileManager.default
    let sizes = ["vmlinuz", "initrd.img"].map {
        (try? fm.attributesOfItem(atPath: dir + "/" + $0)[.size] as? Int) ?? nil
    }
    if let kernel = sizes[0], let initrd = sizes[1] {
        let tools = (try? fm.attributesOfItem(atPath: dir + "/" + BurnIn.overlay)[.size] as? Int) ?? nil
        logger.info(
            "ramdisk ready",
            metadata: [
                "ramdisk.dir": "\(dir)", "vmlinuz.bytes": "\(kernel)", "initrd.bytes": "\(initrd)",
                "burnin.bytes": "\(tools.map(String.init) ?? "none: commissioning runs no tool-based test")",
            ]
        )
    } else {
        logger.warning(
            "no ramdisk: commissioning, deploys, wipes and rescue cannot boot until one is built (bash scripts/build-ramdisk.sh DIR)",
            metadata: ["ramdisk.dir": "\(dir)"]
        )
    }
}

/// Deletes `discovered` machines nobody enrolled that have not been seen for a while, once a
/// minute, so the table holds what is on the network now.
struct DiscoveryPruner: Service {
    let store: any MachineStore
    let recorder: TimelineRecorder
    let unseenFor: Duration
    let logger: Logger

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                let cutoff = Date().addingTimeInterval(-Double(unseenFor.components.seconds))
                let pruned = try await store.pruneDiscovered(lastSeenBefore: cutoff)
                recorder.forget(pruned)
                let n = pruned.count
                if n > 0 {
                    logger.info(
                        "pruned discovered machines not seen lately",
                        metadata: ["count": "\(n)", "unseen.seconds": "\(unseenFor.components.seconds)"]
                    )
                }
            } catch {
                logger.error("pruning discovered machines failed", metadata: ["error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(60)) }
        }
    }
}

/// Keeps the address book's static layer in step with the static IPv4 addresses deployed
/// machines hold on the region's untagged networks (issue 18 point 4), every `interval`: the
/// installed OS of a machine given one on its boot interface reports in from it. Every replica
/// runs it, so whichever one the report reaches knows the address; an address taken by a deploy
/// is known long before that machine's OS boots.
struct NetworkSync: Service {
    let store: any NetworkStore
    let addressBook: AddressBook
    let interval: Duration
    let logger: Logger

    func sync() async throws {
        var table: [IPv4Address: MACAddress] = [:]
        for n in try await store.networks() where n.site == nil && n.vlan == 0 && n.subnet(.v4) != nil {
            for held in try await store.networkAddresses(network: n.name) {
                if case .v4(let ip) = held.address { table[ip] = held.mac }
            }
        }
        addressBook.assign(table)
    }

    func run() async throws {
        var failing = false
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                try await sync()
                if failing { logger.info("static addresses read again") }
                failing = false
            } catch {
                // Logged once per run of failures: the last table stays in use meanwhile.
                if !failing { logger.error("reading the static addresses failed", metadata: ["error": "\(error)"]) }
                failing = true
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}

/// The metrics listener (`metrics.listen`, none when empty), with its token if one is set.
func makeMetricsListener(
    _ c: ServerConfiguration,
    collectors: ScrapeCollectors,
    logger: Logger
) throws -> [any Service] {
    guard !c.metricsListen.isEmpty else { return [] }
    var token: String?
    if !c.metricsTokenFile.isEmpty {
        let text: String
        do { text = try String(contentsOfFile: c.metricsTokenFile, encoding: .utf8) } catch {
            throw ConfigurationError("metrics.token-file: cannot read \(c.metricsTokenFile): \(error)")
        }
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard t.count >= 16, !t.contains(where: \.isWhitespace) else {
            throw ConfigurationError(
                "metrics.token-file: \(c.metricsTokenFile) must hold one token of at least 16 characters, no spaces"
            )
        }
        token = t
    }
    logger.info(
        "metrics",
        metadata: ["metrics.listen": "\(c.metricsListen)", "metrics.token": "\(token == nil ? "none" : "required")"]
    )
    if token == nil, !ServerConfiguration.isLoopback(c.metricsListen) {
        logger.warning(
            "metrics listen off loopback with no token: anyone who reaches it reads the fleet's numbers; set metrics.token-file",
            metadata: ["metrics.listen": "\(c.metricsListen)"]
        )
    }
    return [
        try makeMetricsApplication(
            listen: c.metricsListen,
            token: token,
            scrape: { await collectors.scrape() },
            logger: logger
        )
    ]
}

/// Returns malloc's free pages to the kernel every `interval`. Memory freed inside an arena stays
/// resident until the arena's top shrinks, so after a burst (10 000 machines commissioning) the
/// process keeps its peak; a trim costs a walk of the free lists and, later, a page fault for each
/// page used again, so it runs seldom.
struct MemoryTrimmer: Service {
    let interval: Duration

    func run() async throws {
        guard interval > .zero else { return }
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            ProcessMemory.trim()
        }
    }
}
