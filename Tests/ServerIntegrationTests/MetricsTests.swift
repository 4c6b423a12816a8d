import Foundation
import TestSupport
import Testing

/// The metrics of a real server (issue 17): a listener of their own, behind a token when one
/// is set, never on the boot network's HTTP port; and the fleet, lifecycle, BMC, reconciler,
/// API and process families, read after two machines were commissioned through ipmi_sim and
/// the agent stand-in, on each store.
@Suite struct MetricsTests {
    @Test(arguments: ControlPlaneTests.databases) func ownListenerTokenAndFamilies(_ databaseKind: String) throws {
        let h = try Harness("metrics")
        let (pg, dbFlags) = try ControlPlaneTests().database(databaseKind, h)
        defer {
            pg?.stop()
            h.cleanup()
        }
        let tokenFile = h.directory + "/metrics.token"
        let token = "scrape-" + UUID().uuidString
        try (token + "\n").write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let (cp, _, _) = try ControlPlaneTests().setUp(h, flags: ["--metrics-token-file", tokenFile] + dbFlags)

        /// The answer's status and body.
        func get(_ url: String, _ headers: [String]) throws -> (status: String, body: String) {
            let out = try h.run(["curl", "-s", "-w", "\n%{http_code}"] + headers + [url], timeout: 10).stdout
            let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
            return (String(lines.last ?? ""), lines.dropLast().joined(separator: "\n"))
        }
        let bearer = ["-H", "Authorization: Bearer \(token)"]

        // Without the token, with another, or sent another way: 401, and not one number.
        for headers in [[], ["-H", "Authorization: Bearer \(token)x"], ["-u", "prometheus:\(token)"]] {
            let refused = try get(cp.metricsURL, headers)
            #expect(refused.status == "401", "\(headers): \(refused)")
            #expect(!refused.body.contains("farrier_"), "\(headers)")
        }
        // The boot network's HTTP port has no metrics.
        #expect(try get(cp.http + "/metrics", bearer).status == "404")

        // An API call with a bad token, counted by its status code.
        let refusedCall = try cp.cli(["machine", "list"], token: "not-a-token", check: false)
        #expect(refusedCall.status != 0)
        // A deploy of m1, to its end: the installed OS reporting in (the stand-in plays it).
        try cp.cli(["project", "create", "p"])
        try cp.addTestImage(byte: 7)
        try cp.cli(["machine", "deploy", "m1", "--image", "img", "--project", "p"])
        try cp.runAgent(mac: ControlPlaneTests.mac1)
        try cp.waitFor("m1", "deployed")
        // A boot file over HTTP, as iPXE fetches the ramdisk.
        let bootFile = try #require(
            try FileManager.default.contentsOfDirectory(atPath: cp.data + "/boot").filter { $0.hasSuffix(".kpxe") }
                .first,
            "no iPXE binary in the boot root (Debian's ipxe package)"
        )
        let bootSize = try #require(
            try FileManager.default.attributesOfItem(atPath: cp.data + "/boot/" + bootFile)[.size] as? Int
        )
        #expect(try get(cp.http + "/tftp/" + bootFile, ["-o", "/dev/null"]).status == "200")
        // The fleet gauge is read from the store at the scrape (at most every 5 s); a step's
        // duration is recorded just after its commit.
        var text = ""
        func value(_ series: String) -> Int? { Harness.metric(text, series) }
        try h.waitUntil("the fleet gauge and the deploy's duration", timeout: 30, interval: 0.5) {
            let r = try get(cp.metricsURL, bearer)
            text = r.body
            return r.status == "200"
                && value(#"farrier_machines{state="ready",site="",zone="",project=""}"#) == 1
                && value(#"farrier_machines{state="deployed",site="",zone="",project="p"}"#) == 1
                && value(#"farrier_lifecycle_step_duration_seconds_count{step="deploying",outcome="succeeded"}"#) == 1
        }
        // The commissions and the deploy: their durations by step and outcome, and none failed.
        #expect(value(#"farrier_lifecycle_step_duration_seconds_count{step="commissioning",outcome="succeeded"}"#) == 2)
        #expect(value(#"farrier_lifecycle_step_failures_total{step="commissioning",failure="timeout"}"#) == 0)
        #expect(value(#"farrier_lifecycle_step_failures_total{step="deploying",failure="agent"}"#) == 0)
        // The BMC operations they took (PXE, power on; power off; disk, cycle), by driver and operation.
        #expect((value(#"farrier_bmc_operation_duration_seconds_count{driver="ipmi",operation="power"}"#) ?? 0) >= 3)
        #expect((value(#"farrier_bmc_operation_duration_seconds_count{driver="ipmi",operation="set-boot"}"#) ?? 0) >= 3)
        // The boot file.
        #expect(value("farrier_http_boot_transfers_total") == 1)
        #expect(value("farrier_http_boot_bytes_total") == bootSize)
        // The API: calls by method and status code, the refused one too.
        let machines = #"grpc_service="farrier.v1.MachineService""#
        #expect(value(#"grpc_server_handled_total{\#(machines),grpc_method="EnrollMachine",grpc_code="OK"}"#) == 2)
        #expect(
            (value(#"grpc_server_handled_total{\#(machines),grpc_method="ListMachines",grpc_code="Unauthenticated"}"#)
                ?? 0) >= 1
        )
        #expect((value(#"grpc_server_handling_seconds_count{\#(machines),grpc_method="EnrollMachine"}"#) ?? 0) == 2)
        // The reconciler: nothing waits.
        #expect(value(#"farrier_reconciler_queued_steps{step="deploying"}"#) == 0)
        #expect(value(#"farrier_reconciler_steps{step="deploying",phase="os"}"#) == 0)
        #expect(value(#"farrier_reconciler_steps{step="commissioning",phase="agent"}"#) == 0)
        #expect(value("farrier_reconciler_workers_active") != nil)
        // The boot path's counters (DHCP is off here) and the process.
        #expect(value("farrier_dhcp_packets_received_total") == 0)
        #expect(value(#"farrier_dhcp_requests_total{type="discover"}"#) == 0)
        #expect((value("process_open_fds") ?? 0) > 0)
        #expect((value("process_resident_memory_bytes") ?? 0) > 1 << 20)
        // Every family of Farrier's says what it is.
        let lines = text.split(separator: "\n")
        let typed = lines.filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] }
        let helped = Set(lines.filter { $0.hasPrefix("# HELP ") }.map { $0.split(separator: " ")[2] })
        #expect(typed.count >= 40, "\(typed)")
        #expect(typed.filter { !helped.contains($0) }.isEmpty, "no help: \(typed.filter { !helped.contains($0) })")
        // No series is labelled by a MAC or an address.
        #expect(!text.contains(ControlPlaneTests.mac1) && !text.contains("127.0.0.1"))
    }
}
