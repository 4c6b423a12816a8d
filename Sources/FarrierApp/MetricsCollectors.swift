import CoreMetrics
import DHCPServer
import FarrierCore
import FarrierTelemetry
import Foundation
import Logging
import Synchronization
import SystemSupport
import TFTPServer

/// What a scrape reads before the registry is emitted: the boot path's atomics, the process,
/// and (the region's) the fleet from the store.
struct ScrapeCollectors: Sendable {
    var boot: BootPathMetrics?
    var process = ProcessMetrics()
    var fleet: FleetMetrics?

    /// The exposition text, after every collector has read what it reads.
    func scrape() async -> [UInt8] {
        boot?.collect()
        process.collect()
        await fleet?.collect()
        return Telemetry.emit()
    }
}

/// DHCP, TFTP and discovery counters, read from the hot path's atomics at scrape time.
final class BootPathMetrics: Sendable {
    let counters: [(ScrapedCounter, @Sendable () -> Int)]
    let tftpActive = CoreMetrics.Gauge(label: "farrier_tftp_transfers_active")
    let tftp: TFTPMetrics
    let dhcp: DHCPService
    let poolSize = GaugeFamily("farrier_dhcp_pool_addresses", labels: ["subnet"])
    let poolLeased = GaugeFamily("farrier_dhcp_pool_leased_addresses", labels: ["subnet"])

    init(dhcp service: DHCPService, tftp: TFTPMetrics, recorder: TimelineRecorder) {
        let dhcp = service.metrics
        self.dhcp = service
        self.tftp = tftp
        func c(
            _ label: String,
            _ dimensions: [(String, String)] = [],
            _ read: @escaping @Sendable () -> Int
        )
            -> (ScrapedCounter, @Sendable () -> Int)
        {
            (ScrapedCounter(label, dimensions: dimensions), read)
        }
        counters = [
            c("farrier_discovery_refused_total") { recorder.refusedDiscoveries.load(ordering: .relaxed) },
            c("farrier_dhcp_packets_received_total") { dhcp.received.load(ordering: .relaxed) },
            c("farrier_dhcp_packets_malformed_total") { dhcp.malformed.load(ordering: .relaxed) },
            c("farrier_dhcp_packets_dropped_total") { dhcp.dropped.load(ordering: .relaxed) },
            c("farrier_dhcp_requests_total", [("type", "discover")]) { dhcp.discovers.load(ordering: .relaxed) },
            c("farrier_dhcp_requests_total", [("type", "request")]) { dhcp.requests.load(ordering: .relaxed) },
            c("farrier_dhcp_requests_total", [("type", "decline")]) { dhcp.declines.load(ordering: .relaxed) },
            c("farrier_dhcp_requests_total", [("type", "release")]) { dhcp.releases.load(ordering: .relaxed) },
            c("farrier_dhcp_requests_total", [("type", "inform")]) { dhcp.informs.load(ordering: .relaxed) },
            c("farrier_dhcp_requests_total", [("type", "other")]) { dhcp.otherTypes.load(ordering: .relaxed) },
            c("farrier_dhcp_offers_total") { dhcp.offers.load(ordering: .relaxed) },
            c("farrier_dhcp_acks_total") { dhcp.acks.load(ordering: .relaxed) },
            c("farrier_dhcp_naks_total") { dhcp.naks.load(ordering: .relaxed) },
            c("farrier_dhcp_lease_commit_failures_total") { dhcp.commitFailures.load(ordering: .relaxed) },
            c("farrier_dhcp_send_errors_total") { dhcp.sendErrors.load(ordering: .relaxed) },
            c("farrier_dhcp_pool_exhausted_total") { dhcp.poolExhausted.load(ordering: .relaxed) },
            c("farrier_tftp_requests_total") { tftp.requests.load(ordering: .relaxed) },
            c("farrier_tftp_packets_malformed_total") { tftp.malformed.load(ordering: .relaxed) },
            c("farrier_tftp_transfers_completed_total") { tftp.completed.load(ordering: .relaxed) },
            c("farrier_tftp_transfers_failed_total") { tftp.failed.load(ordering: .relaxed) },
            c("farrier_tftp_requests_refused_total") { tftp.refused.load(ordering: .relaxed) },
            c("farrier_tftp_retransmissions_total") { tftp.retransmissions.load(ordering: .relaxed) },
            c("farrier_tftp_refused_per_client_total") { tftp.refusedPerClient.load(ordering: .relaxed) },
            c("farrier_tftp_bytes_sent_total") { tftp.bytesSent.load(ordering: .relaxed) },
            c("farrier_tftp_poll_hits_total") { tftp.pollHits.load(ordering: .relaxed) },
            c("farrier_tftp_poll_misses_total") { tftp.pollMisses.load(ordering: .relaxed) },
        ]
        collect()
    }

    func collect() {
        for (counter, read) in counters { counter.update(read()) }
        tftpActive.record(tftp.active.load(ordering: .relaxed))
        var size: [[String]: Double] = [:]
        var leased: [[String]: Double] = [:]
        for p in dhcp.poolUsage() {
            size[["\(p.network)"], default: 0] += Double(p.size)
            leased[["\(p.network)"], default: 0] += Double(p.leased)
        }
        poolSize.set(size)
        poolLeased.set(leased)
    }
}

/// The process's own numbers, named as Prometheus's process collectors name them, plus what
/// malloc holds (resident memory is mostly malloc's arenas; see `ProcessMemory`).
struct ProcessMetrics: Sendable {
    let rss = CoreMetrics.Gauge(label: "process_resident_memory_bytes")
    let peak = CoreMetrics.Gauge(label: "farrier_process_resident_memory_peak_bytes")
    let heapInUse = CoreMetrics.Gauge(label: "farrier_heap_in_use_bytes")
    let heapArenas = CoreMetrics.Gauge(label: "farrier_heap_arena_bytes")
    let openFDs = CoreMetrics.Gauge(label: "process_open_fds")
    let maxFDs = CoreMetrics.Gauge(label: "process_max_fds")
    let cpu = ScrapedSeconds("process_cpu_seconds_total")

    func collect() {
        if let r = ProcessMemory.resident() {
            rss.record(r.current)
            peak.record(r.peak)
        }
        let heap = ProcessMemory.heap()
        heapInUse.record(heap.inUse)
        heapArenas.record(heap.arenas)
        if let fds = ProcessMemory.fileDescriptors() {
            openFDs.record(fds.open)
            maxFDs.record(fds.limit)
        }
        var usage = rusage()
        if getrusage(RUSAGE_SELF.rawValue, &usage) == 0 {
            cpu.update(
                Double(usage.ru_utime.tv_sec) + Double(usage.ru_stime.tv_sec)
                    + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
            )
        }
    }
}

/// Machines by state, site, zone and project, counted by the store at scrape time (one
/// grouped query, at most every `interval`: several scrapers, or one scraping every second,
/// cost the database no more). Every replica reads the same shared store: sum over one
/// replica, or take the largest over all (`max without (instance)`).
final class FleetMetrics: Sendable {
    let store: any MachineStore
    let logger: Logger
    let interval: Duration
    let machines = GaugeFamily("farrier_machines", labels: ["state", "site", "zone", "project"])
    let lastRead = Mutex<ContinuousClock.Instant?>(nil)

    init(store: any MachineStore, logger: Logger, interval: Duration = .seconds(5)) {
        self.store = store
        self.logger = logger
        self.interval = interval
    }

    func collect() async {
        let now = ContinuousClock.now
        let due = lastRead.withLock { last -> Bool in
            if let last, now - last < interval { return false }
            last = now
            return true
        }
        guard due else { return }
        do {
            var values: [[String]: Double] = [:]
            for c in try await store.machineCounts() {
                values[[c.state.rawValue, c.site ?? "", c.zone, c.project ?? ""], default: 0] += Double(c.count)
            }
            machines.set(values)
        } catch {
            // The rest of the scrape still answers; the gauges keep their last reading.
            logger.warning("metrics: cannot count machines", metadata: ["error": "\(error)"])
        }
    }
}
