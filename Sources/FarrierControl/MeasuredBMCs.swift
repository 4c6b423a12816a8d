import CoreMetrics
import FarrierBMC
import FarrierCore
import Metrics
import Tracing

/// A BMC provider whose drivers time every operation and count its failures, by driver and
/// operation, for the metrics. A site whose link is down, and a cancelled call, are not the
/// BMC's failures: they are timed but not counted as errors.
public struct MeasuredBMCs: BMCProvider {
    let inner: any BMCProvider

    public init(_ inner: any BMCProvider) { self.inner = inner }

    public func bmc(
        machineID: String,
        reference: BMCReference,
        sealedPassword: [UInt8],
        site: String?
    ) async throws -> any BMC {
        let bmc = try await inner.bmc(
            machineID: machineID,
            reference: reference,
            sealedPassword: sealedPassword,
            site: site
        )
        return MeasuredBMC(inner: bmc, driver: reference.driver.rawValue)
    }

    public func forget(machineID: String) async { await inner.forget(machineID: machineID) }
}

struct MeasuredBMC: BMC {
    let inner: any BMC
    let driver: String

    var address: String { inner.address }

    /// Times the operation for the metrics; in a trace (a step's BMC action, an API call), it is
    /// a client span too. The power sync's reads run in no trace and make no span.
    func measured<T: Sendable>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        guard InstrumentationContext.current != nil else { return try await timed(operation, body) }
        return try await withSpan("bmc.\(operation)", ofKind: .client) { span in
            span.attributes["farrier.bmc.driver"] = driver
            span.attributes["farrier.bmc.operation"] = operation
            span.attributes["server.address"] = inner.address
            return try await timed(operation, body)
        }
    }

    func timed<T: Sendable>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        let dimensions = [("driver", driver), ("operation", operation)]
        let began = ContinuousClock.now
        defer {
            CoreMetrics.Timer(label: "farrier_bmc_operation_duration_seconds", dimensions: dimensions)
                .record(duration: ContinuousClock.now - began)
        }
        do {
            return try await body()
        } catch {
            if !(error is SiteLinkAway), !(error is CancellationError), !Task.isCancelled {
                CoreMetrics.Counter(label: "farrier_bmc_operation_errors_total", dimensions: dimensions).increment()
            }
            throw error
        }
    }

    func info() async throws -> BMCInfo { try await measured("info") { try await inner.info() } }
    func powerState() async throws -> PowerState { try await measured("power-state") { try await inner.powerState() } }
    func power(_ action: PowerAction) async throws { try await measured("power") { try await inner.power(action) } }
    func setBootOverride(_ override: BootOverride) async throws {
        try await measured("set-boot") { try await inner.setBootOverride(override) }
    }
    func bootOverride() async throws -> BootOverride? {
        try await measured("boot-override") { try await inner.bootOverride() }
    }
    func openConsole() async throws -> any ConsoleSession {
        try await measured("open-console") { try await inner.openConsole() }
    }
    func close() async { await inner.close() }
}
