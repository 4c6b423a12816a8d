import DHCPServer
import FarrierControl
import FarrierCore
import FarrierHTTP
import Foundation
import Logging
import TFTPServer
import TFTPWire
import Yams

/// Every setting of `farrier server`, after layering defaults < YAML file < `FARRIER_*`
/// environment < command-line flags.
///
/// Keys (YAML path / environment variable / flag):
/// - `data-dir` / `FARRIER_DATA_DIR` / `--data-dir`: state directory (SQLite, boot root). Default `/var/lib/farrier`.
/// - `database.url` / `FARRIER_DATABASE_URL` / `--database`: `postgres://USER:PASSWORD@HOST:PORT/DATABASE`
///   (`?sslmode=disable|prefer|require`, default prefer) to keep the state in PostgreSQL, shared by
///   every replica given the same URL. Default empty: SQLite in DATA-DIR.
/// - `log-level` / `FARRIER_LOG_LEVEL` / `--log-level`: trace, debug, info, notice, warning, error, critical. Default info.
/// - `log-format` / `FARRIER_LOG_FORMAT` / `--log-format`: logfmt or json. Default logfmt.
/// - `http.listen` / `FARRIER_HTTP_LISTEN` / `--http-listen`: HOST:PORT for iPXE scripts and files. Default 0.0.0.0:8080.
/// - `agent.listen` / `FARRIER_AGENT_LISTEN` / `--agent-listen`: HOST:PORT for the agent channel (HTTPS: the
///   ramdisk agent's calls, image downloads). Default 0.0.0.0:8443.
/// - `agent.tls-cert`, `agent.tls-key` / `FARRIER_AGENT_TLS_CERT`, `FARRIER_AGENT_TLS_KEY` / `--agent-tls-cert`,
///   `--agent-tls-key`: PEM certificate chain and key for the agent channel. Default: a self-signed
///   certificate made at first start in DATA-DIR (agent-tls.crt, agent-tls.key). Agents pin its SHA-256.
/// - `grpc.listen` / `FARRIER_GRPC_LISTEN` / `--grpc-listen`: HOST:PORT for the API. Default 127.0.0.1:7700.
/// - `tftp.listen` / `FARRIER_TFTP_LISTEN` / `--tftp-listen`: HOST:PORT, empty to disable. Default 0.0.0.0:69.
/// - `tftp.root` / `FARRIER_TFTP_ROOT` / `--tftp-root`: boot root served by TFTP and under /tftp over HTTP. Default DATA-DIR/boot.
/// - `tftp.max-transfers` / `FARRIER_TFTP_MAX_TRANSFERS` / `--tftp-max-transfers`: TFTP transfers at once; more get
///   ERROR 0 "server busy". Default 1024.
/// - `tftp.max-transfers-per-client` / `FARRIER_TFTP_MAX_TRANSFERS_PER_CLIENT` / `--tftp-max-transfers-per-client`:
///   TFTP transfers at once from one client address. Default 4.
/// - `tftp.max-timeout` / `FARRIER_TFTP_MAX_TIMEOUT` / `--tftp-max-timeout`: the largest RFC 2349 `timeout` option
///   granted, in seconds (1–255); a client asking for more gets the default. Default 10.
/// - `tftp.busy-poll` / `FARRIER_TFTP_BUSY_POLL` / `--tftp-busy-poll`: microseconds a transfer polls for the client's
///   ACK before it sleeps (0: never poll); only while transfers are at most half the CPUs. Default 0.
/// - `ipxe.source` / `FARRIER_IPXE_SOURCE` / `--ipxe-source`: where the iPXE binaries are copied from into the boot root. Default /usr/lib/ipxe.
/// - `dhcp.mode` / `FARRIER_DHCP_MODE` / `--dhcp-mode`: off, full or proxy. Default full (but off with no interfaces).
/// - `dhcp.interfaces` / `FARRIER_DHCP_INTERFACES` (comma separated) / `--dhcp-interface` (repeatable).
/// - `dhcp.subnets` / `FARRIER_DHCP_SUBNETS` (`;` separated) / `--dhcp-subnet` (repeatable):
///   `NETWORK/LEN,pool=FIRST-LAST[,router=IP][,dns=IP[+IP…]][,domain=NAME][,lease=SECONDS]`.
///   In YAML, a mapping with keys network, pool (string or list), router, dns (list), domain, lease-time.
/// - `dhcp.reservations` / `FARRIER_DHCP_RESERVATIONS` (`;` separated) / `--dhcp-reservation` (repeatable):
///   `MAC=IP[,HOSTNAME]`. In YAML, a mapping with keys mac, address, hostname.
/// - `dhcp.proxy-port` / `FARRIER_DHCP_PROXY_PORT` / `--dhcp-proxy-port`: ProxyDHCP boot-server port. Default 4011.
/// - `dhcp.commit-delay` / `FARRIER_DHCP_COMMIT_DELAY` / `--dhcp-commit-delay`: microseconds a batch that bound leases
///   waits for more exchanges to share its fsync before its ACKs leave; 0 commits at once. Default 8000.
/// - `bmc.key-file` / `FARRIER_BMC_KEY_FILE` / `--bmc-key-file`: the key (32 bytes, base64) that encrypts BMC
///   passwords at rest. Default DATA-DIR/bmc.key, made 0600 on first start. `FARRIER_BMC_KEY` gives the key itself.
/// - `api.tls-cert` / `FARRIER_API_TLS_CERT` / `--api-tls-cert`, `api.tls-key` / `FARRIER_API_TLS_KEY` / `--api-tls-key`:
///   PEM certificate chain and key; when set, the gRPC API serves TLS only.
/// - `api.insecure` / `FARRIER_API_INSECURE` / `--api-insecure`: allow a grpc.listen off loopback without TLS (tokens
///   in the clear). Without it such a configuration refuses to start.
/// - `site.listen` / `FARRIER_SITE_LISTEN` / `--site-listen`: where sites reach the region (issue 16), mutual TLS
///   only: each site presents the certificate it got when it joined. Empty: no site link. Default empty.
/// - `site.link-names` / `FARRIER_SITE_LINK_NAMES` (comma separated) / `--site-link-name` (repeatable): the host
///   names and IP addresses sites dial the region by, put in the link's certificate (made at each start from the
///   site CA). Default: site.listen's host, unless that is 0.0.0.0.
/// - `images.max-virtual-size` / `FARRIER_IMAGES_MAX_VIRTUAL_SIZE` / `--images-max-virtual-size`: the largest virtual
///   size, in GiB, of a qcow2 upload (it is stored as that many raw bytes). Default 256.
/// - `discovery.max-machines` / `FARRIER_DISCOVERY_MAX_MACHINES` / `--discovery-max-machines`: at most this many
///   `discovered` machines; a new MAC beyond it is not recorded (counted, logged). Default 4096.
/// - `discovery.prune-after` / `FARRIER_DISCOVERY_PRUNE_AFTER` / `--discovery-prune-after`: seconds after which a
///   `discovered` machine not seen again is deleted. Default 604800 (7 days).
/// - `lifecycle.max-deploys` / `FARRIER_LIFECYCLE_MAX_DEPLOYS` / `--lifecycle-max-deploys`: deploys at once (others queue). Default 8.
/// - `lifecycle.max-wipes` / `FARRIER_LIFECYCLE_MAX_WIPES` / `--lifecycle-max-wipes`: wipes at once. Default 8.
/// - `lifecycle.max-workers` / `FARRIER_LIFECYCLE_MAX_WORKERS` / `--lifecycle-max-workers`: BMC workers (a step's
///   boot and finish actions) at once on this server; more wait for the next scan. Default 100.
/// - `power-sync.interval` / `FARRIER_POWER_SYNC_INTERVAL` / `--power-sync-interval`: seconds between two reads of
///   each enrolled BMC's power state (each machine at its own jittered time within it), 0 for none. Default 300.
/// - `power-sync.concurrency` / `FARRIER_POWER_SYNC_CONCURRENCY` / `--power-sync-concurrency`: BMC reads in
///   flight at once. Default 16.
/// - `lifecycle.claim-ttl` / `FARRIER_LIFECYCLE_CLAIM_TTL` / `--lifecycle-claim-ttl`: seconds a replica's claim on a
///   machine's work lasts unrenewed (3–600): with several replicas on one database, how long a
///   dead replica's machines wait before another takes them over. Default 20.
/// - `lifecycle.step-timeouts` / `FARRIER_LIFECYCLE_STEP_TIMEOUTS` (comma separated) / `--lifecycle-step-timeout` (repeatable):
///   `STEP=SECONDS`, STEP one of commissioning, deploying, releasing, rescuing, exiting-rescue.
///   Defaults 1800, 3600, 86400, 1800, 900. Whatever the limit, an agent that reported progress and then
///   nothing for 900 s fails its step.
/// - `metrics.listen` / `FARRIER_METRICS_LISTEN` / `--metrics-listen`: HOST:PORT for `GET /metrics` (Prometheus
///   text) and `/healthz`, a listener of its own; empty disables it. Default 127.0.0.1:7790 (a site's 127.0.0.1:7791).
/// - `metrics.token-file` / `FARRIER_METRICS_TOKEN_FILE` / `--metrics-token-file`: a file holding a token (16 or more
///   characters) that scrapes must present as `Authorization: Bearer TOKEN`. Default empty: none asked for.
/// - `console.listen` / `FARRIER_CONSOLE_LISTEN` / `--console-listen`: HOST:PORT for the web console (log in with an
///   API token). Default empty: no console. Off loopback it needs TLS (api.tls-cert/api.tls-key, which it then
///   serves) or api.insecure.
/// - `otel.endpoint` / `FARRIER_OTEL_ENDPOINT` / `--otel-endpoint`: an OTLP/HTTP receiver's base URL
///   (`http://collector:4318`; `/v1/traces` is added) to export traces to, as protobuf. Default empty: none
///   exported (spans still get IDs, which the logs carry). `OTEL_EXPORTER_OTLP_*` variables (headers, TLS,
///   timeout) and `OTEL_BSP_*` apply over it.
/// - `otel.service-name` / `FARRIER_OTEL_SERVICE_NAME` / `--otel-service-name`: the traces' `service.name`.
///   Default farrier.
/// - `otel.sample-ratio` / `FARRIER_OTEL_SAMPLE_RATIO` / `--otel-sample-ratio`: the share of new traces
///   recorded, 0 to 1 (a step's later parts follow its first's decision). Default 1.
/// - `memory.arenas` / `FARRIER_MEMORY_ARENAS` / `--memory-arenas`: at most this many malloc arenas (glibc makes
///   up to eight per core, and memory freed in one stays resident); 0 keeps glibc's default. Default 2.
/// - `memory.trim-interval` / `FARRIER_MEMORY_TRIM_INTERVAL` / `--memory-trim-interval`: seconds between returns of
///   malloc's free pages to the kernel (malloc_trim); 0 never. Default 30.
public struct ServerConfiguration: Sendable {
    public var dataDir = "/var/lib/farrier"
    /// Empty: SQLite in `dataDir`.
    public var databaseURL = ""
    public var logLevel: Logger.Level = .info
    public var logFormat: LineLogHandler.Format = .logfmt
    public var grpcListen = "127.0.0.1:7700"
    public var ipxeSource = "/usr/lib/ipxe"
    public var http = HTTPConfiguration()
    public var tftp = TFTPConfiguration()
    public var dhcp = DHCPConfiguration()
    /// Empty: DATA-DIR/bmc.key.
    public var bmcKeyFile = ""
    public var apiTLSCert = ""
    public var apiTLSKey = ""
    /// Empty: DATA-DIR/agent-tls.crt and .key, made at first start.
    public var agentTLSCert = ""
    public var agentTLSKey = ""
    /// Serve the API without TLS off loopback (refused unless asked for).
    public var apiInsecure = false
    /// The site link's listener (empty: none) and the names in its certificate.
    public var siteListen = ""
    public var siteLinkNames: [String] = []
    public var control = ControlConfiguration()
    public var discoveryMaxMachines = 4096
    public var discoveryPruneAfter: Duration = .seconds(7 * 86400)
    /// The largest virtual size of a qcow2 upload, in bytes.
    public var imageMaxVirtualSize: Int64 = ImageRepository.defaultMaxVirtualSize
    /// Cap on malloc arenas (0: glibc's default) and the interval between trims (zero: none).
    public var memoryArenas = 2
    public var memoryTrimInterval: Duration = .seconds(30)
    /// nil: the role's default (`metricsListen(default:)`); empty: no metrics listener.
    public var metricsListenSet: String?
    public var metricsTokenFile = ""
    /// The web console's listener; empty: none.
    public var consoleListen = ""
    /// Where traces go (OTLP/HTTP); empty: nowhere.
    public var otelEndpoint = ""
    public var otelServiceName = "farrier"
    public var otelSampleRatio = 1.0
    var tftpRootSet = false

    /// The server's metrics address; a site agent's default differs, so the two can share a host.
    public static let defaultMetricsListen = "127.0.0.1:7790"
    public static let defaultSiteMetricsListen = "127.0.0.1:7791"
    public var metricsListen: String { metricsListenSet ?? Self.defaultMetricsListen }

    public init() { dhcp.mode = .full }

    /// The names in the site link's certificate: site.link-names, or site.listen's host.
    public var siteLinkNamesOrDefault: [String] {
        guard siteLinkNames.isEmpty else { return siteLinkNames }
        guard let host = try? splitHostPort(siteListen).0, host != "0.0.0.0", !host.isEmpty else { return [] }
        return [host]
    }

    public var tftpRoot: String { tftpRootSet ? tftp.root : dataDir + "/boot" }
    public var databasePath: String { dataDir + "/farrier.sqlite" }

    /// All keys, with their environment variable names, in documentation order.
    public static let keys: [(key: String, env: String)] = [
        "data-dir", "database.url", "log-level", "log-format", "http.listen", "agent.listen", "agent.tls-cert",
        "agent.tls-key", "grpc.listen", "tftp.listen", "tftp.root", "tftp.max-transfers",
        "tftp.max-transfers-per-client", "tftp.max-timeout", "tftp.busy-poll", "ipxe.source",
        "dhcp.mode", "dhcp.interfaces", "dhcp.subnets", "dhcp.reservations", "dhcp.proxy-port", "dhcp.commit-delay",
        "bmc.key-file",
        "api.tls-cert", "api.tls-key", "api.insecure", "site.listen", "site.link-names", "images.max-virtual-size",
        "discovery.max-machines",
        "discovery.prune-after", "lifecycle.max-deploys", "lifecycle.max-wipes", "lifecycle.max-workers",
        "lifecycle.claim-ttl", "lifecycle.step-timeouts", "memory.arenas", "memory.trim-interval",
        "power-sync.interval", "power-sync.concurrency", "commission.lldp-wait", "metrics.listen",
        "metrics.token-file", "console.listen", "otel.endpoint", "otel.service-name", "otel.sample-ratio",
    ].map {
        (
            $0,
            "FARRIER_"
                + $0.uppercased().replacingOccurrences(of: ".", with: "_").replacingOccurrences(of: "-", with: "_")
        )
    }

    /// Builds the configuration. `flags` holds only values given on the command line.
    public static func load(
        file: String?,
        environment: [String: String],
        flags: [String: [String]]
    ) throws -> ServerConfiguration {
        var layered: [String: [String]] = [:]
        if let file {
            let text: String
            do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
                throw ConfigurationError("cannot read config file \(file): \(error.localizedDescription)")
            }
            for (k, v) in try flattenYAML(text, file: file) { layered[k] = v }
        }
        for (key, env) in keys {
            guard let value = environment[env] else { continue }
            let separator: Character? =
                switch key {
                case "dhcp.interfaces", "lifecycle.step-timeouts", "site.link-names": ","
                case "dhcp.subnets", "dhcp.reservations": ";"
                default: nil
                }
            layered[key] =
                separator.map { value.split(separator: $0).map { $0.trimmingCharacters(in: .whitespaces) } } ?? [value]
        }
        for (k, v) in flags { layered[k] = v }
        var c = ServerConfiguration()
        for (key, values) in layered { try c.apply(key, values) }
        try c.validate()
        return c
    }

    /// Flattens the YAML file into dotted keys. Scalars are read as the text written, never
    /// through YAML 1.1 typing: an unquoted MAC such as 52:54:00:00:00:09 would otherwise become
    /// a base-60 integer.
    static func flattenYAML(_ text: String, file: String) throws -> [String: [String]] {
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch { throw ConfigurationError("\(file): invalid YAML: \(error)") }
        guard let node else { return [:] }
        guard case .mapping = node else { throw ConfigurationError("\(file): expected a mapping at the top level") }
        var out: [String: [String]] = [:]
        func plain(_ n: Node) -> Any {
            switch n {
            case .scalar(let s): return s.string
            case .mapping(let m):
                return Dictionary(m.map { (plain($0.key) as? String ?? "", plain($0.value)) }, uniquingKeysWith: { $1 })
            case .sequence(let seq): return seq.map(plain)
            case .alias: return ""
            }
        }
        func walk(_ prefix: String, _ value: Any) throws {
            if let map = value as? [String: Any], prefix != "dhcp.subnets", prefix != "dhcp.reservations" {
                for (k, v) in map { try walk(prefix.isEmpty ? k : "\(prefix).\(k)", v) }
                return
            }
            guard keys.contains(where: { $0.key == prefix }) else {
                throw ConfigurationError(
                    "\(file): unknown key '\(prefix)'; known keys: \(keys.map(\.key).joined(separator: ", "))"
                )
            }
            switch prefix {
            case "dhcp.subnets":
                guard let list = value as? [Any] else {
                    throw ConfigurationError("\(file): dhcp.subnets must be a list")
                }
                out[prefix] = try list.map { try subnetSpec(fromYAML: $0, file: file) }
            case "dhcp.reservations":
                guard let list = value as? [Any] else {
                    throw ConfigurationError("\(file): dhcp.reservations must be a list")
                }
                out[prefix] = try list.map { item in
                    if let s = item as? String { return s }
                    guard let m = item as? [String: Any], let mac = m["mac"], let addr = m["address"] else {
                        throw ConfigurationError("\(file): a reservation needs mac and address")
                    }
                    return "\(mac)=\(addr)" + (m["hostname"].map { ",\($0)" } ?? "")
                }
            default:
                if let list = value as? [Any] { out[prefix] = list.map { "\($0)" } } else { out[prefix] = ["\(value)"] }
            }
        }
        try walk("", plain(node))
        return out
    }

    static func subnetSpec(fromYAML item: Any, file: String) throws -> String {
        if let s = item as? String { return s }
        guard let m = item as? [String: Any], let network = m["network"] else {
            throw ConfigurationError("\(file): a subnet needs at least network and pool")
        }
        var parts = ["\(network)"]
        let pools: [Any] = (m["pool"] as? [Any]) ?? (m["pool"].map { [$0] } ?? [])
        for p in pools { parts.append("pool=\(p)") }
        if let r = m["router"] { parts.append("router=\(r)") }
        if let d = m["dns"] {
            let list = (d as? [Any]) ?? [d]
            parts.append("dns=" + list.map { "\($0)" }.joined(separator: "+"))
        }
        if let d = m["domain"] { parts.append("domain=\(d)") }
        if let l = m["lease-time"] { parts.append("lease=\(l)") }
        for k in m.keys where !["network", "pool", "router", "dns", "domain", "lease-time"].contains(k) {
            throw ConfigurationError("\(file): unknown subnet key '\(k)'")
        }
        return parts.joined(separator: ",")
    }

    mutating func apply(_ key: String, _ values: [String]) throws {
        let v = values.last ?? ""
        switch key {
        case "data-dir": dataDir = v
        case "database.url":
            guard v.isEmpty || v.hasPrefix("postgres://") || v.hasPrefix("postgresql://") else {
                throw ConfigurationError(
                    "database.url: expected postgres://USER:PASSWORD@HOST:PORT/DATABASE (or nothing, for SQLite in data-dir)"
                )
            }
            databaseURL = v
        case "log-level":
            guard let l = Logger.Level(rawValue: v) else {
                throw ConfigurationError(
                    "log-level: '\(v)' is not one of trace, debug, info, notice, warning, error, critical"
                )
            }
            logLevel = l
        case "log-format":
            guard let f = LineLogHandler.Format(rawValue: v) else {
                throw ConfigurationError("log-format: '\(v)' is not logfmt or json")
            }
            logFormat = f
        case "http.listen": http.listen = v
        case "agent.listen": http.agentListen = v
        case "metrics.listen":
            if !v.isEmpty {
                do { _ = try splitHostPort(v) } catch { throw ConfigurationError("metrics.listen: \(error)") }
            }
            metricsListenSet = v
        case "metrics.token-file": metricsTokenFile = v
        case "otel.endpoint":
            if !v.isEmpty {
                guard let url = URL(string: v), ["http", "https"].contains(url.scheme ?? ""), url.host != nil else {
                    throw ConfigurationError("otel.endpoint: '\(v)' is not an http:// or https:// URL")
                }
            }
            otelEndpoint = v
        case "otel.service-name":
            guard !v.isEmpty else { throw ConfigurationError("otel.service-name: empty") }
            otelServiceName = v
        case "otel.sample-ratio":
            guard let r = Double(v), (0...1).contains(r) else {
                throw ConfigurationError("otel.sample-ratio: '\(v)' is not a number from 0 to 1")
            }
            otelSampleRatio = r
        case "console.listen":
            if !v.isEmpty {
                do { _ = try splitHostPort(v) } catch { throw ConfigurationError("console.listen: \(error)") }
            }
            consoleListen = v
        case "agent.tls-cert": agentTLSCert = v
        case "agent.tls-key": agentTLSKey = v
        case "grpc.listen": grpcListen = v
        case "tftp.listen": tftp.listen = v
        case "tftp.root":
            tftp.root = v
            tftpRootSet = true
        case "tftp.max-transfers":
            guard let n = Int(v), (1...100_000).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number from 1 to 100000")
            }
            tftp.maxTransfers = n
        case "tftp.max-transfers-per-client":
            guard let n = Int(v), (1...100_000).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number from 1 to 100000")
            }
            tftp.maxTransfersPerClient = n
        case "tftp.max-timeout":
            guard let n = Int(v), (1...255).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number of seconds from 1 to 255")
            }
            tftp.limits.maxTimeoutSeconds = n
        case "dhcp.commit-delay":
            guard let n = Int(v), (0...100_000).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number of microseconds from 0 to 100000")
            }
            dhcp.commitDelay = .microseconds(n)
        case "tftp.busy-poll":
            guard let n = Int(v), (0...10_000).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number of microseconds from 0 to 10000")
            }
            tftp.busyPoll = .microseconds(n)
        case "ipxe.source": ipxeSource = v
        case "bmc.key-file": bmcKeyFile = v
        case "api.tls-cert": apiTLSCert = v
        case "api.tls-key": apiTLSKey = v
        case "api.insecure":
            guard
                let b = ["true": true, "false": false, "1": true, "0": false, "yes": true, "no": false][v.lowercased()]
            else {
                throw ConfigurationError("api.insecure: '\(v)' is not true or false")
            }
            apiInsecure = b
        case "discovery.max-machines":
            guard let n = Int(v), (0...10_000_000).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number from 0 to 10000000")
            }
            discoveryMaxMachines = n
        case "discovery.prune-after":
            guard let n = Int(v), (60...366 * 86400).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number of seconds from 60 to 31622400")
            }
            discoveryPruneAfter = .seconds(n)
        case "images.max-virtual-size":
            guard let n = Int64(v), (1...1 << 20).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number of GiB from 1 to 1048576")
            }
            imageMaxVirtualSize = n << 30
        case "lifecycle.max-deploys", "lifecycle.max-wipes":
            guard let n = Int(v), (1...10_000).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number from 1 to 10000")
            }
            if key == "lifecycle.max-deploys" {
                control.maxConcurrentDeploys = n
            } else {
                control.maxConcurrentWipes = n
            }
        case "lifecycle.max-workers":
            guard let n = Int(v), (1...10_000).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number from 1 to 10000")
            }
            control.maxWorkers = n
        case "power-sync.interval":
            guard let n = Int(v), (0...86400).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number of seconds from 0 (off) to 86400")
            }
            control.powerSyncInterval = .seconds(n)
        case "commission.lldp-wait":
            guard let n = Int(v), (0...300).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number of seconds from 0 (off) to 300")
            }
            control.lldpWait = .seconds(n)
        case "power-sync.concurrency":
            guard let n = Int(v), (1...1000).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number from 1 to 1000")
            }
            control.powerSyncConcurrency = n
        case "lifecycle.claim-ttl":
            guard let n = Int(v), (3...600).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number of seconds from 3 to 600")
            }
            control.claimTTL = .seconds(n)
        case "memory.arenas":
            guard let n = Int(v), (0...64).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number from 0 (glibc's default) to 64")
            }
            memoryArenas = n
        case "memory.trim-interval":
            guard let n = Int(v), (0...86400).contains(n) else {
                throw ConfigurationError("\(key): '\(v)' is not a number of seconds from 0 (never) to 86400")
            }
            memoryTrimInterval = .seconds(n)
        case "lifecycle.step-timeouts":
            for item in values where !item.isEmpty {
                let kv = item.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2, let step = MachineState(rawValue: kv[0]), Lifecycle.steps.contains(step) else {
                    throw ConfigurationError(
                        "lifecycle.step-timeouts: '\(item)' must be STEP=SECONDS, STEP one of \(Lifecycle.steps.map(\.rawValue).sorted().joined(separator: ", "))"
                    )
                }
                guard let seconds = Int(kv[1]), (1...7 * 86400).contains(seconds) else {
                    throw ConfigurationError(
                        "lifecycle.step-timeouts: '\(kv[1])' is not a number of seconds from 1 to 604800"
                    )
                }
                control.timeouts[step] = .seconds(seconds)
            }
        case "dhcp.mode":
            guard let m = DHCPConfiguration.Mode(rawValue: v) else {
                throw ConfigurationError("dhcp.mode: '\(v)' is not off, full or proxy")
            }
            dhcp.mode = m
        case "dhcp.interfaces": dhcp.interfaces = values.filter { !$0.isEmpty }
        case "site.listen":
            if !v.isEmpty { _ = try splitHostPort(v) }
            siteListen = v
        case "site.link-names": siteLinkNames = values.filter { !$0.isEmpty }
        case "dhcp.subnets": dhcp.subnets = try values.map(Self.parseSubnet)
        case "dhcp.reservations": dhcp.reservations = try values.map(Self.parseReservation)
        case "dhcp.proxy-port":
            guard let p = Int(v), (0...65535).contains(p) else {
                throw ConfigurationError("dhcp.proxy-port: '\(v)' is not a port")
            }
            dhcp.proxyPort = p
        default: throw ConfigurationError("unknown key '\(key)'")
        }
    }

    /// Whether a HOST:PORT listens on loopback only (127.0.0.0/8, ::1 or localhost).
    static func isLoopback(_ hostPort: String) -> Bool {
        var host = hostPort
        if host.hasPrefix("["), let end = host.firstIndex(of: "]") {
            host = String(host[host.index(after: host.startIndex)..<end])
        } else if let colon = host.lastIndex(of: ":") {
            host = String(host[..<colon])
        }
        if host == "localhost" || host == "::1" { return true }
        // An address in 127.0.0.0/8, not a name that merely starts with "127.".
        guard let ip = IPv4Address(host) else { return false }
        return ip.description.hasPrefix("127.")
    }

    /// Parses `NETWORK/LEN,pool=A-B,router=IP,dns=IP+IP,domain=D,lease=S`.
    public static func parseSubnet(_ spec: String) throws -> DHCPConfiguration.Subnet {
        let parts = spec.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard let first = parts.first, let network = IPv4Network(first) else {
            throw ConfigurationError("subnet '\(spec)': must start with a network like 198.18.0.0/24")
        }
        var s = DHCPConfiguration.Subnet(network: network, pools: [])
        for part in parts.dropFirst() {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw ConfigurationError("subnet '\(spec)': '\(part)' is not key=value") }
            switch kv[0] {
            case "pool":
                let ends = kv[1].split(separator: "-").map(String.init)
                guard ends.count == 2, let a = IPv4Address(ends[0]), let b = IPv4Address(ends[1]), a <= b else {
                    throw ConfigurationError("subnet '\(spec)': pool '\(kv[1])' must be FIRST-LAST")
                }
                guard network.contains(a), network.contains(b) else {
                    throw ConfigurationError("subnet '\(spec)': pool \(kv[1]) is not inside \(network)")
                }
                guard a != network.address, b != network.broadcast else {
                    throw ConfigurationError(
                        "subnet '\(spec)': pool \(kv[1]) includes the network or broadcast address"
                    )
                }
                s.pools.append(a...b)
            case "router":
                guard let r = IPv4Address(kv[1]) else {
                    throw ConfigurationError("subnet '\(spec)': bad router '\(kv[1])'")
                }
                s.router = r
            case "dns":
                s.dnsServers = try kv[1].split(separator: "+").map {
                    guard let ip = IPv4Address($0) else {
                        throw ConfigurationError("subnet '\(spec)': bad dns '\($0)'")
                    }
                    return ip
                }
            case "domain": s.domainName = kv[1]
            case "lease":
                guard let l = Int(kv[1]), l >= 60, l <= 365 * 86400 else {
                    throw ConfigurationError("subnet '\(spec)': lease must be 60 to 31536000 seconds")
                }
                s.leaseTime = l
            default: throw ConfigurationError("subnet '\(spec)': unknown key '\(kv[0])'")
            }
        }
        guard !s.pools.isEmpty else { throw ConfigurationError("subnet '\(spec)': needs at least one pool=FIRST-LAST") }
        return s
    }

    /// Parses `MAC=IP[,HOSTNAME]`.
    public static func parseReservation(_ spec: String) throws -> DHCPConfiguration.Reservation {
        let kv = spec.split(separator: "=", maxSplits: 1).map(String.init)
        guard kv.count == 2, let mac = MACAddress(kv[0]) else {
            throw ConfigurationError("reservation '\(spec)': must be MAC=IP[,HOSTNAME]")
        }
        let rest = kv[1].split(separator: ",", maxSplits: 1).map(String.init)
        guard let ip = IPv4Address(rest[0]) else {
            throw ConfigurationError("reservation '\(spec)': bad address '\(rest[0])'")
        }
        return DHCPConfiguration.Reservation(mac: mac, address: ip, hostname: rest.count > 1 ? rest[1] : nil)
    }

    func validate() throws {
        if agentTLSCert.isEmpty != agentTLSKey.isEmpty {
            throw ConfigurationError("agent.tls-cert and agent.tls-key go together: set both or neither")
        }
        if apiTLSCert.isEmpty != apiTLSKey.isEmpty {
            throw ConfigurationError("api.tls-cert and api.tls-key go together: set both or neither")
        }
        // Tokens cross the API in the clear without TLS: off loopback, that has to be asked for.
        if apiTLSCert.isEmpty, !apiInsecure, !Self.isLoopback(grpcListen) {
            throw ConfigurationError(
                "grpc.listen \(grpcListen) is not loopback and the API has no TLS: API tokens would cross the network in the clear. Give api.tls-cert and api.tls-key, listen on 127.0.0.1, or pass --api-insecure to accept it"
            )
        }
        if !consoleListen.isEmpty, apiTLSCert.isEmpty, !apiInsecure, !Self.isLoopback(consoleListen) {
            throw ConfigurationError(
                "console.listen \(consoleListen) is not loopback and there is no TLS: session cookies would cross the network in the clear. Give api.tls-cert and api.tls-key (the console serves them too), listen on 127.0.0.1, or pass --api-insecure to accept it"
            )
        }
        if !siteListen.isEmpty, siteLinkNamesOrDefault.isEmpty {
            throw ConfigurationError(
                "site.listen \(siteListen) is a wildcard address: give site.link-names, the names sites dial the region by"
            )
        }
        for r in dhcp.reservations where !dhcp.subnets.contains(where: { $0.network.contains(r.address) }) {
            if dhcp.mode == .full {
                throw ConfigurationError("reservation \(r.mac)=\(r.address) is in no configured subnet")
            }
        }
        var seen: [IPv4Address: MACAddress] = [:]
        for r in dhcp.reservations {
            if let other = seen[r.address], other != r.mac {
                throw ConfigurationError("address \(r.address) is reserved for both \(other) and \(r.mac)")
            }
            seen[r.address] = r.mac
        }
        if dhcp.mode == .full, !dhcp.interfaces.isEmpty, dhcp.subnets.isEmpty {
            throw ConfigurationError("dhcp.mode is full with interfaces \(dhcp.interfaces) but no dhcp.subnets")
        }
    }
}
