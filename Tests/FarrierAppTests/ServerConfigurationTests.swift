import DHCPServer
import FarrierApp
import FarrierControl
import FarrierCore
import FarrierHTTP
import Foundation
import Logging
import TFTPServer
import TFTPWire
import Testing

@Suite struct ServerConfigurationTests {
    func withFile(_ text: String, _ body: (String) throws -> Void) throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("farrier-\(UUID()).yaml").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        try body(path)
    }

    @Test func defaultsKeepDHCPOff() throws {
        let c = try ServerConfiguration.load(file: nil, environment: [:], flags: [:])
        #expect(c.dhcp.interfaces.isEmpty)
        #expect(c.grpcListen == "127.0.0.1:7700")
        #expect(c.tftpRoot == "/var/lib/farrier/boot")
    }

    @Test func flagsBeatEnvironmentBeatsFile() throws {
        try withFile(
            """
            data-dir: /from/file
            log-level: debug
            http:
              listen: 1.2.3.4:1
            dhcp:
              mode: full
              interfaces: [br0]
              subnets:
                - network: 198.18.0.0/24
                  pool: 198.18.0.100-198.18.0.199
                  router: 198.18.0.1
                  dns: [198.18.0.1, 198.18.0.2]
                  lease-time: 600
              reservations:
                - mac: 52:54:00:00:00:09
                  address: 198.18.0.9
                  hostname: nine
            """
        ) { path in
            let c = try ServerConfiguration.load(
                file: path,
                environment: ["FARRIER_DATA_DIR": "/from/env", "FARRIER_HTTP_LISTEN": "5.6.7.8:2"],
                flags: ["data-dir": ["/from/flag"]]
            )
            #expect(c.dataDir == "/from/flag")
            #expect(c.http.listen == "5.6.7.8:2")
            #expect(c.logLevel == .debug)
            #expect(c.dhcp.interfaces == ["br0"])
            #expect(c.dhcp.subnets.first?.leaseTime == 600)
            #expect(c.dhcp.subnets.first?.dnsServers.count == 2)
            #expect(c.dhcp.reservations.first?.hostname == "nine")
        }
    }

    /// What the server's DHCP hands out, for the networks' check: pools and reservations in
    /// full mode on an interface; nothing in proxy mode or with no interface.
    @Test func theDHCPAddressSpaceNetworksKeepClearOf() throws {
        var c = try ServerConfiguration.load(
            file: nil,
            environment: [:],
            flags: [
                "dhcp.interfaces": ["br0"],
                "dhcp.subnets": ["198.18.0.0/24,pool=198.18.0.100-198.18.0.199,pool=198.18.0.220-198.18.0.229"],
                "dhcp.reservations": ["52:54:00:18:00:07=198.18.0.7"],
            ]
        )
        let space = FarrierServer.dhcpAddressSpace(c.dhcp)
        #expect(space.pools.map(\.description) == ["198.18.0.100-198.18.0.199", "198.18.0.220-198.18.0.229"])
        #expect(space.reservations == [IPAddress("198.18.0.7")!: "52:54:00:18:00:07"])
        c.dhcp.mode = .proxy
        #expect(FarrierServer.dhcpAddressSpace(c.dhcp) == DHCPAddressSpace())
        c.dhcp.mode = .full
        c.dhcp.interfaces = []
        #expect(FarrierServer.dhcpAddressSpace(c.dhcp) == DHCPAddressSpace())
    }

    @Test func everyKeyHasAnEnvironmentVariable() {
        #expect(
            ServerConfiguration.keys.first(where: { $0.key == "dhcp.proxy-port" })?.env == "FARRIER_DHCP_PROXY_PORT"
        )
        #expect(
            ServerConfiguration.keys.first(where: { $0.key == "tftp.max-transfers" })?.env
                == "FARRIER_TFTP_MAX_TRANSFERS"
        )
        #expect(ServerConfiguration.keys.count == 47)
        #expect(
            ServerConfiguration.keys.first(where: { $0.key == "otel.sample-ratio" })?.env == "FARRIER_OTEL_SAMPLE_RATIO"
        )
        #expect(
            ServerConfiguration.keys.first(where: { $0.key == "metrics.token-file" })?.env
                == "FARRIER_METRICS_TOKEN_FILE"
        )
        #expect(
            ServerConfiguration.keys.first(where: { $0.key == "commission.lldp-wait" })?.env
                == "FARRIER_COMMISSION_LLDP_WAIT"
        )
        #expect(
            ServerConfiguration.keys.first(where: { $0.key == "power-sync.interval" })?.env
                == "FARRIER_POWER_SYNC_INTERVAL"
        )
        #expect(ServerConfiguration.keys.first(where: { $0.key == "memory.arenas" })?.env == "FARRIER_MEMORY_ARENAS")
        #expect(
            ServerConfiguration.keys.first(where: { $0.key == "lifecycle.max-workers" })?.env
                == "FARRIER_LIFECYCLE_MAX_WORKERS"
        )
        #expect(ServerConfiguration.keys.first(where: { $0.key == "database.url" })?.env == "FARRIER_DATABASE_URL")
        #expect(ServerConfiguration.keys.first(where: { $0.key == "agent.tls-cert" })?.env == "FARRIER_AGENT_TLS_CERT")
    }

    @Test func tftpClientLimitsAndImageCapAreBounded() throws {
        let d = try ServerConfiguration.load(file: nil, environment: [:], flags: [:])
        #expect(d.tftp.maxTransfersPerClient == 4 && d.tftp.limits.maxTimeoutSeconds == 10)
        #expect(d.imageMaxVirtualSize == 256 << 30)
        let c = try ServerConfiguration.load(
            file: nil,
            environment: ["FARRIER_TFTP_MAX_TIMEOUT": "30", "FARRIER_IMAGES_MAX_VIRTUAL_SIZE": "8"],
            flags: ["tftp.max-transfers-per-client": ["2"]]
        )
        #expect(
            c.tftp.maxTransfersPerClient == 2 && c.tftp.limits.maxTimeoutSeconds == 30
                && c.imageMaxVirtualSize == 8 << 30
        )
        for (key, value) in [
            ("tftp.max-timeout", "256"), ("tftp.max-transfers-per-client", "0"), ("images.max-virtual-size", "x"),
        ] {
            let error = #expect(throws: (any Error).self) {
                try ServerConfiguration.load(file: nil, environment: [:], flags: [key: [value]])
            }
            #expect("\(error.map { "\($0)" } ?? "")".contains(key), "\(key)=\(value): \(String(describing: error))")
        }
    }

    /// Traces (issue 17 point 3): exported only when an endpoint is set, to its /v1/traces, over
    /// http/protobuf; anything else is refused with the key that was wrong.
    @Test func otelSettingsAreCheckedAndTheTracesPathAdded() throws {
        let d = try ServerConfiguration.load(file: nil, environment: [:], flags: [:])
        #expect(d.otelEndpoint == "" && d.otelServiceName == "farrier" && d.otelSampleRatio == 1)
        let c = try ServerConfiguration.load(
            file: nil,
            environment: ["FARRIER_OTEL_ENDPOINT": "http://collector:4318", "FARRIER_OTEL_SAMPLE_RATIO": "0.25"],
            flags: ["otel.service-name": ["farrier-eu"]]
        )
        #expect(
            c.otelEndpoint == "http://collector:4318" && c.otelSampleRatio == 0.25 && c.otelServiceName == "farrier-eu"
        )
        #expect(FarrierTracing.tracesURL("http://collector:4318") == "http://collector:4318/v1/traces")
        #expect(FarrierTracing.tracesURL("https://c:4318/") == "https://c:4318/v1/traces")
        #expect(FarrierTracing.tracesURL("http://c:4318/v1/traces") == "http://c:4318/v1/traces")
        for (key, value) in [
            ("otel.endpoint", "collector:4318"), ("otel.endpoint", "grpc://c:4317"), ("otel.sample-ratio", "1.5"),
            ("otel.sample-ratio", "x"), ("otel.service-name", ""),
        ] {
            let error = #expect(throws: (any Error).self) {
                try ServerConfiguration.load(file: nil, environment: [:], flags: [key: [value]])
            }
            #expect("\(error.map { "\($0)" } ?? "")".contains(key), "\(key)=\(value): \(String(describing: error))")
        }
        // The gRPC exporter is not built in, and OTLP/JSON would send the IDs wrong.
        #expect(throws: Never.self) {
            try FarrierTracing.check(environment: ["OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"])
        }
        for (key, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ] {
            let error = #expect(throws: ConfigurationError.self) { try FarrierTracing.check(environment: [key: value]) }
            #expect(error?.description.contains(key) == true)
        }
    }

    /// No database URL: SQLite in the data directory; a postgres:// URL from any layer; anything
    /// else is refused with what was expected.
    @Test func databaseURLSelectsPostgres() throws {
        #expect(try ServerConfiguration.load(file: nil, environment: [:], flags: [:]).databaseURL == "")
        let url = "postgres://farrier:pw@127.0.0.1:5432/farrier?sslmode=disable"
        #expect(
            try ServerConfiguration.load(file: nil, environment: ["FARRIER_DATABASE_URL": url], flags: [:]).databaseURL
                == url
        )
        #expect(
            try ServerConfiguration.load(file: nil, environment: [:], flags: ["database.url": [url]]).databaseURL == url
        )
        let error = #expect(throws: (any Error).self) {
            try ServerConfiguration.load(file: nil, environment: ["FARRIER_DATABASE_URL": "mysql://x@y/z"], flags: [:])
        }
        #expect("\(error!)".contains("database.url: expected postgres://"))
    }

    @Test func busyPollIsMicrosecondsWithinBounds() throws {
        let c = try ServerConfiguration.load(file: nil, environment: ["FARRIER_TFTP_BUSY_POLL": "50"], flags: [:])
        #expect(c.tftp.busyPoll == .microseconds(50))
        #expect(try ServerConfiguration.load(file: nil, environment: [:], flags: [:]).tftp.busyPoll == .zero)
        #expect(
            try ServerConfiguration.load(file: nil, environment: [:], flags: ["tftp.busy-poll": ["200"]]).tftp.busyPoll
                == .microseconds(200)
        )
        let error = #expect(throws: (any Error).self) {
            try ServerConfiguration.load(file: nil, environment: ["FARRIER_TFTP_BUSY_POLL": "-1"], flags: [:])
        }
        #expect("\(error!)".contains("tftp.busy-poll: '-1' is not a number of microseconds"))
    }

    @Test func commitDelayIsMicrosecondsWithinBounds() throws {
        #expect(
            try ServerConfiguration.load(file: nil, environment: [:], flags: [:]).dhcp.commitDelay == .milliseconds(8)
        )
        let c = try ServerConfiguration.load(file: nil, environment: ["FARRIER_DHCP_COMMIT_DELAY": "0"], flags: [:])
        #expect(c.dhcp.commitDelay == .zero)
        #expect(
            try ServerConfiguration.load(file: nil, environment: [:], flags: ["dhcp.commit-delay": ["500"]]).dhcp
                .commitDelay == .microseconds(500)
        )
        let error = #expect(throws: (any Error).self) {
            try ServerConfiguration.load(file: nil, environment: [:], flags: ["dhcp.commit-delay": ["200000"]])
        }
        #expect("\(error!)".contains("dhcp.commit-delay: '200000' is not a number of microseconds"))
    }

    @Test func memorySettingsHaveDefaultsAndBounds() throws {
        let d = try ServerConfiguration.load(file: nil, environment: [:], flags: [:])
        #expect(d.memoryArenas == 2)
        #expect(d.memoryTrimInterval == .seconds(30))
        let c = try ServerConfiguration.load(
            file: nil,
            environment: ["FARRIER_MEMORY_ARENAS": "0"],
            flags: ["memory.trim-interval": ["0"]]
        )
        #expect(c.memoryArenas == 0)
        #expect(c.memoryTrimInterval == .zero)
        // The power sync: every 300 s, 16 reads at once, unless told otherwise.
        #expect(d.control.powerSyncInterval == .seconds(300) && d.control.powerSyncConcurrency == 16)
        let p = try ServerConfiguration.load(
            file: nil,
            environment: ["FARRIER_POWER_SYNC_INTERVAL": "0"],
            flags: ["power-sync.concurrency": ["64"]]
        )
        #expect(p.control.powerSyncInterval == .zero && p.control.powerSyncConcurrency == 64)
        // LLDP: not listened for unless asked.
        #expect(d.control.lldpWait == .zero)
        let l = try ServerConfiguration.load(file: nil, environment: ["FARRIER_COMMISSION_LLDP_WAIT": "35"], flags: [:])
        #expect(l.control.lldpWait == .seconds(35))
        for (key, value, message) in [
            ("memory.arenas", "65", "memory.arenas: '65' is not a number from 0"),
            ("memory.trim-interval", "-1", "memory.trim-interval: '-1' is not a number of seconds"),
            ("power-sync.interval", "86401", "power-sync.interval: '86401' is not a number of seconds from 0 (off)"),
            ("power-sync.concurrency", "0", "power-sync.concurrency: '0' is not a number from 1 to 1000"),
            (
                "commission.lldp-wait", "301",
                "commission.lldp-wait: '301' is not a number of seconds from 0 (off) to 300"
            ),
        ] {
            let error = #expect(throws: (any Error).self) {
                try ServerConfiguration.load(file: nil, environment: [:], flags: [key: [value]])
            }
            #expect("\(error!)".contains(message))
        }
    }

    @Test(arguments: [
        ("10.0.0.0/24", "needs at least one pool"),
        ("10.0.0.0/24,pool=10.0.1.1-10.0.1.9", "is not inside"),
        ("10.0.0.0/24,pool=10.0.0.0-10.0.0.9", "network or broadcast"),
        ("10.0.0.0/24,pool=10.0.0.9-10.0.0.1", "FIRST-LAST"),
        ("10.0.0.0/24,pool=10.0.0.2-10.0.0.9,lease=5", "lease must be"),
        ("nonsense", "must start with a network"),
    ])
    func badSubnetsGetPreciseErrors(_ spec: String, _ message: String) {
        let error = #expect(throws: (any Error).self) { try ServerConfiguration.parseSubnet(spec) }
        #expect("\(error!)".contains(message))
    }

    @Test func unknownYAMLKeyIsRejected() throws {
        try withFile("dhcp:\n  moed: full\n") { path in
            let error = #expect(throws: (any Error).self) {
                try ServerConfiguration.load(file: path, environment: [:], flags: [:])
            }
            #expect("\(error!)".contains("unknown key 'dhcp.moed'"))
        }
    }

    @Test func conflictingReservationsAreRejected() {
        #expect(throws: (any Error).self) {
            try ServerConfiguration.load(
                file: nil,
                environment: [:],
                flags: [
                    "dhcp.subnets": ["10.0.0.0/24,pool=10.0.0.2-10.0.0.9"],
                    "dhcp.reservations": ["52:54:00:00:00:01=10.0.0.5", "52:54:00:00:00:02=10.0.0.5"],
                ]
            )
        }
    }
}

@Suite struct APIListenerTests {
    @Test func offLoopbackWithoutTLSRefusesToStartUnlessInsecureIsAsked() throws {
        let error = #expect(throws: (any Error).self) {
            try ServerConfiguration.load(file: nil, environment: [:], flags: ["grpc.listen": ["0.0.0.0:7700"]])
        }
        #expect("\(error.map { "\($0)" } ?? "")".contains("--api-insecure"), "\(String(describing: error))")
        #expect(throws: (any Error).self) {
            try ServerConfiguration.load(file: nil, environment: [:], flags: ["grpc.listen": ["[::]:7700"]])
        }
        let insecure = try ServerConfiguration.load(
            file: nil,
            environment: [:],
            flags: ["grpc.listen": ["0.0.0.0:7700"], "api.insecure": ["true"]]
        )
        #expect(insecure.apiInsecure)
        for loopback in ["127.0.0.1:7700", "localhost:7700", "[::1]:7700", "127.0.0.9:1"] {
            #expect(throws: Never.self) {
                try ServerConfiguration.load(file: nil, environment: [:], flags: ["grpc.listen": [loopback]])
            }
        }
    }
}

@Suite struct SiteLinkListenerTests {
    @Test func offByDefaultAndNamedForWildcards() throws {
        let none = try ServerConfiguration.load(file: nil, environment: [:], flags: [:])
        #expect(none.siteListen.isEmpty)
        let one = try ServerConfiguration.load(file: nil, environment: [:], flags: ["site.listen": ["10.1.2.3:7710"]])
        #expect(one.siteLinkNamesOrDefault == ["10.1.2.3"])
        let error = #expect(throws: (any Error).self) {
            try ServerConfiguration.load(file: nil, environment: [:], flags: ["site.listen": ["0.0.0.0:7710"]])
        }
        #expect("\(error.map { "\($0)" } ?? "")".contains("site.link-names"), "\(String(describing: error))")
        let named = try ServerConfiguration.load(
            file: nil,
            environment: ["FARRIER_SITE_LINK_NAMES": "region.example.net, 10.1.2.3"],
            flags: ["site.listen": ["0.0.0.0:7710"]]
        )
        #expect(named.siteLinkNamesOrDefault == ["region.example.net", "10.1.2.3"])
        #expect(throws: (any Error).self) {
            try ServerConfiguration.load(file: nil, environment: [:], flags: ["site.listen": ["nowhere"]])
        }
    }
}
