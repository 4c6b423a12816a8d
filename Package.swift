// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
]
let log: Target.Dependency = .product(name: "Logging", package: "swift-log")
let tracing: Target.Dependency = .product(name: "Tracing", package: "swift-distributed-tracing")
let lifecycle: Target.Dependency = .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
let metrics: [Target.Dependency] = [
    .product(name: "CoreMetrics", package: "swift-metrics"), .product(name: "Metrics", package: "swift-metrics"),
]

let package = Package(
    name: "farrier",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "farrier", targets: ["farrier"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        // Already built for grpc's TLS; IPMI's HMAC and AES-CBC come from it.
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        // Redfish client; NIOSSL is already built for grpc's TLS.
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        // Already built for grpc's TLS: the agent channel's certificate is made with it.
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        // The shared store for several server replicas (issue 15); SQLite stays the default.
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        // Metrics (issue 17): swift-metrics is already built for Hummingbird; swift-prometheus
        // (on it and swift-atomics) is one small module.
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // Traces (issue 17): swift-distributed-tracing is already built for Hummingbird and
        // async-http-client; swift-otel exports them over OTLP/HTTP (its gRPC exporter is left out).
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
    ],
    targets: [
        // Wire codecs: pure value types, no I/O, no dependencies (so fuzz targets compile them directly).
        .target(name: "WireSupport", swiftSettings: swiftSettings),
        // POSIX helpers shared by the server, the agent and the lab: secret files, durations,
        // process memory, random bytes (glibc's malloc controls and getrandom through a small C shim).
        .target(name: "CSystemSupport"),
        .target(name: "SystemSupport", dependencies: ["CSystemSupport"], swiftSettings: swiftSettings),
        .target(name: "DHCPWire", dependencies: ["WireSupport"], swiftSettings: swiftSettings),
        .target(name: "TFTPWire", dependencies: ["WireSupport"], swiftSettings: swiftSettings),
        // IPMI v2.0 / RMCP+: pure value types too, with swift-crypto for HMAC and AES-CBC-128.
        .target(
            name: "IPMIWire",
            dependencies: [
                "WireSupport", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),

        // The process's metrics registry: swift-metrics handlers exported as Prometheus text.
        .target(
            name: "FarrierTelemetry",
            dependencies: metrics + [.product(name: "Prometheus", package: "swift-prometheus")],
            swiftSettings: swiftSettings
        ),

        // Domain: machines, leases, timeline, store protocols, iPXE script rendering. No NIO, no DB.
        .target(name: "FarrierCore", dependencies: ["WireSupport"], swiftSettings: swiftSettings),

        // SQLite implementation of the store protocols.
        .target(
            name: "FarrierStore",
            dependencies: ["FarrierCore", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: swiftSettings
        ),

        // PostgreSQL implementation of the store protocols, for several replicas on one database.
        .target(
            name: "FarrierPostgres",
            dependencies: [
                "FarrierCore", "SystemSupport", log, .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ] + nio,
            swiftSettings: swiftSettings
        ),

        // recvmmsg/sendmmsg for the DHCP socket threads (Swift's Glibc module does not export them).
        .target(name: "CFarrierNet"),

        // Protocol servers on top of the codecs.
        .target(
            name: "DHCPServer",
            dependencies: ["DHCPWire", "FarrierCore", "CFarrierNet", log, lifecycle],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TFTPServer",
            dependencies: ["TFTPWire", "FarrierCore", "SystemSupport", log, lifecycle] + nio,
            swiftSettings: swiftSettings
        ),
        // BMC drivers: IPMI over LAN (on IPMIWire) and Redfish, behind one `BMC` interface.
        .target(
            name: "FarrierBMC",
            dependencies: [
                "IPMIWire", "FarrierCore", "SystemSupport", log,
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ] + nio,
            swiftSettings: swiftSettings
        ),
        // The lifecycle: transitions, the reconciler, agent tokens, the image repository.
        .target(
            name: "FarrierControl",
            dependencies: [
                "FarrierCore", "FarrierBMC", "SystemSupport", "WireSupport", log, lifecycle, tracing,
                .product(name: "Crypto", package: "swift-crypto"),
            ] + metrics,
            swiftSettings: swiftSettings
        ),
        // `farrier sim`: simulated machines (a Redfish service, iPXE script fetches, agents) that
        // drive a real server at fleet scale, for the scale bench and tests.
        .target(
            name: "FarrierSim",
            dependencies: [
                "FarrierCore", "FarrierAgent", "SystemSupport", "WireSupport", log,
                .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "NIOHTTP1", package: "swift-nio"),
            ] + nio,
            swiftSettings: swiftSettings
        ),
        // The deploy agent that runs in the Farrier ramdisk: blocking I/O, and one event loop for
        // its pinned TLS tunnel to the server.
        .target(
            name: "FarrierAgent",
            dependencies: [
                "FarrierCore", "SystemSupport", "WireSupport", "CFarrierNet",
                .product(name: "Crypto", package: "swift-crypto"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ] + nio,
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FarrierHTTP",
            dependencies: [
                "FarrierCore", "FarrierControl", log, .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"), tracing,
            ] + nio + metrics,
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FarrierAPI",
            dependencies: [
                "FarrierCore", "FarrierBMC", "FarrierControl", "FarrierSite", "SystemSupport", "WireSupport", log,
                lifecycle,
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCInProcessTransport", package: "grpc-swift-2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"), tracing,
            ] + nio + metrics,
            exclude: ["Generated/README.md"],
            swiftSettings: swiftSettings
        ),

        // A site's boot services (issue 16): the cache of the region's content-addressed files, the sites' CA.
        .target(
            name: "FarrierSite",
            dependencies: [
                "FarrierCore", "FarrierHTTP", "SystemSupport", "WireSupport", log,
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "NIOHTTP1", package: "swift-nio"),
            ] + nio,
            swiftSettings: swiftSettings
        ),

        // The web console (issue 17): server-rendered pages over the API, called in process as
        // the logged-in user.
        .target(
            name: "FarrierConsole",
            dependencies: [
                "FarrierAPI", "FarrierCore", "FarrierControl", "SystemSupport", log, lifecycle,
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCInProcessTransport", package: "grpc-swift-2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ] + nio,
            swiftSettings: swiftSettings
        ),

        // Wiring: configuration, logging, the service group; and the lab harness.
        .target(
            name: "FarrierApp",
            dependencies: [
                "FarrierCore", "FarrierStore", "FarrierPostgres", "DHCPServer", "TFTPServer", "TFTPWire", "FarrierHTTP",
                "FarrierAPI", "FarrierBMC", "FarrierControl",
                "FarrierSite", "FarrierTelemetry", "FarrierConsole",
                "SystemSupport", "WireSupport", log, lifecycle,
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"), tracing,
                .product(name: "OTel", package: "swift-otel"),
            ] + nio + metrics,
            swiftSettings: swiftSettings
        ),
        .target(
            name: "FarrierLab",
            dependencies: ["FarrierCore", "SystemSupport", log],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "farrier",
            dependencies: [
                "FarrierApp", "FarrierLab", "FarrierAPI", "FarrierCore", "FarrierBMC", "FarrierAgent", "FarrierSim",
                "WireSupport",
                "FarrierSite",
                "SystemSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // Tests.
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: swiftSettings),
        .testTarget(
            name: "DHCPWireTests",
            dependencies: ["DHCPWire", "WireSupport"],
            resources: [.copy("Fixtures")],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "FarrierCoreTests", dependencies: ["FarrierCore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "SystemSupportTests",
            dependencies: ["SystemSupport", "WireSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FarrierAgentTests",
            dependencies: ["FarrierAgent", "FarrierCore", "TestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FarrierControlTests",
            dependencies: [
                "FarrierControl", "FarrierCore", "FarrierStore", "FarrierBMC", "FarrierPostgres", "FarrierTelemetry",
                "TestSupport", log,
                tracing, .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FarrierSiteTests",
            dependencies: [
                "FarrierSite", "FarrierHTTP", "TestSupport", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FarrierBMCTests",
            dependencies: ["FarrierBMC", "FarrierCore", .product(name: "NIOEmbedded", package: "swift-nio")] + nio,
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "IPMIWireTests", dependencies: ["IPMIWire", "WireSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "TFTPWireTests", dependencies: ["TFTPWire", "WireSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "TFTPServerTests", dependencies: ["TFTPServer", "TFTPWire"], swiftSettings: swiftSettings),
        .testTarget(
            name: "DHCPServerTests",
            dependencies: ["DHCPServer", "DHCPWire", "FarrierCore", "FarrierStore", "WireSupport", log, lifecycle],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FarrierStoreTests",
            dependencies: [
                "FarrierStore", "FarrierPostgres", "FarrierCore", "TestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FarrierAppTests",
            dependencies: [
                "FarrierApp", "FarrierAPI", "FarrierStore", "FarrierCore", "DHCPServer", "FarrierHTTP", "TFTPServer",
                "TFTPWire", "FarrierControl", log,
                "FarrierSite", "FarrierTelemetry", "TestSupport",
                "FarrierBMC", .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FarrierAPITests",
            dependencies: [
                "FarrierAPI", "FarrierControl", "FarrierCore", "FarrierStore", "FarrierBMC",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCInProcessTransport", package: "grpc-swift-2"), tracing,
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FarrierHTTPTests",
            dependencies: [
                "FarrierHTTP", "FarrierControl", "FarrierCore", "FarrierStore", "FarrierBMC", log,
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "BMCIntegrationTests",
            dependencies: ["FarrierBMC", "TestSupport"],
            exclude: ["redfish_strict.py", "lossy_udp_proxy.py"],
            swiftSettings: swiftSettings
        ),
        // The server binary with its real peers (ipmi_sim, sushy-emulator, PostgreSQL, curl): the
        // control plane, the CLI, the agent, image serving, replicas and the simulator.
        .testTarget(
            name: "ServerIntegrationTests",
            dependencies: ["TestSupport"],
            exclude: ["console_browser.py"],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "IntegrationTests", dependencies: ["TestSupport"], swiftSettings: swiftSettings),
    ]
)
