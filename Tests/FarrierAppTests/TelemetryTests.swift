import FarrierTelemetry
import Foundation
import TestSupport
import Testing

/// The pieces the metrics are read through. The registry is the process's own (swift-metrics
/// is bootstrapped once per process), so each test uses label values no other test uses.
@Suite struct TelemetryTests {
    static func scrape() -> String {
        Telemetry.bootstrap()
        return String(decoding: Telemetry.emit(), as: UTF8.self)
    }

    @Test func aScrapedCounterAddsWhatItsSourceGrewBy() {
        Telemetry.bootstrap()
        let tag = "test-\(UUID().uuidString.prefix(8))"
        let series = #"farrier_dhcp_requests_total{type="\#(tag)"}"#
        let counter = ScrapedCounter("farrier_dhcp_requests_total", dimensions: [("type", tag)])
        #expect(Harness.metric(Self.scrape(), series) == 0)
        counter.update(5)
        counter.update(5)
        counter.update(7)
        #expect(Harness.metric(Self.scrape(), series) == 7)
        // A source that went back (it never should) does not take the counter back with it.
        counter.update(3)
        #expect(Harness.metric(Self.scrape(), series) == 7)
        counter.update(9)
        #expect(Harness.metric(Self.scrape(), series) == 9)
        // The family's help text is Farrier's.
        #expect(Self.scrape().contains("# HELP farrier_dhcp_requests_total DHCP requests decoded, by message type\n"))
    }

    @Test func aGaugeFamilyReadsZeroForASetThatWent() {
        Telemetry.bootstrap()
        let project = "test-\(UUID().uuidString.prefix(8))"
        let family = GaugeFamily("farrier_machines", labels: ["state", "site", "zone", "project"])
        family.set([["ready", "", "", project]: 3, ["deployed", "", "", project]: 2])
        var text = Self.scrape()
        #expect(Harness.metric(text, #"farrier_machines{state="ready",site="",zone="",project="\#(project)"}"#) == 3)
        #expect(Harness.metric(text, #"farrier_machines{state="deployed",site="",zone="",project="\#(project)"}"#) == 2)
        family.set([["deployed", "", "", project]: 5])
        text = Self.scrape()
        #expect(Harness.metric(text, #"farrier_machines{state="ready",site="",zone="",project="\#(project)"}"#) == 0)
        #expect(Harness.metric(text, #"farrier_machines{state="deployed",site="",zone="",project="\#(project)"}"#) == 5)
        #expect(text.contains("# TYPE farrier_machines gauge\n"))
    }
}
