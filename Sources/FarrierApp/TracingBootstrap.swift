import FarrierControl
import FarrierCore
import Logging
import OTel
import ServiceLifecycle
import Synchronization
import Tracing

/// The process's tracer: OpenTelemetry's, exporting over OTLP/HTTP (protobuf) when an endpoint
/// is set. Without one it still gives every span real IDs, sampled out, so the logs and the
/// stored steps carry trace IDs and nothing is recorded or sent.
public enum FarrierTracing {
    static let bootstrapped = Mutex(false)

    /// The OTLP/HTTP traces URL for `endpoint`: a base URL gets `/v1/traces`, as the OTLP
    /// specification's `OTEL_EXPORTER_OTLP_ENDPOINT` does (swift-otel uses an endpoint set in
    /// code as it is).
    public static func tracesURL(_ endpoint: String) -> String {
        var base = endpoint
        while base.hasSuffix("/") { base.removeLast() }
        return base.hasSuffix("/v1/traces") ? base : base + "/v1/traces"
    }

    /// Refuses what swift-otel would take and Farrier cannot serve: an exporter protocol other
    /// than http/protobuf (the gRPC exporter is not built in; OTLP/JSON would get its IDs wrong).
    public static func check(environment: [String: String]) throws {
        for key in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
            if let v = environment[key], !v.isEmpty, v != "http/protobuf" {
                throw ConfigurationError("\(key)=\(v): Farrier exports traces over OTLP http/protobuf only")
            }
        }
    }

    /// Bootstraps tracing for the process, once; returns the exporter's service, to run first
    /// in the service group (it stops last, and flushes what the others recorded). Nil when
    /// already bootstrapped, or when OpenTelemetry is turned off (`OTEL_SDK_DISABLED`).
    public static func bootstrap(
        _ c: ServerConfiguration,
        environment: [String: String],
        logger: Logger
    ) throws -> (any Service)? {
        try check(environment: environment)
        let first = bootstrapped.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return nil }
        var config = OTel.Configuration.default
        config.serviceName = c.otelServiceName
        config.resourceAttributes["service.instance.id"] = c.control.replica
        config.diagnosticLogger = .custom(Logger(label: "farrier.otel"))
        // Export failures and dropped spans are warnings. (Its warnings about a carrier it
        // could not read quote it; only checked W3C fields ever reach it, never a token.)
        config.diagnosticLogLevel = .warning
        // Farrier's metrics are Prometheus's and its logs are lines: only traces go here.
        config.metrics.enabled = false
        config.logs.enabled = false
        config.traces.enabled = true
        if c.otelEndpoint.isEmpty {
            // IDs for every span, and none recorded, whatever a caller's flags say.
            config.traces.exporter = .none
            config.traces.sampler = .traceIDRatio(ratio: 0)!
        } else {
            config.traces.exporter = .otlp
            config.traces.otlpExporter.endpoint = tracesURL(c.otelEndpoint)
            config.traces.otlpExporter.protocol = .httpProtobuf
            config.traces.sampler = .parentBasedTraceIDRatio(ratio: c.otelSampleRatio)!
        }
        do {
            // Traces only: `OTel.bootstrap` would bootstrap logging and metrics too when an
            // OTEL_SDK_DISABLED=false in the environment turns them back on (both are Farrier's).
            let backend = try OTel.makeTracingBackend(configuration: config)
            InstrumentationSystem.bootstrap(backend.factory)
            let service = backend.service
            if !c.otelEndpoint.isEmpty {
                logger.info(
                    "exporting traces",
                    metadata: [
                        "otel.endpoint": "\(tracesURL(c.otelEndpoint))", "otel.sample-ratio": "\(c.otelSampleRatio)",
                    ]
                )
            }
            return service
        } catch {
            logger.warning("tracing is off", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// The logging metadata of the current span: `trace_id` and `span_id` (none outside a span).
    public static let loggingMetadata: Logger.MetadataProvider = {
        let otel = OTel.makeLoggingMetadataProvider()
        return Logger.MetadataProvider {
            var m = otel.get()
            m.removeValue(forKey: "trace_flags")
            return m
        }
    }()
}
