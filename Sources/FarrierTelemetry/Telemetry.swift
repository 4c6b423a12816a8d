import CoreMetrics
import Prometheus
import Synchronization

/// Farrier's metrics: code counts and times through swift-metrics (`Counter`, `Timer`, `Gauge`),
/// and the process's one `PrometheusCollectorRegistry` holds what they record, for the metrics
/// listener to emit. Hot paths (DHCP, TFTP) keep their own atomics, read into counters at scrape
/// time (`ScrapedCounter`).
public enum Telemetry {
    /// Every metric made after `bootstrap()` lands here.
    public static let registry = PrometheusCollectorRegistry()
    static let bootstrapped = Mutex(false)

    /// Points swift-metrics at `registry`, once per process; later calls do nothing. Metrics
    /// made before it record nowhere, so a server calls it before it builds anything.
    public static func bootstrap() {
        bootstrapped.withLock { done in
            guard !done else { return }
            MetricsSystem.bootstrap(FarrierMetricsFactory(registry: registry))
            done = true
        }
    }

    /// The exposition text (Prometheus text format 0.0.4).
    public static func emit() -> [UInt8] { registry.emitToBuffer() }
}

/// swift-metrics handlers from the registry, with the help text and buckets Farrier gives each
/// of its families (`MetricFamilies`). A library's metric gets no help line and the defaults.
struct FarrierMetricsFactory: MetricsFactory {
    let registry: PrometheusCollectorRegistry

    func descriptor(_ label: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: label, unitName: "", helpText: MetricFamilies.help[label] ?? "")
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard aggregate else { return registry.makeGauge(descriptor: descriptor(label), labels: dimensions) }
        return registry.makeValueHistogram(
            descriptor: descriptor(label),
            labels: dimensions,
            buckets: MetricFamilies.valueBuckets[label] ?? MetricFamilies.defaultValueBuckets
        )
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(
            descriptor: descriptor(label),
            labels: dimensions,
            buckets: MetricFamilies.durationBuckets[label] ?? MetricFamilies.defaultDurationBuckets
        )
    }

    func destroyCounter(_ handler: any CounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    func destroyRecorder(_ handler: any RecorderHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
        if let h = handler as? ValueHistogram { registry.unregisterValueHistogram(h) }
    }

    func destroyMeter(_ handler: any MeterHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
    }

    func destroyTimer(_ handler: any TimerHandler) {
        if let h = handler as? DurationHistogram { registry.unregisterDurationHistogram(h) }
    }
}

/// A counter fed at scrape time from a number that only grows (an atomic a hot path adds to):
/// each update adds what it grew by since the last.
public final class ScrapedCounter: Sendable {
    let counter: CoreMetrics.Counter
    let last = Mutex(0)

    public init(_ label: String, dimensions: [(String, String)] = []) {
        counter = CoreMetrics.Counter(label: label, dimensions: dimensions)
    }

    public func update(_ value: Int) {
        let grew = growth(last, to: value)
        if grew > 0 { counter.increment(by: grew) }
    }
}

/// A floating-point counter fed at scrape time from a number that only grows (CPU seconds).
public final class ScrapedSeconds: Sendable {
    let counter: CoreMetrics.FloatingPointCounter
    let last = Mutex(0.0)

    public init(_ label: String, dimensions: [(String, String)] = []) {
        counter = CoreMetrics.FloatingPointCounter(label: label, dimensions: dimensions)
    }

    public func update(_ value: Double) {
        let grew = growth(last, to: value)
        if grew > 0 { counter.increment(by: grew) }
    }
}

/// What a source that only grows grew by since the reading `last` holds, which it then holds
/// (a source that went back does not take it back, and counts as no growth).
func growth<Value: Comparable & AdditiveArithmetic & Sendable>(_ last: borrowing Mutex<Value>, to value: Value) -> Value
{
    last.withLock { last -> Value in
        let grew = value > last ? value - last : .zero
        last = max(last, value)
        return grew
    }
}

/// Gauges of one family whose label sets come and go (machines by state, site, zone and
/// project): each `set` gives every current set its value, and a set no longer there 0, so a
/// series that empties reads 0 rather than its last value.
public final class GaugeFamily: Sendable {
    let label: String
    let labelNames: [String]
    let gauges = Mutex<[[String]: CoreMetrics.Gauge]>([:])

    public init(_ label: String, labels: [String]) {
        self.label = label
        labelNames = labels
    }

    /// `values`: label values (in the order of `labels`) to the gauge's value.
    public func set(_ values: [[String]: Double]) {
        gauges.withLock { gauges in
            for (key, value) in values {
                let g =
                    gauges[key]
                    ?? CoreMetrics.Gauge(label: label, dimensions: Array(zip(labelNames, key)))
                gauges[key] = g
                g.record(value)
            }
            for (key, g) in gauges where values[key] == nil { g.record(0) }
        }
    }
}
