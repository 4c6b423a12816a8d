import ArgumentParser
import FarrierApp
import FarrierCore
import Foundation
import Logging
import ServiceLifecycle
import SystemSupport

struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Run the control plane: DHCP/ProxyDHCP, TFTP, HTTP (iPXE scripts, files) and the gRPC API.",
        discussion: """
            Every setting can come from the YAML file given with --config, from a FARRIER_* environment \
            variable, or from a flag; a flag beats the environment, which beats the file. YAML keys are \
            the dotted names shown in brackets (http.listen is `http: {listen: …}`).

            DHCP answers only on the interfaces listed with --dhcp-interface. With none, it stays off \
            and says so at startup: starting Farrier never takes over a network by accident.
            """
    )

    @Option(help: "YAML configuration file. [FARRIER_CONFIG]")
    var config: String?

    @Option(
        help: "State directory: SQLite database and boot root. [data-dir, FARRIER_DATA_DIR; default /var/lib/farrier]"
    )
    var dataDir: String?

    @Option(
        help:
            "PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DATABASE[?sslmode=disable|prefer|require], for state shared by replicas. [database.url, FARRIER_DATABASE_URL; default: SQLite in the data directory]"
    )
    var database: String?

    @Option(
        help: "trace, debug, info, notice, warning, error or critical. [log-level, FARRIER_LOG_LEVEL; default info]"
    )
    var logLevel: String?

    @Option(help: "logfmt or json, one line per event. [log-format, FARRIER_LOG_FORMAT; default logfmt]")
    var logFormat: String?

    @Option(help: "HOST:PORT for iPXE scripts and boot files. [http.listen, FARRIER_HTTP_LISTEN; default 0.0.0.0:8080]")
    var httpListen: String?

    @Option(help: "HOST:PORT for the agent channel (HTTPS). [agent.listen, FARRIER_AGENT_LISTEN; default 0.0.0.0:8443]")
    var agentListen: String?

    @Option(
        help:
            "PEM certificate chain for the agent channel. [agent.tls-cert, FARRIER_AGENT_TLS_CERT; default: made at first start in DATA-DIR]"
    )
    var agentTLSCert: String?

    @Option(help: "PEM private key for the agent channel. [agent.tls-key, FARRIER_AGENT_TLS_KEY]")
    var agentTLSKey: String?

    @Option(help: "HOST:PORT for the gRPC API. [grpc.listen, FARRIER_GRPC_LISTEN; default 127.0.0.1:7700]")
    var grpcListen: String?

    @Option(
        help:
            "HOST:PORT for GET /metrics (Prometheus); empty disables it. [metrics.listen, FARRIER_METRICS_LISTEN; default 127.0.0.1:7790]"
    )
    var metricsListen: String?

    @Option(
        help:
            "A file holding the token scrapes must present (Authorization: Bearer). [metrics.token-file, FARRIER_METRICS_TOKEN_FILE]"
    )
    var metricsTokenFile: String?

    @Option(
        help:
            "HOST:PORT for the web console; empty (the default) for none. Off loopback it needs --api-tls-cert or --api-insecure. [console.listen, FARRIER_CONSOLE_LISTEN]"
    )
    var consoleListen: String?

    @Option(
        help:
            "An OTLP/HTTP receiver's base URL to export traces to (protobuf; /v1/traces is added); empty (the default) for none. [otel.endpoint, FARRIER_OTEL_ENDPOINT]"
    )
    var otelEndpoint: String?

    @Option(help: "The traces' service.name. [otel.service-name, FARRIER_OTEL_SERVICE_NAME; default farrier]")
    var otelServiceName: String?

    @Option(
        help: "The share of new traces recorded, 0 to 1. [otel.sample-ratio, FARRIER_OTEL_SAMPLE_RATIO; default 1]"
    )
    var otelSampleRatio: String?

    @Option(help: "HOST:PORT for TFTP; empty disables it. [tftp.listen, FARRIER_TFTP_LISTEN; default 0.0.0.0:69]")
    var tftpListen: String?

    @Option(
        help:
            "Boot root served by TFTP and under /tftp/ over HTTP. [tftp.root, FARRIER_TFTP_ROOT; default DATA-DIR/boot]"
    )
    var tftpRoot: String?

    @Option(
        help:
            "TFTP transfers at once; more get ERROR 0 \"server busy\". [tftp.max-transfers, FARRIER_TFTP_MAX_TRANSFERS; default 1024]"
    )
    var tftpMaxTransfers: Int?

    @Option(
        help:
            "TFTP transfers at once from one client address. [tftp.max-transfers-per-client, FARRIER_TFTP_MAX_TRANSFERS_PER_CLIENT; default 4]"
    )
    var tftpMaxTransfersPerClient: Int?

    @Option(
        help:
            "Largest TFTP timeout option granted, in seconds; a client asking for more gets the default. [tftp.max-timeout, FARRIER_TFTP_MAX_TIMEOUT; default 10]"
    )
    var tftpMaxTimeout: Int?

    @Option(
        help:
            "Microseconds a TFTP transfer polls for the client's ACK before it sleeps; 0 never polls. Only while transfers are at most half the CPUs. [tftp.busy-poll, FARRIER_TFTP_BUSY_POLL; default 0]"
    )
    var tftpBusyPoll: Int?

    @Option(
        help: "Directory the iPXE binaries are copied from. [ipxe.source, FARRIER_IPXE_SOURCE; default /usr/lib/ipxe]"
    )
    var ipxeSource: String?

    @Option(
        help:
            "off, full (own the subnets) or proxy (beside another DHCP server). [dhcp.mode, FARRIER_DHCP_MODE; default full]"
    )
    var dhcpMode: String?

    @Option(
        help: "Interface to serve DHCP on; repeat for more. [dhcp.interfaces, FARRIER_DHCP_INTERFACES comma separated]"
    )
    var dhcpInterface: [String] = []

    @Option(
        help: """
            Subnet: NETWORK/LEN,pool=FIRST-LAST[,router=IP][,dns=IP+IP][,domain=NAME][,lease=SECONDS]; \
            repeat for more. [dhcp.subnets, FARRIER_DHCP_SUBNETS ; separated]
            """
    )
    var dhcpSubnet: [String] = []

    @Option(
        help:
            "Fixed address: MAC=IP[,HOSTNAME]; repeat for more. [dhcp.reservations, FARRIER_DHCP_RESERVATIONS ; separated]"
    )
    var dhcpReservation: [String] = []

    @Option(help: "ProxyDHCP boot-server port. [dhcp.proxy-port, FARRIER_DHCP_PROXY_PORT; default 4011]")
    var dhcpProxyPort: Int?

    @Option(
        help:
            "Microseconds a DHCP batch that bound leases waits for more exchanges to share its fsync before its ACKs leave; 0 commits at once. [dhcp.commit-delay, FARRIER_DHCP_COMMIT_DELAY; default 8000]"
    )
    var dhcpCommitDelay: Int?

    @Option(
        help: """
            Key that encrypts BMC passwords at rest (32 bytes, base64; FARRIER_BMC_KEY gives the key itself). \
            [bmc.key-file, FARRIER_BMC_KEY_FILE; default DATA-DIR/bmc.key, made 0600 on first start]
            """
    )
    var bmcKeyFile: String?

    @Option(
        help:
            "PEM certificate chain for the gRPC API; with --api-tls-key, the API serves TLS only. [api.tls-cert, FARRIER_API_TLS_CERT]"
    )
    var apiTLSCert: String?

    @Option(help: "PEM private key for --api-tls-cert. [api.tls-key, FARRIER_API_TLS_KEY]")
    var apiTLSKey: String?

    @Option(
        help: "Deploys at once; more wait queued. [lifecycle.max-deploys, FARRIER_LIFECYCLE_MAX_DEPLOYS; default 8]"
    )
    var lifecycleMaxDeploys: Int?

    @Option(help: "Wipes (releases) at once. [lifecycle.max-wipes, FARRIER_LIFECYCLE_MAX_WIPES; default 8]")
    var lifecycleMaxWipes: Int?

    @Option(
        help:
            "BMC workers (a step's boot and finish actions) at once; more wait. [lifecycle.max-workers, FARRIER_LIFECYCLE_MAX_WORKERS; default 100]"
    )
    var lifecycleMaxWorkers: Int?

    @Option(
        help:
            "Seconds between two reads of each enrolled BMC's power state; 0: none. [power-sync.interval, FARRIER_POWER_SYNC_INTERVAL; default 300]"
    )
    var powerSyncInterval: Int?

    @Option(
        name: .customLong("commission-lldp-wait"),
        help:
            "Seconds a commissioning agent listens for LLDP (switch and port) on each NIC with a link; 0: not at all. [commission.lldp-wait, FARRIER_COMMISSION_LLDP_WAIT; default 0]"
    )
    var commissionLLDPWait: Int?

    @Option(
        help: "BMC power reads in flight at once. [power-sync.concurrency, FARRIER_POWER_SYNC_CONCURRENCY; default 16]"
    )
    var powerSyncConcurrency: Int?

    @Option(
        name: .customLong("lifecycle-claim-ttl"),
        help:
            "Seconds a replica's claim on a machine's work lasts unrenewed: how soon another replica takes over a dead one's machines. [lifecycle.claim-ttl, FARRIER_LIFECYCLE_CLAIM_TTL; default 20]"
    )
    var lifecycleClaimTTL: Int?

    @Option(
        help:
            "At most this many malloc arenas; 0 keeps glibc's default (eight per core). [memory.arenas, FARRIER_MEMORY_ARENAS; default 2]"
    )
    var memoryArenas: Int?

    @Option(
        help:
            "Seconds between returns of malloc's free pages to the kernel; 0 never. [memory.trim-interval, FARRIER_MEMORY_TRIM_INTERVAL; default 30]"
    )
    var memoryTrimInterval: Int?

    @Option(
        help: """
            STEP=SECONDS: how long a step may take before the machine fails; repeat for more. STEP: commissioning (1800), \
            deploying (3600), releasing (86400), rescuing (1800), exiting-rescue (900); an agent with no progress for 900 s fails its step. \
            [lifecycle.step-timeouts, FARRIER_LIFECYCLE_STEP_TIMEOUTS comma separated]
            """
    )
    var lifecycleStepTimeout: [String] = []

    @Option(
        help:
            "Largest virtual size of a qcow2 upload, in GiB. [images.max-virtual-size, FARRIER_IMAGES_MAX_VIRTUAL_SIZE; default 256]"
    )
    var imagesMaxVirtualSize: Int?

    @Option(
        help:
            "At most this many discovered (not enrolled) machines; more new MACs are not recorded. [discovery.max-machines, FARRIER_DISCOVERY_MAX_MACHINES; default 4096]"
    )
    var discoveryMaxMachines: Int?

    @Option(
        help:
            "Seconds after which a discovered machine not seen again is deleted. [discovery.prune-after, FARRIER_DISCOVERY_PRUNE_AFTER; default 604800]"
    )
    var discoveryPruneAfter: Int?

    @Flag(
        help:
            "Serve the gRPC API off loopback without TLS (API tokens cross the network in the clear). [api.insecure, FARRIER_API_INSECURE]"
    )
    var apiInsecure = false

    @Option(
        help:
            "Where sites reach the region, mutual TLS only (empty: no site link). [site.listen, FARRIER_SITE_LISTEN]"
    )
    var siteListen: String?

    @Option(
        help: ArgumentHelp(
            "A host name or IP address sites dial the region by, for the site link's certificate (repeatable).",
            discussion: "[site.link-names, FARRIER_SITE_LINK_NAMES; default site.listen's host]"
        )
    )
    var siteLinkName: [String] = []

    func flags() -> [String: [String]] {
        var f: [String: [String]] = [:]
        let single: [(String, String?)] = [
            ("data-dir", dataDir), ("database.url", database), ("log-level", logLevel), ("log-format", logFormat),
            ("http.listen", httpListen), ("agent.listen", agentListen),
            ("agent.tls-cert", agentTLSCert), ("agent.tls-key", agentTLSKey),
            ("grpc.listen", grpcListen), ("tftp.listen", tftpListen), ("tftp.root", tftpRoot),
            ("metrics.listen", metricsListen), ("metrics.token-file", metricsTokenFile),
            ("console.listen", consoleListen), ("otel.endpoint", otelEndpoint),
            ("otel.service-name", otelServiceName), ("otel.sample-ratio", otelSampleRatio),
            ("tftp.max-transfers", tftpMaxTransfers.map(String.init)),
            ("tftp.busy-poll", tftpBusyPoll.map(String.init)),
            ("tftp.max-transfers-per-client", tftpMaxTransfersPerClient.map(String.init)),
            ("tftp.max-timeout", tftpMaxTimeout.map(String.init)),
            ("ipxe.source", ipxeSource), ("dhcp.mode", dhcpMode), ("dhcp.proxy-port", dhcpProxyPort.map(String.init)),
            ("dhcp.commit-delay", dhcpCommitDelay.map(String.init)),
            ("api.insecure", apiInsecure ? "true" : nil),
            ("discovery.max-machines", discoveryMaxMachines.map(String.init)),
            ("discovery.prune-after", discoveryPruneAfter.map(String.init)),
            ("bmc.key-file", bmcKeyFile), ("images.max-virtual-size", imagesMaxVirtualSize.map(String.init)),
            ("api.tls-cert", apiTLSCert), ("api.tls-key", apiTLSKey), ("site.listen", siteListen),
            ("lifecycle.max-deploys", lifecycleMaxDeploys.map(String.init)),
            ("lifecycle.max-wipes", lifecycleMaxWipes.map(String.init)),
            ("lifecycle.claim-ttl", lifecycleClaimTTL.map(String.init)),
            ("lifecycle.max-workers", lifecycleMaxWorkers.map(String.init)),
            ("power-sync.interval", powerSyncInterval.map(String.init)),
            ("power-sync.concurrency", powerSyncConcurrency.map(String.init)),
            ("commission.lldp-wait", commissionLLDPWait.map(String.init)),
            ("memory.arenas", memoryArenas.map(String.init)),
            ("memory.trim-interval", memoryTrimInterval.map(String.init)),
        ]
        for (k, v) in single { if let v { f[k] = [v] } }
        if !dhcpInterface.isEmpty { f["dhcp.interfaces"] = dhcpInterface }
        if !dhcpSubnet.isEmpty { f["dhcp.subnets"] = dhcpSubnet }
        if !dhcpReservation.isEmpty { f["dhcp.reservations"] = dhcpReservation }
        if !lifecycleStepTimeout.isEmpty { f["lifecycle.step-timeouts"] = lifecycleStepTimeout }
        if !siteLinkName.isEmpty { f["site.link-names"] = siteLinkName }
        return f
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let configuration: ServerConfiguration
        do {
            configuration = try ServerConfiguration.load(
                file: config ?? env["FARRIER_CONFIG"],
                environment: env,
                flags: flags()
            )
        } catch {
            throw ValidationError("\(error)")
        }
        // Before the server starts its threads: arenas made before the cap stay.
        if configuration.memoryArenas > 0 { ProcessMemory.limitArenas(configuration.memoryArenas) }
        bootstrapLogging(
            level: configuration.logLevel,
            format: configuration.logFormat,
            metadataProvider: FarrierTracing.loggingMetadata
        )
        let logger = Logger(label: "farrier")
        logger.info("starting", metadata: ["data-dir": "\(configuration.dataDir)", "pid": "\(getpid())"])
        // (Nil: OpenTelemetry turned off by OTEL_SDK_DISABLED; the server runs untraced.)
        let tracing: (any Service)?
        do {
            tracing = try FarrierTracing.bootstrap(configuration, environment: env, logger: logger)
        } catch {
            throw ValidationError("\(error)")
        }
        let server = try await FarrierServer(configuration: configuration, logger: logger)
        try await server.run(first: tracing.map { [$0] } ?? [])
        logger.info("stopped")
    }
}
