import ArgumentParser
import FarrierAPI
import FarrierApp
import FarrierCore
import FarrierSite
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import SwiftProtobuf
import Synchronization
import SystemSupport
import Yams

/// `farrier site`: sites (issue 16). An admin adds a site and hands its one-time join token to
/// whoever runs it; the site joins with it (its key made there and kept there) and gets its
/// certificate, which is how the region knows it from then on.
struct SiteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "site",
        abstract: "Sites: boot services near the racks (admin: add, list, remove; at the site: join, run, status).",
        subcommands: [Add.self, List.self, Remove.self, Join.self, Run.self, Status.self]
    )

    struct SiteView: Codable {
        var name: String
        var status: String
        var created: Date
        var joinExpires: Date?
        var joined: Date?
        var certificateSerial: String?
        var certificateNotAfter: Date?
        var link: String
        var lastSeen: Date?
        var linkAddress: String?
        var queueDepth: Int64
        var cachedFiles: Int64
        var cachedBytes: Int64
        var version: String?
        var bmcChannels: Int64?
        init(_ s: Farrier_V1_Site) {
            name = s.name
            status = s.status
            created = s.created.date
            joinExpires = s.hasJoinExpires ? s.joinExpires.date : nil
            joined = s.hasJoined ? s.joined.date : nil
            certificateSerial = s.certificateSerial.isEmpty ? nil : s.certificateSerial
            certificateNotAfter = s.hasCertificateNotAfter ? s.certificateNotAfter.date : nil
            link = s.link.isEmpty ? "never" : s.link
            lastSeen = s.hasLastSeen ? s.lastSeen.date : nil
            linkAddress = s.linkAddress.isEmpty ? nil : s.linkAddress
            queueDepth = s.queueDepth
            cachedFiles = s.cachedFiles
            cachedBytes = s.cachedBytes
            version = s.version.isEmpty ? nil : s.version
            bmcChannels = s.hasBmcChannels ? s.bmcChannels : nil
        }
    }

    static let columns: [Column<SiteView>] = [
        Column("NAME") { $0.name }, Column("STATUS") { $0.status }, Column("LINK") { $0.link },
        Column("LAST-SEEN") { $0.lastSeen.map(iso) ?? "-" }, Column("QUEUE") { "\($0.queueDepth)" },
        Column("BMC-CHANNELS") { $0.bmcChannels.map { "\($0)" } ?? "-" },
        Column("CACHED") { $0.lastSeen == nil ? "-" : "\($0.cachedFiles) files, \(bytes($0.cachedBytes))" },
        Column("JOINED") { $0.joined.map(iso) ?? "-" },
        Column("JOIN-EXPIRES") { $0.joinExpires.map(iso) ?? "-" },
        Column("CERT-EXPIRES") { $0.certificateNotAfter.map(iso) ?? "-" },
    ]

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add",
            abstract: "Add a site; prints its one-time join token once.",
            discussion: """
                Run `farrier site join --name NAME --join-token TOKEN` at the site before the token expires \
                (the token carries the region's site CA pin: copy it whole). The table \
                output (the default) and -o name print the token alone, on stdout.
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "Seconds the join token works (1 to 604800).") var joinTTL: Int64 = 3600
        @Argument(help: "The site's name (a-z, 0-9, '-').") var name: String

        func run() async throws {
            var req = Farrier_V1_AddSiteRequest()
            req.name = name
            req.joinTtlSeconds = joinTTL
            let request = req
            let r = try await rpc(client) { try await $0.sites.addSite(request) }
            struct Added: Codable {
                var site: SiteView
                var joinToken: String
            }
            switch output.output {
            case .table, .name:
                FileHandle.standardError.write(
                    Data(
                        "site \(r.site.name) added; its join token (shown once, works until \(iso(r.site.joinExpires.date))):\n"
                            .utf8
                    )
                )
                print(r.joinToken)
            case .json: print(try json(Added(site: SiteView(r.site), joinToken: r.joinToken)))
            case .yaml:
                print(try YAMLEncoder().encode(Added(site: SiteView(r.site), joinToken: r.joinToken)), terminator: "")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List sites.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        func run() async throws {
            let printer = try output.printer(SiteCommand.columns, name: \.name)
            try printer.list(
                try await rpc(client, idempotent: true) {
                    try await $0.sites.listSites(Farrier_V1_ListSitesRequest())
                }.sites.map(SiteView.init)
            )
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove",
            abstract: "Remove a site: its certificate is refused from then on."
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "The site's name.") var name: String
        func run() async throws {
            var req = Farrier_V1_RemoveSiteRequest()
            req.name = name
            let request = req
            _ = try await rpc(client) { try await $0.sites.removeSite(request) }
            print("site \(name) removed")
        }
    }

    struct Join: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "join",
            abstract: "At the site: join the region with a join token (no API token needed).",
            discussion: """
                Makes the site's key in DATA-DIR (site.key, mode 0600; it never leaves the site), sends \
                a signing request for it with the join token, and keeps what the region answers: the \
                site's certificate (site.crt) and the region's site CA (region-ca.crt), only if that CA \
                is the one the token names (its SHA-256, after the token's last '.'). The token works \
                once.
                """
        )
        @OptionGroup var client: ClientOptions
        @Option(help: "The join token `farrier site add` printed.") var joinToken: String
        @Option(help: "The site's name, as added.") var name: String
        @Option(help: "Where the site keeps its key and certificates.") var dataDir = "/var/lib/farrier-site"

        func run() async throws {
            let fm = FileManager.default
            try fm.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
            let keyPath = dataDir + "/site.key"
            guard !fm.fileExists(atPath: keyPath) else {
                throw CLIError("\(keyPath) exists: this data directory has joined already (remove it to join again)")
            }
            // The token names the region's site CA (its SHA-256): what the region answers is
            // kept only if its CA is that one, so nothing between here and the region can put
            // its own CA in this site's trust.
            guard let pin = SiteAuthority.joinTokenPin(joinToken) else {
                throw CLIError(
                    """
                    the join token carries no region CA pin (64 hex digits after its last '.'): copy it whole from \
                    `farrier site add` (a token made before pins: site remove, site add)
                    """,
                    code: .invalidArgument
                )
            }
            // The key is kept (site.key.joining, 0600) before the request goes: if the answer is
            // lost, the same command again sends the same key, and the region answers with the
            // certificate it gave it (until the token expires).
            let pendingPath = dataDir + "/site.key.joining"
            let keyPEM: String
            if fm.fileExists(atPath: pendingPath) {
                do { keyPEM = try String(contentsOfFile: pendingPath, encoding: .utf8) } catch {
                    throw CLIError("reading \(pendingPath): \(error)")
                }
                guard SiteAuthority.validKey(keyPEM) else {
                    throw CLIError(
                        "\(pendingPath) (a key kept by an earlier join) is not a P-256 key: delete it and join again"
                    )
                }
            } else {
                keyPEM = SiteAuthority.makeKey()
                do { try SecretFile.replace(pendingPath, Array((keyPEM + "\n").utf8), mode: 0o600) } catch {
                    throw CLIError("writing the site's key to \(pendingPath): \(error)")
                }
            }
            let csrPEM = try SiteAuthority.makeRequest(site: name, keyPEM: keyPEM)
            var req = Farrier_V1_JoinSiteRequest()
            req.joinToken = joinToken
            req.csrPem = csrPEM
            let request = req
            // Not retried on another replica by a probe first (the probe needs an API token,
            // which a joining site has not): a join sent twice finds its token spent.
            let r = try await rpc(client, idempotent: true) { try await $0.sites.joinSite(request) }
            let answered = (try? SiteAuthority.pin(pem: r.caPem)) ?? "none (not a PEM certificate)"
            guard answered == pin else {
                throw CLIError(
                    """
                    the site CA the region answered with (SHA-256 \(answered)) is not the one the join token names \
                    (\(pin)): nothing kept. Something between this site and the region may have answered; \
                    make a new token (site remove, site add) and join over a path you trust
                    """,
                    code: .permissionDenied
                )
            }
            do {
                try SiteAuthority.checkJoinAnswer(
                    certificatePEM: r.certificatePem,
                    caPEM: r.caPem,
                    keyPEM: keyPEM,
                    site: name
                )
            } catch {
                throw CLIError(
                    """
                    the region's answer is not a certificate for this site's key (\(error)): nothing kept. \
                    Someone else may have joined as \(name) with this token (read on its way): remove the site \
                    at the region (site remove \(name)) and add it again
                    """,
                    code: .permissionDenied
                )
            }
            do {
                try SecretFile.replace(dataDir + "/site.crt", Array(r.certificatePem.utf8), mode: 0o644)
                try SecretFile.replace(dataDir + "/region-ca.crt", Array(r.caPem.utf8), mode: 0o644)
                try fm.moveItem(atPath: pendingPath, toPath: keyPath)
            } catch {
                throw CLIError("writing the site's key and certificates to \(dataDir): \(error)")
            }
            print("site \(r.site.name) joined; its certificate (serial \(r.site.certificateSerial)) is in \(dataDir)")
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "run",
            abstract: "At the site: run the site agent, linked to the region over mutual TLS.",
            discussion: """
                Connects to the region's site link (its site.listen) with the key and certificate \
                `farrier site join` left in DATA-DIR, verifying the region against the CA it got then, \
                and calls in every --interval seconds; the region's `site list` shows the link. The \
                link's state is kept in DATA-DIR/link.json for `farrier site status`. A region that \
                cannot be reached is tried again at the next interval; a region that refuses the \
                site's certificate (the site was removed, or joined again elsewhere) ends the run \
                with status 17.
                """
        )
        @Option(
            help: """
                The region's site link, HOST:PORT (a name or IP in its link certificate); several \
                replicas' links as IPv4 HOST:PORT,HOST:PORT (calls go to those that are up).
                """
        )
        var region: String
        @Option(help: "Where the site keeps its key and certificates.") var dataDir = "/var/lib/farrier-site"
        @Option(help: "Seconds between calls to the region (1 to 15; the region calls a link down after 30).")
        var interval = 10
        @Flag(help: "Call the region once and exit: 0 if it answered, its refusal's status if not.") var once = false
        @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.") var logLevel = "info"
        @Option(help: "The cache's size in GiB (DATA-DIR/cache; least recently used out first).") var cacheSize = 100
        @Option(help: "Keep this image of the region's cached (by name; repeatable), besides those its machines use.")
        var syncImage: [String] = []
        @Flag(
            help: """
                Serve boot at the site: DHCP on the --dhcp-interface interfaces only, TFTP and HTTP \
                (iPXE scripts, boot files), from what the region last said, with or without the region.
                """
        )
        var boot = false
        @Option(help: "With --boot: YAML file of boot settings (dhcp.*, tftp.*, http.listen, ipxe.source).")
        var config: String?
        @Option(help: "With --boot: HOST:PORT for iPXE scripts and boot files. [http.listen; default 0.0.0.0:8080]")
        var httpListen: String?
        @Option(
            help: """
                With --boot: HOST:PORT for the agent channel (HTTPS; ramdisk agents' calls, relayed to \
                the region, and images from the cache). [agent.listen; default 0.0.0.0:8443]
                """
        )
        var agentListen: String?
        @Option(help: "With --boot: HOST:PORT for TFTP; empty disables it. [tftp.listen; default 0.0.0.0:69]")
        var tftpListen: String?
        @Option(help: "With --boot: where the iPXE binaries are copied from. [ipxe.source; default /usr/lib/ipxe]")
        var ipxeSource: String?
        @Option(help: "With --boot: off, full or proxy. [dhcp.mode; default full]") var dhcpMode: String?
        @Option(help: "With --boot: interface to serve DHCP on; repeat for more. [dhcp.interfaces]")
        var dhcpInterface: [String] = []
        @Option(help: "With --boot: subnet, as for farrier server --dhcp-subnet; repeat for more. [dhcp.subnets]")
        var dhcpSubnet: [String] = []
        @Option(help: "With --boot: fixed address MAC=IP[,HOSTNAME]; repeat for more. [dhcp.reservations]")
        var dhcpReservation: [String] = []
        @Option(
            help: """
                With --boot: HOST:PORT for the site's metrics (GET /metrics); empty disables them. \
                [metrics.listen; default 127.0.0.1:7791]
                """
        )
        var metricsListen: String?
        @Option(help: "With --boot: a file holding the token scrapes must present. [metrics.token-file]")
        var metricsTokenFile: String?

        /// The boot settings given on the command line, as `farrier server`'s keys.
        var bootFlags: [String: [String]] {
            var f: [String: [String]] = ["data-dir": [dataDir]]
            if let httpListen { f["http.listen"] = [httpListen] }
            if let tftpListen { f["tftp.listen"] = [tftpListen] }
            if let agentListen { f["agent.listen"] = [agentListen] }
            if let ipxeSource { f["ipxe.source"] = [ipxeSource] }
            if let dhcpMode { f["dhcp.mode"] = [dhcpMode] }
            if !dhcpInterface.isEmpty { f["dhcp.interfaces"] = dhcpInterface }
            if !dhcpSubnet.isEmpty { f["dhcp.subnets"] = dhcpSubnet }
            if !dhcpReservation.isEmpty { f["dhcp.reservations"] = dhcpReservation }
            if let metricsListen { f["metrics.listen"] = [metricsListen] }
            if let metricsTokenFile { f["metrics.token-file"] = [metricsTokenFile] }
            return f
        }

        func validate() throws {
            if !boot, config != nil || bootFlags.count > 1 {
                throw ValidationError(
                    "--config, --http-listen, --agent-listen, --tftp-listen, --ipxe-source, --dhcp-* and --metrics-* need --boot"
                )
            }
            guard (1...15).contains(interval) else { throw ValidationError("--interval is 1 to 15 seconds") }
            guard (1...1_000_000).contains(cacheSize) else { throw ValidationError("--cache-size is 1 to 1000000 GiB") }
            guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level: '\(logLevel)'") }
        }

        func run() async throws {
            bootstrapLogging(level: Logger.Level(rawValue: logLevel) ?? .info, format: .logfmt)
            let logger = Logger(label: "farrier.site")
            let credentials: SiteCredentials
            do { credentials = try SiteCredentials(dataDir: dataDir) } catch { throw CLIError("\(error)") }
            let status = LinkStatusFile(path: dataDir + "/link.json", site: credentials.site, region: region)
            let machines = SiteMachinesFile(path: dataDir + "/machines.json")
            logger.info(
                "site agent",
                metadata: [
                    "site": "\(credentials.site)", "region": "\(region)", "certificate.serial": "\(credentials.serial)",
                ]
            )
            let (dataDir, interval, once, cacheSize) = (dataDir, interval, once, cacheSize)
            let syncImage = Set(syncImage)
            var bootConfiguration: ServerConfiguration?
            if boot {
                do {
                    var c = try ServerConfiguration.load(file: config, environment: [:], flags: bootFlags)
                    if c.metricsListenSet == nil { c.metricsListenSet = ServerConfiguration.defaultSiteMetricsListen }
                    bootConfiguration = c
                } catch { throw CLIError("boot services: \(error)") }
            }
            try await withSiteLink(region: region, credentials: credentials) { [bootConfiguration] link in
                let origin = LinkOrigin(link: link)
                let cache: SiteCache
                do {
                    cache = try SiteCache(
                        directory: dataDir + "/cache",
                        capacity: Int64(cacheSize) << 30,
                        origin: origin
                    )
                } catch { throw CLIError("opening the cache in \(dataDir)/cache: \(error)") }
                var siteBoot: SiteBoot?
                var deliveries: SiteDeliveries?
                if let bootConfiguration {
                    do {
                        let queue = try AgentReportQueue(
                            directory: dataDir + "/agent-reports",
                            tokensFile: dataDir + "/agent-tokens.json"
                        )
                        let lookup = SiteBootLookup(
                            link: link,
                            cached: { machines.entry($0) },
                            note: { machines.note($0, $1) }
                        )
                        let boot = try await SiteBoot(
                            configuration: bootConfiguration,
                            machine: { await lookup.entry($0) },
                            agent: LinkAgentBackend(link: link, queue: queue, logger: logger),
                            images: CacheImageSource(cache: cache),
                            regionBootFiles: BootFileSync.installed(
                                stateFile: dataDir + "/boot-files.json",
                                root: bootConfiguration.tftpRoot
                            ),
                            logger: logger
                        )
                        siteBoot = boot
                        deliveries = SiteDeliveries(
                            events: SiteEventCourier(
                                store: boot.store,
                                link: link,
                                markFile: dataDir + "/events-mark.json"
                            ),
                            leases: SiteLeaseCourier(store: boot.store, link: link),
                            reports: AgentReportCourier(queue: queue, link: link, logger: logger),
                            bootFiles: BootFileSync(
                                cache: cache,
                                root: boot.bootRoot,
                                stateFile: dataDir + "/boot-files.json",
                                logger: logger
                            ),
                            recorder: boot.recorder,
                            lookup: lookup
                        )
                    } catch { throw CLIError("boot services: \(error)") }
                    logger.info("boot from the region's last list", metadata: ["machines": "\(machines.count)"])
                }
                // The BMC channels, while the site calls in (not for --once).
                let bmcWorker = once ? nil : SiteBMCWorker(logger: logger)
                let calls: @Sendable () async throws -> Void = { [deliveries] in
                    try await withThrowingTaskGroup(of: Bool.self) { group in
                        if let bmcWorker {
                            group.addTask {
                                await bmcWorker.run(region: region, credentials: credentials, link: link)
                                return false
                            }
                        }
                        group.addTask {
                            try await Self.callIn(
                                link: link,
                                region: region,
                                origin: origin,
                                cache: cache,
                                credentials: credentials,
                                dataDir: dataDir,
                                interval: interval,
                                once: once,
                                syncImage: syncImage,
                                status: status,
                                machines: machines,
                                deliveries: deliveries,
                                bmcWorker: bmcWorker,
                                logger: logger
                            )
                            return true
                        }
                        // Until the calls end (refused, or --once); the channels end with them.
                        while let callsEnded = try await group.next(), !callsEnded {}
                        group.cancelAll()
                    }
                }
                guard let siteBoot else { return try await calls() }
                try await runServices(siteBoot.services, alongside: calls, logger: logger)
            }
        }

        /// Calls the region every `interval` seconds until it refuses the site (or once): the
        /// heartbeat, then the site's machines (kept in `machines`) and the images to cache.
        static func callIn(
            link: Farrier_V1_SiteLinkService.Client<HTTP2ClientTransport.Posix>,
            region: String,
            origin: LinkOrigin,
            cache: SiteCache,
            credentials: SiteCredentials,
            dataDir: String,
            interval: Int,
            once: Bool,
            syncImage: Set<String>,
            status: LinkStatusFile,
            machines: SiteMachinesFile,
            deliveries: SiteDeliveries?,
            bmcWorker: SiteBMCWorker?,
            logger: Logger
        ) async throws {
            // The site's machines' DHCP traffic goes on their timelines too (not only network boots).
            for mac in machines.macs { deliveries?.recorder.markKnown(mac) }
            do {
                let prefetcher = Prefetcher(cache: cache, origin: origin, logger: logger)
                var up: Bool? = nil
                while true {
                    var request = Farrier_V1_HeartbeatRequest()
                    let cached = (try? SiteCache.entries(in: dataDir + "/cache")) ?? []
                    request.cachedFiles = Int64(cached.count)
                    request.cachedBytes = cached.reduce(0) { $0 + $1.size }
                    request.version = farrierVersion
                    request.queueDepth = await deliveries?.depth() ?? 0
                    if let bmcWorker { request.bmcChannels = Int64(bmcWorker.openChannels) }
                    var options = CallOptions.defaults
                    options.timeout = .seconds(10)
                    /// A refusal ends the run: the certificate will not be accepted again.
                    func refused(_ e: RPCError) -> CLIError {
                        logger.error("the region refused this site", metadata: ["error": "\(e.message)"])
                        status.record(up: false, error: "refused: \(e.message)")
                        // One status for a refusal, whichever code the region refused with.
                        return CLIError(
                            "the region refused site \(credentials.site): \(e.message)",
                            code: .permissionDenied
                        )
                    }
                    var answered = false
                    do {
                        let r = try await link.heartbeat(request, options: options)
                        if up != true {
                            logger.info("link up", metadata: ["region": "\(region)", "site": "\(r.site)"])
                        }
                        up = true
                        deliveries?.lookup.region(up: true)
                        answered = true
                        status.record(up: true, error: nil)
                    } catch let e as RPCError where e.isSiteRefusal {
                        throw refused(e)
                    } catch {
                        // Stopping (SIGTERM): not an outage to record.
                        if Task.isCancelled { throw CancellationError() }
                        if up != false {
                            logger.warning("link down", metadata: ["region": "\(region)", "error": "\(error)"])
                        }
                        up = false
                        deliveries?.lookup.region(up: false)
                        status.record(up: false, error: "\(error)", queueDepth: await deliveries?.depth())
                        if once {
                            throw CLIError("the region at \(region) did not answer: \(error)", code: .unavailable)
                        }
                    }
                    if answered {
                        // The list the site boots from; a failure keeps the last one.
                        var pulling: Task<Int, Never>?
                        var installing: Task<Int, Never>?
                        do {
                            let asked = Date()
                            let list = try await link.siteMachines(Farrier_V1_SiteMachinesRequest(), options: options)
                            try machines.record(list, asked: asked)
                            for mac in machines.macs { deliveries?.recorder.markKnown(mac) }
                            // What to keep cached: its machines' images first, then those named.
                            let sizes = Dictionary(
                                list.images.map { ($0.sha256, $0.size) },
                                uniquingKeysWith: { a, _ in a }
                            )
                            var wanted: [(String, Int64)] = []
                            for digest in list.machines.map(\.imageSha256) where !digest.isEmpty {
                                if !wanted.contains(where: { $0.0 == digest }) {
                                    wanted.append((digest, sizes[digest] ?? 0))
                                }
                            }
                            for name in syncImage.sorted() {
                                if let image = list.images.first(where: { $0.name == name }) {
                                    if !wanted.contains(where: { $0.0 == image.sha256 }) {
                                        wanted.append((image.sha256, image.size))
                                    }
                                } else {
                                    prefetcher.unknown(name)
                                }
                            }
                            // The region's ramdisk and iPXE binaries, before any image.
                            installing = deliveries?.bootFiles.start(
                                list.bootFiles.map { BootFile(path: $0.path, sha256: $0.sha256, size: $0.size) }
                            )
                            pulling = prefetcher.start(wanted)
                        } catch let e as RPCError where e.isSiteRefusal {
                            throw refused(e)
                        } catch {
                            logger.warning("listing the site's machines failed", metadata: ["error": "\(error)"])
                            if once { throw CLIError("listing the site's machines: \(error)") }
                        }
                        if let deliveries {
                            // Each in turn; a failure is logged and tried again at the next call.
                            func attempt(_ what: String, _ work: () async throws -> Void) async throws {
                                do { try await work() } catch let e as RPCError where e.isSiteRefusal {
                                    throw refused(e)
                                } catch {
                                    logger.warning("\(what) failed", metadata: ["error": "\(error)"])
                                }
                            }
                            // The agent reports kept while the region was away, in order.
                            try await attempt("delivering agent reports") { try await deliveries.reports.deliver() }
                            // The boot timeline the region has not had yet, in order, once.
                            try await attempt("delivering events") {
                                _ = try await deliveries.events.deliver(options: options)
                            }
                            // The leases of its machines, so the region can show and reach them.
                            try await attempt("reporting leases") {
                                try await deliveries.leases.deliver(macs: Set(machines.macs), options: options)
                            }
                            status.record(up: true, error: nil, queueDepth: await deliveries.depth())
                        }
                        if once {
                            let failed = await (pulling?.value ?? 0) + (installing?.value ?? 0)
                            if failed > 0 {
                                throw CLIError("\(failed) image(s) or boot file(s) could not be cached (see the log)")
                            }
                            return
                        }
                    }
                    try await Task.sleep(for: .seconds(interval))
                }
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status",
            abstract: "At the site: its identity, its link to the region, and what its cache holds."
        )
        @Option(help: "Where the site keeps its key and certificates.") var dataDir = "/var/lib/farrier-site"
        @Option(
            name: .shortAndLong,
            help: "Output format: table or json."
        ) var output = "table"

        struct View: Codable {
            var site: String
            var certificateSerial: String
            var certificateNotAfter: Date
            var link: LinkStatus?
            /// The site's machines as the region last listed them.
            var machines: SiteMachines?
            var cachedFiles: Int
            var cachedBytes: Int64
            var cache: [CacheEntry]
        }
        struct CacheEntry: Codable {
            var sha256: String
            var size: Int64
            var lastUsed: Date
        }

        func validate() throws {
            guard ["table", "json"].contains(output) else { throw ValidationError("-o is table or json") }
        }

        func run() async throws {
            let credentials: SiteCredentials
            do { credentials = try SiteCredentials(dataDir: dataDir) } catch { throw CLIError("\(error)") }
            var link = LinkStatusFile.read(dataDir + "/link.json")
            // The file holds what `site run` last knew: with no answer for longer than the region
            // waits before calling the link down, that is stale (the agent stopped, or hangs).
            if let l = link, l.state == "up", Date().timeIntervalSince(l.lastContact ?? l.since) > SiteLink.downAfter {
                link?.state = "stale"
                link?.lastError =
                    "no answer recorded since \(iso(l.lastContact ?? l.since)): is `farrier site run` running?"
            }
            let cached = (try? SiteCache.entries(in: dataDir + "/cache")) ?? []
            let view = View(
                site: credentials.site,
                certificateSerial: credentials.serial,
                certificateNotAfter: credentials.notAfter,
                link: link,
                machines: SiteMachinesFile.read(dataDir + "/machines.json"),
                cachedFiles: cached.count,
                cachedBytes: cached.reduce(0) { $0 + $1.size },
                cache: cached.map { CacheEntry(sha256: $0.digest, size: $0.size, lastUsed: $0.lastUsed) }
            )
            if output == "json" {
                print(try json(view))
                return
            }
            var lines = [
                "site:         \(view.site)",
                "certificate:  serial \(view.certificateSerial), valid until \(iso(view.certificateNotAfter))",
            ]
            if let l = link {
                lines.append("region:       \(l.region)")
                lines.append(
                    "link:         \(l.state) since \(iso(l.since))"
                        + (l.lastContact.map { ", last answer \(iso($0))" } ?? ", never answered")
                )
                if let e = l.lastError { lines.append("last error:   \(e)") }
                if let q = l.queueDepth { lines.append("queue:        \(q) events for the region") }
            } else {
                lines.append("link:         never run (farrier site run --region HOST:PORT)")
            }
            if let m = view.machines {
                lines.append("machines:     \(m.machines.count) (the region's list; it last changed at \(iso(m.asOf)))")
            } else {
                lines.append("machines:     not listed yet")
            }
            lines.append("cache:        \(view.cachedFiles) files, \(bytes(view.cachedBytes))")
            print(lines.joined(separator: "\n"))
            if let m = view.machines, !m.machines.isEmpty {
                print(
                    table(
                        ["NAME", "MAC", "STATE", "NEXT-BOOT", "FIRMWARE"],
                        m.machines.map { [$0.name, $0.mac, $0.state, $0.nextBoot, $0.firmware] }
                    )
                )
            }
            if !cached.isEmpty {
                print(
                    table(
                        ["SHA256", "SIZE", "LAST-USED"],
                        cached.map { [$0.digest, bytes($0.size), iso($0.lastUsed)] }
                    )
                )
            }
        }
    }
}

/// Pulls what the site should hold into its cache, one file at a time, off the heartbeat loop
/// (a long pull must not hold the link's calls back); a new start while one runs is skipped, and
/// the next heartbeat's list is tried again.
final class Prefetcher: Sendable {
    let cache: SiteCache
    let origin: LinkOrigin
    let logger: Logger
    let busy = Atomic<Bool>(false)
    let warned: Mutex<Set<String>> = Mutex([])
    let retryAfter: Mutex<[String: ContinuousClock.Instant]> = Mutex([:])

    init(cache: SiteCache, origin: LinkOrigin, logger: Logger) {
        self.cache = cache
        self.origin = origin
        self.logger = logger
    }

    func unknown(_ name: String) {
        warnOnce("image:" + name, "--sync-image names no image of the region", ["image": "\(name)"])
    }

    /// Starts pulling the files of `wanted` (digests and sizes, first wanted first) that the cache
    /// lacks; the task (its value: how many pulls failed), or nil if one runs. Only what fits in
    /// the cache is wanted (a cache too small would evict one wanted file for the next, and pull
    /// them again forever); a file that failed waits 5 minutes before it is tried again.
    func start(_ wanted: [(digest: String, size: Int64)]) -> Task<Int, Never>? {
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            return nil
        }
        return Task { [self] in
            defer { busy.store(false, ordering: .releasing) }
            let held = Set(await cache.contents.map(\.digest))
            var total: Int64 = 0
            var digests: [String] = []
            for (digest, size) in wanted {
                total += size
                if total > cache.capacity {
                    warnOnce(
                        "cache-full",
                        "the images to keep cached exceed the cache (--cache-size): the rest are not pulled ahead",
                        ["first-left-out": "\(digest)", "cache.bytes": "\(cache.capacity)"]
                    )
                    break
                }
                digests.append(digest)
            }
            var failures = 0
            let now = ContinuousClock.now
            for digest in digests where !held.contains(digest) {
                if let after = retryAfter.withLock({ $0[digest] }), now < after { continue }
                let before = origin.bytesReceived
                do {
                    let lease = try await cache.acquire(digest)
                    await cache.release(lease)
                    logger.info(
                        "cached from the region",
                        metadata: [
                            "sha256": "\(digest)", "bytes": "\(origin.bytesReceived - before)",
                            "seconds": "\((ContinuousClock.now - now).components.seconds)",
                            "region.bytes.total": "\(origin.bytesReceived)",
                        ]
                    )
                    retryAfter.withLock { $0[digest] = nil }
                } catch {
                    failures += 1
                    retryAfter.withLock { $0[digest] = ContinuousClock.now + .seconds(300) }
                    logger.warning(
                        "caching from the region failed",
                        metadata: ["sha256": "\(digest)", "error": "\(error)", "retry.seconds": "300"]
                    )
                }
            }
            return failures
        }
    }

    func warnOnce(_ key: String, _ message: Logger.Message, _ metadata: Logger.Metadata) {
        guard warned.withLock({ $0.insert(key).inserted }) else { return }
        logger.warning(message, metadata: metadata)
    }
}

/// The site's machines as the region last listed them (DATA-DIR/machines.json): what the site
/// boots them with, and keeps booting them with while the region is away.
struct SiteMachines: Codable, Equatable {
    struct Machine: Codable, Equatable {
        var name: String
        var mac: String
        var state: String
        var nextBoot: String
        var firmware: String
    }
    var asOf: Date
    var machines: [Machine]
}

/// DATA-DIR/machines.json, replaced whole (and synced) when the list changes.
final class SiteMachinesFile: Sendable {
    let path: String
    /// The last list, and what it boots each MAC with.
    let last: Mutex<(list: [SiteMachines.Machine], boot: [MACAddress: SiteBootEntry])?>
    /// What single lookups said of machines, and when (this site's clock).
    let notes: Mutex<[MACAddress: (entry: SiteBootEntry?, at: Date)]> = Mutex([:])

    /// Starts from the list in `path`, if any: a site restarted while the region is away boots
    /// what it was last told.
    init(path: String) {
        self.path = path
        last = Mutex(Self.read(path).map { ($0.machines, Self.index($0.machines)) })
    }

    var count: Int { last.withLock { $0?.list.count ?? 0 } }

    func entry(_ mac: MACAddress) -> SiteBootEntry? { last.withLock { $0?.boot[mac] } }

    var macs: [MACAddress] { last.withLock { $0.map { Array($0.boot.keys) } ?? [] } }

    static func index(_ list: [SiteMachines.Machine]) -> [MACAddress: SiteBootEntry] {
        var boot: [MACAddress: SiteBootEntry] = [:]
        for m in list {
            guard let mac = MACAddress(m.mac) else { continue }
            boot[mac] = SiteBootEntry(name: m.name, state: m.state, nextBoot: m.nextBoot, firmware: m.firmware)
        }
        return boot
    }

    /// The region's list, asked for at `asked`: what single lookups said after that is newer
    /// than the list, and stays (in the file too).
    func record(_ r: Farrier_V1_SiteMachinesResponse, asked: Date) throws {
        let newer = notes.withLock { notes in
            notes = notes.filter { $0.value.at > asked }
            return notes
        }
        var list: [SiteMachines.Machine] = r.machines.compactMap { m in
            var item = SiteMachines.Machine(
                name: m.name,
                mac: m.mac,
                state: m.state,
                nextBoot: m.nextBoot,
                firmware: m.firmware
            )
            guard let mac = MACAddress(m.mac), let n = newer[mac] else { return item }
            guard let e = n.entry else { return nil }  // gone from the site since
            (item.state, item.nextBoot, item.firmware) = (e.state, e.nextBoot.rawValue, e.firmware.rawValue)
            return item
        }
        let listed = Set(list.compactMap { MACAddress($0.mac) })
        for (mac, n) in newer where !listed.contains(mac) {
            guard let e = n.entry else { continue }
            list.append(
                SiteMachines.Machine(
                    name: e.name,
                    mac: mac.description,
                    state: e.state,
                    nextBoot: e.nextBoot.rawValue,
                    firmware: e.firmware.rawValue
                )
            )
        }
        // Booted from at once; a file that cannot be written costs only a restart's memory.
        let merged = list
        let boot = Self.index(merged)
        let changed = last.withLock { last -> Bool in
            defer { last = (merged, boot) }
            return last?.list != merged
        }
        if changed { try writeStateFile(path, SiteMachines(asOf: r.asOf.date, machines: merged)) }
    }

    /// What the region just said of one machine (nil: none of this site's), until the next list.
    func note(_ mac: MACAddress, _ entry: SiteBootEntry?) {
        notes.withLock { $0[mac] = (entry, Date()) }
        last.withLock { last in
            if last == nil { last = ([], [:]) }
            last?.boot[mac] = entry
        }
    }

    static func read(_ path: String) -> SiteMachines? { readStateFile(path) }
}

/// What `farrier site run` last knew of its link, for `farrier site status`.
struct LinkStatus: Codable {
    var site: String
    var region: String
    /// "up", or "down" (not answering, or refusing: see lastError); `site status` shows "stale"
    /// for an "up" with no answer in the last 30 s.
    var state: String
    /// When the link entered this state.
    var since: Date
    /// The region's last answer.
    var lastContact: Date?
    var lastError: String?
    /// Boot timeline events waiting for the region (with --boot), as of the last delivery.
    var queueDepth: Int64?
}

/// DATA-DIR/link.json, replaced whole at each change of state and at each answer.
final class LinkStatusFile: Sendable {
    let path: String
    let state: Mutex<LinkStatus>

    init(path: String, site: String, region: String) {
        self.path = path
        state = Mutex(LinkStatus(site: site, region: region, state: "down", since: Date()))
    }

    func record(up: Bool, error: String?, queueDepth: Int64? = nil) {
        let now = Date()
        let snapshot = state.withLock { s -> LinkStatus in
            if let queueDepth { s.queueDepth = queueDepth }
            let new = up ? "up" : "down"
            if s.state != new || (s.lastContact == nil && up) { s.since = now }
            s.state = new
            if up { s.lastContact = now }
            s.lastError = error
            return s
        }
        try? writeStateFile(path, snapshot)
    }

    static func read(_ path: String) -> LinkStatus? { readStateFile(path) }
}
